//! Setting a new password: the step a change, a reset and turning two-factor off with a
//! new password share, inside the caller's transaction.

use sqlx::PgConnection;

use super::{Accounts, Origin};
use crate::domain::SessionDigest;
use crate::mail::messages;
use crate::store::audit::{self, EventKind};
use crate::store::users::{self, User};
use crate::store::{reset_tokens, sessions};

/// What storing a new password did.
pub(crate) struct Stored {
    /// The account's new `password_changed_at`: a session that goes on records it.
    pub password_set_at: time::OffsetDateTime,
    /// How many sessions were signed out.
    pub signed_out: u64,
}

/// Who is replacing a password, and so which sessions survive it.
pub(crate) enum Replacement<'a> {
    /// The signed-in person, who proved the password set at `verified_with`: their
    /// current session (`keep`) goes on.
    ByOwner {
        keep: Option<&'a SessionDigest>,
        verified_with: time::OffsetDateTime,
    },
    /// Whoever holds an emailed reset link: every session goes.
    ByResetLink,
}

/// The part of a password change that must happen together, inside the caller's
/// transaction: new hash, outstanding reset links and an unconfirmed two-factor setup key
/// void, sessions signed out, the audit event and the notification mail. `None` (and
/// nothing written) for a change when the password is no longer the one verified: a
/// reset or another change committed meanwhile.
pub(crate) async fn set_password(
    accounts: &Accounts,
    tx: &mut PgConnection,
    user: &User,
    hash: &str,
    replacement: Replacement<'_>,
    origin: &Origin,
) -> anyhow::Result<Option<Stored>> {
    let (keep, unchanged_since, kind, by_reset) = match replacement {
        Replacement::ByOwner {
            keep,
            verified_with,
        } => (keep, Some(verified_with), EventKind::PasswordChanged, false),
        Replacement::ByResetLink => (None, None, EventKind::ResetCompleted, true),
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
        &accounts.settings.public_base,
        by_reset,
        signed_out,
        origin,
    )?;
    accounts.outbox.enqueue(&mut *tx, &mail).await?;
    Ok(Some(Stored {
        password_set_at,
        signed_out,
    }))
}
