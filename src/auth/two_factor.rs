//! Two-factor authentication: TOTP (RFC 6238: SHA-1, 6 digits, 30 s, ±1 step) with the
//! secret encrypted at rest, and ten single-use recovery codes stored as keyed hashes.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use rand::rngs::OsRng;
use secrecy::SecretString;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use totp_rs::{Algorithm, TOTP};
use uuid::Uuid;

use super::session::PendingSecondStep;
use super::set_password::{Replacement, set_password};
use super::{Accounts, Origin, ServiceError, confirm_password, throttle};
use crate::domain::SessionDigest;
use crate::domain::password::{PolicyContext, PolicyViolation, normalize};
use crate::mail::messages;
use crate::store::audit::{self, EventKind};
use crate::store::two_factor as store;
use crate::store::users::{self, User};

const SECRET_BYTES: usize = 20;
const STEP_SECS: u64 = 30;
const RECOVERY_CODES: usize = 10;
/// Letters and digits that cannot be mistaken for one another when copied by hand.
const RECOVERY_ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";

/// A TOTP secret in the clear, only ever in memory.
pub struct TotpSecret(Vec<u8>);

impl TotpSecret {
    fn generate() -> TotpSecret {
        let mut bytes = vec![0u8; SECRET_BYTES];
        OsRng.fill_bytes(&mut bytes);
        TotpSecret(bytes)
    }

    /// Uppercase base32 without padding, as authenticator apps take it.
    pub fn base32(&self) -> String {
        base32_encode(&self.0)
    }

    fn totp(&self, email: &str) -> anyhow::Result<TOTP> {
        TOTP::new(
            Algorithm::SHA1,
            6,
            1,
            STEP_SECS,
            self.0.clone(),
            Some("latchkey".to_owned()),
            email.replace(':', ""),
        )
        .map_err(|e| anyhow::anyhow!("building the TOTP: {e}"))
    }

    /// The `otpauth://` URI the QR code carries.
    pub fn uri(&self, email: &str) -> anyhow::Result<String> {
        Ok(self.totp(email)?.get_url())
    }

    /// The step whose code matches `code` within ±1 step of now.
    fn matching_step(&self, email: &str, code: &str) -> anyhow::Result<Option<i64>> {
        let totp = self.totp(email)?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let current = now.div_euclid(STEP_SECS as i64);
        for step in [current - 1, current, current + 1] {
            let expected = totp.generate((step.max(0) as u64) * STEP_SECS);
            if bool::from(expected.as_bytes().ct_eq(code.as_bytes())) {
                return Ok(Some(step));
            }
        }
        Ok(None)
    }
}

fn base32_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &byte in bytes {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

/// Encrypts a secret for the database, bound to its account.
fn seal(key: &[u8; 32], user_id: Uuid, secret: &TotpSecret) -> anyhow::Result<Vec<u8>> {
    let cipher = XChaCha20Poly1305::new(key.into());
    let mut nonce = [0u8; 24];
    OsRng.fill_bytes(&mut nonce);
    let sealed = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: &secret.0,
                aad: user_id.as_bytes(),
            },
        )
        .map_err(|_| anyhow::anyhow!("encrypting a TOTP secret"))?;
    Ok([nonce.as_slice(), &sealed].concat())
}

fn open(key: &[u8; 32], user_id: Uuid, sealed: &[u8]) -> anyhow::Result<TotpSecret> {
    if sealed.len() < 24 {
        anyhow::bail!("stored TOTP secret is truncated");
    }
    let (nonce, ciphertext) = sealed.split_at(24);
    let cipher = XChaCha20Poly1305::new(key.into());
    let secret = cipher
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad: user_id.as_bytes(),
            },
        )
        .map_err(|_| anyhow::anyhow!("decrypting a TOTP secret (wrong LATCHKEY_SECRET_KEY?)"))?;
    Ok(TotpSecret(secret))
}

/// A recovery code as typed: spaces, dashes and case do not matter.
fn normalize_code(code: &str) -> String {
    code.chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

fn recovery_hash(key: &[u8; 32], user_id: Uuid, code: &str) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(user_id.as_bytes());
    mac.update(normalize_code(code).as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// Ten new codes like `k7m2-x9qp-4hzt` (60 bits each).
fn generate_recovery_codes() -> Vec<String> {
    (0..RECOVERY_CODES)
        .map(|_| {
            let mut bytes = [0u8; 12];
            OsRng.fill_bytes(&mut bytes);
            let chars: Vec<char> = bytes
                .iter()
                .map(|b| char::from(RECOVERY_ALPHABET[usize::from(*b) % RECOVERY_ALPHABET.len()]))
                .collect();
            chars
                .chunks(4)
                .map(|c| c.iter().collect::<String>())
                .collect::<Vec<_>>()
                .join("-")
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum TwoFactorError {
    #[error("the current password is wrong")]
    WrongPassword,
    #[error("the code is wrong")]
    WrongCode,
    /// Turning two-factor off would leave a password shorter than the single-factor minimum.
    #[error("a new password is needed first")]
    NeedsNewPassword,
    #[error("the new password does not meet the policy")]
    Policy(PolicyViolation),
    #[error("two-factor authentication is not in the expected state")]
    WrongState,
    /// An operator disabled the account between the password and the code.
    #[error("the account is disabled")]
    AccountDisabled,
    #[error(transparent)]
    Service(#[from] ServiceError),
}

impl From<anyhow::Error> for TwoFactorError {
    fn from(e: anyhow::Error) -> Self {
        TwoFactorError::Service(ServiceError::Unexpected(e))
    }
}

impl From<sqlx::Error> for TwoFactorError {
    fn from(e: sqlx::Error) -> Self {
        anyhow::Error::from(e).into()
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
pub async fn check_code(
    accounts: &Accounts,
    user: &User,
    code: &str,
) -> Result<(), TwoFactorError> {
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
) -> Result<throttle::Reservation, TwoFactorError> {
    let reservation = throttle::reserve(accounts, &user.email_key).await?;
    if verify_code(accounts, user, code).await? {
        return Ok(reservation);
    }
    reservation.fail(accounts).await?;
    Err(TwoFactorError::WrongCode)
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

async fn check_password(
    accounts: &Accounts,
    user: &User,
    password: &str,
    origin: &Origin,
) -> Result<(), TwoFactorError> {
    if confirm_password(
        accounts,
        user,
        password,
        origin,
        "wrong password on two-factor settings",
    )
    .await?
    {
        Ok(())
    } else {
        Err(TwoFactorError::WrongPassword)
    }
}

async fn notify(
    accounts: &Accounts,
    conn: &mut sqlx::PgConnection,
    user: &User,
    kind: EventKind,
    origin: &Origin,
) -> anyhow::Result<()> {
    audit::record(
        &mut *conn,
        kind,
        Some(user.id),
        Some(user.email.as_str()),
        origin,
        None,
    )
    .await?;
    let mail = messages::security_change(
        user.email.as_str(),
        &accounts.settings.public_base,
        kind,
        origin,
    )?;
    accounts.outbox.enqueue(conn, &mail).await?;
    Ok(())
}

/// Turns two-factor on with the pending secret; returns the recovery codes to show once.
pub async fn enable(
    accounts: &Accounts,
    user: &User,
    password: &str,
    code: &str,
    origin: &Origin,
) -> Result<Vec<String>, TwoFactorError> {
    if user.has_two_factor() {
        return Err(TwoFactorError::WrongState);
    }
    check_password(accounts, user, password, origin).await?;
    let row = store::load(&accounts.pool, user.id).await?;
    let Some(sealed) = row.totp_pending_enc else {
        return Err(TwoFactorError::WrongState);
    };
    let secret = open(&accounts.keys.totp, user.id, &sealed)?;
    let digits: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    let reservation = throttle::reserve(accounts, &user.email_key).await?;
    let Some(step) = secret.matching_step(user.email.as_str(), &digits)? else {
        reservation.fail(accounts).await?;
        return Err(TwoFactorError::WrongCode);
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
) -> Result<Vec<String>, TwoFactorError> {
    if !user.has_two_factor() {
        return Err(TwoFactorError::WrongState);
    }
    check_password(accounts, user, password, origin).await?;
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
) -> Result<Option<time::OffsetDateTime>, TwoFactorError> {
    if !user.has_two_factor() {
        return Err(TwoFactorError::WrongState);
    }
    check_password(accounts, user, password, origin).await?;
    let short = normalize(password).chars().count() < accounts.policy.min_len_single_factor;
    let replacement = match (short, new_password) {
        (false, _) => None,
        (true, None) => return Err(TwoFactorError::NeedsNewPassword),
        (true, Some((new, confirm))) => {
            let ctx = PolicyContext {
                email: user.email.as_str(),
                two_factor: false,
            };
            let parsed = super::check_new_password(accounts, &ctx, new, confirm)
                .await?
                .map_err(TwoFactorError::Policy)?;
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
                None => return Err(TwoFactorError::WrongState),
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
) -> Result<User, TwoFactorError> {
    let user = users::find_by_id(&accounts.pool, pending.user_id)
        .await?
        .filter(|user| user.password_changed_at == pending.password_set_at)
        .ok_or(TwoFactorError::WrongState)?;
    if user.is_disabled() {
        return Err(TwoFactorError::AccountDisabled);
    }
    let reservation = match check_code_reserved(accounts, &user, code).await {
        Ok(reservation) => reservation,
        Err(err) => {
            if matches!(err, TwoFactorError::WrongCode) {
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
            return Err(err);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_matches_rfc_4648() {
        assert_eq!(base32_encode(b"foobar"), "MZXW6YTBOI");
        assert_eq!(base32_encode(b"f"), "MY");
    }

    #[test]
    fn a_sealed_secret_opens_only_for_its_account_and_key() {
        let key = [3u8; 32];
        let user = Uuid::new_v4();
        let secret = TotpSecret::generate();
        let sealed = seal(&key, user, &secret).expect("seal");
        assert!(
            !sealed
                .windows(SECRET_BYTES)
                .any(|w| w == secret.0.as_slice())
        );
        assert_eq!(open(&key, user, &sealed).expect("open").0, secret.0);
        assert!(open(&key, Uuid::new_v4(), &sealed).is_err());
        assert!(open(&[4u8; 32], user, &sealed).is_err());
        assert!(open(&key, user, &sealed[..10]).is_err());
    }

    #[test]
    fn recovery_codes_are_ten_distinct_readable_codes() {
        let codes = generate_recovery_codes();
        assert_eq!(codes.len(), 10);
        let mut unique = codes.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 10);
        assert!(
            codes
                .iter()
                .all(|c| c.len() == 14 && c.matches('-').count() == 2)
        );
        let key = [5u8; 32];
        let user = Uuid::new_v4();
        assert_eq!(
            recovery_hash(&key, user, &codes[0]),
            recovery_hash(&key, user, &codes[0].to_uppercase().replace('-', " "))
        );
    }
}
