//! The outbox: mail is written in the caller's transaction and delivered by a worker.
//!
//! # Delivery guarantee: at least once, duplicates only after a crash
//!
//! Each message is delivered in its own transaction: claim one due row with
//! `for update skip locked`, send it while the row lock is held, record the outcome,
//! commit. Any number of workers (threads or instances) can run [`deliver_due`] at once:
//! a row being sent is locked, the others skip it, and by the time the lock is released
//! the row says `sent` (or has a later `next_attempt_at`). Concurrent workers therefore
//! never send one message twice.
//!
//! The one gap is between the SMTP server accepting a message and the commit that
//! records it: if the process dies, the database connection drops or the commit fails
//! there, the transaction rolls back and the message is sent again later. We accept that
//! (at-least-once) rather than marking rows before sending (at-most-once), because a lost
//! reset link or "your password was changed" notice costs more than a rare duplicate, and
//! the duplicate carries the same link. Claiming one row per transaction keeps the window
//! to a single message.
//!
//! A row is locked for as long as its send takes, bounded by the transport's timeouts.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use lettre::message::Mailbox;
use rand::Rng as _;
use sqlx::{PgConnection, PgPool};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use super::transport::{InvalidMail, OutgoingMail, Transport};

/// After this many failed attempts a message is given up (`status = 'failed'`).
pub const MAX_ATTEMPTS: i32 = 12;

const FIRST_RETRY_DELAY: Duration = Duration::from_secs(5);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(15 * 60);
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// While the database is unreachable the worker waits up to 2^5 × POLL_INTERVAL between tries.
const MAX_ERROR_BACKOFF_EXPONENT: u32 = 5;
const LAST_ERROR_MAX_CHARS: usize = 500;

/// Queues `mail` inside the caller's transaction, so it commits (or rolls back) together
/// with whatever it announces, e.g. the reset token. Call [`Outbox::notify`] after the
/// commit to have this instance's worker send it without waiting for the next poll.
#[tracing::instrument(skip_all, fields(outbox_id))]
pub async fn enqueue(conn: &mut PgConnection, mail: &OutgoingMail) -> anyhow::Result<i64> {
    let id: i64 = sqlx::query_scalar(
        "insert into outbox (to_address, subject, text_body, html_body)
         values ($1, $2, $3, $4)
         returning id",
    )
    .bind(&mail.to)
    .bind(&mail.subject)
    .bind(&mail.text)
    .bind(mail.html.as_deref())
    .fetch_one(conn)
    .await
    .context("inserting mail into the outbox")?;
    tracing::Span::current().record("outbox_id", id);
    Ok(id)
}

/// Sends up to `batch` due messages, one transaction each (see the module docs), and
/// returns how many were sent. Failures are recorded on their rows, not returned:
/// an `Err` means the database could not be used.
pub async fn deliver_due(
    pool: &PgPool,
    transport: &Transport,
    from: &Mailbox,
    batch: i64,
) -> anyhow::Result<usize> {
    let mut sent = 0;
    for _ in 0..batch {
        match deliver_next(pool, transport, from).await? {
            None => break,
            Some(was_sent) => sent += usize::from(was_sent),
        }
    }
    Ok(sent)
}

#[derive(sqlx::FromRow)]
struct DueMail {
    id: i64,
    to_address: String,
    subject: String,
    text_body: Option<String>,
    html_body: Option<String>,
    attempts: i32,
}

/// Claims, sends and settles the oldest due message. `None`: nothing is due (or every due
/// row is being sent by another worker); `Some(sent)` otherwise.
async fn deliver_next(
    pool: &PgPool,
    transport: &Transport,
    from: &Mailbox,
) -> anyhow::Result<Option<bool>> {
    let mut tx = pool
        .begin()
        .await
        .context("starting an outbox transaction")?;
    let due: Option<DueMail> = sqlx::query_as(
        "select id, to_address, subject, text_body, html_body, attempts
         from outbox
         where status = 'pending' and next_attempt_at <= now()
         order by id
         limit 1
         for update skip locked",
    )
    .fetch_optional(&mut *tx)
    .await
    .context("claiming due mail from the outbox")?;
    let Some(due) = due else {
        return Ok(None);
    };
    let id = due.id;
    let failed_attempts = due.attempts.saturating_add(1);

    // The row lock is held across the send: that is what keeps other workers off it.
    // Timestamps below use clock_timestamp(): now() is when this transaction began, before
    // a send that may have taken up to the transport's timeout.
    let outcome = match due.text_body {
        Some(text) => {
            let mail = OutgoingMail {
                to: due.to_address,
                subject: due.subject,
                text,
                html: due.html_body,
            };
            transport.send(from, &mail).await.map_err(Failure::classify)
        }
        None => Err(Failure::Permanent(anyhow::anyhow!(
            "pending mail has no text body"
        ))),
    };

    let sent = outcome.is_ok();
    match outcome {
        Ok(()) => {
            sqlx::query(
                "update outbox
                 set status = 'sent', sent_at = clock_timestamp(), text_body = null, html_body = null
                 where id = $1",
            )
            .bind(id)
            .execute(&mut *tx)
            .await
            .context("marking mail sent")?;
        }
        Err(Failure::Transient(err)) if failed_attempts < MAX_ATTEMPTS => {
            let error = describe(&err);
            let delay = retry_delay(failed_attempts);
            tracing::warn!(
                outbox_id = id,
                attempts = failed_attempts,
                retry_in = ?delay,
                %error,
                "mail delivery failed, will retry"
            );
            sqlx::query(
                "update outbox
                 set attempts = $2, last_error = $3,
                     next_attempt_at = clock_timestamp() + make_interval(secs => $4)
                 where id = $1",
            )
            .bind(id)
            .bind(failed_attempts)
            .bind(&error)
            .bind(delay.as_secs_f64())
            .execute(&mut *tx)
            .await
            .context("scheduling a mail retry")?;
        }
        Err(Failure::Transient(err) | Failure::Permanent(err)) => {
            let error = describe(&err);
            tracing::error!(
                outbox_id = id,
                attempts = failed_attempts,
                %error,
                "mail delivery failed for good"
            );
            // Nobody will send these bodies any more; a reset link in them must not linger.
            sqlx::query(
                "update outbox
                 set status = 'failed', attempts = $2, last_error = $3,
                     text_body = null, html_body = null
                 where id = $1",
            )
            .bind(id)
            .bind(failed_attempts)
            .bind(&error)
            .execute(&mut *tx)
            .await
            .context("marking mail failed")?;
        }
    }

    if let Err(err) = tx.commit().await {
        if sent {
            tracing::error!(
                outbox_id = id,
                "mail was sent but not recorded; it will be sent again"
            );
        }
        return Err(err).context("recording the outcome of a mail delivery");
    }
    if sent {
        tracing::info!(outbox_id = id, "mail sent");
    }
    Ok(Some(sent))
}

enum Failure {
    /// Worth retrying: the server or the network may recover.
    Transient(anyhow::Error),
    /// Retrying cannot help: the message itself is unusable.
    Permanent(anyhow::Error),
}

impl Failure {
    fn classify(err: anyhow::Error) -> Self {
        if err.chain().any(|cause| cause.is::<InvalidMail>()) {
            Failure::Permanent(err)
        } else {
            Failure::Transient(err)
        }
    }
}

/// 5 s, 10 s, 20 s … capped at 15 min, plus up to 10 % jitter so that a burst of mail
/// that failed together does not retry in lockstep.
fn retry_delay(failed_attempts: i32) -> Duration {
    let doublings = u32::try_from(failed_attempts.saturating_sub(1))
        .unwrap_or(0)
        .min(16);
    let base = FIRST_RETRY_DELAY
        .saturating_mul(1 << doublings)
        .min(MAX_RETRY_DELAY);
    base + base.mul_f64(rand::thread_rng().gen_range(0.0..0.1))
}

/// The error chain on one line, cut to a bounded length. Errors never contain the body.
fn describe(err: &anyhow::Error) -> String {
    let text = format!("{err:#}");
    match text.char_indices().nth(LAST_ERROR_MAX_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// Wakes the local delivery worker when mail has just been queued. Cheap to clone.
/// Other instances' workers find the mail on their next poll.
#[derive(Clone, Debug, Default)]
pub struct Outbox {
    notify: Arc<Notify>,
}

impl Outbox {
    pub fn new() -> Self {
        Self::default()
    }

    /// Call after the transaction that enqueued mail has committed. A wake-up sent while
    /// the worker is busy is kept, so it is never lost.
    pub fn notify(&self) {
        self.notify.notify_one();
    }

    /// Runs the delivery loop until `shutdown` turns `true` (or its sender is dropped):
    /// it looks for due mail every second, and at once after [`Outbox::notify`]. A message
    /// being sent when shutdown arrives is finished and recorded first.
    pub fn spawn_worker(
        &self,
        pool: PgPool,
        transport: Transport,
        from: Mailbox,
        shutdown: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        let notify = Arc::clone(&self.notify);
        tokio::spawn(run_worker(pool, transport, from, notify, shutdown))
    }
}

async fn run_worker(
    pool: PgPool,
    transport: Transport,
    from: Mailbox,
    notify: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    tracing::info!(?transport, "outbox worker started");
    let mut consecutive_errors: u32 = 0;
    loop {
        // Checked between messages, so shutdown waits for one send at most.
        if *shutdown.borrow_and_update() {
            break;
        }
        let wait = match deliver_next(&pool, &transport, &from).await {
            Ok(Some(_)) => {
                // More may be due: go again without sleeping.
                consecutive_errors = 0;
                continue;
            }
            Ok(None) => {
                consecutive_errors = 0;
                POLL_INTERVAL
            }
            Err(err) => {
                consecutive_errors = consecutive_errors.saturating_add(1);
                tracing::error!(error = format!("{err:#}"), "outbox delivery failed");
                POLL_INTERVAL * (1 << consecutive_errors.min(MAX_ERROR_BACKOFF_EXPONENT))
            }
        };
        tokio::select! {
            () = notify.notified() => {}
            () = tokio::time::sleep(wait) => {}
            changed = shutdown.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
    }
    tracing::info!("outbox worker stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_from_five_seconds_and_caps_at_fifteen_minutes() {
        for (attempts, base) in [
            (1, 5),
            (2, 10),
            (3, 20),
            (4, 40),
            (8, 640),
            (9, 900),
            (12, 900),
        ] {
            let delay = retry_delay(attempts);
            let base = Duration::from_secs(base);
            assert!(
                delay >= base && delay <= base.mul_f64(1.1),
                "{attempts}: {delay:?}"
            );
        }
        assert!(retry_delay(i32::MAX) <= MAX_RETRY_DELAY.mul_f64(1.1));
        assert!(retry_delay(0) >= FIRST_RETRY_DELAY);
    }

    #[test]
    fn describe_truncates_long_errors_on_a_char_boundary() {
        let err = anyhow::anyhow!("é".repeat(2 * LAST_ERROR_MAX_CHARS)).context("smtp");
        let text = describe(&err);
        assert_eq!(text.chars().count(), LAST_ERROR_MAX_CHARS + 1);
        assert!(text.starts_with("smtp: é"));
    }

    #[test]
    fn only_unusable_messages_fail_permanently() {
        let bad_address = "a\r\nb@example.test"
            .parse::<lettre::Address>()
            .expect_err("invalid");
        let invalid = anyhow::Error::new(InvalidMail::Recipient(bad_address)).context("sending");
        assert!(matches!(Failure::classify(invalid), Failure::Permanent(_)));
        let refused = anyhow::anyhow!("connection refused");
        assert!(matches!(Failure::classify(refused), Failure::Transient(_)));
    }
}
