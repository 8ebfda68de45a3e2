//! "Forgot your password?": request a single-use emailed link, then redeem it once.

use secrecy::SecretString;
use sqlx::PgConnection;

use super::deferred::Request;
use super::set_password::{Replacement, set_password};
use super::throttle::{IpScope, check_ip};
use super::two_factor::{self, CodeError};
use super::{Accounts, Origin, ServiceError};
use crate::domain::EmailAddress;
use crate::domain::password::{PolicyContext, PolicyViolation};
use crate::domain::token::ResetToken;
use crate::mail::messages;
use crate::store::audit::{self, EventKind};
use crate::store::passkeys;
use crate::store::reset_tokens::{self, TokenState};
use crate::store::users;

#[derive(Debug, thiserror::Error)]
pub enum RequestLinkError {
    /// Not an email address; the message says what is wrong with it.
    #[error("{0}")]
    InvalidEmail(String),
    #[error(transparent)]
    Service(#[from] ServiceError),
}

/// "Forgot your password?": counts the request against the client's IP, and when the
/// address is one, records the request before answering; [`issue_link`] turns it into a
/// link after the answer (so known and unknown addresses take the same time, and a crash
/// after the answer delays the mail but does not lose it). Returns the address the answer
/// names.
pub async fn request_link(
    accounts: &Accounts,
    email_input: &str,
    origin: &Origin,
) -> Result<EmailAddress, RequestLinkError> {
    let ip = origin.ip.clone().unwrap_or_default();
    check_ip(accounts, IpScope::ForgotPassword, &ip).await?;
    let email = EmailAddress::parse(email_input)
        .map_err(|err| RequestLinkError::InvalidEmail(err.to_string()))?;
    super::deferred::record(accounts, Request::Reset, &email, origin).await?;
    Ok(email)
}

/// Issues a token and queues its mail in `conn`'s transaction, if the address has an
/// account and has not had too many links this hour. Says nothing about which happened:
/// the answer was the same page either way, given before this ran.
#[tracing::instrument(skip_all, fields(user_id = tracing::field::Empty))]
pub(super) async fn issue_link(
    accounts: &Accounts,
    conn: &mut PgConnection,
    email: &EmailAddress,
    origin: &Origin,
) -> anyhow::Result<()> {
    // A disabled account gets nothing, as an unknown address does.
    let Some(user) = users::find_by_email(&mut *conn, email)
        .await?
        .filter(|user| !user.is_disabled())
    else {
        return Ok(());
    };
    tracing::Span::current().record("user_id", tracing::field::display(user.id));
    // One request per account at a time: with the account's row locked, the count, the
    // voiding of older links, the new link and its mail happen as one step, so however
    // many requests race, the hourly limit holds and only the newest link is live.
    if !reset_tokens::lock_account(conn, user.id).await? {
        return Ok(());
    }
    if reset_tokens::count_recent(&mut *conn, user.id).await?
        >= accounts.settings.throttle.reset_mails_per_hour
    {
        tracing::info!("reset mail limit reached for the account; nothing sent");
        return Ok(());
    }
    let token = ResetToken::generate();
    let ttl = accounts.settings.reset_token_ttl_secs;
    let link = format!(
        "{}/reset-password?token={}",
        &accounts.settings.public_base,
        token.expose()
    );
    let mail = messages::reset(user.email.as_str(), &link, ttl, origin)?;
    reset_tokens::insert(conn, user.id, &token.digest(), ttl, origin.ip.as_deref()).await?;
    accounts.outbox.enqueue(conn, &mail).await?;
    audit::record(
        &mut *conn,
        EventKind::ResetRequested,
        Some(user.id),
        Some(user.email.as_str()),
        origin,
        None,
    )
    .await?;
    Ok(())
}

/// Why a link cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenProblem {
    /// Malformed, tampered with, or never issued.
    Invalid,
    Expired,
    Used,
}

#[derive(Debug, thiserror::Error)]
pub enum ResetError {
    #[error("the reset link cannot be used")]
    Token(TokenProblem),
    #[error("the new password does not meet the policy")]
    Policy(PolicyViolation),
    /// Two-factor is on and the code was missing or wrong; the link stays usable
    /// (until five wrong codes).
    #[error("the two-factor code is wrong")]
    WrongCode,
    #[error(transparent)]
    Service(#[from] ServiceError),
}

impl From<sqlx::Error> for ResetError {
    fn from(e: sqlx::Error) -> Self {
        anyhow::Error::from(e).into()
    }
}

impl From<anyhow::Error> for ResetError {
    fn from(e: anyhow::Error) -> Self {
        ResetError::Service(ServiceError::Unexpected(e))
    }
}

/// The account a link belongs to, while the link is usable. Opening a link (which mail
/// scanners do too) goes through here and never consumes it.
pub async fn check_link(accounts: &Accounts, token: &str) -> Result<users::User, ResetError> {
    let token = ResetToken::parse(token).ok_or(ResetError::Token(TokenProblem::Invalid))?;
    let user_id = match reset_tokens::peek(&accounts.pool, &token.digest()).await? {
        TokenState::Usable { user_id } => user_id,
        TokenState::Expired => return Err(ResetError::Token(TokenProblem::Expired)),
        TokenState::Used => return Err(ResetError::Token(TokenProblem::Used)),
        TokenState::Unknown => return Err(ResetError::Token(TokenProblem::Invalid)),
    };
    // A disabled account's links do nothing (disabling voids them too).
    users::find_by_id(&accounts.pool, user_id)
        .await?
        .filter(|user| !user.is_disabled())
        .ok_or(ResetError::Token(TokenProblem::Invalid))
}

/// Proof that the owner of `user_id` verified one of the account's passkeys just now;
/// only the passkey rules make one (after webauthn-rs verified the answer).
#[derive(Debug)]
pub struct PasskeyVerified {
    user_id: uuid::Uuid,
}

impl PasskeyVerified {
    pub(crate) fn for_user(user_id: uuid::Uuid) -> PasskeyVerified {
        PasskeyVerified { user_id }
    }
}

/// What the reset form offers besides the new password: a code typed in the code field
/// (TOTP or recovery code; empty when there is none), or a verified passkey.
#[derive(Debug)]
pub enum ResetProof<'a> {
    Code(&'a str),
    Passkey(PasskeyVerified),
}

/// Whether the reset form of this account must ask for an authentication option: it has
/// two-factor, or passkeys (a stolen mailbox must not be enough to take either over).
pub async fn needs_proof(accounts: &Accounts, user: &users::User) -> anyhow::Result<bool> {
    Ok(user.has_two_factor() || passkeys::count_for_user(&accounts.pool, user.id).await? > 0)
}

/// Wrong codes a link survives.
const CODE_ATTEMPTS_PER_TOKEN: i32 = 5;

/// Sets a new password through a link: token consumed, password stored, every session of
/// the account deleted, audit event and notification queued — all in one transaction.
/// Never signs anyone in. Returns the account's id.
#[tracing::instrument(skip_all, fields(user_id = tracing::field::Empty))]
pub async fn complete_reset(
    accounts: &Accounts,
    token: &str,
    new_password: &str,
    confirm: &str,
    proof: ResetProof<'_>,
    origin: &Origin,
) -> Result<uuid::Uuid, ResetError> {
    let user = check_link(accounts, token).await?;
    tracing::Span::current().record("user_id", tracing::field::display(user.id));
    let ctx = PolicyContext {
        email: user.email.as_str(),
        two_factor: user.has_two_factor(),
    };
    let password = super::check_new_password(accounts, &ctx, new_password, confirm)
        .await?
        .map_err(ResetError::Policy)?;
    let digest = ResetToken::parse(token)
        .ok_or(ResetError::Token(TokenProblem::Invalid))?
        .digest();
    // A stolen mailbox alone must not be enough: the second factor (or a passkey, or a
    // recovery code) is asked here too.
    let totp_code = match proof {
        ResetProof::Passkey(verified) if verified.user_id == user.id => None,
        ResetProof::Passkey(_) => Some(""),
        ResetProof::Code(code) => Some(code),
    };
    let totp_code = match totp_code {
        Some(code) if needs_proof(accounts, &user).await? => Some(code),
        _ => None,
    };
    if let Some(totp_code) = totp_code {
        match two_factor::check_code(accounts, &user, totp_code).await {
            Ok(()) => {}
            Err(CodeError::WrongCode) => {
                reset_tokens::record_code_failure(&accounts.pool, &digest, CODE_ATTEMPTS_PER_TOKEN)
                    .await?;
                audit::record(
                    &accounts.pool,
                    EventKind::SignInFailed,
                    Some(user.id),
                    Some(user.email.as_str()),
                    origin,
                    Some("wrong two-factor code on the reset form"),
                )
                .await?;
                return Err(ResetError::WrongCode);
            }
            Err(CodeError::Service(failure)) => return Err(failure.into()),
        }
    }
    let hash = accounts
        .hasher
        .hash(SecretString::from(password.expose().to_owned()))
        .await
        .map_err(ServiceError::from)?;

    let mut tx = accounts.pool.begin().await?;
    // The account's row first, as every other path that sets a password takes it: a
    // change racing this reset holds the row and then voids this link's row, so taking
    // the link first would wait on each other (a deadlock). Disabled meanwhile: the
    // link does nothing, as `check_link` says of a disabled account.
    if !reset_tokens::lock_account(&mut tx, user.id).await? {
        return Err(ResetError::Token(TokenProblem::Invalid));
    }
    // The token may have been used or expired while we hashed: the consume decides.
    if reset_tokens::consume(&mut tx, &digest).await?.is_none() {
        return Err(ResetError::Token(TokenProblem::Used));
    }
    set_password(
        accounts,
        &mut tx,
        &user,
        &hash,
        Replacement::ByResetLink,
        origin,
    )
    .await?
    .ok_or_else(|| anyhow::anyhow!("a reset is never refused for a newer password"))?;
    tx.commit().await?;
    accounts.outbox.notify();
    // Whoever made the account wait (wrong guesses by someone else, say) must not keep
    // its owner out once the owner has set a new password through the mailed link. After
    // the commit, as a password change does: the transaction never waits on a sign-in's
    // throttle row while it holds the account.
    super::throttle::clear(accounts, &user.email_key).await?;
    Ok(user.id)
}
