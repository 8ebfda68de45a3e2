//! What an account allowed a client to receive, remembered so it is asked once.

use anyhow::Context as _;
use sqlx::PgPool;
use uuid::Uuid;

/// The scopes the account allowed the client, if it answered before.
#[tracing::instrument(skip(pool))]
pub async fn find(
    pool: &PgPool,
    user_id: Uuid,
    client_id: &str,
) -> anyhow::Result<Option<Vec<String>>> {
    sqlx::query_scalar!(
        "select scopes from oidc_consents where user_id = $1 and client_id = $2",
        user_id,
        client_id,
    )
    .fetch_optional(pool)
    .await
    .context("looking up a consent")
}

/// Remembers an Allow (the scopes add to what was allowed before).
#[tracing::instrument(skip(pool))]
pub async fn allow(
    pool: &PgPool,
    user_id: Uuid,
    client_id: &str,
    scopes: &[String],
) -> anyhow::Result<()> {
    sqlx::query!(
        "insert into oidc_consents (user_id, client_id, scopes) values ($1, $2, $3)
         on conflict (user_id, client_id) do update
         set scopes = (select array_agg(distinct s order by s)
                       from unnest(oidc_consents.scopes || excluded.scopes) s),
             updated_at = now()",
        user_id,
        client_id,
        scopes,
    )
    .execute(pool)
    .await
    .context("remembering a consent")?;
    Ok(())
}

/// Forgets the consent, in the caller's transaction; whether there was one.
#[tracing::instrument(skip(conn))]
pub async fn delete(
    conn: &mut sqlx::PgConnection,
    user_id: Uuid,
    client_id: &str,
) -> anyhow::Result<bool> {
    let done = sqlx::query!(
        "delete from oidc_consents where user_id = $1 and client_id = $2",
        user_id,
        client_id,
    )
    .execute(conn)
    .await
    .context("forgetting a consent")?;
    Ok(done.rows_affected() == 1)
}
