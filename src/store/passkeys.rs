//! Passkeys (table `passkeys`) and the state of their ceremonies (`passkey_ceremonies`).

use anyhow::Context as _;
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

/// One registered passkey.
#[derive(Clone)]
pub struct PasskeyRow {
    pub id: Uuid,
    pub user_id: Uuid,
    pub credential_id: Vec<u8>,
    /// webauthn-rs's `Passkey` as JSON.
    pub passkey: String,
    pub counter: i64,
    pub backup_eligible: bool,
    pub backup_state: bool,
    pub name: String,
    pub created_at: OffsetDateTime,
    pub last_used_at: Option<OffsetDateTime>,
}

impl std::fmt::Debug for PasskeyRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Public keys are not secret, but there is no reason to print them in logs.
        f.debug_struct("PasskeyRow")
            .field("id", &self.id)
            .field("user_id", &self.user_id)
            .field("counter", &self.counter)
            .field("backup_eligible", &self.backup_eligible)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// What a new passkey is stored with.
pub struct NewPasskey<'a> {
    pub user_id: Uuid,
    pub credential_id: &'a [u8],
    pub passkey: &'a str,
    pub counter: i64,
    pub backup_eligible: bool,
    pub backup_state: bool,
    pub name: &'a str,
}

/// Stores a new passkey; `None` when its credential id is already registered (to any
/// account).
#[tracing::instrument(skip_all)]
pub async fn insert(conn: &mut PgConnection, new: &NewPasskey<'_>) -> anyhow::Result<Option<Uuid>> {
    sqlx::query_scalar!(
        "insert into passkeys
             (user_id, credential_id, passkey, counter, backup_eligible, backup_state, name)
         values ($1, $2, $3, $4, $5, $6, $7)
         on conflict (credential_id) do nothing
         returning id",
        new.user_id,
        new.credential_id,
        new.passkey,
        new.counter,
        new.backup_eligible,
        new.backup_state,
        new.name,
    )
    .fetch_optional(conn)
    .await
    .context("storing a passkey")
}

/// The account's passkeys, oldest first.
#[tracing::instrument(skip(pool))]
pub async fn list_for_user(pool: &PgPool, user_id: Uuid) -> anyhow::Result<Vec<PasskeyRow>> {
    sqlx::query_as!(
        PasskeyRow,
        "select id, user_id, credential_id, passkey, counter, backup_eligible, backup_state,
                name, created_at, last_used_at
         from passkeys where user_id = $1 order by created_at, id",
        user_id,
    )
    .fetch_all(pool)
    .await
    .context("listing passkeys")
}

#[tracing::instrument(skip(pool))]
pub async fn count_for_user(pool: &PgPool, user_id: Uuid) -> anyhow::Result<i64> {
    sqlx::query_scalar!(
        r#"select count(*) as "count!" from passkeys where user_id = $1"#,
        user_id,
    )
    .fetch_one(pool)
    .await
    .context("counting passkeys")
}

/// The passkey with this credential id, whoever's it is.
#[tracing::instrument(skip_all)]
pub async fn find_by_credential(
    pool: &PgPool,
    credential_id: &[u8],
) -> anyhow::Result<Option<PasskeyRow>> {
    sqlx::query_as!(
        PasskeyRow,
        "select id, user_id, credential_id, passkey, counter, backup_eligible, backup_state,
                name, created_at, last_used_at
         from passkeys where credential_id = $1",
        credential_id,
    )
    .fetch_optional(pool)
    .await
    .context("finding a passkey")
}

/// Records a use of the passkey with what the authentication reported, only when its
/// counter moved forward (or the passkey keeps none: 0 stays 0). `false` when another
/// use already recorded this counter or a later one: a cloned authenticator, or the same
/// assertion twice.
#[tracing::instrument(skip(pool, passkey))]
pub async fn record_use(
    pool: &PgPool,
    id: Uuid,
    passkey: &str,
    counter: i64,
    backup_eligible: bool,
    backup_state: bool,
) -> anyhow::Result<bool> {
    let done = sqlx::query!(
        "update passkeys
         set passkey = $2, counter = $3, backup_eligible = $4, backup_state = $5,
             last_used_at = now()
         where id = $1 and (counter < $3 or (counter = 0 and $3 = 0))",
        id,
        passkey,
        counter,
        backup_eligible,
        backup_state,
    )
    .execute(pool)
    .await
    .context("recording a passkey's use")?;
    Ok(done.rows_affected() == 1)
}

/// Renames one of the account's passkeys; whether there was one.
#[tracing::instrument(skip(pool))]
pub async fn rename(pool: &PgPool, user_id: Uuid, id: Uuid, name: &str) -> anyhow::Result<bool> {
    let done = sqlx::query!(
        "update passkeys set name = $3 where id = $1 and user_id = $2",
        id,
        user_id,
        name,
    )
    .execute(pool)
    .await
    .context("renaming a passkey")?;
    Ok(done.rows_affected() == 1)
}

/// Deletes one of the account's passkeys; its name, when there was one.
#[tracing::instrument(skip(conn))]
pub async fn delete(
    conn: &mut PgConnection,
    user_id: Uuid,
    id: Uuid,
) -> anyhow::Result<Option<String>> {
    sqlx::query_scalar!(
        "delete from passkeys where id = $1 and user_id = $2 returning name",
        id,
        user_id,
    )
    .fetch_optional(conn)
    .await
    .context("deleting a passkey")
}

/// Stores the state of a ceremony for `ttl_secs`; returns its id. Expired ceremonies
/// are cleared on the way.
#[tracing::instrument(skip(pool, binding, state))]
pub async fn begin_ceremony(
    pool: &PgPool,
    purpose: &str,
    user_id: Option<Uuid>,
    binding: &[u8],
    state: &str,
    ttl_secs: i64,
) -> anyhow::Result<Uuid> {
    sqlx::query!("delete from passkey_ceremonies where expires_at < now()")
        .execute(pool)
        .await
        .context("deleting expired passkey ceremonies")?;
    sqlx::query_scalar!(
        "insert into passkey_ceremonies (purpose, user_id, binding, state, expires_at)
         values ($1, $2, $3, $4, now() + make_interval(secs => $5))
         returning id",
        purpose,
        user_id,
        binding,
        state,
        ttl_secs as f64,
    )
    .fetch_one(pool)
    .await
    .context("storing a passkey ceremony")
}

/// A ceremony taken for finishing.
pub struct Ceremony {
    pub user_id: Option<Uuid>,
    pub state: String,
}

/// Takes the ceremony `id` for `purpose` begun by the browser with `binding`, while in
/// time: one statement, so of any number of finishes at once, on any instance, exactly
/// one gets it. A ceremony asked for by another browser stays for its own.
#[tracing::instrument(skip(pool, binding))]
pub async fn take_ceremony(
    pool: &PgPool,
    id: Uuid,
    purpose: &str,
    binding: &[u8],
) -> anyhow::Result<Option<Ceremony>> {
    sqlx::query_as!(
        Ceremony,
        "delete from passkey_ceremonies
         where id = $1 and purpose = $2 and binding = $3 and expires_at > now()
         returning user_id, state",
        id,
        purpose,
        binding,
    )
    .fetch_optional(pool)
    .await
    .context("taking a passkey ceremony")
}
