//! Throttling decisions: per address (growing delays after failures) and per client IP.

use std::time::Duration;

use time::OffsetDateTime;

use super::Failure;
use crate::app::AppState;
use crate::store::throttle;

/// The actions counted per IP.
#[derive(Debug, Clone, Copy)]
pub enum IpScope {
    SignIn,
    ForgotPassword,
}

impl IpScope {
    fn as_str(self) -> &'static str {
        match self {
            IpScope::SignIn => "sign_in",
            IpScope::ForgotPassword => "forgot_password",
        }
    }
}

/// Counts one attempt from `ip`; refuses it past `LATCHKEY_IP_RATE_LIMIT` per minute.
pub async fn check_ip(state: &AppState, scope: IpScope, ip: &str) -> Result<(), Failure> {
    let limit = state.config.ip_rate_limit;
    if limit == 0 {
        return Ok(());
    }
    let (attempts, window_end) = throttle::hit_ip(&state.pool, scope.as_str(), ip).await?;
    if attempts > i32::try_from(limit).unwrap_or(i32::MAX) {
        metrics::counter!("latchkey_throttled_total", "kind" => "ip").increment(1);
        return Err(Failure::Throttled {
            retry_after: until(window_end),
        });
    }
    Ok(())
}

/// What [`check_account`] found: an address with failures on record is cleared after a
/// success; one without needs no write (most sign-ins).
#[derive(Debug, Clone, Copy)]
pub struct Standing {
    pub has_failures: bool,
}

/// Refuses an attempt on an address that is waiting out its delay. Checked before any
/// hashing, whether or not the address has an account.
pub async fn check_account(state: &AppState, email_key: &str) -> Result<Standing, Failure> {
    match throttle::standing(&state.pool, email_key).await? {
        (_, Some(until_at)) => {
            metrics::counter!("latchkey_throttled_total", "kind" => "account").increment(1);
            Err(Failure::Throttled {
                retry_after: until(until_at),
            })
        }
        (has_failures, None) => Ok(Standing { has_failures }),
    }
}

pub async fn record_failure(state: &AppState, email_key: &str) -> anyhow::Result<()> {
    let t = &state.config.throttle;
    throttle::record_failure(
        &state.pool,
        email_key,
        t.free_failures,
        t.base_delay_secs,
        t.max_delay_secs,
    )
    .await
}

pub async fn clear(state: &AppState, email_key: &str) -> anyhow::Result<()> {
    throttle::clear(&state.pool, email_key).await
}

/// Whole seconds until `at`, at least one (a `Retry-After: 0` invites a hot loop).
fn until(at: OffsetDateTime) -> Duration {
    let secs = (at - OffsetDateTime::now_utc()).whole_seconds();
    Duration::from_secs(u64::try_from(secs).unwrap_or(0).max(1))
}
