//! Throttling decisions: per address (growing delays after failures) and per client IP.
//!
//! An attempt on an address is a [`Reservation`] taken before any hashing or code check:
//! one statement in Postgres counts it as a failure, or refuses it while the address waits
//! out a delay. The caller gives it back when the attempt turns out not to be a failure,
//! or clears the address when it completes a sign-in; dropping it lets the failure stand.

use std::net::IpAddr;
use std::time::Duration;

use time::OffsetDateTime;

use super::Failure;
use crate::app::AppState;
use crate::store::throttle::{self, Delays, Reserved};

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
/// The decision is the count the one counting statement returned, so concurrent attempts
/// cannot all see the same count.
pub async fn check_ip(state: &AppState, scope: IpScope, ip: &str) -> Result<(), Failure> {
    let limit = state.config.ip_rate_limit;
    if limit == 0 {
        return Ok(());
    }
    let key = ip_key(ip);
    let (attempts, window_end) = throttle::hit_ip(&state.pool, scope.as_str(), &key).await?;
    if attempts > i32::try_from(limit).unwrap_or(i32::MAX) {
        metrics::counter!("latchkey_throttled_total", "kind" => "ip").increment(1);
        return Err(Failure::Throttled {
            retry_after: until(window_end),
        });
    }
    Ok(())
}

/// The row an IP is counted under: an IPv4 address as it is, an IPv6 client by its /64
/// (one subscriber's allocation, which it can walk through freely). An IPv4-mapped IPv6
/// address counts as the IPv4 address.
fn ip_key(ip: &str) -> String {
    match ip.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => v4.to_string(),
        Ok(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                format!("{}/64", std::net::Ipv6Addr::from(prefix))
            }
        },
        Err(_) => ip.to_owned(),
    }
}

fn delays(state: &AppState) -> Delays {
    let t = &state.config.throttle;
    Delays {
        free: t.free_failures,
        base_secs: t.base_delay_secs,
        max_secs: t.max_delay_secs,
    }
}

/// One attempt on an address, counted as a failure until shown otherwise.
#[derive(Debug)]
#[must_use = "dropping a reservation lets the failure stand; give it back or clear"]
pub struct Reservation {
    email_key: String,
    reserved: Reserved,
}

/// Reserves an attempt on the address, or refuses it while the address waits out its
/// delay. Taken before any hashing, whether or not the address has an account.
pub async fn reserve(state: &AppState, email_key: &str) -> Result<Reservation, Failure> {
    match throttle::reserve(&state.pool, email_key, delays(state)).await? {
        Some(reserved) => Ok(Reservation {
            email_key: email_key.to_owned(),
            reserved,
        }),
        None => {
            metrics::counter!("latchkey_throttled_total", "kind" => "account").increment(1);
            let until_at = throttle::blocked_until(&state.pool, email_key).await?;
            Err(Failure::Throttled {
                retry_after: until_at.map_or(Duration::from_secs(1), until),
            })
        }
    }
}

impl Reservation {
    /// The attempt was not a failure (a right password, a right code, or never checked
    /// because the hashing queue was full): the count goes back to what it was.
    pub async fn give_back(self, state: &AppState) -> anyhow::Result<()> {
        throttle::give_back(
            &state.pool,
            &self.email_key,
            state.config.throttle.free_failures,
            self.reserved,
        )
        .await
    }

    /// The attempt completed a sign-in: the address's failures are forgotten.
    pub async fn clear(self, state: &AppState) -> anyhow::Result<()> {
        clear(state, &self.email_key).await
    }

    /// The attempt failed: the reserved failure stands.
    pub fn keep(self) {}
}

/// Forgets the address's failures (after a completed sign-in or a password change).
pub async fn clear(state: &AppState, email_key: &str) -> anyhow::Result<()> {
    throttle::clear(&state.pool, email_key).await
}

/// Whole seconds until `at`, at least one (a `Retry-After: 0` invites a hot loop).
fn until(at: OffsetDateTime) -> Duration {
    let secs = (at - OffsetDateTime::now_utc()).whole_seconds();
    Duration::from_secs(u64::try_from(secs).unwrap_or(0).max(1))
}

#[cfg(test)]
mod tests {
    use super::ip_key;

    #[test]
    fn ipv6_clients_are_counted_per_64_and_ipv4_per_address() {
        assert_eq!(ip_key("203.0.113.7"), "203.0.113.7");
        assert_ne!(ip_key("203.0.113.7"), ip_key("203.0.113.8"));
        assert_eq!(ip_key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(
            ip_key("2001:db8:1:2:aaaa::1"),
            ip_key("2001:db8:1:2:ffff:ffff:ffff:ffff")
        );
        assert_ne!(ip_key("2001:db8:1:2::1"), ip_key("2001:db8:1:3::1"));
        assert_eq!(ip_key("::ffff:203.0.113.7"), "203.0.113.7");
        assert_eq!(ip_key(""), "");
    }
}
