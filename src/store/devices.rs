//! Browsers each account has signed in from, by the SHA-256 digest of their device id.

use anyhow::Context as _;
use sqlx::PgExecutor;
use uuid::Uuid;

/// Records that the account used this browser; true when it had not before. One
/// statement, so of two sign-ins racing from one new browser only one sees it as new.
#[tracing::instrument(skip(executor, device_hash))]
pub async fn remember<'e>(
    executor: impl PgExecutor<'e>,
    user_id: Uuid,
    device_hash: &[u8],
) -> anyhow::Result<bool> {
    sqlx::query_scalar!(
        r#"insert into known_devices (user_id, device_hash) values ($1, $2)
         on conflict (user_id, device_hash) do update set last_seen_at = now()
         returning (xmax = 0) as "inserted!""#,
        user_id,
        device_hash,
    )
    .fetch_one(executor)
    .await
    .context("remembering a device")
}

/// Forgets that the account used this browser (its notice could not be queued).
#[tracing::instrument(skip(executor, device_hash))]
pub async fn forget<'e>(
    executor: impl PgExecutor<'e>,
    user_id: Uuid,
    device_hash: &[u8],
) -> anyhow::Result<()> {
    sqlx::query!(
        "delete from known_devices where user_id = $1 and device_hash = $2",
        user_id,
        device_hash,
    )
    .execute(executor)
    .await
    .context("forgetting a device")?;
    Ok(())
}
