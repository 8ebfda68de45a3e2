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
    /// The password was reset or changed elsewhere while this change was checked: this
    /// session began with the old one, so it is over and nothing was changed.
    #[error("the password changed meanwhile; this session has ended")]
    SessionEnded,
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
        email: user.email.as_str(),
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
    let how = How::Change {
        keep: current_id.as_ref(),
        verified_with: user.password_changed_at,
    };
    let Some(stored) = store_new_password(state, &mut tx, &user, &hash, how, origin).await? else {
        drop(tx);
        session.sign_out().await?;
        return Err(ChangeError::SessionEnded);
    };
    tx.commit().await?;
    state.outbox.notify();
    throttle::clear(state, &user.email_key).await?;
    session.rotate_for_password(stored.password_set_at).await?;
    Ok(stored.signed_out)
}

/// What storing a new password did.
pub(crate) struct Stored {
    /// The account's new `password_changed_at`: a session that goes on records it.
    pub password_set_at: time::OffsetDateTime,
    /// How many sessions were signed out.
    pub signed_out: u64,
}

/// How a password is being replaced.
pub(crate) enum How<'a> {
    /// By the signed-in person, who proved the password set at `verified_with`: their
    /// current session (`keep`) goes on.
    Change {
        keep: Option<&'a Id>,
        verified_with: time::OffsetDateTime,
    },
    /// Through an emailed link: every session goes.
    Reset,
}

/// The part of a password change that must happen together, inside the caller's
/// transaction: new hash, outstanding reset links and an unconfirmed two-factor setup key
/// void, sessions signed out, the audit event and the notification mail. `None` (and
/// nothing written) for a change when the password is no longer the one verified: a
/// reset or another change committed meanwhile.
pub(crate) async fn store_new_password(
    state: &AppState,
    tx: &mut PgConnection,
    user: &User,
    hash: &str,
    how: How<'_>,
    origin: &Origin,
) -> anyhow::Result<Option<Stored>> {
    let (keep, unchanged_since, kind, by_reset) = match how {
        How::Change {
            keep,
            verified_with,
        } => (keep, Some(verified_with), EventKind::PasswordChanged, false),
        How::Reset => (None, None, EventKind::ResetCompleted, true),
    };
    let Some(password_set_at) =
        users::set_password(&mut *tx, user.id, hash, unchanged_since).await?
    else {
        return Ok(None);
    };
    reset_tokens::void_for_user(&mut *tx, user.id).await?;
    let signed_out = sessions::delete_for_user(&mut *tx, user.id, keep).await?;
    audit::record(
        &mut *tx,
        kind,
        Some(user.id),
        Some(user.email.as_str()),
        origin,
        Some(&format!("{signed_out} sessions signed out")),
    )
    .await?;
    let mail = messages::password_changed(
        user.email.as_str(),
        state.config.public_base(),
        by_reset,
        signed_out,
        origin,
    )?;
    state.outbox.enqueue(&mut *tx, &mail).await?;
    Ok(Some(Stored {
        password_set_at,
        signed_out,
    }))
}
