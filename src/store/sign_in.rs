//! The statements of a password sign-in, each joining what one step needs, so that a
//! sign-in costs three round trips: [`begin`] (per-IP count, the address's reservation and
//! the account), [`succeed`] or [`fail`] (the throttle settled and the audit row), and the
//! session row.

use anyhow::Context as _;
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use super::audit::{self, EventKind, Origin};
use super::throttle::{Delays, PENDING_STALE_SECS};
use super::users::{User, UserRow};

/// An attempt to count against an IP's one-minute window.
#[derive(Debug, Clone, Copy)]
pub struct IpCount<'a> {
    pub scope: &'a str,
    pub ip: &'a str,
    pub limit: i32,
}

/// What [`begin`] found.
#[derive(Debug)]
pub struct Begun {
    /// With an [`IpCount`]: the window's count (this attempt included) and its end.
    pub ip: Option<(i32, OffsetDateTime)>,
    /// Whether the address's attempt was reserved (never when the IP is over its limit).
    pub reserved: bool,
    /// Until when the address waits out a delay, as the statement began.
    pub blocked_until: Option<OffsetDateTime>,
    pub user: Option<User>,
}

/// One statement: counts the attempt against the IP (when `ip` is given), reserves an
/// attempt on the address (as `throttle::reserve`, and only while the IP is within its
/// limit), and reads the account with that key.
#[tracing::instrument(skip(pool, email_key))]
pub async fn begin(
    pool: &PgPool,
    ip: Option<IpCount<'_>>,
    email_key: &str,
    free: i32,
) -> anyhow::Result<Begun> {
    let (scope, ip_key, limit) = match ip {
        Some(c) => (Some(c.scope), Some(c.ip), c.limit),
        None => (None, None, 0),
    };
    let row = sqlx::query!(
        r#"with hit as (
             insert into ip_throttle as t (scope, ip, window_start, attempts)
             select $4::text, $5::text, now(), 1 where $4::text is not null
             on conflict (scope, ip) do update set
                 window_start = case when t.window_start <= now() - interval '1 minute'
                                     then now() else t.window_start end,
                 attempts = case when t.window_start <= now() - interval '1 minute'
                                 then 1 else t.attempts + 1 end
             returning attempts, window_start + interval '1 minute' as window_end
         ),
         reserved as (
             insert into login_throttle as t (email_key, failures, pending, pending_since, updated_at)
             select $1, 0, 1, now(), now()
             where not exists (select 1 from hit where hit.attempts > $6)
             on conflict (email_key) do update set
                 pending = case when t.pending_since < now() - make_interval(secs => $3)
                                then 1 else t.pending + 1 end,
                 pending_since = now(),
                 updated_at = now()
             where (t.blocked_until is null or t.blocked_until <= now())
               and case when t.pending_since < now() - make_interval(secs => $3)
                        then 0 else t.pending end < greatest($2 - t.failures, 1)
             returning pending
         )
         select
             (select attempts from hit) as ip_attempts,
             (select window_end from hit) as ip_window_end,
             exists (select 1 from reserved) as "reserved!",
             (select blocked_until from login_throttle
              where email_key = $1 and blocked_until > now()) as blocked_until,
             u.id as "id?", u.email as "email?", u.email_key as "email_key?",
             u.password_hash as "password_hash?",
             u.password_changed_at as "password_changed_at?",
             u.created_at as "created_at?", u.totp_enabled_at, u.disabled_at
         from (select 1) as one left join users u on u.email_key = $1"#,
        email_key,
        free,
        PENDING_STALE_SECS,
        scope,
        ip_key,
        limit,
    )
    .fetch_one(pool)
    .await
    .context("beginning a sign-in")?;
    let ip = match (row.ip_attempts, row.ip_window_end) {
        (Some(attempts), Some(end)) => Some((attempts, end)),
        _ => None,
    };
    let user = match (
        row.id,
        row.email,
        row.email_key,
        row.password_hash,
        row.password_changed_at,
        row.created_at,
    ) {
        (
            Some(id),
            Some(email),
            Some(email_key),
            Some(password_hash),
            Some(password_changed_at),
            Some(created_at),
        ) => Some(User::from(UserRow {
            id,
            email,
            email_key,
            password_hash,
            password_changed_at,
            created_at,
            totp_enabled_at: row.totp_enabled_at,
            disabled_at: row.disabled_at,
        })),
        _ => None,
    };
    Ok(Begun {
        ip,
        reserved: row.reserved,
        blocked_until: row.blocked_until,
        user,
    })
}

/// One statement for a completed sign-in: the address's failures forgotten and this
/// attempt's reservation settled (as `throttle::clear` with `own`), the `sign_in` event
/// recorded, and the browser's device (its digest, when given) remembered for the
/// account (as `devices::remember`). Returns whether the device was new to the account.
#[tracing::instrument(skip(pool, email, email_key, device_hash))]
pub async fn succeed(
    pool: &PgPool,
    email_key: &str,
    user_id: Uuid,
    email: &str,
    origin: &Origin,
    device_hash: Option<&[u8]>,
) -> anyhow::Result<Option<bool>> {
    audit::log(EventKind::SignIn, Some(user_id), origin, None);
    sqlx::query_scalar!(
        r#"with gone as (
             delete from login_throttle
             where email_key = $1
               and (pending - 1 <= 0 or pending_since < now() - make_interval(secs => $2))
             returning 1
         ),
         kept as (
             update login_throttle set failures = 0, blocked_until = null,
                 pending = greatest(pending - 1, 0), updated_at = now()
             where email_key = $1 and not exists (select 1 from gone)
             returning 1
         ),
         device as (
             insert into known_devices (user_id, device_hash)
             select $3, $8::bytea where $8::bytea is not null
             on conflict (user_id, device_hash) do update set last_seen_at = now()
             returning (xmax = 0) as inserted
         )
         insert into audit_events (user_id, kind, email, ip, user_agent)
         values ($3, $4, $5, $6, $7)
         returning (select inserted from device) as "new_device?""#,
        email_key,
        PENDING_STALE_SECS,
        user_id,
        EventKind::SignIn.as_str(),
        email,
        origin.ip.as_deref(),
        origin.user_agent.as_deref(),
        device_hash,
    )
    .fetch_one(pool)
    .await
    .context("recording a completed sign-in")
}

/// One statement for a failed sign-in: the failure settled (as `throttle::settle_failure`)
/// and the `sign_in_failed` event recorded.
#[tracing::instrument(skip(pool, email, email_key))]
pub async fn fail(
    pool: &PgPool,
    email_key: &str,
    delays: Delays,
    user_id: Option<Uuid>,
    email: &str,
    origin: &Origin,
) -> anyhow::Result<()> {
    audit::log(EventKind::SignInFailed, user_id, origin, None);
    sqlx::query!(
        "with failed as (
             insert into login_throttle as t (email_key, failures, blocked_until, updated_at)
             values ($1, 1, case when 1 >= $2
                         then now() + make_interval(secs => least($4::float8, $3::float8))
                         end, now())
             on conflict (email_key) do update set
                 failures = t.failures + 1,
                 pending = greatest(t.pending - 1, 0),
                 updated_at = now(),
                 blocked_until = case when t.failures + 1 >= $2
                     then now() + make_interval(secs => least($4::float8,
                            $3::float8 * power(2, least(t.failures + 1 - $2, 30))))
                     else null end
             returning 1
         )
         insert into audit_events (user_id, kind, email, ip, user_agent)
         values ($5, $6, $7, $8, $9)",
        email_key,
        delays.free,
        delays.base_secs as f64,
        delays.max_secs as f64,
        user_id,
        EventKind::SignInFailed.as_str(),
        email,
        origin.ip.as_deref(),
        origin.user_agent.as_deref(),
    )
    .execute(pool)
    .await
    .context("recording a failed sign-in")?;
    Ok(())
}
