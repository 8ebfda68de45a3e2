//! The sessions table: sessions live in Postgres, keyed by a digest of their id, and
//! indexed by user so that a password change or a reset can revoke them in one statement.
//! (The tower-sessions store over these statements is `web::session_store`.)

use std::time::Duration;

use anyhow::Context as _;
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::SessionDigest;

/// Inserts a new session row unless one with this digest exists; whether it was inserted.
/// `data` is the session's JSON; its `user_id`, `ip` and `user_agent` fill their columns.
#[tracing::instrument(skip_all)]
pub async fn create(
    pool: &PgPool,
    digest: &SessionDigest,
    data: &serde_json::Value,
    idle: Duration,
    absolute: Duration,
) -> anyhow::Result<bool> {
    let inserted = sqlx::query!(
        "insert into sessions (id_hash, user_id, data, ip, user_agent, expires_at)
         values ($1, ($2::jsonb ->> 'user_id')::uuid, $2, $2::jsonb ->> 'ip',
                 $2::jsonb ->> 'user_agent',
                 now() + make_interval(secs => least($3::float8, $4::float8)))
         on conflict (id_hash) do nothing",
        digest.as_bytes(),
        data,
        idle.as_secs_f64(),
        absolute.as_secs_f64(),
    )
    .execute(pool)
    .await
    .context("inserting a session")?;
    Ok(inserted.rows_affected() == 1)
}

/// Stores a session's data and extends its idle timeout (never past its absolute limit).
#[tracing::instrument(skip_all)]
pub async fn save(
    pool: &PgPool,
    digest: &SessionDigest,
    data: &serde_json::Value,
    idle: Duration,
    absolute: Duration,
) -> anyhow::Result<()> {
    sqlx::query!(
        "update sessions
         set data = $2, user_id = ($2::jsonb ->> 'user_id')::uuid,
             ip = coalesce($2::jsonb ->> 'ip', ip),
             user_agent = coalesce($2::jsonb ->> 'user_agent', user_agent),
             last_seen_at = now(),
             expires_at = least(now() + make_interval(secs => $3),
                                created_at + make_interval(secs => $4))
         where id_hash = $1",
        digest.as_bytes(),
        data,
        idle.as_secs_f64(),
        absolute.as_secs_f64(),
    )
    .execute(pool)
    .await
    .context("saving a session")?;
    Ok(())
}

/// A live session's data and when it expires.
#[tracing::instrument(skip_all)]
pub async fn load(
    pool: &PgPool,
    digest: &SessionDigest,
) -> anyhow::Result<Option<(serde_json::Value, OffsetDateTime)>> {
    let row = sqlx::query!(
        "select data, expires_at from sessions where id_hash = $1 and expires_at > now()",
        digest.as_bytes(),
    )
    .fetch_optional(pool)
    .await
    .context("loading a session")?;
    Ok(row.map(|row| (row.data, row.expires_at)))
}

/// Deletes one session by its digest.
#[tracing::instrument(skip_all)]
pub async fn delete(pool: &PgPool, digest: &SessionDigest) -> anyhow::Result<()> {
    sqlx::query!("delete from sessions where id_hash = $1", digest.as_bytes())
        .execute(pool)
        .await
        .context("deleting a session")?;
    Ok(())
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
    digest: &SessionDigest,
    idle: Duration,
    absolute: Duration,
) -> anyhow::Result<()> {
    sqlx::query!(
        "update sessions set last_seen_at = now(),
             expires_at = least(now() + make_interval(secs => $2), created_at + make_interval(secs => $3))
         where id_hash = $1 and last_seen_at < now() - interval '60 seconds'",
        digest.as_bytes(),
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
    keep: Option<&SessionDigest>,
) -> anyhow::Result<u64> {
    let keep = keep.map(SessionDigest::as_bytes);
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
#[tracing::instrument(skip(conn))]
pub async fn delete_one(
    conn: &mut sqlx::PgConnection,
    user_id: Uuid,
    public_id: Uuid,
) -> anyhow::Result<bool> {
    let done = sqlx::query!(
        "delete from sessions where user_id = $1 and public_id = $2",
        user_id,
        public_id,
    )
    .execute(conn)
    .await
    .context("deleting a session")?;
    Ok(done.rows_affected() == 1)
}

/// What a forward-auth check needs of a live signed-in session (half-signed-in sessions,
/// which have no `user_id`, are not found).
#[derive(Debug)]
pub struct LiveSession {
    pub user_id: Uuid,
    /// The session data's `password_set_at` and `signed_in_at` (JSON numbers).
    pub password_set_at: Option<i64>,
    pub signed_in_at: Option<i64>,
    /// "Last active" was written within the last minute: no touch needed.
    pub recently_seen: bool,
}

/// A live signed-in session by its digest: one read on the primary key, no write.
#[tracing::instrument(skip_all)]
pub async fn find_signed_in(
    pool: &PgPool,
    digest: &SessionDigest,
) -> anyhow::Result<Option<LiveSession>> {
    let row = sqlx::query!(
        r#"select user_id as "user_id!", data -> 'password_set_at' as password_set_at,
                  data -> 'signed_in_at' as signed_in_at,
                  last_seen_at >= now() - interval '60 seconds' as "recently_seen!"
           from sessions
           where id_hash = $1 and expires_at > now() and user_id is not null"#,
        digest.as_bytes(),
    )
    .fetch_optional(pool)
    .await
    .context("looking up a session")?;
    Ok(row.map(|row| LiveSession {
        user_id: row.user_id,
        password_set_at: row
            .password_set_at
            .as_ref()
            .and_then(serde_json::Value::as_i64),
        signed_in_at: row
            .signed_in_at
            .as_ref()
            .and_then(serde_json::Value::as_i64),
        recently_seen: row.recently_seen,
    }))
}
