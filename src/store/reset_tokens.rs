//! Password reset tokens, stored only as SHA-256 digests, consumed by one atomic statement.

use anyhow::Context as _;
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

/// Stores a new token and voids every older unused one of the account.
#[tracing::instrument(skip(conn, token_hash))]
pub async fn insert(
    conn: &mut PgConnection,
    user_id: Uuid,
    token_hash: &[u8],
    ttl_secs: u64,
    requested_ip: Option<&str>,
) -> anyhow::Result<()> {
    void_for_user(&mut *conn, user_id).await?;
    sqlx::query!(
        "insert into reset_tokens (token_hash, user_id, expires_at, requested_ip)
         values ($1, $2, now() + make_interval(secs => $3), $4)",
        token_hash,
        user_id,
        ttl_secs as f64,
        requested_ip,
    )
    .execute(conn)
    .await
    .context("inserting a reset token")?;
    Ok(())
}

/// Any password change makes outstanding links useless.
#[tracing::instrument(skip(conn))]
pub async fn void_for_user(conn: &mut PgConnection, user_id: Uuid) -> anyhow::Result<()> {
    sqlx::query!(
        "update reset_tokens set used_at = now() where user_id = $1 and used_at is null",
        user_id,
    )
    .execute(conn)
    .await
    .context("voiding an account's reset tokens")?;
    Ok(())
}

/// Locks the account's row until the transaction ends, so reset requests for one account
/// run one after another; `false` if the account is gone or disabled (a disable that
/// held the row is waited for, then seen). `for no key update`, the lock an update of the
/// row takes: it serialises the writers of the account, but never makes a row that merely
/// refers to it (a sign-in's audit row or session) wait, which holding `for update` did,
/// deadlocking a sign-in that held its address's throttle row against a reset.
#[tracing::instrument(skip(conn))]
pub async fn lock_account(conn: &mut PgConnection, user_id: Uuid) -> anyhow::Result<bool> {
    let row = sqlx::query_scalar!(
        "select id from users where id = $1 and disabled_at is null for no key update",
        user_id
    )
    .fetch_optional(conn)
    .await
    .context("locking an account for a reset")?;
    Ok(row.is_some())
}

/// How many reset links the account was sent in the last hour.
#[tracing::instrument(skip(executor))]
pub async fn count_recent<'e>(executor: impl PgExecutor<'e>, user_id: Uuid) -> anyhow::Result<i64> {
    sqlx::query_scalar!(
        r#"select count(*) as "count!" from reset_tokens
         where user_id = $1 and created_at > now() - interval '1 hour'"#,
        user_id,
    )
    .fetch_one(executor)
    .await
    .context("counting recent reset tokens")
}

/// The state of a token as its link is opened (a GET never consumes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    Usable { user_id: Uuid },
    Expired,
    Used,
    Unknown,
}

#[tracing::instrument(skip_all)]
pub async fn peek(pool: &PgPool, token_hash: &[u8]) -> anyhow::Result<TokenState> {
    let row = sqlx::query!(
        r#"select user_id, used_at is not null as "used!", expires_at <= now() as "expired!"
         from reset_tokens where token_hash = $1"#,
        token_hash,
    )
    .fetch_optional(pool)
    .await
    .context("reading a reset token")?;
    Ok(match row {
        None => TokenState::Unknown,
        Some(row) if row.used => TokenState::Used,
        Some(row) if row.expired => TokenState::Expired,
        Some(row) => TokenState::Usable {
            user_id: row.user_id,
        },
    })
}

/// Marks the token used if, and only if, it is unused and unexpired; the one statement
/// makes two concurrent redemptions give exactly one success.
#[tracing::instrument(skip_all)]
pub async fn consume(conn: &mut PgConnection, token_hash: &[u8]) -> anyhow::Result<Option<Uuid>> {
    sqlx::query_scalar!(
        "update reset_tokens set used_at = now()
         where token_hash = $1 and used_at is null and expires_at > now()
         returning user_id",
        token_hash,
    )
    .fetch_optional(conn)
    .await
    .context("consuming a reset token")
}

/// Counts a wrong two-factor code entered with this token; the fifth voids the token.
#[tracing::instrument(skip(pool, token_hash))]
pub async fn record_code_failure(
    pool: &PgPool,
    token_hash: &[u8],
    limit: i32,
) -> anyhow::Result<()> {
    sqlx::query!(
        "update reset_tokens set failed_codes = failed_codes + 1,
             used_at = case when failed_codes + 1 >= $2 then now() else used_at end
         where token_hash = $1 and used_at is null",
        token_hash,
        limit,
    )
    .execute(pool)
    .await
    .context("counting a wrong code on a reset token")?;
    Ok(())
}
