//! What an operator does to accounts from the command line (`latchkey user …`): create,
//! list, disable, enable, sign out everywhere, hand out a reset link. Each change is one
//! transaction with its audit row, so the account's owner sees it under Recent activity.

use secrecy::SecretString;
use uuid::Uuid;

use super::{Accounts, Origin, ServiceError};
use crate::domain::EmailAddress;
use crate::domain::password::{PolicyContext, PolicyViolation};
use crate::domain::token::ResetToken;
use crate::store::audit::{self, EventKind};
use crate::store::reset_tokens;
use crate::store::sessions;
use crate::store::two_factor;
use crate::store::users::{self, AccountSummary, CreateUserError, User};

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// Not an email address; the message says what is wrong with it.
    #[error("{0}")]
    InvalidEmail(String),
    #[error("no account has the address {0}")]
    UnknownAccount(String),
    #[error("an account with the address {0} already exists")]
    EmailTaken(String),
    #[error("{0}")]
    Policy(PolicyViolation),
    /// A reset link for a disabled account would do nothing.
    #[error("the account {0} is disabled: enable it first (latchkey user enable --email {0})")]
    Disabled(String),
    #[error("the account {0} has no two-factor authentication to turn off")]
    NoTwoFactor(String),
    #[error(transparent)]
    Service(#[from] ServiceError),
}

impl From<anyhow::Error> for OperatorError {
    fn from(e: anyhow::Error) -> Self {
        OperatorError::Service(ServiceError::Unexpected(e))
    }
}

impl From<sqlx::Error> for OperatorError {
    fn from(e: sqlx::Error) -> Self {
        anyhow::Error::from(e).into()
    }
}

/// Where the operator's changes come from, as the audit rows record it.
pub fn command_line() -> Origin {
    Origin {
        ip: None,
        user_agent: Some("latchkey command line".to_owned()),
    }
}

async fn find(accounts: &Accounts, email_input: &str) -> Result<User, OperatorError> {
    let email = EmailAddress::parse(email_input)
        .map_err(|err| OperatorError::InvalidEmail(err.to_string()))?;
    users::find_by_email(&accounts.pool, &email)
        .await?
        .ok_or_else(|| OperatorError::UnknownAccount(email.as_str().to_owned()))
}

/// `latchkey user create`: an account with a password that meets the policy.
pub async fn create_account(
    accounts: &Accounts,
    email_input: &str,
    password: &str,
) -> Result<(EmailAddress, Uuid), OperatorError> {
    let email = EmailAddress::parse(email_input)
        .map_err(|err| OperatorError::InvalidEmail(err.to_string()))?;
    let ctx = PolicyContext {
        email: email.as_str(),
        two_factor: false,
    };
    let password = super::check_new_password(accounts, &ctx, password, password)
        .await?
        .map_err(OperatorError::Policy)?;
    let hash = accounts
        .hasher
        .hash(SecretString::from(password.expose().to_owned()))
        .await
        .map_err(ServiceError::from)?;
    match users::insert(&accounts.pool, &email, &hash).await {
        Ok(id) => Ok((email, id)),
        Err(CreateUserError::EmailTaken) => {
            Err(OperatorError::EmailTaken(email.as_str().to_owned()))
        }
        Err(CreateUserError::Unexpected(e)) => Err(e.into()),
    }
}

/// `latchkey user list`: every account, oldest first.
pub async fn list_accounts(accounts: &Accounts) -> Result<Vec<AccountSummary>, OperatorError> {
    Ok(users::list(&accounts.pool).await?)
}

/// `latchkey user disable`: the account is marked disabled, every session of it ends and
/// every outstanding reset link is voided, with the audit row, in one transaction.
/// Returns the account and how many live sessions ended.
pub async fn disable(
    accounts: &Accounts,
    email_input: &str,
    origin: &Origin,
) -> Result<(User, u64), OperatorError> {
    let user = find(accounts, email_input).await?;
    let mut tx = accounts.pool.begin().await?;
    let user = users::set_disabled(&mut tx, user.id, true)
        .await?
        .ok_or_else(|| OperatorError::UnknownAccount(user.email.as_str().to_owned()))?;
    let ended = sessions::delete_for_user(&mut tx, user.id, None).await?;
    reset_tokens::void_for_user(&mut tx, user.id).await?;
    audit::record(
        &mut *tx,
        EventKind::AccountDisabled,
        Some(user.id),
        Some(user.email.as_str()),
        origin,
        Some(&format!("{ended} sessions")),
    )
    .await?;
    tx.commit().await?;
    Ok((user, ended))
}

/// `latchkey user enable`: the account can sign in again. Sessions are not restored: any
/// that a sign-in racing the disable left behind (refused all along) are deleted here.
pub async fn enable(
    accounts: &Accounts,
    email_input: &str,
    origin: &Origin,
) -> Result<User, OperatorError> {
    let user = find(accounts, email_input).await?;
    let mut tx = accounts.pool.begin().await?;
    let user = users::set_disabled(&mut tx, user.id, false)
        .await?
        .ok_or_else(|| OperatorError::UnknownAccount(user.email.as_str().to_owned()))?;
    sessions::delete_for_user(&mut tx, user.id, None).await?;
    audit::record(
        &mut *tx,
        EventKind::AccountEnabled,
        Some(user.id),
        Some(user.email.as_str()),
        origin,
        None,
    )
    .await?;
    tx.commit().await?;
    Ok(user)
}

/// `latchkey user sign-out`: every session of the account ends; how many live ones did.
pub async fn sign_out_everywhere(
    accounts: &Accounts,
    email_input: &str,
    origin: &Origin,
) -> Result<(User, u64), OperatorError> {
    let user = find(accounts, email_input).await?;
    let mut tx = accounts.pool.begin().await?;
    let ended = sessions::delete_for_user(&mut tx, user.id, None).await?;
    audit::record(
        &mut *tx,
        EventKind::SignedOutByOperator,
        Some(user.id),
        Some(user.email.as_str()),
        origin,
        Some(&format!("{ended} sessions")),
    )
    .await?;
    tx.commit().await?;
    Ok((user, ended))
}

/// `latchkey user reset-link`: a single-use reset link on `public_url`, by the rules of
/// "Forgot your password?" (only its digest is stored, it voids every older link of the
/// account, it lives `reset_token_ttl_secs`), handed to the operator instead of mailed.
/// It does not count against the hourly mail limit: nothing is mailed.
pub async fn reset_link(
    accounts: &Accounts,
    email_input: &str,
    origin: &Origin,
) -> Result<(User, String), OperatorError> {
    let user = find(accounts, email_input).await?;
    let disabled = || OperatorError::Disabled(user.email.as_str().to_owned());
    if user.is_disabled() {
        return Err(disabled());
    }
    let mut tx = accounts.pool.begin().await?;
    // The account's row locked, as a forgot-password request locks it: requests for one
    // account run one after another, so only the newest link is live.
    if !reset_tokens::lock_account(&mut tx, user.id).await? {
        return Err(disabled());
    }
    let token = ResetToken::generate();
    let ttl = accounts.settings.reset_token_ttl_secs;
    reset_tokens::insert(&mut tx, user.id, &token.digest(), ttl, None).await?;
    audit::record(
        &mut *tx,
        EventKind::ResetLinkByOperator,
        Some(user.id),
        Some(user.email.as_str()),
        origin,
        None,
    )
    .await?;
    tx.commit().await?;
    let link = format!(
        "{}/reset-password?token={}",
        accounts.settings.public_base,
        token.expose()
    );
    Ok((user, link))
}

/// `latchkey user two-factor-off`: for a lost phone, or an account someone else set up
/// with two-factor. The authenticator and every recovery code go, every session ends
/// (through the one function that ends sessions), and the owner is told by mail and
/// under Recent activity — one transaction. Returns the account and how many live
/// sessions ended.
pub async fn two_factor_off(
    accounts: &Accounts,
    email_input: &str,
    origin: &Origin,
) -> Result<(User, u64), OperatorError> {
    let user = find(accounts, email_input).await?;
    if !user.has_two_factor() {
        return Err(OperatorError::NoTwoFactor(user.email.as_str().to_owned()));
    }
    let mut tx = accounts.pool.begin().await?;
    two_factor::disable(&mut tx, user.id).await?;
    let ended = sessions::delete_for_user(&mut tx, user.id, None).await?;
    super::record_and_tell_owner(
        accounts,
        &mut tx,
        user.id,
        user.email.as_str(),
        EventKind::TwoFactorRemovedByOperator,
        Some(&format!("{ended} sessions")),
        origin,
    )
    .await?;
    tx.commit().await?;
    accounts.outbox.notify();
    Ok((user, ended))
}
