//! The outbox table: mail queued in the caller's transaction, claimed and settled by the
//! delivery worker (`mail::outbox`), which owns the delivery rules.

use anyhow::Context as _;
use sqlx::{PgConnection, PgPool};

/// Queues a message whose body is already sealed; returns its id.
#[tracing::instrument(skip(conn, subject, body_enc))]
pub async fn insert(
    conn: &mut PgConnection,
    to_address: &str,
    subject: &str,
    body_enc: &[u8],
) -> anyhow::Result<i64> {
    sqlx::query_scalar!(
        "insert into outbox (to_address, subject, body_enc)
         values ($1, $2, $3)
         returning id",
        to_address,
        subject,
        body_enc,
    )
    .fetch_one(conn)
    .await
    .context("inserting mail into the outbox")
}

/// A claimed row. Rows queued before migration 0005 hold their bodies in clear.
pub struct DueMail {
    pub id: i64,
    pub to_address: String,
    pub subject: String,
    pub text_body: Option<String>,
    pub html_body: Option<String>,
    pub body_enc: Option<Vec<u8>>,
    pub attempts: i32,
}

impl std::fmt::Debug for DueMail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DueMail")
            .field("id", &self.id)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

/// Claims the oldest due message for the caller's transaction (`for update skip locked`:
/// rows other workers are sending are skipped).
#[tracing::instrument(skip_all)]
pub async fn claim_due(conn: &mut PgConnection) -> anyhow::Result<Option<DueMail>> {
    sqlx::query_as!(
        DueMail,
        "select id, to_address, subject, text_body, html_body, body_enc, attempts
         from outbox
         where status = 'pending' and next_attempt_at <= now()
         order by id
         limit 1
         for update skip locked"
    )
    .fetch_optional(conn)
    .await
    .context("claiming due mail from the outbox")
}

/// Sent: the bodies go. Timestamps here and below use clock_timestamp(): now() is when
/// the transaction began, before a send that may have taken up to the transport's timeout.
#[tracing::instrument(skip(conn))]
pub async fn mark_sent(conn: &mut PgConnection, id: i64) -> anyhow::Result<()> {
    sqlx::query!(
        "update outbox
         set status = 'sent', sent_at = clock_timestamp(),
             text_body = null, html_body = null, body_enc = null
         where id = $1",
        id,
    )
    .execute(conn)
    .await
    .context("marking mail sent")?;
    Ok(())
}

/// A failed attempt worth retrying after `delay_secs`.
#[tracing::instrument(skip(conn, error))]
pub async fn schedule_retry(
    conn: &mut PgConnection,
    id: i64,
    attempts: i32,
    error: &str,
    class: &str,
    delay_secs: f64,
) -> anyhow::Result<()> {
    sqlx::query!(
        "update outbox
         set attempts = $2, last_error = $3, last_error_class = $5,
             last_error_at = clock_timestamp(),
             next_attempt_at = clock_timestamp() + make_interval(secs => $4)
         where id = $1",
        id,
        attempts,
        error,
        delay_secs,
        class,
    )
    .execute(conn)
    .await
    .context("scheduling a mail retry")?;
    Ok(())
}

/// Given up: the row stays, with its reason, for the operator. Its bodies go (a reset
/// link in them must not linger) unless `keep_sealed_body`: a refusal the operator can
/// fix (the relay refused our credentials) keeps the sealed body, so `latchkey mail
/// retry` can send it once the credentials are right; housekeeping deletes it after a
/// week either way.
#[tracing::instrument(skip(conn, error))]
pub async fn mark_failed(
    conn: &mut PgConnection,
    id: i64,
    attempts: i32,
    error: &str,
    class: &str,
    keep_sealed_body: bool,
) -> anyhow::Result<()> {
    sqlx::query!(
        "update outbox
         set status = 'failed', attempts = $2, last_error = $3, last_error_class = $4,
             last_error_at = clock_timestamp(),
             text_body = null, html_body = null,
             body_enc = case when $5 then body_enc else null end
         where id = $1",
        id,
        attempts,
        error,
        class,
        keep_sealed_body,
    )
    .execute(conn)
    .await
    .context("marking mail failed")?;
    Ok(())
}

/// What `/readyz` and `/metrics` show of the outbox.
#[derive(Debug, Clone)]
pub struct Backlog {
    pub pending: i64,
    pub failed: i64,
    pub oldest_pending_secs: f64,
    /// The class of the most recent delivery failure, and how long ago it was.
    pub last_error_class: Option<String>,
    pub last_error_secs_ago: Option<f64>,
}

#[tracing::instrument(skip_all)]
pub async fn backlog(pool: &PgPool) -> anyhow::Result<Backlog> {
    sqlx::query_as!(
        Backlog,
        r#"select
             count(*) filter (where status = 'pending') as "pending!",
             count(*) filter (where status = 'failed') as "failed!",
             coalesce(extract(epoch from now() - min(created_at) filter (where status = 'pending')), 0)::float8
                 as "oldest_pending_secs!",
             (select last_error_class from outbox where last_error_at is not null
              order by last_error_at desc limit 1) as last_error_class,
             (select extract(epoch from now() - max(last_error_at))::float8 from outbox) as last_error_secs_ago
         from outbox"#
    )
    .fetch_one(pool)
    .await
    .context("reading the outbox backlog")
}

/// `latchkey mail retry`: mail that failed because the relay refused our credentials
/// (and kept its sealed body) is queued again, to be sent at once. Returns how many.
#[tracing::instrument(skip_all)]
pub async fn requeue_auth_refused(pool: &PgPool) -> anyhow::Result<u64> {
    Ok(sqlx::query!(
        "update outbox
         set status = 'pending', attempts = 0, next_attempt_at = now()
         where status = 'failed' and last_error_class = 'auth_refused' and body_enc is not null"
    )
    .execute(pool)
    .await
    .context("re-queueing mail the relay refused")?
    .rows_affected())
}
