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
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use lettre::message::Mailbox;
use rand::{Rng as _, RngCore as _};
use sqlx::{PgConnection, PgPool};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use super::transport::{DeliveryError, InvalidMail, OutgoingMail, Transport};
use crate::store::outbox as store;
pub use crate::store::outbox::{Backlog, backlog};

/// After this many failed attempts a message is given up (`status = 'failed'`).
pub const MAX_ATTEMPTS: i32 = 12;

const FIRST_RETRY_DELAY: Duration = Duration::from_secs(5);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(15 * 60);
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// While the database is unreachable the worker waits up to 2^5 × POLL_INTERVAL between tries.
const MAX_ERROR_BACKOFF_EXPONENT: u32 = 5;
const LAST_ERROR_MAX_CHARS: usize = 500;

/// Queues `mail` inside the caller's transaction, so it commits (or rolls back) together
/// with whatever it announces, e.g. the reset token. The body is sealed with `key` (see
/// [`seal`]): a pending row holds no live link in clear. Call [`Outbox::notify`] after the
/// commit to have this instance's worker send it without waiting for the next poll.
#[tracing::instrument(skip_all, fields(outbox_id))]
async fn enqueue_sealed(
    conn: &mut PgConnection,
    key: &BodyKey,
    mail: &OutgoingMail,
) -> anyhow::Result<i64> {
    let sealed = seal(key, &mail.to, mail)?;
    let id = store::insert(conn, &mail.to, &mail.subject, &sealed).await?;
    tracing::Span::current().record("outbox_id", id);
    Ok(id)
}

/// The key that seals queued bodies (`Keys::outbox`). Its `Debug` shows nothing.
#[derive(Clone)]
pub struct BodyKey([u8; 32]);

impl std::fmt::Debug for BodyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BodyKey([redacted])")
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Bodies {
    text: String,
    html: Option<String>,
}

const NONCE_LEN: usize = 24;

/// nonce || XChaCha20-Poly1305(text and html as JSON), bound to the recipient, so a sealed
/// body moved onto another row (another address) does not open.
fn seal(key: &BodyKey, to: &str, mail: &OutgoingMail) -> anyhow::Result<Vec<u8>> {
    let plain = serde_json::to_vec(&Bodies {
        text: mail.text.clone(),
        html: mail.html.clone(),
    })
    .context("encoding a mail body")?;
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let sealed = XChaCha20Poly1305::new((&key.0).into())
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: &plain,
                aad: to.as_bytes(),
            },
        )
        .map_err(|_| anyhow::anyhow!("encrypting a mail body"))?;
    Ok([nonce.as_slice(), &sealed].concat())
}

fn open(key: &BodyKey, to: &str, sealed: &[u8]) -> Result<Bodies, SealError> {
    if sealed.len() < NONCE_LEN {
        return Err(SealError);
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
    let plain = XChaCha20Poly1305::new((&key.0).into())
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad: to.as_bytes(),
            },
        )
        .map_err(|_| SealError)?;
    serde_json::from_slice(&plain).map_err(|_| SealError)
}

#[derive(Debug, thiserror::Error)]
#[error("the queued body does not decrypt (was LATCHKEY_SECRET_KEY changed?)")]
struct SealError;

/// Sends up to `batch` due messages, one transaction each (see the module docs), and
/// returns how many were sent. Failures are recorded on their rows, not returned:
/// an `Err` means the database could not be used.
pub async fn deliver_due(
    pool: &PgPool,
    transport: &Transport,
    from: &Mailbox,
    key: &BodyKey,
    batch: i64,
) -> anyhow::Result<usize> {
    let mut sent = 0;
    for _ in 0..batch {
        match deliver_next(pool, transport, from, key).await? {
            None => break,
            Some(was_sent) => sent += usize::from(was_sent),
        }
    }
    Ok(sent)
}

/// Claims, sends and settles the oldest due message. `None`: nothing is due (or every due
/// row is being sent by another worker); `Some(sent)` otherwise.
async fn deliver_next(
    pool: &PgPool,
    transport: &Transport,
    from: &Mailbox,
    key: &BodyKey,
) -> anyhow::Result<Option<bool>> {
    let mut tx = pool
        .begin()
        .await
        .context("starting an outbox transaction")?;
    let due = store::claim_due(&mut tx).await?;
    let Some(due) = due else {
        return Ok(None);
    };
    let id = due.id;
    let failed_attempts = due.attempts.saturating_add(1);

    // The row lock is held across the send: that is what keeps other workers off it.
    // Timestamps below use clock_timestamp(): now() is when this transaction began, before
    // a send that may have taken up to the transport's timeout.
    // Rows queued before migration 0005 hold their bodies in clear; they still go out.
    let bodies = match (&due.body_enc, due.text_body) {
        (Some(sealed), _) => open(key, &due.to_address, sealed)
            .map_err(|err| DeliveryFailure::Permanent("undecryptable", anyhow::Error::new(err))),
        (None, Some(text)) => Ok(Bodies {
            text,
            html: due.html_body,
        }),
        (None, None) => Err(DeliveryFailure::Permanent(
            "invalid_message",
            anyhow::anyhow!("pending mail has no body"),
        )),
    };
    let outcome = match bodies {
        Ok(bodies) => {
            let mail = OutgoingMail {
                to: due.to_address,
                subject: due.subject,
                text: bodies.text,
                html: bodies.html,
            };
            transport
                .send(from, &mail)
                .await
                .map_err(DeliveryFailure::classify)
        }
        Err(failure) => Err(failure),
    };

    let sent = outcome.is_ok();
    match outcome {
        Ok(()) => {
            store::mark_sent(&mut tx, id).await?;
        }
        Err(DeliveryFailure::Transient(class, err)) if failed_attempts < MAX_ATTEMPTS => {
            let error = describe(&err);
            metrics::counter!("latchkey_mail_delivery_failures_total", "class" => class, "outcome" => "retry").increment(1);
            let delay = retry_delay(failed_attempts);
            tracing::warn!(
                outbox_id = id,
                attempts = failed_attempts,
                retry_in = ?delay,
                class,
                %error,
                "mail delivery failed, will retry"
            );
            store::schedule_retry(
                &mut tx,
                id,
                failed_attempts,
                &error,
                class,
                delay.as_secs_f64(),
            )
            .await?;
        }
        Err(DeliveryFailure::Transient(class, err) | DeliveryFailure::Permanent(class, err)) => {
            let error = describe(&err);
            metrics::counter!("latchkey_mail_delivery_failures_total", "class" => class, "outcome" => "failed").increment(1);
            tracing::error!(
                outbox_id = id,
                attempts = failed_attempts,
                class,
                %error,
                "mail delivery failed for good"
            );
            // Nobody will send these bodies any more; a reset link in them must not linger.
            // The row stays, with its reason, for the operator (`status = 'failed'`). An
            // AUTH refusal is the operator's to fix: its sealed body waits for
            // `latchkey mail retry`.
            let keep = class == "auth_refused";
            store::mark_failed(&mut tx, id, failed_attempts, &error, class, keep).await?;
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
        metrics::counter!("latchkey_mail_sent_total").increment(1);
        tracing::info!(outbox_id = id, "mail sent");
    }
    Ok(Some(sent))
}

/// Why a delivery failed, and so whether it is tried again.
enum DeliveryFailure {
    /// Worth retrying: the server or the network may recover. With its class.
    Transient(&'static str, anyhow::Error),
    /// Retrying cannot help: the message is unusable, or the relay answered 5xx.
    Permanent(&'static str, anyhow::Error),
}

impl DeliveryFailure {
    fn classify(err: anyhow::Error) -> Self {
        if err.chain().any(|cause| cause.is::<InvalidMail>()) {
            return DeliveryFailure::Permanent("invalid_message", err);
        }
        let delivery = err
            .chain()
            .find_map(|cause| cause.downcast_ref::<DeliveryError>())
            .map(|delivery| (delivery.class, delivery.permanent));
        match delivery {
            Some((class, true)) => DeliveryFailure::Permanent(class, err),
            Some((class, false)) => DeliveryFailure::Transient(class, err),
            None => DeliveryFailure::Transient("other", err),
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
#[derive(Clone, Debug)]
pub struct Outbox {
    notify: Arc<Notify>,
    key: BodyKey,
}

impl Outbox {
    /// `key` seals queued bodies: `Keys::outbox`, the same on every instance.
    pub fn new(key: [u8; 32]) -> Self {
        Outbox {
            notify: Arc::default(),
            key: BodyKey(key),
        }
    }

    /// Queues `mail` in the caller's transaction, its body sealed (see [`seal`]).
    pub async fn enqueue(
        &self,
        conn: &mut PgConnection,
        mail: &OutgoingMail,
    ) -> anyhow::Result<i64> {
        enqueue_sealed(conn, &self.key, mail).await
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
        let key = self.key.clone();
        tokio::spawn(run_worker(pool, transport, from, key, notify, shutdown))
    }
}

async fn run_worker(
    pool: PgPool,
    transport: Transport,
    from: Mailbox,
    key: BodyKey,
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
        let wait = match deliver_next(&pool, &transport, &from, &key).await {
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
        assert!(matches!(
            DeliveryFailure::classify(invalid),
            DeliveryFailure::Permanent("invalid_message", _)
        ));
        let refused = anyhow::anyhow!("connection refused");
        assert!(matches!(
            DeliveryFailure::classify(refused),
            DeliveryFailure::Transient(_, _)
        ));
    }
}
