//! Two-factor authentication, the flows: set up, turn on, make new recovery codes, turn
//! off, and the second step of a sign-in; each with its own error, whose cases are exactly
//! what that flow can meet. The primitives are [`secret`] (the TOTP secret, sealed at rest)
//! and [`recovery`] (single-use recovery codes, stored as keyed hashes).

mod recovery;
mod secret;

use secrecy::SecretString;

use super::session::PendingSecondStep;
use super::set_password::{Replacement, set_password};
use super::{Accounts, Origin, ServiceError, confirm_password, throttle};
use crate::domain::SessionDigest;
use crate::domain::password::{PolicyContext, PolicyViolation, normalize};
use crate::store::audit::{self, EventKind};
use crate::store::two_factor as store;
use crate::store::users::{self, User};
use recovery::{generate_recovery_codes, normalize_code, recovery_hash};
pub use secret::TotpSecret;
use secret::{open, seal};

/// Checking a `totp_code` field went wrong.
#[derive(Debug, thiserror::Error)]
pub enum CodeError {
    #[error("the code is wrong")]
    WrongCode,
    #[error(transparent)]
    Service(#[from] ServiceError),
}

/// Turning two-factor on went wrong.
#[derive(Debug, thiserror::Error)]
pub enum EnableError {
    #[error("the current password is wrong")]
    WrongPassword,
    #[error("the code is wrong")]
    WrongCode,
    /// Already on, or no key was shown to confirm (or the password changed since).
    #[error("two-factor authentication cannot be turned on from here")]
    NotReady,
    #[error(transparent)]
    Service(#[from] ServiceError),
}

/// Making new recovery codes went wrong.
#[derive(Debug, thiserror::Error)]
pub enum RegenerateError {
    #[error("the current password is wrong")]
    WrongPassword,
    #[error("the code is wrong")]
    WrongCode,
    #[error("two-factor authentication is off")]
    NotOn,
    #[error(transparent)]
    Service(#[from] ServiceError),
}

/// Turning two-factor off went wrong.
#[derive(Debug, thiserror::Error)]
pub enum DisableError {
    #[error("the current password is wrong")]
    WrongPassword,
    #[error("the code is wrong")]
    WrongCode,
    /// Turning two-factor off would leave a password shorter than the single-factor minimum.
    #[error("a new password is needed first")]
    NeedsNewPassword,
    #[error("the new password does not meet the policy")]
    Policy(PolicyViolation),
    #[error("two-factor authentication is off")]
    NotOn,
    /// The password was reset or changed elsewhere since it was checked: nothing changed,
    /// and this session is over.
    #[error("the password changed elsewhere")]
    PasswordChangedElsewhere,
    #[error(transparent)]
    Service(#[from] ServiceError),
}

/// The second step of a sign-in went wrong.
#[derive(Debug, thiserror::Error)]
pub enum SecondStepError {
    #[error("the code is wrong")]
    WrongCode,
    /// The account's password changed since the first step (or the account is gone): the
    /// half-signed-in session is over.
    #[error("the sign-in is over")]
    SignInOver,
    /// An operator disabled the account between the password and the code.
    #[error("the account is disabled")]
    AccountDisabled,
    #[error(transparent)]
    Service(#[from] ServiceError),
}

/// The `From` impls every flow error needs for `?` on I/O.
macro_rules! unexpected_into {
    ($($error:ty),*) => {$(
        impl From<anyhow::Error> for $error {
            fn from(e: anyhow::Error) -> Self {
                Self::Service(ServiceError::Unexpected(e))
            }
        }
        impl From<sqlx::Error> for $error {
            fn from(e: sqlx::Error) -> Self {
                anyhow::Error::from(e).into()
            }
        }
    )*};
}
unexpected_into!(
    CodeError,
    EnableError,
    RegenerateError,
    DisableError,
    SecondStepError
);

impl From<CodeError> for RegenerateError {
    fn from(e: CodeError) -> Self {
        match e {
            CodeError::WrongCode => RegenerateError::WrongCode,
            CodeError::Service(s) => RegenerateError::Service(s),
        }
    }
}

impl From<CodeError> for DisableError {
    fn from(e: CodeError) -> Self {
        match e {
            CodeError::WrongCode => DisableError::WrongCode,
            CodeError::Service(s) => DisableError::Service(s),
        }
    }
}

impl From<CodeError> for SecondStepError {
    fn from(e: CodeError) -> Self {
        match e {
            CodeError::WrongCode => SecondStepError::WrongCode,
            CodeError::Service(s) => SecondStepError::Service(s),
        }
    }
}

/// The secret to show on the setup page: the pending one, or a new one.
pub async fn pending_secret(accounts: &Accounts, user: &User) -> anyhow::Result<TotpSecret> {
    let row = store::load(&accounts.pool, user.id).await?;
    if let Some(sealed) = row.totp_pending_enc {
        if let Ok(secret) = open(&accounts.keys.totp, user.id, &sealed) {
            return Ok(secret);
        }
    }
    let secret = TotpSecret::generate();
    // Not stored when the password changed since `user` was read: then the page goes to
    // a session that is already over, and nobody can confirm the key it shows.
    store::set_pending(
        &accounts.pool,
        user.id,
        &seal(&accounts.keys.totp, user.id, &secret)?,
        user.password_changed_at,
    )
    .await?;
    Ok(secret)
}

/// Checks a `totp_code` field: a current code (each accepted once) or an unused recovery
/// code (used up now). Each check reserves a failure on the account's throttle first; a
/// right code gives it back, a wrong one lets it stand.
pub async fn check_code(accounts: &Accounts, user: &User, code: &str) -> Result<(), CodeError> {
    check_code_reserved(accounts, user, code)
        .await?
        .give_back(accounts)
        .await?;
    Ok(())
}

/// [`check_code`], leaving the right code's reservation to the caller.
async fn check_code_reserved(
    accounts: &Accounts,
    user: &User,
    code: &str,
) -> Result<throttle::Reservation, CodeError> {
    let reservation = throttle::reserve(accounts, &user.email_key).await?;
    if verify_code(accounts, user, code).await? {
        return Ok(reservation);
    }
    reservation.fail(accounts).await?;
    Err(CodeError::WrongCode)
}

async fn verify_code(accounts: &Accounts, user: &User, code: &str) -> anyhow::Result<bool> {
    let digits: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    if digits.len() == 6 && digits.bytes().all(|b| b.is_ascii_digit()) {
        let row = store::load(&accounts.pool, user.id).await?;
        let Some(sealed) = row.totp_secret_enc else {
            return Ok(false);
        };
        let secret = open(&accounts.keys.totp, user.id, &sealed)?;
        return match secret.matching_step(user.email.as_str(), &digits)? {
            Some(step) => store::claim_step(&accounts.pool, user.id, step).await,
            None => Ok(false),
        };
    }
    let normalized = normalize_code(code);
    if normalized.is_empty() || normalized.len() > 64 {
        return Ok(false);
    }
    store::use_recovery_code(
        &accounts.pool,
        user.id,
        &recovery_hash(&accounts.keys.recovery, user.id, &normalized),
    )
    .await
}

/// Whether `password` is the account's current one (a wrong one counts as a failed
/// sign-in).
async fn password_is_right(
    accounts: &Accounts,
    user: &User,
    password: &str,
    origin: &Origin,
) -> Result<bool, ServiceError> {
    confirm_password(
        accounts,
        user,
        password,
        origin,
        "wrong password on two-factor settings",
    )
    .await
}

async fn notify(
    accounts: &Accounts,
    conn: &mut sqlx::PgConnection,
    user: &User,
    kind: EventKind,
    origin: &Origin,
) -> anyhow::Result<()> {
    super::record_and_tell_owner(
        accounts,
        conn,
        user.id,
        user.email.as_str(),
        kind,
        None,
        origin,
    )
    .await
}

/// Turns two-factor on with the pending secret; returns the recovery codes to show once.
pub async fn enable(
    accounts: &Accounts,
    user: &User,
    password: &str,
    code: &str,
    origin: &Origin,
) -> Result<Vec<String>, EnableError> {
    if user.has_two_factor() {
        return Err(EnableError::NotReady);
    }
    if !password_is_right(accounts, user, password, origin).await? {
        return Err(EnableError::WrongPassword);
    }
    let row = store::load(&accounts.pool, user.id).await?;
    let Some(sealed) = row.totp_pending_enc else {
        return Err(EnableError::NotReady);
    };
    let secret = open(&accounts.keys.totp, user.id, &sealed)?;
    let digits: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    let reservation = throttle::reserve(accounts, &user.email_key).await?;
    let Some(step) = secret.matching_step(user.email.as_str(), &digits)? else {
        reservation.fail(accounts).await?;
        return Err(EnableError::WrongCode);
    };
    reservation.give_back(accounts).await?;
    let codes = generate_recovery_codes();
    let hashes: Vec<Vec<u8>> = codes
        .iter()
        .map(|c| recovery_hash(&accounts.keys.recovery, user.id, c))
        .collect();
    let mut tx = accounts.pool.begin().await?;
    store::enable(&mut tx, user.id, &sealed, step).await?;
    store::replace_recovery_codes(&mut tx, user.id, &hashes).await?;
    notify(accounts, &mut tx, user, EventKind::TwoFactorEnabled, origin).await?;
    tx.commit().await?;
    accounts.outbox.notify();
    Ok(codes)
}

/// New recovery codes; the old ones stop working.
pub async fn regenerate_recovery_codes(
    accounts: &Accounts,
    user: &User,
    password: &str,
    code: &str,
    origin: &Origin,
) -> Result<Vec<String>, RegenerateError> {
    if !user.has_two_factor() {
        return Err(RegenerateError::NotOn);
    }
    if !password_is_right(accounts, user, password, origin).await? {
        return Err(RegenerateError::WrongPassword);
    }
    check_code(accounts, user, code).await?;
    let codes = generate_recovery_codes();
    let hashes: Vec<Vec<u8>> = codes
        .iter()
        .map(|c| recovery_hash(&accounts.keys.recovery, user.id, c))
        .collect();
    let mut tx = accounts.pool.begin().await?;
    store::replace_recovery_codes(&mut tx, user.id, &hashes).await?;
    notify(
        accounts,
        &mut tx,
        user,
        EventKind::RecoveryCodesRegenerated,
        origin,
    )
    .await?;
    tx.commit().await?;
    accounts.outbox.notify();
    Ok(codes)
}

/// Turns two-factor off. When the current password is shorter than the single-factor
/// minimum, a new password must come with the request and is set in the same transaction,
/// as a password change: every session but `session` (the one asking) is signed out. Then
/// it returns the new `password_changed_at`, and the caller moves `session` to a new id
/// bound to it.
pub async fn disable(
    accounts: &Accounts,
    user: &User,
    session: Option<&SessionDigest>,
    password: &str,
    code: &str,
    new_password: Option<(&str, &str)>,
    origin: &Origin,
) -> Result<Option<time::OffsetDateTime>, DisableError> {
    if !user.has_two_factor() {
        return Err(DisableError::NotOn);
    }
    if !password_is_right(accounts, user, password, origin).await? {
        return Err(DisableError::WrongPassword);
    }
    let short = normalize(password).chars().count() < accounts.policy.min_len_single_factor;
    let replacement = match (short, new_password) {
        (false, _) => None,
        (true, None) => return Err(DisableError::NeedsNewPassword),
        (true, Some((new, confirm))) => {
            let ctx = PolicyContext {
                email: user.email.as_str(),
                two_factor: false,
            };
            let parsed = super::check_new_password(accounts, &ctx, new, confirm)
                .await?
                .map_err(DisableError::Policy)?;
            Some(parsed)
        }
    };
    check_code(accounts, user, code).await?;
    let hash = match replacement {
        Some(password) => Some(
            accounts
                .hasher
                .hash(SecretString::from(password.expose().to_owned()))
                .await
                .map_err(ServiceError::from)?,
        ),
        None => None,
    };
    let mut tx = accounts.pool.begin().await?;
    store::disable(&mut tx, user.id).await?;
    let stored = match hash {
        Some(hash) => {
            let replacement = Replacement::ByOwner {
                keep: session,
                verified_with: user.password_changed_at,
            };
            match set_password(accounts, &mut tx, user, &hash, replacement, origin).await? {
                Some(stored) => Some(stored),
                // Reset or changed elsewhere since the password was checked: this
                // session is over (the next page sends it to sign in); nothing changes.
                None => return Err(DisableError::PasswordChangedElsewhere),
            }
        }
        None => None,
    };
    notify(
        accounts,
        &mut tx,
        user,
        EventKind::TwoFactorDisabled,
        origin,
    )
    .await?;
    tx.commit().await?;
    accounts.outbox.notify();
    Ok(stored.map(|stored| stored.password_set_at))
}

/// The second step of signing in: a correct code completes it, clears the account's
/// failed attempts and records the sign-in.
pub async fn complete_sign_in(
    accounts: &Accounts,
    pending: &PendingSecondStep,
    code: &str,
    origin: &Origin,
) -> Result<User, SecondStepError> {
    let user = users::find_by_id(&accounts.pool, pending.user_id)
        .await?
        .filter(|user| user.password_changed_at == pending.password_set_at)
        .ok_or(SecondStepError::SignInOver)?;
    if user.is_disabled() {
        return Err(SecondStepError::AccountDisabled);
    }
    let reservation = match check_code_reserved(accounts, &user, code).await {
        Ok(reservation) => reservation,
        Err(err) => {
            if matches!(err, CodeError::WrongCode) {
                audit::record(
                    &accounts.pool,
                    EventKind::SignInFailed,
                    Some(user.id),
                    Some(user.email.as_str()),
                    origin,
                    Some("wrong two-factor code"),
                )
                .await?;
            }
            return Err(err.into());
        }
    };
    reservation.clear(accounts).await?;
    audit::record(
        &accounts.pool,
        EventKind::SignIn,
        Some(user.id),
        Some(user.email.as_str()),
        origin,
        None,
    )
    .await?;
    metrics::counter!("latchkey_sign_in_total", "outcome" => "success").increment(1);
    Ok(user)
}

/// Ten new recovery codes for an account that has none left (its first passkey): stored
/// in `conn`'s transaction, returned to show once.
pub async fn issue_recovery_codes_if_none(
    accounts: &Accounts,
    conn: &mut sqlx::PgConnection,
    user: &User,
) -> anyhow::Result<Option<Vec<String>>> {
    if store::unused_recovery_codes_in(&mut *conn, user.id).await? > 0 {
        return Ok(None);
    }
    let codes = generate_recovery_codes();
    let hashes: Vec<Vec<u8>> = codes
        .iter()
        .map(|c| recovery_hash(&accounts.keys.recovery, user.id, c))
        .collect();
    store::replace_recovery_codes(conn, user.id, &hashes).await?;
    Ok(Some(codes))
}

pub async fn unused_recovery_codes(accounts: &Accounts, user: &User) -> anyhow::Result<i64> {
    store::unused_recovery_codes(&accounts.pool, user.id).await
}
