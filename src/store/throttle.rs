//! Throttle state shared by every instance: failures per address, attempts per IP.
//!
//! An attempt on an address is reserved before it is checked, by one statement: the
//! address's row counts the attempts in flight (`pending`) beside the settled
//! `failures`, and a reservation is granted only while the address is not waiting out a
//! delay and failures plus attempts in flight stay within the free failures. So however
//! many attempts race (on any number of instances), no more are checked than could fail
//! before the delay starts. Each reservation is then settled: as a failure, given back,
//! or with the address cleared.

use anyhow::Context as _;
use sqlx::{PgExecutor, PgPool};
use time::OffsetDateTime;

/// How the delays grow: `free` failures without a delay, then the address waits
/// `base · 2^(n − free)` seconds after its `n`-th failure, capped at `max` (never a
/// permanent lockout).
#[derive(Debug, Clone, Copy)]
pub struct Delays {
    pub free: i32,
    pub base_secs: u64,
    pub max_secs: u64,
}

/// Attempts in flight older than this are void: no check takes that long (requests time
/// out after 30 s), so their process died or dropped them.
pub(crate) const PENDING_STALE_SECS: f64 = 60.0;

/// Reserves one attempt: `true` if granted. Refused while the address waits out a delay,
/// or while as many attempts are in flight as failures remain free (one at a time once
/// the delays have started).
#[tracing::instrument(skip(pool, email_key))]
pub async fn reserve(pool: &PgPool, email_key: &str, free: i32) -> anyhow::Result<bool> {
    let row = sqlx::query_scalar!(
        "insert into login_throttle as t (email_key, failures, pending, pending_since, updated_at)
         values ($1, 0, 1, now(), now())
         on conflict (email_key) do update set
             pending = case when t.pending_since < now() - make_interval(secs => $3)
                            then 1 else t.pending + 1 end,
             pending_since = now(),
             updated_at = now()
         where (t.blocked_until is null or t.blocked_until <= now())
           and case when t.pending_since < now() - make_interval(secs => $3)
                    then 0 else t.pending end < greatest($2 - t.failures, 1)
         returning pending",
        email_key,
        free,
        PENDING_STALE_SECS,
    )
    .fetch_optional(pool)
    .await
    .context("reserving a sign-in attempt")?;
    Ok(row.is_some())
}

/// Until when a refused address waits; `None` when it was refused only because attempts
/// are in flight (or it was cleared since).
#[tracing::instrument(skip(pool, email_key))]
pub async fn blocked_until(
    pool: &PgPool,
    email_key: &str,
) -> anyhow::Result<Option<OffsetDateTime>> {
    let row = sqlx::query_scalar!(
        "select blocked_until from login_throttle
         where email_key = $1 and blocked_until > now()",
        email_key,
    )
    .fetch_optional(pool)
    .await
    .context("reading an address's delay")?;
    Ok(row.flatten())
}

/// Settles a reservation as a failure: one more consecutive failure, and from the
/// `free`-th on, a delay.
#[tracing::instrument(skip(pool, email_key))]
pub async fn settle_failure(pool: &PgPool, email_key: &str, delays: Delays) -> anyhow::Result<()> {
    sqlx::query!(
        "insert into login_throttle as t (email_key, failures, blocked_until, updated_at)
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
                 else null end",
        email_key,
        delays.free,
        delays.base_secs as f64,
        delays.max_secs as f64,
    )
    .execute(pool)
    .await
    .context("recording a failed attempt")?;
    Ok(())
}

/// Settles a reservation that turned out not to be a failure: nothing is counted.
#[tracing::instrument(skip(pool, email_key))]
pub async fn give_back(pool: &PgPool, email_key: &str) -> anyhow::Result<()> {
    sqlx::query!(
        "update login_throttle set pending = greatest(pending - 1, 0), updated_at = now()
         where email_key = $1",
        email_key,
    )
    .execute(pool)
    .await
    .context("giving an attempt back")?;
    Ok(())
}

/// A completed sign-in, password change or reset forgets the address's failures; `own`
/// settles the caller's reservation too. The row goes when no other attempt is in
/// flight, else it stays with their count.
#[tracing::instrument(skip(conn, email_key))]
pub async fn clear(
    conn: &mut sqlx::PgConnection,
    email_key: &str,
    own: bool,
) -> anyhow::Result<()> {
    let own = i32::from(own);
    let deleted = sqlx::query!(
        "delete from login_throttle
         where email_key = $1
           and (pending - $2 <= 0 or pending_since < now() - make_interval(secs => $3))",
        email_key,
        own,
        PENDING_STALE_SECS,
    )
    .execute(&mut *conn)
    .await
    .context("clearing an address's throttle")?
    .rows_affected();
    if deleted == 0 {
        clear_failures(&mut *conn, email_key, own).await?;
    }
    Ok(())
}

async fn clear_failures<'e>(
    executor: impl PgExecutor<'e>,
    email_key: &str,
    own: i32,
) -> anyhow::Result<()> {
    sqlx::query!(
        "update login_throttle set failures = 0, blocked_until = null,
             pending = greatest(pending - $2, 0), updated_at = now()
         where email_key = $1",
        email_key,
        own,
    )
    .execute(executor)
    .await
    .context("clearing an address's failures")?;
    Ok(())
}

/// Counts an attempt in the IP's current one-minute window; returns the window's count
/// (this attempt included, as the one statement left it) and when the window ends.
#[tracing::instrument(skip(pool))]
pub async fn hit_ip(pool: &PgPool, scope: &str, ip: &str) -> anyhow::Result<(i32, OffsetDateTime)> {
    let row = sqlx::query!(
        r#"insert into ip_throttle as t (scope, ip, window_start, attempts)
         values ($1, $2, now(), 1)
         on conflict (scope, ip) do update set
             window_start = case when t.window_start <= now() - interval '1 minute'
                                 then now() else t.window_start end,
             attempts = case when t.window_start <= now() - interval '1 minute'
                             then 1 else t.attempts + 1 end
         returning attempts, window_start + interval '1 minute' as "window_end!""#,
        scope,
        ip,
    )
    .fetch_one(pool)
    .await
    .context("counting an attempt from an ip")?;
    Ok((row.attempts, row.window_end))
}
