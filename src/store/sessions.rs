//! The tower-sessions store: sessions live in Postgres, keyed by a digest of their id, and
//! indexed by user so that a password change or a reset can revoke them in one statement.

use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use time::OffsetDateTime;
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::{self, SessionStore};
use uuid::Uuid;

#[derive(Clone)]
pub struct PgSessionStore {
    pool: PgPool,
    idle: Duration,
    absolute: Duration,
}

impl std::fmt::Debug for PgSessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSessionStore").finish_non_exhaustive()
    }
}

/// A database leak must not hand out live sessions, so only the digest is stored.
pub fn id_hash(id: &Id) -> Vec<u8> {
    Sha256::digest(id.0.to_le_bytes()).to_vec()
}

/// How a store error caused by an unreachable database starts: the store's errors are
/// strings, and this lets [`is_unavailable`] tell an outage (503) from a bug (500).
const UNAVAILABLE: &str = "database unavailable: ";

fn backend(err: sqlx::Error) -> session_store::Error {
    if crate::db::is_outage(&err) {
        session_store::Error::Backend(format!("{UNAVAILABLE}{err}"))
    } else {
        session_store::Error::Backend(err.to_string())
    }
}

/// Whether a session store error means the database is out of reach.
pub fn is_unavailable(err: &session_store::Error) -> bool {
    matches!(err, session_store::Error::Backend(message) if message.starts_with(UNAVAILABLE))
}

impl PgSessionStore {
    pub fn new(pool: PgPool, idle: Duration, absolute: Duration) -> PgSessionStore {
        PgSessionStore {
            pool,
            idle,
            absolute,
        }
    }

    fn secs(d: Duration) -> f64 {
        d.as_secs_f64()
    }
}

#[async_trait]
impl SessionStore for PgSessionStore {
    #[tracing::instrument(skip_all)]
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        let data = serde_json::to_value(&record.data)
            .map_err(|e| session_store::Error::Encode(e.to_string()))?;
        // 128 random bits collide essentially never, but a collision must not join two sessions.
        loop {
            let inserted = sqlx::query!(
                "insert into sessions (id_hash, user_id, data, ip, user_agent, expires_at)
                 values ($1, ($2::jsonb ->> 'user_id')::uuid, $2, $2::jsonb ->> 'ip',
                         $2::jsonb ->> 'user_agent',
                         now() + make_interval(secs => least($3::float8, $4::float8)))
                 on conflict (id_hash) do nothing",
                id_hash(&record.id),
                &data,
                Self::secs(self.idle),
                Self::secs(self.absolute),
            )
            .execute(&self.pool)
            .await
            .map_err(backend)?;
            if inserted.rows_affected() == 1 {
                return Ok(());
            }
            record.id = Id::default();
        }
    }

    #[tracing::instrument(skip_all)]
    async fn save(&self, record: &Record) -> session_store::Result<()> {
        let data = serde_json::to_value(&record.data)
            .map_err(|e| session_store::Error::Encode(e.to_string()))?;
        sqlx::query!(
            "update sessions
             set data = $2, user_id = ($2::jsonb ->> 'user_id')::uuid,
                 ip = coalesce($2::jsonb ->> 'ip', ip),
                 user_agent = coalesce($2::jsonb ->> 'user_agent', user_agent),
                 last_seen_at = now(),
                 expires_at = least(now() + make_interval(secs => $3),
                                    created_at + make_interval(secs => $4))
             where id_hash = $1",
            id_hash(&record.id),
            &data,
            Self::secs(self.idle),
            Self::secs(self.absolute),
        )
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    #[tracing::instrument(skip_all)]
    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        let row = sqlx::query!(
            "select data, expires_at from sessions where id_hash = $1 and expires_at > now()",
            id_hash(id),
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        row.map(|row| {
            let (data, expiry_date) = (row.data, row.expires_at);
            let data = serde_json::from_value(data)
                .map_err(|e| session_store::Error::Decode(e.to_string()))?;
            Ok(Record {
                id: *id,
                data,
                expiry_date,
            })
        })
        .transpose()
    }

    #[tracing::instrument(skip_all)]
    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        sqlx::query!("delete from sessions where id_hash = $1", id_hash(id))
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }
}

/// One row of the sessions list in Settings → Security.
#[derive(Debug)]
pub struct SessionInfo {
    pub public_id: Uuid,
    pub id_hash: Vec<u8>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub created_at: OffsetDateTime,
    pub last_seen_at: OffsetDateTime,
}

/// The account's live sessions: not expired, and begun with its current password (a
/// sign-in that raced a reset leaves a row no request accepts; it is not listed).
#[tracing::instrument(skip(pool))]
pub async fn list_for_user(pool: &PgPool, user_id: Uuid) -> anyhow::Result<Vec<SessionInfo>> {
    sqlx::query_as!(
        SessionInfo,
        "select s.public_id, s.id_hash, s.ip, s.user_agent, s.created_at, s.last_seen_at
         from sessions s join users u on u.id = s.user_id
         where s.user_id = $1 and s.expires_at > now()
           and s.data ->> 'password_set_at'
               = ((extract(epoch from u.password_changed_at) * 1000000)::bigint)::text
         order by s.last_seen_at desc",
        user_id,
    )
    .fetch_all(pool)
    .await
    .context("listing an account's sessions")
}

/// Extends an active session's idle timeout (never past its absolute limit). Called at most
/// about once a minute per session, so signed-in page views do not write on every request.
#[tracing::instrument(skip_all)]
pub async fn touch(
    pool: &PgPool,
    id: &Id,
    idle: Duration,
    absolute: Duration,
) -> anyhow::Result<()> {
    sqlx::query!(
        "update sessions set last_seen_at = now(),
             expires_at = least(now() + make_interval(secs => $2), created_at + make_interval(secs => $3))
         where id_hash = $1 and last_seen_at < now() - interval '60 seconds'",
        id_hash(id),
        idle.as_secs_f64(),
        absolute.as_secs_f64(),
    )
    .execute(pool)
    .await
    .context("extending a session")?;
    Ok(())
}

/// Deletes every session of the account except `keep` (when given); returns how many
/// live ones went (expired rows awaiting housekeeping go too, uncounted).
#[tracing::instrument(skip(conn, keep))]
pub async fn delete_for_user(
    conn: &mut sqlx::PgConnection,
    user_id: Uuid,
    keep: Option<&Id>,
) -> anyhow::Result<u64> {
    let keep = keep.map(id_hash);
    let live = sqlx::query_scalar!(
        r#"with gone as (
             delete from sessions where user_id = $1 and ($2::bytea is null or id_hash <> $2)
             returning expires_at
         )
         select count(*) filter (where expires_at > now()) as "live!" from gone"#,
        user_id,
        keep,
    )
    .fetch_one(conn)
    .await
    .context("deleting an account's sessions")?;
    Ok(u64::try_from(live).unwrap_or(0))
}

/// Signs out one session of the account, named by its public id.
#[tracing::instrument(skip(pool))]
pub async fn delete_one(pool: &PgPool, user_id: Uuid, public_id: Uuid) -> anyhow::Result<bool> {
    let done = sqlx::query!(
        "delete from sessions where user_id = $1 and public_id = $2",
        user_id,
        public_id,
    )
    .execute(pool)
    .await
    .context("deleting a session")?;
    Ok(done.rows_affected() == 1)
}
