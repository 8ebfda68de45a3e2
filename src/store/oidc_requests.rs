//! Authorization requests waiting for a sign-in or a consent answer, by the digest of a
//! random id that travels in `next` or the consent form.

use anyhow::Context as _;
use sqlx::PgPool;
use time::OffsetDateTime;

#[tracing::instrument(skip_all)]
pub async fn insert(
    pool: &PgPool,
    id_hash: &[u8],
    params: &serde_json::Value,
    ttl_secs: f64,
) -> anyhow::Result<()> {
    sqlx::query!(
        "insert into oidc_requests (id_hash, params, expires_at)
         values ($1, $2, now() + make_interval(secs => $3))",
        id_hash,
        params,
        ttl_secs,
    )
    .execute(pool)
    .await
    .context("storing an authorization request")?;
    Ok(())
}

/// A waiting request's parameters and when it was made, while unexpired.
#[tracing::instrument(skip_all)]
pub async fn find(
    pool: &PgPool,
    id_hash: &[u8],
) -> anyhow::Result<Option<(serde_json::Value, OffsetDateTime)>> {
    let row = sqlx::query!(
        "select params, created_at from oidc_requests where id_hash = $1 and expires_at > now()",
        id_hash,
    )
    .fetch_optional(pool)
    .await
    .context("loading an authorization request")?;
    Ok(row.map(|r| (r.params, r.created_at)))
}

/// Ends a waiting request once it is answered; whether it was still there.
#[tracing::instrument(skip_all)]
pub async fn delete(pool: &PgPool, id_hash: &[u8]) -> anyhow::Result<bool> {
    let done = sqlx::query!("delete from oidc_requests where id_hash = $1", id_hash)
        .execute(pool)
        .await
        .context("ending an authorization request")?;
    Ok(done.rows_affected() == 1)
}
