//! Settings → Security → Change password, for a signed-in person who knows the current one.

use secrecy::SecretString;
use uuid::Uuid;

use super::set_password::{Replacement, set_password};
use super::{Accounts, Origin, ServiceError, confirm_password, throttle};
use crate::domain::SessionDigest;
use crate::domain::password::{PolicyContext, PolicyViolation, normalize};
use crate::store::users;

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
    Service(#[from] ServiceError),
}

impl From<sqlx::Error> for ChangeError {
    fn from(e: sqlx::Error) -> Self {
        anyhow::Error::from(e).into()
    }
}

impl From<anyhow::Error> for ChangeError {
    fn from(e: anyhow::Error) -> Self {
        ChangeError::Service(ServiceError::Unexpected(e))
    }
}

/// What a change did.
#[derive(Debug, Clone, Copy)]
pub struct Changed {
    /// The account's new `password_changed_at`: the session that made the change records
    /// it (under a new id) and goes on.
    pub password_set_at: time::OffsetDateTime,
    /// How many other sessions were signed out.
    pub signed_out: u64,
}

/// Changes the password and signs out every session but `session` (the one asking),
/// which the caller then moves to a new id bound to the new password. On
/// [`ChangeError::SessionEnded`] the caller ends `session`.
#[tracing::instrument(skip_all, fields(user_id = %user_id))]
pub async fn change_password(
    accounts: &Accounts,
    user_id: Uuid,
    session: Option<&SessionDigest>,
    current: &str,
    new_password: &str,
    confirm: &str,
    origin: &Origin,
) -> Result<Changed, ChangeError> {
    let user = users::find_by_id(&accounts.pool, user_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("signed-in account no longer exists"))?;
    let ctx = PolicyContext {
        email: user.email.as_str(),
        two_factor: user.has_two_factor(),
    };
    let password = super::check_new_password(accounts, &ctx, new_password, confirm)
        .await?
        .map_err(ChangeError::Policy)?;

    if !confirm_password(
        accounts,
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
    let hash = accounts
        .hasher
        .hash(SecretString::from(password.expose().to_owned()))
        .await
        .map_err(ServiceError::from)?;

    let mut tx = accounts.pool.begin().await?;
    let replacement = Replacement::ByOwner {
        keep: session,
        verified_with: user.password_changed_at,
    };
    let Some(stored) = set_password(accounts, &mut tx, &user, &hash, replacement, origin).await?
    else {
        return Err(ChangeError::SessionEnded);
    };
    tx.commit().await?;
    accounts.outbox.notify();
    throttle::clear(accounts, &user.email_key).await?;
    Ok(Changed {
        password_set_at: stored.password_set_at,
        signed_out: stored.signed_out,
    })
}
