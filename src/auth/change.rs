//! Settings → Security → Change password, for a signed-in person who knows the current one.

use secrecy::SecretString;
use sqlx::PgConnection;
use tower_sessions::session::Id;
use uuid::Uuid;

use super::session::AuthSession;
use super::{Failure, Origin, confirm_password, throttle};
use crate::app::AppState;
use crate::domain::password::{PolicyContext, PolicyViolation, normalize};
use crate::mail::messages;
use crate::store::audit::{self, EventKind};
use crate::store::users::{self, User};
use crate::store::{reset_tokens, sessions};

#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("the current password is wrong")]
    WrongCurrent,
    #[error("the new password is the current one")]
    SameAsCurrent,
    #[error("the new password does not meet the policy")]
    Policy(PolicyViolation),
    #[error(transparent)]
    Failure(#[from] Failure),
}

impl From<sqlx::Error> for ChangeError {
    fn from(e: sqlx::Error) -> Self {
        anyhow::Error::from(e).into()
    }
}

impl From<anyhow::Error> for ChangeError {
    fn from(e: anyhow::Error) -> Self {
        ChangeError::Failure(Failure::Unexpected(e))
    }
}

/// Changes the password and signs out every other session; the current session keeps
/// going under a new id. Returns how many other sessions were signed out.
#[tracing::instrument(skip_all, fields(user_id = %user_id))]
pub async fn change_password(
    state: &AppState,
    user_id: Uuid,
    session: &AuthSession,
    current: &str,
    new_password: &str,
    confirm: &str,
    origin: &Origin,
) -> Result<u64, ChangeError> {
    let user = users::find_by_id(&state.pool, user_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("signed-in account no longer exists"))?;
    let ctx = PolicyContext {
        email: &user.email,
        two_factor: user.has_two_factor(),
    };
    let password = super::check_new_password(state, &ctx, new_password, confirm)
        .await?
        .map_err(ChangeError::Policy)?;

    if !confirm_password(
        state,
        &user,
        current,
        origin,
        "wrong current password on change password",
    )
    .await?
    {
        return Err(ChangeError::WrongCurrent);
    }
    if password.expose() == normalize(current) {
        return Err(ChangeError::SameAsCurrent);
    }
    let hash = state
        .hasher
        .hash(SecretString::from(password.expose().to_owned()))
        .await
        .map_err(Failure::from)?;

    let current_id = session.id();
    let mut tx = state.pool.begin().await?;
    let signed_out = store_new_password(
        state,
        &mut tx,
        &user,
        &hash,
        How::Change {
            keep: current_id.as_ref(),
        },
        origin,
    )
    .await?;
    tx.commit().await?;
    state.outbox.notify();
    throttle::clear(state, &user.email.to_lowercase()).await?;
    session.rotate().await?;
    Ok(signed_out)
}

/// How a password is being replaced.
pub(crate) enum How<'a> {
    /// By the signed-in person: their current session (`keep`) goes on.
    Change { keep: Option<&'a Id> },
    /// Through an emailed link: every session goes.
    Reset,
}

/// The part of a password change that must happen together, inside the caller's
/// transaction: new hash, outstanding reset links void, sessions signed out, the audit
/// event and the notification mail. Returns how many sessions were signed out.
pub(crate) async fn store_new_password(
    state: &AppState,
    tx: &mut PgConnection,
    user: &User,
    hash: &str,
    how: How<'_>,
    origin: &Origin,
) -> anyhow::Result<u64> {
    users::set_password(&mut *tx, user.id, hash).await?;
    reset_tokens::void_for_user(&mut *tx, user.id).await?;
    let (keep, kind, by_reset) = match how {
        How::Change { keep } => (keep, EventKind::PasswordChanged, false),
        How::Reset => (None, EventKind::ResetCompleted, true),
    };
    let signed_out = sessions::delete_for_user(&mut *tx, user.id, keep).await?;
    audit::record(
        &mut *tx,
        kind,
        Some(user.id),
        Some(&user.email),
        origin,
        Some(&format!("{signed_out} sessions signed out")),
    )
    .await?;
    let mail = messages::password_changed(
        &user.email,
        state.config.public_base(),
        by_reset,
        signed_out,
        origin,
    )?;
    state.outbox.enqueue(&mut *tx, &mail).await?;
    Ok(signed_out)
}
