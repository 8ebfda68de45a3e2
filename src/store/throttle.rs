//! Throttle state shared by every instance: failures per address, attempts per IP.
//!
//! An attempt on an address is reserved before it is checked, by one statement, so that
//! any number of concurrent attempts (on any number of instances) is held to the limit:
//! the reservation counts as a failure until it is given back.

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

/// A granted reservation: the address's `blocked_until` as this reservation left it.
#[derive(Debug, Clone, Copy)]
pub struct Reserved {
    pub blocked_until: Option<OffsetDateTime>,
}

/// Counts one more failure for the address, unless it is waiting out a delay (then
/// nothing changes and `None` comes back). The failure that reaches `free` starts the
/// delay at once, so attempts racing with it are refused.
pub async fn reserve(
    pool: &PgPool,
    email_key: &str,
    delays: Delays,
) -> anyhow::Result<Option<Reserved>> {
    let row: Option<(Option<OffsetDateTime>,)> = sqlx::query_as(
        "insert into login_throttle as t (email_key, failures, blocked_until, updated_at)
         values ($1, 1, case when 1 >= $2
                     then now() + make_interval(secs => least($4::float8, $3::float8))
                     end, now())
         on conflict (email_key) do update set
             failures = t.failures + 1,
             updated_at = now(),
             blocked_until = case when t.failures + 1 >= $2
                 then now() + make_interval(secs => least($4::float8,
                        $3::float8 * power(2, least(t.failures + 1 - $2, 30))))
                 else null end
         where t.blocked_until is null or t.blocked_until <= now()
         returning blocked_until",
    )
    .bind(email_key)
    .bind(delays.free)
    .bind(delays.base_secs as f64)
    .bind(delays.max_secs as f64)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(blocked_until,)| Reserved { blocked_until }))
}

/// Until when a refused address waits (`None` if its delay ended or was cleared since).
pub async fn blocked_until(
    pool: &PgPool,
    email_key: &str,
) -> anyhow::Result<Option<OffsetDateTime>> {
    let row: Option<(Option<OffsetDateTime>,)> = sqlx::query_as(
        "select blocked_until from login_throttle
         where email_key = $1 and blocked_until > now()",
    )
    .bind(email_key)
    .fetch_optional(pool)
    .await?;
    Ok(row.and_then(|(until,)| until))
}

/// Takes back one reserved failure that turned out not to be one. The delay goes too
/// when the count falls below `free`, or when it is the one this reservation started
/// (no attempt was counted after it); a delay started by another failure stays.
pub async fn give_back(
    pool: &PgPool,
    email_key: &str,
    free: i32,
    reserved: Reserved,
) -> anyhow::Result<()> {
    sqlx::query(
        "update login_throttle set
             failures = greatest(failures - 1, 0),
             updated_at = now(),
             blocked_until = case
                 when failures - 1 < $2 or blocked_until is not distinct from $3 then null
                 else blocked_until end
         where email_key = $1",
    )
    .bind(email_key)
    .bind(free)
    .bind(reserved.blocked_until)
    .execute(pool)
    .await?;
    Ok(())
}

/// A completed sign-in (or reset) clears the address's failures.
pub async fn clear<'e>(executor: impl PgExecutor<'e>, email_key: &str) -> anyhow::Result<()> {
    sqlx::query("delete from login_throttle where email_key = $1")
        .bind(email_key)
        .execute(executor)
        .await?;
    Ok(())
}

/// Counts an attempt in the IP's current one-minute window; returns the window's count
/// (this attempt included, as the one statement left it) and when the window ends.
pub async fn hit_ip(pool: &PgPool, scope: &str, ip: &str) -> anyhow::Result<(i32, OffsetDateTime)> {
    Ok(sqlx::query_as(
        "insert into ip_throttle as t (scope, ip, window_start, attempts)
         values ($1, $2, now(), 1)
         on conflict (scope, ip) do update set
             window_start = case when t.window_start <= now() - interval '1 minute'
                                 then now() else t.window_start end,
             attempts = case when t.window_start <= now() - interval '1 minute'
                             then 1 else t.attempts + 1 end
         returning attempts, window_start + interval '1 minute'",
    )
    .bind(scope)
    .bind(ip)
    .fetch_one(pool)
    .await?)
}
