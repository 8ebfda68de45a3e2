//! "Forgot your password?": request a single-use emailed link, then redeem it once.

use secrecy::SecretString;

use super::change::{How, store_new_password};
use super::two_factor::{self, TwoFactorError};
use super::{Failure, Origin};
use crate::app::AppState;
use crate::domain::EmailAddress;
use crate::domain::password::{PolicyContext, PolicyViolation};
use crate::domain::token::ResetToken;
use crate::mail::messages;
use crate::store::audit::{self, EventKind};
use crate::store::reset_tokens::{self, TokenState};
use crate::store::throttle;
use crate::store::users;

/// Issues a token and queues its mail, if the address has an account and has not had too
/// many links this hour. Says nothing about which happened: the caller answers the same
/// page either way, and runs this off the request path so the answer takes the same time.
#[tracing::instrument(skip_all, fields(user_id = tracing::field::Empty))]
pub async fn request_reset(
    state: &AppState,
    email: &EmailAddress,
    origin: &Origin,
) -> anyhow::Result<()> {
    let Some(user) = users::find_by_email(&state.pool, email).await? else {
        return Ok(());
    };
    tracing::Span::current().record("user_id", tracing::field::display(user.id));
    // One request per account at a time: with the account's row locked, the count, the
    // voiding of older links, the new link and its mail happen as one step, so however
    // many requests race, the hourly limit holds and only the newest link is live.
    let mut tx = state.pool.begin().await?;
    if !reset_tokens::lock_account(&mut tx, user.id).await? {
        return Ok(());
    }
    if reset_tokens::count_recent(&mut *tx, user.id).await?
        >= state.config.throttle.reset_mails_per_hour
    {
        tracing::info!("reset mail limit reached for the account; nothing sent");
        return Ok(());
    }
    let token = ResetToken::generate();
    let ttl = state.config.reset_token_ttl_secs;
    let link = format!(
        "{}/reset-password?token={}",
        state.config.public_base(),
        token.expose()
    );
    let mail = messages::reset(user.email.as_str(), &link, ttl, origin)?;
    reset_tokens::insert(&mut tx, user.id, &token.digest(), ttl, origin.ip.as_deref()).await?;
    state.outbox.enqueue(&mut tx, &mail).await?;
    audit::record(
        &mut *tx,
        EventKind::ResetRequested,
        Some(user.id),
        Some(user.email.as_str()),
        origin,
        None,
    )
    .await?;
    tx.commit().await?;
    state.outbox.notify();
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
    Failure(#[from] Failure),
}

impl From<sqlx::Error> for ResetError {
    fn from(e: sqlx::Error) -> Self {
        anyhow::Error::from(e).into()
    }
}

impl From<anyhow::Error> for ResetError {
    fn from(e: anyhow::Error) -> Self {
        ResetError::Failure(Failure::Unexpected(e))
    }
}

/// The account a link belongs to, while the link is usable. Opening a link (which mail
/// scanners do too) goes through here and never consumes it.
pub async fn check_link(state: &AppState, token: &str) -> Result<users::User, ResetError> {
    let token = ResetToken::parse(token).ok_or(ResetError::Token(TokenProblem::Invalid))?;
    let user_id = match reset_tokens::peek(&state.pool, &token.digest()).await? {
        TokenState::Usable { user_id } => user_id,
        TokenState::Expired => return Err(ResetError::Token(TokenProblem::Expired)),
        TokenState::Used => return Err(ResetError::Token(TokenProblem::Used)),
        TokenState::Unknown => return Err(ResetError::Token(TokenProblem::Invalid)),
    };
    users::find_by_id(&state.pool, user_id)
        .await?
        .ok_or(ResetError::Token(TokenProblem::Invalid))
}

/// Wrong codes a link survives.
const CODE_ATTEMPTS_PER_TOKEN: i32 = 5;

/// Sets a new password through a link: token consumed, password stored, every session of
/// the account deleted, audit event and notification queued — all in one transaction.
/// Never signs anyone in.
#[tracing::instrument(skip_all, fields(user_id = tracing::field::Empty))]
pub async fn complete_reset(
    state: &AppState,
    token: &str,
    new_password: &str,
    confirm: &str,
    totp_code: &str,
    origin: &Origin,
) -> Result<(), ResetError> {
    let user = check_link(state, token).await?;
    tracing::Span::current().record("user_id", tracing::field::display(user.id));
    let ctx = PolicyContext {
        email: user.email.as_str(),
        two_factor: user.has_two_factor(),
    };
    let password = super::check_new_password(state, &ctx, new_password, confirm)
        .await?
        .map_err(ResetError::Policy)?;
    let digest = ResetToken::parse(token)
        .ok_or(ResetError::Token(TokenProblem::Invalid))?
        .digest();
    // A stolen mailbox alone must not be enough: the second factor is asked here too.
    if user.has_two_factor() {
        match two_factor::check_code(state, &user, totp_code).await {
            Ok(()) => {}
            Err(TwoFactorError::WrongCode) => {
                reset_tokens::record_code_failure(&state.pool, &digest, CODE_ATTEMPTS_PER_TOKEN)
                    .await?;
                audit::record(
                    &state.pool,
                    EventKind::SignInFailed,
                    Some(user.id),
                    Some(user.email.as_str()),
                    origin,
                    Some("wrong two-factor code on the reset form"),
                )
                .await?;
                return Err(ResetError::WrongCode);
            }
            Err(TwoFactorError::Failure(failure)) => return Err(failure.into()),
            Err(other) => return Err(anyhow::anyhow!("checking a reset code: {other}").into()),
        }
    }
    let hash = state
        .hasher
        .hash(SecretString::from(password.expose().to_owned()))
        .await
        .map_err(Failure::from)?;

    let mut tx = state.pool.begin().await?;
    // The token may have been used or expired while we hashed: the consume decides.
    if reset_tokens::consume(&mut tx, &digest).await?.is_none() {
        return Err(ResetError::Token(TokenProblem::Used));
    }
    store_new_password(state, &mut tx, &user, &hash, How::Reset, origin)
        .await?
        .ok_or_else(|| anyhow::anyhow!("a reset is never refused for a newer password"))?;
    // Whoever made the account wait (wrong guesses by someone else, say) must not keep
    // its owner out once the owner has set a new password through the mailed link.
    throttle::clear(&mut tx, &user.email_key, false).await?;
    tx.commit().await?;
    state.outbox.notify();
    Ok(())
}
