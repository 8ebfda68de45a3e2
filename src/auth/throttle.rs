//! Throttling decisions: per address (growing delays after failures) and per client IP.
//!
//! An attempt on an address is a [`Reservation`] taken before any hashing or code check:
//! one statement in Postgres counts it as in flight, or refuses it while the address waits
//! out a delay or as many attempts are in flight as failures remain free. The caller then
//! settles it: as a failure, given back when the attempt turns out not to be one, or with
//! the address cleared when it completes a sign-in.

use std::net::IpAddr;
use std::time::Duration;

use time::OffsetDateTime;

use super::{Accounts, ServiceError};
use crate::domain::EmailAddress;
use crate::store::sign_in;
use crate::store::throttle::{self, Delays};
use crate::store::users::{self, User};

/// The actions counted per IP.
#[derive(Debug, Clone, Copy)]
pub enum IpScope {
    SignIn,
    ForgotPassword,
    SignUp,
    /// An OpenID authorization request stored to wait for a sign-in or a consent.
    OidcRequest,
}

impl IpScope {
    fn as_str(self) -> &'static str {
        match self {
            IpScope::SignIn => "sign_in",
            IpScope::ForgotPassword => "forgot_password",
            IpScope::SignUp => "sign_up",
            IpScope::OidcRequest => "oidc_request",
        }
    }
}

/// Counts one attempt from `ip`; refuses it past `LATCHKEY_IP_RATE_LIMIT` per minute.
/// The decision is the count the one counting statement returned, so concurrent attempts
/// cannot all see the same count.
pub async fn check_ip(accounts: &Accounts, scope: IpScope, ip: &str) -> Result<(), ServiceError> {
    let limit = accounts.settings.ip_rate_limit;
    if limit == 0 {
        return Ok(());
    }
    let key = ip_key(ip);
    let (attempts, window_end) = throttle::hit_ip(&accounts.pool, scope.as_str(), &key).await?;
    if attempts > i32::try_from(limit).unwrap_or(i32::MAX) {
        metrics::counter!("latchkey_throttled_total", "kind" => "ip").increment(1);
        return Err(ServiceError::Throttled {
            retry_after: until(window_end),
        });
    }
    Ok(())
}

/// A sign-in's first step, in one statement when nothing is contended: the attempt
/// counted against `ip` (as [`check_ip`] with [`IpScope::SignIn`]), an attempt reserved on
/// the address (as [`reserve`]) and the account looked up. Refused as those two refuse;
/// while only attempts in flight hold the address, it waits as [`reserve`] does and reads
/// the account again once reserved.
pub async fn begin_sign_in(
    accounts: &Accounts,
    ip: &str,
    email: &EmailAddress,
) -> Result<(Reservation, Option<User>), ServiceError> {
    let email_key = email.key();
    let limit = i32::try_from(accounts.settings.ip_rate_limit).unwrap_or(i32::MAX);
    let ip_key = ip_key(ip);
    let count = (accounts.settings.ip_rate_limit > 0).then(|| sign_in::IpCount {
        scope: IpScope::SignIn.as_str(),
        ip: &ip_key,
        limit,
    });
    let begun = sign_in::begin(
        &accounts.pool,
        count,
        &email_key,
        accounts.settings.throttle.free_failures,
    )
    .await?;
    if let Some((attempts, window_end)) = begun.ip
        && attempts > limit
    {
        metrics::counter!("latchkey_throttled_total", "kind" => "ip").increment(1);
        return Err(ServiceError::Throttled {
            retry_after: until(window_end),
        });
    }
    if begun.reserved {
        return Ok((Reservation { email_key }, begun.user));
    }
    if let Some(blocked) = begun.blocked_until {
        metrics::counter!("latchkey_throttled_total", "kind" => "account").increment(1);
        return Err(ServiceError::Throttled {
            retry_after: until(blocked),
        });
    }
    let reservation = reserve(accounts, &email_key).await?;
    let user = users::find_by_email(&accounts.pool, email).await?;
    Ok((reservation, user))
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

fn delays(accounts: &Accounts) -> Delays {
    let t = &accounts.settings.throttle;
    Delays {
        free: t.free_failures,
        base_secs: t.base_delay_secs,
        max_secs: t.max_delay_secs,
    }
}

/// How long an attempt waits for attempts in flight on its address to settle before it
/// is refused; they settle within one hash or code check.
const HOLD_AT_MOST: Duration = Duration::from_secs(5);

/// One attempt on an address, reserved before it is checked: settle it with
/// [`Reservation::fail`], [`Reservation::give_back`] or [`Reservation::clear`]. One that
/// is dropped (an unexpected error) is void after a minute.
#[derive(Debug)]
#[must_use = "settle a reservation: fail, give_back or clear"]
pub struct Reservation {
    email_key: String,
}

/// Reserves an attempt on the address, before any hashing, whether or not the address
/// has an account. Refused with `Throttled` while the address waits out its delay; while
/// only attempts in flight hold it (as many as failures remain free), it waits for them
/// to settle, since each may turn out not to be a failure.
pub async fn reserve(accounts: &Accounts, email_key: &str) -> Result<Reservation, ServiceError> {
    let started = tokio::time::Instant::now();
    loop {
        if throttle::reserve(
            &accounts.pool,
            email_key,
            accounts.settings.throttle.free_failures,
        )
        .await?
        {
            return Ok(Reservation {
                email_key: email_key.to_owned(),
            });
        }
        let blocked = throttle::blocked_until(&accounts.pool, email_key).await?;
        if blocked.is_some() || started.elapsed() >= HOLD_AT_MOST {
            metrics::counter!("latchkey_throttled_total", "kind" => "account").increment(1);
            return Err(ServiceError::Throttled {
                retry_after: blocked.map_or(Duration::from_secs(1), until),
            });
        }
        tokio::time::sleep(Duration::from_millis(
            10 + u64::from(rand::random::<u8>() % 30),
        ))
        .await;
    }
}

impl Reservation {
    /// The attempt failed: one more failure on record, and a delay from the free
    /// failures on.
    pub async fn fail(self, accounts: &Accounts) -> anyhow::Result<()> {
        throttle::settle_failure(&accounts.pool, &self.email_key, delays(accounts)).await
    }

    /// A failed sign-in: settled as [`Reservation::fail`], with its `sign_in_failed`
    /// event in the same statement.
    pub async fn fail_sign_in(
        self,
        accounts: &Accounts,
        user_id: Option<uuid::Uuid>,
        email: &str,
        origin: &super::Origin,
    ) -> anyhow::Result<()> {
        sign_in::fail(
            &accounts.pool,
            &self.email_key,
            delays(accounts),
            user_id,
            email,
            origin,
        )
        .await
    }

    /// A completed sign-in: settled as [`Reservation::clear`], with its `sign_in` event and
    /// the browser's device (`device_hash`) in the same statement. Whether the device was
    /// new to the account.
    pub async fn clear_signed_in(
        self,
        accounts: &Accounts,
        user: &User,
        origin: &super::Origin,
        device_hash: Option<&[u8]>,
    ) -> anyhow::Result<Option<bool>> {
        sign_in::succeed(
            &accounts.pool,
            &self.email_key,
            user.id,
            user.email.as_str(),
            origin,
            device_hash,
        )
        .await
    }

    /// The attempt was not a failure (a right password, a right code, or never checked
    /// because the hashing queue was full): nothing is counted.
    pub async fn give_back(self, accounts: &Accounts) -> anyhow::Result<()> {
        throttle::give_back(&accounts.pool, &self.email_key).await
    }

    /// The attempt completed a sign-in: the address's failures are forgotten.
    pub async fn clear(self, accounts: &Accounts) -> anyhow::Result<()> {
        let mut conn = accounts.pool.acquire().await?;
        throttle::clear(&mut conn, &self.email_key, true).await
    }
}

/// Forgets the address's failures (after a password change).
pub async fn clear(accounts: &Accounts, email_key: &str) -> anyhow::Result<()> {
    let mut conn = accounts.pool.acquire().await?;
    throttle::clear(&mut conn, email_key, false).await
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
