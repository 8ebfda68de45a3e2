//! Password sign-in: one argon2 verification whether or not the account exists.

use secrecy::SecretString;

use super::passwords::{HashError, Verified};
use super::throttle::{self, IpScope};
use super::{Accounts, Origin, ServiceError};
use crate::domain::EmailAddress;
use crate::domain::password::{MAX_PASSWORD_BYTES, normalize};
use crate::store::audit::{self, EventKind};
use crate::store::users::{self, User};

#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    /// Wrong address or wrong password: the caller must not learn which.
    #[error("incorrect email or password")]
    InvalidCredentials,
    /// The right password for an account an operator has disabled. Only the right
    /// password learns this: a wrong one is [`SignInError::InvalidCredentials`] as ever.
    #[error("the account is disabled")]
    AccountDisabled,
    #[error(transparent)]
    Service(#[from] ServiceError),
}

impl From<anyhow::Error> for SignInError {
    fn from(e: anyhow::Error) -> Self {
        SignInError::Service(ServiceError::Unexpected(e))
    }
}

/// A right password, and what is left to do.
#[derive(Debug)]
pub enum SignInOutcome {
    /// Signed in: the failures on the address are forgotten and the sign-in recorded. With
    /// the device cookie's value to set, when the new-device notice is on (the owner was
    /// mailed if the browser was new to the account).
    Complete(User, Option<String>),
    /// The account has two-factor: only the second step completes the sign-in.
    NeedsSecondFactor(User),
}

/// Checks an address and password. The attempt counts against the client's IP first
/// (`LATCHKEY_IP_RATE_LIMIT`); then every attempt reserves a failure on the address
/// before any hashing (refused while the address waits out a delay); a right password
/// gives it back. `device` is the device cookie the browser presented
/// (`auth::devices`); a completed sign-in remembers it in the same statement.
#[tracing::instrument(skip_all, fields(user_id = tracing::field::Empty))]
pub async fn sign_in(
    accounts: &Accounts,
    email_input: &str,
    password: &str,
    origin: &Origin,
    device: Option<&str>,
) -> Result<SignInOutcome, SignInError> {
    let ip = origin.ip.as_deref().unwrap_or_default();
    // A malformed address or an absurd password cannot match any account, and saying so
    // reveals nothing about which accounts exist (the attempt still counts against the IP).
    let password = normalize(password);
    let email = match EmailAddress::parse(email_input) {
        Ok(email) if !password.is_empty() && password.len() <= MAX_PASSWORD_BYTES => email,
        _ => {
            throttle::check_ip(accounts, IpScope::SignIn, ip).await?;
            return Err(SignInError::InvalidCredentials);
        }
    };
    // The per-IP count, the reservation and the account: one statement.
    let (reservation, user) = throttle::begin_sign_in(accounts, ip, &email).await?;
    let verified = match accounts
        .hasher
        .verify(
            SecretString::from(password),
            user.as_ref().map(|u| u.password_hash.clone()),
        )
        .await
    {
        Ok(verified) => verified,
        Err(err) => {
            // A full queue checked nothing: the attempt is not a failure.
            if matches!(err, HashError::Busy) {
                reservation.give_back(accounts).await?;
            }
            return Err(ServiceError::from(err).into());
        }
    };

    match (verified, user) {
        (Verified::Yes { rehash }, Some(user)) => {
            tracing::Span::current().record("user_id", tracing::field::display(user.id));
            if let Some(new_hash) = rehash {
                users::upgrade_hash(&accounts.pool, user.id, &user.password_hash, &new_hash)
                    .await?;
            }
            // A disabled account: the right password is told so (and is not a failure),
            // but nothing is signed in and earlier failures stand.
            if user.is_disabled() {
                reservation.give_back(accounts).await?;
                audit::record(
                    &accounts.pool,
                    EventKind::SignInFailed,
                    Some(user.id),
                    Some(user.email.as_str()),
                    origin,
                    Some("the account is disabled"),
                )
                .await?;
                metrics::counter!("latchkey_sign_in_total", "outcome" => "disabled").increment(1);
                return Err(SignInError::AccountDisabled);
            }
            // With two-factor, only the completed second step clears failures and counts
            // as a sign-in; the right password only takes back its own reservation.
            if user.has_two_factor() {
                reservation.give_back(accounts).await?;
                return Ok(SignInOutcome::NeedsSecondFactor(user));
            }
            let device = super::devices::for_sign_in(accounts, device);
            let digest = device.as_ref().map(|d| d.digest());
            let new = reservation
                .clear_signed_in(accounts, &user, origin, digest.as_ref().map(|d| &d[..]))
                .await?;
            metrics::counter!("latchkey_sign_in_total", "outcome" => "success").increment(1);
            let cookie = match device {
                Some(device) => device
                    .remembered(
                        accounts,
                        user.id,
                        user.email.as_str(),
                        new.unwrap_or(false),
                        origin,
                    )
                    .await
                    // Never undoes the sign-in: logged, and no cookie this time.
                    .inspect_err(|err| {
                        tracing::error!(
                            error = format!("{err:#}"),
                            "noting the sign-in's device failed"
                        );
                    })
                    .ok(),
                None => None,
            };
            Ok(SignInOutcome::Complete(user, cookie))
        }
        (_, user) => {
            reservation
                .fail_sign_in(
                    accounts,
                    user.as_ref().map(|u| u.id),
                    email.as_str(),
                    origin,
                )
                .await?;
            metrics::counter!("latchkey_sign_in_total", "outcome" => "failure").increment(1);
            Err(SignInError::InvalidCredentials)
        }
    }
}
