//! Accounts: email, argon2id PHC hash, password change time.

use anyhow::Context;
use sqlx::{PgConnection, PgExecutor, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::EmailAddress;

/// An account. Its `Debug` leaves the password hash out: one `?user` in a log line must not
/// print what an offline guesser would start from.
#[derive(Clone)]
pub struct User {
    pub id: Uuid,
    pub email: EmailAddress,
    /// `EmailAddress::key` of the address: what looks the account up and throttles it.
    pub email_key: String,
    pub password_hash: String,
    pub password_changed_at: OffsetDateTime,
    pub created_at: OffsetDateTime,
    pub totp_enabled_at: Option<OffsetDateTime>,
    /// Set while an operator has the account disabled (`latchkey user disable`).
    pub disabled_at: Option<OffsetDateTime>,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("email", &self.email)
            .field("password_hash", &"[redacted]")
            .field("password_changed_at", &self.password_changed_at)
            .field("created_at", &self.created_at)
            .field("totp_enabled_at", &self.totp_enabled_at)
            .field("disabled_at", &self.disabled_at)
            .finish_non_exhaustive()
    }
}

impl User {
    pub fn has_two_factor(&self) -> bool {
        self.totp_enabled_at.is_some()
    }

    pub fn is_disabled(&self) -> bool {
        self.disabled_at.is_some()
    }
}

/// A `users` row as the queries return it; [`User`] once its address is typed.
pub(crate) struct UserRow {
    pub id: Uuid,
    pub email: String,
    pub email_key: String,
    pub password_hash: String,
    pub password_changed_at: OffsetDateTime,
    pub created_at: OffsetDateTime,
    pub totp_enabled_at: Option<OffsetDateTime>,
    pub disabled_at: Option<OffsetDateTime>,
}

impl From<UserRow> for User {
    fn from(row: UserRow) -> User {
        User {
            email: stored_address(row.id, row.email),
            id: row.id,
            email_key: row.email_key,
            password_hash: row.password_hash,
            password_changed_at: row.password_changed_at,
            created_at: row.created_at,
            totp_enabled_at: row.totp_enabled_at,
            disabled_at: row.disabled_at,
        }
    }
}

/// The address as the account holds it. It was parsed when the account was made; one
/// that no longer parses (the rules tightened since) is logged and kept as stored, so the
/// account still works and still gets its mail.
pub(crate) fn stored_address(user_id: Uuid, email: String) -> EmailAddress {
    if EmailAddress::parse(&email).is_err() {
        tracing::warn!(%user_id, "an account's stored address no longer parses; kept as stored");
    }
    EmailAddress::from_stored(email)
}

#[derive(Debug, thiserror::Error)]
pub enum CreateUserError {
    #[error("an account with that email address already exists")]
    EmailTaken,
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// The unique constraint on `users.email_key` (migration 0003).
const EMAIL_KEY_CONSTRAINT: &str = "users_email_key_key";

/// Accounts are found by `EmailAddress::key`, stored in `email_key` (unique).
#[tracing::instrument(skip_all)]
pub async fn find_by_email<'e>(
    executor: impl PgExecutor<'e>,
    email: &EmailAddress,
) -> anyhow::Result<Option<User>> {
    let row = sqlx::query_as!(
        UserRow,
        "select id, email, email_key, password_hash, password_changed_at, created_at,
             totp_enabled_at, disabled_at
         from users where email_key = $1",
        email.key(),
    )
    .fetch_optional(executor)
    .await
    .context("looking an account up by address")?;
    Ok(row.map(User::from))
}

#[tracing::instrument(skip(pool))]
pub async fn find_by_id(pool: &PgPool, id: Uuid) -> anyhow::Result<Option<User>> {
    let row = sqlx::query_as!(
        UserRow,
        "select id, email, email_key, password_hash, password_changed_at, created_at,
             totp_enabled_at, disabled_at
         from users where id = $1",
        id,
    )
    .fetch_optional(pool)
    .await
    .context("looking an account up by id")?;
    Ok(row.map(User::from))
}

#[tracing::instrument(skip(pool, email, password_hash))]
pub async fn insert(
    pool: &PgPool,
    email: &EmailAddress,
    password_hash: &str,
) -> Result<Uuid, CreateUserError> {
    let inserted = sqlx::query_scalar!(
        "insert into users (email, email_key, password_hash) values ($1, $2, $3) returning id",
        email.as_str(),
        email.key(),
        password_hash,
    )
    .fetch_one(pool)
    .await;
    match inserted {
        Ok(id) => Ok(id),
        Err(sqlx::Error::Database(e)) if e.constraint() == Some(EMAIL_KEY_CONSTRAINT) => {
            Err(CreateUserError::EmailTaken)
        }
        Err(e) => Err(CreateUserError::Unexpected(
            anyhow::Error::new(e).context("inserting an account"),
        )),
    }
}

/// A new password, as part of a reset or change transaction. A two-factor setup key that
/// was never confirmed goes with the old password: whoever saw it then must not be able to
/// finish the setup. With `unchanged_since`, only if the password is still the one set
/// then (the one the caller verified); `None` when it is not. Returns the new
/// `password_changed_at`, which sessions are bound to.
#[tracing::instrument(skip(conn, password_hash))]
pub async fn set_password(
    conn: &mut PgConnection,
    id: Uuid,
    password_hash: &str,
    unchanged_since: Option<OffsetDateTime>,
) -> anyhow::Result<Option<OffsetDateTime>> {
    sqlx::query_scalar!(
        "update users set password_hash = $2, password_changed_at = now(),
             totp_pending_enc = null, updated_at = now()
         where id = $1 and ($3::timestamptz is null or password_changed_at = $3)
         returning password_changed_at",
        id,
        password_hash,
        unchanged_since,
    )
    .fetch_optional(conn)
    .await
    .context("setting a password")
}

/// Replaces a hash made with older parameters, unless the password changed meanwhile.
#[tracing::instrument(skip(pool, old, new))]
pub async fn upgrade_hash(pool: &PgPool, id: Uuid, old: &str, new: &str) -> anyhow::Result<()> {
    sqlx::query!(
        "update users set password_hash = $3, updated_at = now()
         where id = $1 and password_hash = $2",
        id,
        old,
        new,
    )
    .execute(pool)
    .await
    .context("upgrading a password hash")?;
    Ok(())
}

/// Sets `email_key` to `EmailAddress::key` for addresses with non-ASCII letters, whose key
/// the upgrade to 0003 could only guess with Postgres `lower()`. Runs at every start (a
/// no-op once done); an address that would then clash with another account keeps its
/// key and is logged, for an operator to resolve.
#[tracing::instrument(skip_all)]
pub async fn rekey_non_ascii(pool: &PgPool) -> anyhow::Result<()> {
    let rows =
        sqlx::query!("select id, email, email_key from users where email ~ '[^\\x01-\\x7f]'")
            .fetch_all(pool)
            .await
            .context("reading non-ascii addresses")?;
    for row in rows {
        let (id, email, stored) = (row.id, row.email, row.email_key);
        let Ok(parsed) = EmailAddress::parse(&email) else {
            tracing::warn!(user_id = %id, "an account's address no longer parses; key left as is");
            continue;
        };
        let key = parsed.key();
        if key == stored {
            continue;
        }
        let updated = sqlx::query!("update users set email_key = $2 where id = $1", id, &key)
            .execute(pool)
            .await;
        match updated {
            Ok(_) => tracing::info!(user_id = %id, "re-keyed a non-ascii address"),
            Err(sqlx::Error::Database(e)) if e.constraint() == Some(EMAIL_KEY_CONSTRAINT) => {
                tracing::warn!(
                    user_id = %id,
                    "an account's address has the same key as another account's; left as is"
                );
            }
            Err(e) => return Err(e).context("re-keying an address"),
        }
    }
    Ok(())
}

/// One account as `latchkey user list` shows it.
#[derive(Debug, Clone)]
pub struct AccountSummary {
    pub id: Uuid,
    pub email: String,
    pub created_at: OffsetDateTime,
    pub last_sign_in_at: Option<OffsetDateTime>,
    pub totp_enabled_at: Option<OffsetDateTime>,
    pub disabled_at: Option<OffsetDateTime>,
}

/// Every account, oldest first, with its last recorded sign-in.
#[tracing::instrument(skip_all)]
pub async fn list(pool: &PgPool) -> anyhow::Result<Vec<AccountSummary>> {
    sqlx::query_as!(
        AccountSummary,
        r#"select u.id, u.email, u.created_at, u.totp_enabled_at, u.disabled_at,
             (select max(a.created_at) from audit_events a
              where a.user_id = u.id and a.kind = 'sign_in') as last_sign_in_at
         from users u order by u.created_at, u.id"#,
    )
    .fetch_all(pool)
    .await
    .context("listing accounts")
}

/// Disables (`disabled = true`) or enables the account, holding its row locked until the
/// transaction ends; the account as it now is, or `None` if it is gone. Disabling an
/// account that already is keeps its first `disabled_at`.
#[tracing::instrument(skip(conn))]
pub async fn set_disabled(
    conn: &mut PgConnection,
    id: Uuid,
    disabled: bool,
) -> anyhow::Result<Option<User>> {
    let row = sqlx::query_as!(
        UserRow,
        "update users
         set disabled_at = case when $2 then coalesce(disabled_at, now()) else null end,
             updated_at = now()
         where id = $1
         returning id, email, email_key, password_hash, password_changed_at, created_at,
             totp_enabled_at, disabled_at",
        id,
        disabled,
    )
    .fetch_optional(conn)
    .await
    .context("disabling or enabling an account")?;
    Ok(row.map(User::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_the_password_hash() {
        let hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2g";
        let user = User {
            id: Uuid::nil(),
            email: EmailAddress::parse("ada@example.com").expect("a valid address"),
            email_key: "ada@example.com".to_owned(),
            password_hash: hash.to_owned(),
            password_changed_at: OffsetDateTime::UNIX_EPOCH,
            created_at: OffsetDateTime::UNIX_EPOCH,
            totp_enabled_at: None,
            disabled_at: None,
        };
        let printed = format!("{user:?} {user:#?}");
        assert!(!printed.contains("argon2id"), "{printed}");
        assert!(!printed.contains("c2FsdHNhbHRzYWx0"), "{printed}");
        assert!(printed.contains("[redacted]"));
        assert!(
            printed.contains("ada@example.com"),
            "the rest is still useful: {printed}"
        );
    }
}
