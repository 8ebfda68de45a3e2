//! Password reset tokens, stored only as SHA-256 digests, consumed by one atomic statement.

use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

/// Stores a new token and voids every older unused one of the account.
pub async fn insert(
    conn: &mut PgConnection,
    user_id: Uuid,
    token_hash: &[u8],
    ttl_secs: u64,
    requested_ip: Option<&str>,
) -> anyhow::Result<()> {
    void_for_user(&mut *conn, user_id).await?;
    sqlx::query(
        "insert into reset_tokens (token_hash, user_id, expires_at, requested_ip)
         values ($1, $2, now() + make_interval(secs => $3), $4)",
    )
    .bind(token_hash)
    .bind(user_id)
    .bind(ttl_secs as f64)
    .bind(requested_ip)
    .execute(conn)
    .await?;
    Ok(())
}

/// Any password change makes outstanding links useless.
pub async fn void_for_user(conn: &mut PgConnection, user_id: Uuid) -> anyhow::Result<()> {
    sqlx::query("update reset_tokens set used_at = now() where user_id = $1 and used_at is null")
        .bind(user_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Locks the account's row until the transaction ends, so reset requests for one account
/// run one after another; `false` if the account is gone.
pub async fn lock_account(conn: &mut PgConnection, user_id: Uuid) -> anyhow::Result<bool> {
    let row: Option<(Uuid,)> = sqlx::query_as("select id from users where id = $1 for update")
        .bind(user_id)
        .fetch_optional(conn)
        .await?;
    Ok(row.is_some())
}

/// How many reset links the account was sent in the last hour.
pub async fn count_recent<'e>(executor: impl PgExecutor<'e>, user_id: Uuid) -> anyhow::Result<i64> {
    let (count,): (i64,) = sqlx::query_as(
        "select count(*) from reset_tokens
         where user_id = $1 and created_at > now() - interval '1 hour'",
    )
    .bind(user_id)
    .fetch_one(executor)
    .await?;
    Ok(count)
}

/// The state of a token as its link is opened (a GET never consumes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    Usable { user_id: Uuid },
    Expired,
    Used,
    Unknown,
}

pub async fn peek(pool: &PgPool, token_hash: &[u8]) -> anyhow::Result<TokenState> {
    let row: Option<(Uuid, bool, bool)> = sqlx::query_as(
        "select user_id, used_at is not null, expires_at <= now()
         from reset_tokens where token_hash = $1",
    )
    .bind(token_hash)
    .fetch_optional(pool)
    .await?;
    Ok(match row {
        None => TokenState::Unknown,
        Some((_, true, _)) => TokenState::Used,
        Some((_, _, true)) => TokenState::Expired,
        Some((user_id, false, false)) => TokenState::Usable { user_id },
    })
}

/// Marks the token used if, and only if, it is unused and unexpired; the one statement
/// makes two concurrent redemptions give exactly one success.
pub async fn consume(conn: &mut PgConnection, token_hash: &[u8]) -> anyhow::Result<Option<Uuid>> {
    let row: Option<(Uuid,)> = sqlx::query_as(
        "update reset_tokens set used_at = now()
         where token_hash = $1 and used_at is null and expires_at > now()
         returning user_id",
    )
    .bind(token_hash)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|(id,)| id))
}

/// Counts a wrong two-factor code entered with this token; the fifth voids the token.
pub async fn record_code_failure(
    pool: &PgPool,
    token_hash: &[u8],
    limit: i32,
) -> anyhow::Result<()> {
    sqlx::query(
        "update reset_tokens set failed_codes = failed_codes + 1,
             used_at = case when failed_codes + 1 >= $2 then now() else used_at end
         where token_hash = $1 and used_at is null",
    )
    .bind(token_hash)
    .bind(limit)
    .execute(pool)
    .await?;
    Ok(())
}
