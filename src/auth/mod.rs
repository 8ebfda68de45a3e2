//! The account rules: who may sign in, throttling, password reset and change, sessions.
//! They take an [`Accounts`] and plain values, and know nothing of HTTP: a page, a
//! command of the CLI or a forward-auth check calls them the same way.

pub mod change;
pub mod deferred;
pub mod devices;
pub mod operator;
pub mod passwords;
pub mod reset;
pub mod security;
pub mod session;
pub mod session_cache;
pub mod set_password;
pub mod sign_in;
pub mod sign_up;
pub mod throttle;
pub mod two_factor;

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::task::TaskTracker;

pub use crate::store::audit::{EventKind, Origin};
pub use crate::store::reachability::Unavailable;
pub use crate::store::users::User;

use crate::config::{Config, ThrottleConfig};
use crate::domain::password::{NewPassword, PasswordPolicy, PolicyContext, PolicyViolation};
use crate::keys::Keys;
use crate::mail::outbox::Outbox;

/// What the account rules work with. Cheap to clone.
#[derive(Clone)]
pub struct Accounts {
    pub pool: PgPool,
    pub hasher: passwords::Hasher,
    pub keys: Arc<Keys>,
    pub policy: Arc<PasswordPolicy>,
    pub outbox: Outbox,
    /// Work that outlives its request (reset mails); drained at shutdown.
    pub tasks: TaskTracker,
    pub settings: Arc<AccountSettings>,
    /// Forward-auth answers, kept for a fraction of a second per instance.
    pub session_cache: Arc<session::SessionCache>,
}

/// The settings the account rules read.
#[derive(Debug, Clone)]
pub struct AccountSettings {
    /// `public_url` without a trailing slash, for links in mail.
    pub public_base: String,
    pub throttle: ThrottleConfig,
    /// Attempts per IP and minute (sign-in, reset requests); 0 is no limit.
    pub ip_rate_limit: u32,
    pub reset_token_ttl_secs: u64,
    pub session_idle: Duration,
    pub session_absolute: Duration,
    /// How long a reset request waits for a database connection before it is refused.
    pub db_acquire_timeout: Duration,
    /// The domains that may sign up (empty: any).
    pub sign_up_domains: crate::config::DomainList,
    /// Mail "New sign-in to your account" for a sign-in from a browser not used before.
    pub new_device_mail: bool,
}

impl AccountSettings {
    pub fn from_config(config: &Config) -> AccountSettings {
        AccountSettings {
            public_base: config.public_base().to_owned(),
            throttle: config.throttle.clone(),
            ip_rate_limit: config.ip_rate_limit,
            reset_token_ttl_secs: config.reset_token_ttl_secs,
            session_idle: Duration::from_secs(config.session.idle_timeout_secs),
            session_absolute: Duration::from_secs(config.session.absolute_timeout_secs),
            db_acquire_timeout: Duration::from_millis(config.db_acquire_timeout_ms),
            sign_up_domains: config.sign_up_domains.clone(),
            new_device_mail: config.new_device_mail == crate::config::OnOff::On,
        }
    }
}

impl Accounts {
    /// The account rules over `pool`, with the hashing threads started.
    pub fn start(config: &Config, pool: PgPool, keys: Arc<Keys>) -> anyhow::Result<Accounts> {
        Ok(Accounts {
            hasher: passwords::Hasher::start(&config.argon2)?,
            policy: Arc::new(password_policy(config)),
            outbox: Outbox::new(keys.outbox),
            keys,
            pool,
            tasks: TaskTracker::new(),
            settings: Arc::new(AccountSettings::from_config(config)),
            session_cache: Arc::new(session::SessionCache::new(Duration::from_millis(
                config.forward_auth_cache_ms,
            ))),
        })
    }
}

/// The password policy as configured (the CLI's `user create` applies it too).
pub fn password_policy(config: &Config) -> PasswordPolicy {
    PasswordPolicy {
        min_len_single_factor: config.policy.min_length,
        min_len_two_factor: config.policy.min_length_two_factor,
        service_name: "latchkey",
    }
}

/// The failures any account flow can meet besides its own: the attempt was throttled,
/// the hashing queue was full, or something unexpected went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Too many attempts: wait this long.
    #[error("too many attempts")]
    Throttled { retry_after: Duration },
    /// The hashing queue is full; try again shortly.
    #[error("the service is busy")]
    Busy,
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl From<passwords::HashError> for ServiceError {
    fn from(err: passwords::HashError) -> ServiceError {
        match err {
            passwords::HashError::Busy => ServiceError::Busy,
            passwords::HashError::Unexpected(e) => ServiceError::Unexpected(e),
        }
    }
}

/// Checks a signed-in person's current password (change password, two-factor settings).
/// It is throttled like a sign-in and a wrong one counts as a failed sign-in, so a
/// stolen session cannot turn these forms into a free password oracle. A wrong
/// password is audited with `what` as the detail.
pub async fn confirm_password(
    accounts: &Accounts,
    user: &crate::store::users::User,
    password: &str,
    origin: &Origin,
    what: &str,
) -> Result<bool, ServiceError> {
    use crate::store::audit::{self, EventKind};
    let key = user.email_key.clone();
    let reservation = throttle::reserve(accounts, &key).await?;
    let verified = match accounts
        .hasher
        .verify(
            secrecy::SecretString::from(crate::domain::password::normalize(password)),
            Some(user.password_hash.clone()),
        )
        .await
    {
        Ok(verified) => verified,
        Err(err) => {
            if matches!(err, passwords::HashError::Busy) {
                reservation.give_back(accounts).await?;
            }
            return Err(err.into());
        }
    };
    if verified == passwords::Verified::No {
        reservation.fail(accounts).await?;
        audit::record(
            &accounts.pool,
            EventKind::SignInFailed,
            Some(user.id),
            Some(user.email.as_str()),
            origin,
            Some(what),
        )
        .await?;
        return Ok(false);
    }
    // A right password here is not a sign-in: it leaves earlier failures standing.
    reservation.give_back(accounts).await?;
    Ok(true)
}

/// Applies the password policy to a new password and its confirmation, off the async
/// runtime's worker threads: zxcvbn can take tens of milliseconds on hostile input.
pub async fn check_new_password(
    accounts: &Accounts,
    ctx: &PolicyContext<'_>,
    new_password: &str,
    confirm: &str,
) -> Result<Result<NewPassword, PolicyViolation>, ServiceError> {
    let policy = accounts.policy.clone();
    let email = ctx.email.to_owned();
    let two_factor = ctx.two_factor;
    let new_password = secrecy::SecretString::from(new_password.to_owned());
    let confirm = secrecy::SecretString::from(confirm.to_owned());
    tokio::task::spawn_blocking(move || {
        use secrecy::ExposeSecret;
        let ctx = PolicyContext {
            email: &email,
            two_factor,
        };
        NewPassword::parse(
            &policy,
            &ctx,
            new_password.expose_secret(),
            confirm.expose_secret(),
        )
    })
    .await
    .map_err(|e| ServiceError::Unexpected(anyhow::anyhow!("checking a new password: {e}")))
}

/// Whether Postgres answers a trivial query within `within` (readiness; telling an outage
/// from a bug).
pub async fn database_answers(accounts: &Accounts, within: Duration) -> bool {
    crate::store::reachability::ping(&accounts.pool, within).await
}

/// Whether `err` means the database could not be reached (an outage, answered with 503)
/// rather than a bug.
pub fn is_unavailable(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause.is::<Unavailable>()
            || cause
                .downcast_ref::<sqlx::Error>()
                .is_some_and(crate::store::reachability::is_outage)
    })
}

/// A security event the account's owner is told about: its audit row and the "security
/// change" mail, written in `conn`'s transaction (the caller commits, then wakes the
/// outbox). `detail` goes into the audit row only.
pub async fn record_and_tell_owner(
    accounts: &Accounts,
    conn: &mut sqlx::PgConnection,
    user_id: uuid::Uuid,
    email: &str,
    kind: EventKind,
    detail: Option<&str>,
    origin: &Origin,
) -> anyhow::Result<()> {
    crate::store::audit::record(&mut *conn, kind, Some(user_id), Some(email), origin, detail)
        .await?;
    let mail = crate::mail::messages::security_change(
        email,
        &accounts.settings.public_base,
        kind,
        origin,
    )?;
    accounts.outbox.enqueue(conn, &mail).await?;
    Ok(())
}
