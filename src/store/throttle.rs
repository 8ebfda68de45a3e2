//! Throttle state shared by every instance: failures per address, attempts per IP.

use sqlx::PgPool;
use time::OffsetDateTime;

/// The address's standing: whether it has failures on record, and until when it is held
/// back (if it is now).
pub async fn standing(
    pool: &PgPool,
    email_key: &str,
) -> anyhow::Result<(bool, Option<OffsetDateTime>)> {
    let row: Option<(Option<OffsetDateTime>,)> = sqlx::query_as(
        "select case when blocked_until > now() then blocked_until end
         from login_throttle where email_key = $1",
    )
    .bind(email_key)
    .fetch_optional(pool)
    .await?;
    Ok(match row {
        Some((until,)) => (true, until),
        None => (false, None),
    })
}

/// Counts one more consecutive failure; past `free` failures the address waits
/// `base · 2^(n − free − 1)` seconds, capped at `max` (never a permanent lockout).
pub async fn record_failure(
    pool: &PgPool,
    email_key: &str,
    free: i32,
    base_secs: u64,
    max_secs: u64,
) -> anyhow::Result<()> {
    sqlx::query(
        "insert into login_throttle as t (email_key, failures, blocked_until, updated_at)
         values ($1, 1, null, now())
         on conflict (email_key) do update set
             failures = t.failures + 1,
             updated_at = now(),
             blocked_until = case when t.failures + 1 >= $2
                 then now() + make_interval(secs => least($4::float8,
                        $3::float8 * power(2, least(t.failures + 1 - $2, 30))))
                 else null end",
    )
    .bind(email_key)
    .bind(free)
    .bind(base_secs as f64)
    .bind(max_secs as f64)
    .execute(pool)
    .await?;
    Ok(())
}

/// A completed sign-in clears the address's failures.
pub async fn clear(pool: &PgPool, email_key: &str) -> anyhow::Result<()> {
    sqlx::query("delete from login_throttle where email_key = $1")
        .bind(email_key)
        .execute(pool)
        .await?;
    Ok(())
}

/// Counts an attempt in the IP's current one-minute window; returns the window's count
/// and when it ends.
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
