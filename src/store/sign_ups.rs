//! Pending sign-ups: the link's token only as a SHA-256 digest, the chosen password only
//! as its argon2id hash, consumed by one atomic statement that the account's creation
//! follows in the same transaction.

use anyhow::Context as _;
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

/// Serialises the sign-up requests for one address until the transaction ends (an
/// address may have no account row to lock, so a transaction-scoped advisory lock on its
/// key stands in): the count, the voiding of older links and the new one are one step.
#[tracing::instrument(skip_all)]
pub async fn lock_address(conn: &mut PgConnection, email_key: &str) -> anyhow::Result<()> {
    sqlx::query!(
        "select pg_advisory_xact_lock(hashtextextended('sign_up:' || $1, 0))",
        email_key,
    )
    .fetch_one(conn)
    .await
    .context("locking an address for a sign-up")?;
    Ok(())
}

/// How many sign-up mails the address was sent in the last hour (links and "you already
/// have an account" notes alike).
#[tracing::instrument(skip_all)]
pub async fn count_recent<'e>(
    executor: impl PgExecutor<'e>,
    email_key: &str,
) -> anyhow::Result<i64> {
    sqlx::query_scalar!(
        r#"select count(*) as "count!" from sign_ups
         where email_key = $1 and created_at > now() - interval '1 hour'"#,
        email_key,
    )
    .fetch_one(executor)
    .await
    .context("counting recent sign-ups")
}

/// A new pending sign-up. Older live links for the address stay live: each is bound to
/// the password chosen with it, so a stranger's request cannot take the address's
/// owner's link away; the first one confirmed voids the others.
#[tracing::instrument(skip(conn, email, email_key, token_hash, password_hash))]
pub async fn insert(
    conn: &mut PgConnection,
    email: &str,
    email_key: &str,
    token_hash: &[u8],
    password_hash: &str,
    ttl_secs: u64,
    requested_ip: Option<&str>,
) -> anyhow::Result<()> {
    sqlx::query!(
        "insert into sign_ups (email, email_key, token_hash, password_hash, expires_at, requested_ip)
         values ($1, $2, $3, $4, now() + make_interval(secs => $5), $6)",
        email,
        email_key,
        token_hash,
        password_hash,
        ttl_secs as f64,
        requested_ip,
    )
    .execute(conn)
    .await
    .context("inserting a sign-up")?;
    Ok(())
}

/// A request for an address that already has an account: no token, no password, only
/// the record that counts it against the address's hourly limit.
#[tracing::instrument(skip(conn, email, email_key))]
pub async fn record_existing(
    conn: &mut PgConnection,
    email: &str,
    email_key: &str,
    ttl_secs: u64,
    requested_ip: Option<&str>,
) -> anyhow::Result<()> {
    sqlx::query!(
        "insert into sign_ups (email, email_key, expires_at, requested_ip, used_at)
         values ($1, $2, now() + make_interval(secs => $3), $4, now())",
        email,
        email_key,
        ttl_secs as f64,
        requested_ip,
    )
    .execute(conn)
    .await
    .context("recording a sign-up for an existing account")?;
    Ok(())
}

/// The state of a sign-up link as it is opened (a GET never consumes it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    Usable { email: String },
    Expired,
    Used,
    Unknown,
}

#[tracing::instrument(skip_all)]
pub async fn peek<'e>(
    executor: impl PgExecutor<'e>,
    token_hash: &[u8],
) -> anyhow::Result<LinkState> {
    let row = sqlx::query!(
        r#"select email, used_at is not null as "used!", expires_at <= now() as "expired!"
         from sign_ups where token_hash = $1"#,
        token_hash,
    )
    .fetch_optional(executor)
    .await
    .context("reading a sign-up link")?;
    Ok(match row {
        None => LinkState::Unknown,
        Some(row) if row.used => LinkState::Used,
        Some(row) if row.expired => LinkState::Expired,
        Some(row) => LinkState::Usable { email: row.email },
    })
}

/// What a live sign-up link holds: the account to create, and the password it is bound to.
pub struct Pending {
    pub id: i64,
    pub email: String,
    pub email_key: String,
    pub password_hash: String,
}

/// The link's row, locked until the transaction ends, if it is unused and unexpired:
/// confirmations of one link run one after another, so each wrong password is counted
/// before the next is checked, and only one confirmation can consume it.
#[tracing::instrument(skip_all)]
pub async fn lock_live(
    conn: &mut PgConnection,
    token_hash: &[u8],
) -> anyhow::Result<Option<Pending>> {
    let row = sqlx::query!(
        r#"select id, email, email_key, password_hash as "password_hash!" from sign_ups
         where token_hash = $1 and used_at is null and expires_at > now()
         for update"#,
        token_hash,
    )
    .fetch_optional(conn)
    .await
    .context("locking a sign-up link")?;
    Ok(row.map(|row| Pending {
        id: row.id,
        email: row.email,
        email_key: row.email_key,
        password_hash: row.password_hash,
    }))
}

/// Counts a wrong password against a locked link; at `max_failures` the link is void.
/// Returns how many wrong passwords it has had.
#[tracing::instrument(skip(conn))]
pub async fn record_failure(
    conn: &mut PgConnection,
    id: i64,
    max_failures: i32,
) -> anyhow::Result<i32> {
    sqlx::query_scalar!(
        "update sign_ups set failed_attempts = failed_attempts + 1,
             used_at = case when failed_attempts + 1 >= $2 then now() else used_at end
         where id = $1
         returning failed_attempts",
        id,
        max_failures,
    )
    .fetch_one(conn)
    .await
    .context("counting a wrong sign-up password")
}

/// Consumes a locked link and voids every other live link for its address: the first
/// confirmed link makes the account.
#[tracing::instrument(skip_all)]
pub async fn consume(conn: &mut PgConnection, pending: &Pending) -> anyhow::Result<()> {
    sqlx::query!(
        "update sign_ups set used_at = now()
         where (id = $1 or email_key = $2) and used_at is null",
        pending.id,
        pending.email_key,
    )
    .execute(conn)
    .await
    .context("consuming a sign-up link")?;
    Ok(())
}

/// Creates the account a consumed sign-up holds; `None` when the address already has
/// one (made since the request, by another link or an operator): never a second account.
#[tracing::instrument(skip_all)]
pub async fn create_account(
    conn: &mut PgConnection,
    consumed: &Pending,
) -> anyhow::Result<Option<Uuid>> {
    sqlx::query_scalar!(
        "insert into users (email, email_key, password_hash) values ($1, $2, $3)
         on conflict (email_key) do nothing
         returning id",
        consumed.email,
        consumed.email_key,
        consumed.password_hash,
    )
    .fetch_optional(conn)
    .await
    .context("creating an account from a sign-up")
}

/// Deletes sign-ups that are used or expired and no longer count against their address's
/// hourly limit: a pending password hash does not outlive its link by more than that.
#[tracing::instrument(skip_all)]
pub async fn sweep(pool: &PgPool) -> anyhow::Result<u64> {
    Ok(sqlx::query!(
        "delete from sign_ups
         where coalesce(used_at, expires_at) < now() and created_at < now() - interval '1 hour'"
    )
    .execute(pool)
    .await
    .context("deleting dead sign-ups")?
    .rows_affected())
}
