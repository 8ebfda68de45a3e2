//! Back-channel logout deliveries: queued by the trigger that ends a session's grants
//! (migration 0009), claimed and settled by the delivery worker (`oidc::logout`).

use anyhow::Context as _;
use sqlx::PgConnection;
use uuid::Uuid;

/// A claimed delivery, with where it goes.
#[derive(Debug)]
pub struct DueLogout {
    pub id: i64,
    pub client_id: String,
    pub user_id: Uuid,
    pub sid: String,
    pub attempts: i32,
    pub backchannel_logout_uri: Option<String>,
    pub signing_alg: String,
}

/// Claims the oldest due delivery for the caller's transaction (`for update skip locked`).
#[tracing::instrument(skip_all)]
pub async fn claim_due(conn: &mut PgConnection) -> anyhow::Result<Option<DueLogout>> {
    sqlx::query_as!(
        DueLogout,
        "select d.id, d.client_id, d.user_id, d.sid, d.attempts, c.backchannel_logout_uri,
                c.signing_alg
         from oidc_logout_outbox d join oidc_clients c on c.id = d.client_id
         where d.status = 'pending' and d.next_attempt_at <= now()
         order by d.id
         limit 1
         for update of d skip locked"
    )
    .fetch_optional(conn)
    .await
    .context("claiming a due logout delivery")
}

#[tracing::instrument(skip(conn))]
pub async fn mark_sent(conn: &mut PgConnection, id: i64) -> anyhow::Result<()> {
    sqlx::query!(
        "update oidc_logout_outbox
         set status = 'sent', sent_at = clock_timestamp(), attempts = attempts + 1
         where id = $1",
        id,
    )
    .execute(conn)
    .await
    .context("marking a logout delivered")?;
    Ok(())
}

#[tracing::instrument(skip(conn, error))]
pub async fn schedule_retry(
    conn: &mut PgConnection,
    id: i64,
    attempts: i32,
    error: &str,
    delay_secs: f64,
) -> anyhow::Result<()> {
    sqlx::query!(
        "update oidc_logout_outbox
         set attempts = $2, last_error = $3,
             next_attempt_at = clock_timestamp() + make_interval(secs => $4)
         where id = $1",
        id,
        attempts,
        error,
        delay_secs,
    )
    .execute(conn)
    .await
    .context("scheduling a logout retry")?;
    Ok(())
}

#[tracing::instrument(skip(conn, error))]
pub async fn mark_failed(
    conn: &mut PgConnection,
    id: i64,
    attempts: i32,
    error: &str,
) -> anyhow::Result<()> {
    sqlx::query!(
        "update oidc_logout_outbox set status = 'failed', attempts = $2, last_error = $3
         where id = $1",
        id,
        attempts,
        error,
    )
    .execute(conn)
    .await
    .context("marking a logout delivery failed")?;
    Ok(())
}
