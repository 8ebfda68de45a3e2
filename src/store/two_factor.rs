//! Two-factor state of an account: encrypted TOTP secret, last used step, recovery codes.

use anyhow::Context as _;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct TwoFactorRow {
    pub totp_secret_enc: Option<Vec<u8>>,
    pub totp_pending_enc: Option<Vec<u8>>,
}

#[tracing::instrument(skip(pool))]
pub async fn load(pool: &PgPool, user_id: Uuid) -> anyhow::Result<TwoFactorRow> {
    sqlx::query_as!(
        TwoFactorRow,
        "select totp_secret_enc, totp_pending_enc from users where id = $1",
        user_id,
    )
    .fetch_one(pool)
    .await
    .context("reading an account's two-factor state")
}

/// Stores a setup key, only while the password is still the one set at `password_set_at`
/// (a reset or change voids setup keys, including one being made as it commits).
#[tracing::instrument(skip(pool, secret_enc))]
pub async fn set_pending(
    pool: &PgPool,
    user_id: Uuid,
    secret_enc: &[u8],
    password_set_at: time::OffsetDateTime,
) -> anyhow::Result<()> {
    sqlx::query!(
        "update users set totp_pending_enc = $2 where id = $1 and password_changed_at = $3",
        user_id,
        secret_enc,
        password_set_at,
    )
    .execute(pool)
    .await
    .context("storing a two-factor setup key")?;
    Ok(())
}

/// Turns the confirmed pending secret into the account's secret.
#[tracing::instrument(skip(conn, secret_enc))]
pub async fn enable(
    conn: &mut PgConnection,
    user_id: Uuid,
    secret_enc: &[u8],
    step: i64,
) -> anyhow::Result<()> {
    sqlx::query!(
        "update users set totp_secret_enc = $2, totp_pending_enc = null,
             totp_enabled_at = now(), totp_last_step = $3, updated_at = now()
         where id = $1",
        user_id,
        secret_enc,
        step,
    )
    .execute(conn)
    .await
    .context("turning two-factor on")?;
    Ok(())
}

#[tracing::instrument(skip(conn))]
pub async fn disable(conn: &mut PgConnection, user_id: Uuid) -> anyhow::Result<()> {
    sqlx::query!(
        "update users set totp_secret_enc = null, totp_pending_enc = null,
             totp_enabled_at = null, totp_last_step = null, updated_at = now()
         where id = $1",
        user_id,
    )
    .execute(&mut *conn)
    .await
    .context("turning two-factor off")?;
    // An account with passkeys keeps its codes: they are how it resets without one.
    sqlx::query!(
        "delete from recovery_codes where user_id = $1
         and not exists (select 1 from passkeys where passkeys.user_id = $1)",
        user_id
    )
    .execute(conn)
    .await
    .context("deleting recovery codes")?;
    Ok(())
}

/// Records that the code of `step` was used; false when it (or a later one) already was,
/// so a code observed by an attacker cannot be replayed inside its window.
#[tracing::instrument(skip(pool))]
pub async fn claim_step(pool: &PgPool, user_id: Uuid, step: i64) -> anyhow::Result<bool> {
    let done = sqlx::query!(
        "update users set totp_last_step = $2
         where id = $1 and (totp_last_step is null or totp_last_step < $2)",
        user_id,
        step,
    )
    .execute(pool)
    .await
    .context("claiming a code's time step")?;
    Ok(done.rows_affected() == 1)
}

/// Replaces every recovery code of the account.
#[tracing::instrument(skip(conn, hashes))]
pub async fn replace_recovery_codes(
    conn: &mut PgConnection,
    user_id: Uuid,
    hashes: &[Vec<u8>],
) -> anyhow::Result<()> {
    sqlx::query!("delete from recovery_codes where user_id = $1", user_id)
        .execute(&mut *conn)
        .await
        .context("deleting old recovery codes")?;
    sqlx::query!(
        "insert into recovery_codes (user_id, code_hash) select $1, unnest($2::bytea[])",
        user_id,
        hashes,
    )
    .execute(conn)
    .await
    .context("inserting recovery codes")?;
    Ok(())
}

/// Uses up a recovery code, if it is one of the account's unused ones.
#[tracing::instrument(skip(pool, hash))]
pub async fn use_recovery_code(pool: &PgPool, user_id: Uuid, hash: &[u8]) -> anyhow::Result<bool> {
    let done = sqlx::query!(
        "update recovery_codes set used_at = now()
         where user_id = $1 and code_hash = $2 and used_at is null",
        user_id,
        hash,
    )
    .execute(pool)
    .await
    .context("using a recovery code")?;
    Ok(done.rows_affected() == 1)
}

#[tracing::instrument(skip(pool))]
pub async fn unused_recovery_codes(pool: &PgPool, user_id: Uuid) -> anyhow::Result<i64> {
    sqlx::query_scalar!(
        r#"select count(*) as "count!" from recovery_codes where user_id = $1 and used_at is null"#,
        user_id,
    )
    .fetch_one(pool)
    .await
    .context("counting unused recovery codes")
}

/// [`unused_recovery_codes`] inside a transaction, with the account's codes locked.
#[tracing::instrument(skip(conn))]
pub async fn unused_recovery_codes_in(
    conn: &mut PgConnection,
    user_id: Uuid,
) -> anyhow::Result<i64> {
    // As `reset_tokens::lock_account`: writers of the account wait, rows referring to it don't.
    sqlx::query!(
        "select id from users where id = $1 for no key update",
        user_id
    )
    .fetch_optional(&mut *conn)
    .await
    .context("locking an account")?;
    sqlx::query_scalar!(
        r#"select count(*) as "count!" from recovery_codes where user_id = $1 and used_at is null"#,
        user_id,
    )
    .fetch_one(conn)
    .await
    .context("counting unused recovery codes")
}
