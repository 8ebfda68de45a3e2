//! The account rules: who may sign in, throttling, password reset and change, sessions.

pub mod change;
pub mod passwords;
pub mod reset;
pub mod session;
pub mod sign_in;
pub mod throttle;
pub mod two_factor;

use std::time::Duration;

pub use crate::store::audit::Origin;

use crate::domain::password::{NewPassword, PolicyContext, PolicyViolation};

/// The failures every account flow can meet besides its own.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Too many attempts: wait this long.
    #[error("too many attempts")]
    Throttled { retry_after: Duration },
    /// The hashing queue is full; try again shortly.
    #[error("the service is busy")]
    Busy,
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl From<passwords::HashError> for Failure {
    fn from(err: passwords::HashError) -> Failure {
        match err {
            passwords::HashError::Busy => Failure::Busy,
            passwords::HashError::Unexpected(e) => Failure::Unexpected(e),
        }
    }
}

/// Checks a signed-in person's current password (change password, two-factor settings).
/// It is throttled like a sign-in and a wrong one counts as a failed sign-in, so a
/// stolen session cannot turn these forms into a free password oracle. A wrong
/// password is audited with `what` as the detail.
pub async fn confirm_password(
    state: &crate::app::AppState,
    user: &crate::store::users::User,
    password: &str,
    origin: &Origin,
    what: &str,
) -> Result<bool, Failure> {
    use crate::store::audit::{self, EventKind};
    let key = user.email_key.clone();
    let reservation = throttle::reserve(state, &key).await?;
    let verified = match state
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
                reservation.give_back(state).await?;
            }
            return Err(err.into());
        }
    };
    if verified == passwords::Verified::No {
        reservation.fail(state).await?;
        audit::record(
            &state.pool,
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
    reservation.give_back(state).await?;
    Ok(true)
}

/// Applies the password policy to a new password and its confirmation, off the async
/// runtime's worker threads: zxcvbn can take tens of milliseconds on hostile input.
pub async fn check_new_password(
    state: &crate::app::AppState,
    ctx: &PolicyContext<'_>,
    new_password: &str,
    confirm: &str,
) -> Result<Result<NewPassword, PolicyViolation>, Failure> {
    let policy = state.policy.clone();
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
    .map_err(|e| Failure::Unexpected(anyhow::anyhow!("checking a new password: {e}")))
}
