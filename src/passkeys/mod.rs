//! Passkeys: WebAuthn discoverable credentials, registered from Settings → Security and
//! used to sign in without a password (autofill or a button), or to prove an
//! authentication option on the reset form. Verification is webauthn-rs's; these rules
//! keep the ceremony state in Postgres (single use, five minutes, any instance), the
//! credentials with their counters, and the audit, mail and throttle around them. They
//! take an [`Accounts`] and plain values and know nothing of HTTP.

use std::time::Duration;

use url::Url;
use uuid::Uuid;
use webauthn_rs::prelude::{
    CreationChallengeResponse, DiscoverableAuthentication, Passkey, PasskeyAuthentication,
    PasskeyRegistration, PublicKeyCredential, RegisterPublicKeyCredential,
    RequestChallengeResponse, Webauthn, WebauthnBuilder,
};
use webauthn_rs_proto::ResidentKeyRequirement;

use crate::auth::reset::PasskeyVerified;
use crate::auth::throttle::{self, IpScope};
use crate::auth::two_factor;
use crate::auth::{Accounts, Origin, ServiceError, confirm_password};
use crate::config::Config;
use crate::store::audit::{self, EventKind};
use crate::store::passkeys::{self as store, NewPasskey, PasskeyRow};
use crate::store::users::{self, User};

/// How long a ceremony may take, from its options to its answer.
pub const CEREMONY_SECS: i64 = 300;
/// How recent a passkey sign-in must be to add or remove a passkey without the password.
pub const RECENT_SIGN_IN_SECS: i64 = 300;
/// The longest name a passkey may have, in characters.
pub const MAX_NAME_CHARS: usize = 64;
/// The most passkeys one account may hold.
pub const MAX_PER_ACCOUNT: i64 = 20;

const REGISTER: &str = "register";
const SIGN_IN: &str = "sign_in";
const RESET: &str = "reset";

/// The relying party: latchkey's origin and its RP id.
pub struct Passkeys {
    webauthn: Webauthn,
    rp_id: String,
}

impl std::fmt::Debug for Passkeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passkeys")
            .field("rp_id", &self.rp_id)
            .finish()
    }
}

impl Passkeys {
    /// The relying party of `config`: `None` when passkeys are off (`public_url` is an IP
    /// address and no RP id is set); an error when the RP id is not the host or a parent.
    pub fn from_config(config: &Config) -> anyhow::Result<Option<Passkeys>> {
        let Some(rp_id) = config.webauthn_rp_id()? else {
            return Ok(None);
        };
        let origin = Url::parse(&config.public_url.origin().ascii_serialization())
            .map_err(|e| anyhow::anyhow!("public_url's origin: {e}"))?;
        let webauthn = WebauthnBuilder::new(&rp_id, &origin)
            .map_err(|e| anyhow::anyhow!("passkeys' relying party {rp_id:?}: {e}"))?
            .rp_name("latchkey")
            .timeout(Duration::from_secs(CEREMONY_SECS as u64))
            .build()
            .map_err(|e| anyhow::anyhow!("passkeys' relying party {rp_id:?}: {e}"))?;
        Ok(Some(Passkeys { webauthn, rp_id }))
    }

    pub fn rp_id(&self) -> &str {
        &self.rp_id
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PasskeyError {
    /// No such ceremony for this browser: used already, older than five minutes, begun
    /// in another browser, or never begun.
    #[error("the passkey request has expired or was already used")]
    Ceremony,
    /// No account has this passkey (it was removed, or it is for another site).
    #[error("this passkey is not registered")]
    UnknownCredential,
    /// The answer did not verify: wrong origin, RP id, challenge or signature, no user
    /// verification, or a counter that went backwards.
    #[error("the passkey could not be verified")]
    Rejected,
    /// An operator disabled the account.
    #[error("the account is disabled")]
    AccountDisabled,
    #[error("the current password is wrong")]
    WrongPassword,
    /// The authenticator holds a passkey for this account already, or the account has
    /// as many as it may.
    #[error("this passkey is already registered")]
    AlreadyRegistered,
    #[error("the account has the most passkeys it may")]
    TooMany,
    #[error("the name is empty or too long")]
    BadName,
    #[error(transparent)]
    Service(#[from] ServiceError),
}

impl From<anyhow::Error> for PasskeyError {
    fn from(e: anyhow::Error) -> Self {
        PasskeyError::Service(ServiceError::Unexpected(e))
    }
}

/// A registered passkey as the settings page shows it.
#[derive(Debug, Clone)]
pub struct PasskeyInfo {
    pub id: Uuid,
    pub name: String,
    pub created_at: time::OffsetDateTime,
    pub last_used_at: Option<time::OffsetDateTime>,
    /// A synced passkey (in a password manager or a platform account).
    pub synced: bool,
}

impl From<PasskeyRow> for PasskeyInfo {
    fn from(row: PasskeyRow) -> PasskeyInfo {
        PasskeyInfo {
            id: row.id,
            name: row.name,
            created_at: row.created_at,
            last_used_at: row.last_used_at,
            synced: row.backup_eligible,
        }
    }
}

pub async fn list(accounts: &Accounts, user: &User) -> anyhow::Result<Vec<PasskeyInfo>> {
    Ok(store::list_for_user(&accounts.pool, user.id)
        .await?
        .into_iter()
        .map(PasskeyInfo::from)
        .collect())
}

pub async fn has_passkeys(accounts: &Accounts, user_id: Uuid) -> anyhow::Result<bool> {
    Ok(store::count_for_user(&accounts.pool, user_id).await? > 0)
}

/// A ceremony's options for the browser and the id it answers with.
pub struct Started<T> {
    pub ceremony: Uuid,
    pub options: T,
}

fn to_json<T: serde::Serialize>(value: &T, what: &str) -> anyhow::Result<String> {
    serde_json::to_string(value).map_err(|e| anyhow::anyhow!("serialising {what}: {e}"))
}

/// A passkey's counter and backup flags, as webauthn-rs keeps them inside it.
fn credential_facts(passkey: &Passkey) -> (i64, bool, bool) {
    let value = serde_json::to_value(passkey).unwrap_or_default();
    let cred = &value["cred"];
    (
        cred["counter"].as_i64().unwrap_or(0),
        cred["backup_eligible"].as_bool().unwrap_or(false),
        cred["backup_state"].as_bool().unwrap_or(false),
    )
}

/// A name a person can read: trimmed, control characters out, at most
/// [`MAX_NAME_CHARS`] characters; `None` when nothing is left.
pub fn clean_name(name: &str) -> Option<String> {
    let cleaned: String = name
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    (!cleaned.is_empty() && cleaned.chars().count() <= MAX_NAME_CHARS).then_some(cleaned)
}

/// Checks who asks to add or remove a passkey: a recent passkey sign-in, or the current
/// password (throttled like a sign-in; a wrong one is audited).
pub async fn confirm_owner(
    accounts: &Accounts,
    user: &User,
    recent_passkey_sign_in: bool,
    password: &str,
    origin: &Origin,
) -> Result<(), PasskeyError> {
    if recent_passkey_sign_in {
        return Ok(());
    }
    if password.is_empty() {
        return Err(PasskeyError::WrongPassword);
    }
    if confirm_password(
        accounts,
        user,
        password,
        origin,
        "wrong password on passkey settings",
    )
    .await?
    {
        Ok(())
    } else {
        Err(PasskeyError::WrongPassword)
    }
}

/// Begins adding a passkey (the caller confirmed the owner first): options asking for a
/// discoverable credential with user verification, excluding the account's passkeys.
pub async fn start_registration(
    accounts: &Accounts,
    passkeys: &Passkeys,
    user: &User,
    binding: &[u8],
) -> Result<Started<CreationChallengeResponse>, PasskeyError> {
    let existing = store::list_for_user(&accounts.pool, user.id).await?;
    if existing.len() as i64 >= MAX_PER_ACCOUNT {
        return Err(PasskeyError::TooMany);
    }
    let exclude = existing
        .iter()
        .map(|row| row.credential_id.clone())
        .collect::<Vec<_>>();
    let (mut options, state) = passkeys
        .webauthn
        .start_passkey_registration(
            user.id,
            user.email.as_str(),
            user.email.as_str(),
            Some(exclude),
        )
        .map_err(|e| anyhow::anyhow!("starting a passkey registration: {e}"))?;
    // webauthn-rs's passkey options say "discouraged": a credential the authenticator
    // does not keep cannot be offered by autofill, nor found without an email address.
    if let Some(selection) = options.public_key.authenticator_selection.as_mut() {
        selection.resident_key = Some(ResidentKeyRequirement::Required);
        selection.require_resident_key = true;
    }
    let ceremony = store::begin_ceremony(
        &accounts.pool,
        REGISTER,
        Some(user.id),
        binding,
        &to_json(&state, "a registration state")?,
        CEREMONY_SECS,
    )
    .await?;
    Ok(Started { ceremony, options })
}

/// A passkey added: the recovery codes to show once, when the account had none. Its
/// `Debug` says how many codes there are, never the codes.
pub struct Added {
    pub id: Uuid,
    pub recovery_codes: Option<Vec<String>>,
}

impl std::fmt::Debug for Added {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Added")
            .field("id", &self.id)
            .field(
                "recovery_codes",
                &self
                    .recovery_codes
                    .as_ref()
                    .map(|codes| format!("[{} redacted]", codes.len())),
            )
            .finish()
    }
}

/// Finishes adding a passkey: the browser's answer to [`start_registration`]'s options,
/// stored with `name`, audited and mailed.
#[allow(clippy::too_many_arguments)]
pub async fn finish_registration(
    accounts: &Accounts,
    passkeys: &Passkeys,
    user: &User,
    ceremony: Uuid,
    binding: &[u8],
    credential_json: &str,
    name: &str,
    origin: &Origin,
) -> Result<Added, PasskeyError> {
    let name = clean_name(name).ok_or(PasskeyError::BadName)?;
    let Some(taken) = store::take_ceremony(&accounts.pool, ceremony, REGISTER, binding).await?
    else {
        return Err(PasskeyError::Ceremony);
    };
    if taken.user_id != Some(user.id) {
        return Err(PasskeyError::Ceremony);
    }
    let state: PasskeyRegistration = serde_json::from_str(&taken.state)
        .map_err(|e| anyhow::anyhow!("reading a registration state: {e}"))?;
    let credential: RegisterPublicKeyCredential =
        serde_json::from_str(credential_json).map_err(|_| PasskeyError::Rejected)?;
    let passkey = passkeys
        .webauthn
        .finish_passkey_registration(&credential, &state)
        .map_err(|e| {
            tracing::info!(error = %e, "a passkey registration did not verify");
            PasskeyError::Rejected
        })?;
    let (counter, backup_eligible, backup_state) = credential_facts(&passkey);
    let serialised = to_json(&passkey, "a passkey")?;
    let mut tx = accounts.pool.begin().await.map_err(anyhow::Error::from)?;
    let Some(id) = store::insert(
        &mut tx,
        &NewPasskey {
            user_id: user.id,
            credential_id: passkey.cred_id().as_ref(),
            passkey: &serialised,
            counter,
            backup_eligible,
            backup_state,
            name: &name,
        },
    )
    .await?
    else {
        return Err(PasskeyError::AlreadyRegistered);
    };
    let recovery_codes = two_factor::issue_recovery_codes_if_none(accounts, &mut tx, user).await?;
    notify(
        accounts,
        &mut tx,
        user,
        EventKind::PasskeyAdded,
        &name,
        origin,
    )
    .await?;
    tx.commit().await.map_err(anyhow::Error::from)?;
    accounts.outbox.notify();
    Ok(Added { id, recovery_codes })
}

async fn notify(
    accounts: &Accounts,
    conn: &mut sqlx::PgConnection,
    user: &User,
    kind: EventKind,
    name: &str,
    origin: &Origin,
) -> anyhow::Result<()> {
    crate::auth::record_and_tell_owner(
        accounts,
        conn,
        user.id,
        user.email.as_str(),
        kind,
        Some(name),
        origin,
    )
    .await
}

/// Removes one of the account's passkeys (the caller confirmed the owner first); whether
/// there was one. Audited and mailed.
pub async fn remove(
    accounts: &Accounts,
    user: &User,
    id: Uuid,
    origin: &Origin,
) -> Result<bool, PasskeyError> {
    let mut tx = accounts.pool.begin().await.map_err(anyhow::Error::from)?;
    let Some(name) = store::delete(&mut tx, user.id, id).await? else {
        return Ok(false);
    };
    notify(
        accounts,
        &mut tx,
        user,
        EventKind::PasskeyRemoved,
        &name,
        origin,
    )
    .await?;
    tx.commit().await.map_err(anyhow::Error::from)?;
    accounts.outbox.notify();
    Ok(true)
}

/// Renames one of the account's passkeys; whether there was one.
pub async fn rename(
    accounts: &Accounts,
    user: &User,
    id: Uuid,
    name: &str,
) -> Result<bool, PasskeyError> {
    let name = clean_name(name).ok_or(PasskeyError::BadName)?;
    Ok(store::rename(&accounts.pool, user.id, id, &name).await?)
}

/// Begins a passkey sign-in: options for any passkey of this site (autofill or the
/// button), with user verification required.
pub async fn start_sign_in(
    accounts: &Accounts,
    passkeys: &Passkeys,
    binding: &[u8],
) -> Result<Started<RequestChallengeResponse>, PasskeyError> {
    let (options, state) = passkeys
        .webauthn
        .start_discoverable_authentication()
        .map_err(|e| anyhow::anyhow!("starting a passkey sign-in: {e}"))?;
    let ceremony = store::begin_ceremony(
        &accounts.pool,
        SIGN_IN,
        None,
        binding,
        &to_json(&state, "a sign-in state")?,
        CEREMONY_SECS,
    )
    .await?;
    Ok(Started { ceremony, options })
}

/// webauthn-rs's verdict on an answer (it refuses a counter that did not move forward),
/// user verification insisted on, and the stored passkey updated with what it reported.
fn verified_use(
    row: &PasskeyRow,
    outcome: Result<
        webauthn_rs::prelude::AuthenticationResult,
        webauthn_rs::prelude::WebauthnError,
    >,
) -> Result<(Passkey, webauthn_rs::prelude::AuthenticationResult), PasskeyError> {
    let result = outcome.map_err(|e| {
        tracing::info!(error = %e, "a passkey assertion did not verify");
        PasskeyError::Rejected
    })?;
    if !result.user_verified() {
        return Err(PasskeyError::Rejected);
    }
    let mut passkey: Passkey = serde_json::from_str(&row.passkey)
        .map_err(|e| anyhow::anyhow!("reading a stored passkey: {e}"))?;
    passkey.update_credential(&result);
    Ok((passkey, result))
}

/// Records the use, refusing it when another use already recorded this counter or a
/// later one (a passkey that keeps no counter stays at 0).
async fn record_use(
    accounts: &Accounts,
    row: &PasskeyRow,
    passkey: &Passkey,
    result: &webauthn_rs::prelude::AuthenticationResult,
) -> Result<(), PasskeyError> {
    let recorded = store::record_use(
        &accounts.pool,
        row.id,
        &to_json(passkey, "a passkey")?,
        i64::from(result.counter()),
        result.backup_eligible(),
        result.backup_state(),
    )
    .await?;
    if recorded {
        Ok(())
    } else {
        Err(PasskeyError::Rejected)
    }
}

async fn failed(
    accounts: &Accounts,
    user: Option<&User>,
    origin: &Origin,
    detail: &str,
) -> anyhow::Result<()> {
    audit::record(
        &accounts.pool,
        EventKind::SignInFailed,
        user.map(|u| u.id),
        user.map(|u| u.email.as_str()),
        origin,
        Some(detail),
    )
    .await?;
    metrics::counter!("latchkey_sign_in_total", "outcome" => "failure").increment(1);
    Ok(())
}

/// Finishes a passkey sign-in: the ceremony taken (once), the credential found by its
/// id and user handle, the assertion verified with user verification, the counter
/// guarded, the account enabled. Every attempt counts against the client's IP first.
/// A complete sign-in: no second step follows.
#[tracing::instrument(skip_all, fields(user_id = tracing::field::Empty))]
pub async fn finish_sign_in(
    accounts: &Accounts,
    passkeys: &Passkeys,
    ceremony: Uuid,
    binding: &[u8],
    credential_json: &str,
    origin: &Origin,
) -> Result<User, PasskeyError> {
    let ip = origin.ip.as_deref().unwrap_or_default();
    throttle::check_ip(accounts, IpScope::SignIn, ip).await?;
    let Some(taken) = store::take_ceremony(&accounts.pool, ceremony, SIGN_IN, binding).await?
    else {
        return Err(PasskeyError::Ceremony);
    };
    let state: DiscoverableAuthentication = serde_json::from_str(&taken.state)
        .map_err(|e| anyhow::anyhow!("reading a sign-in state: {e}"))?;
    let Ok(credential) = serde_json::from_str::<PublicKeyCredential>(credential_json) else {
        failed(accounts, None, origin, "unreadable passkey answer").await?;
        return Err(PasskeyError::Rejected);
    };
    let Ok((user_handle, credential_id)) = passkeys
        .webauthn
        .identify_discoverable_authentication(&credential)
    else {
        failed(
            accounts,
            None,
            origin,
            "passkey answer without a user handle",
        )
        .await?;
        return Err(PasskeyError::UnknownCredential);
    };
    let row = store::find_by_credential(&accounts.pool, credential_id)
        .await?
        .filter(|row| row.user_id == user_handle);
    let Some(row) = row else {
        failed(accounts, None, origin, "unknown passkey").await?;
        return Err(PasskeyError::UnknownCredential);
    };
    let Some(user) = users::find_by_id(&accounts.pool, row.user_id).await? else {
        return Err(PasskeyError::UnknownCredential);
    };
    tracing::Span::current().record("user_id", tracing::field::display(user.id));
    let stored: Passkey = serde_json::from_str(&row.passkey)
        .map_err(|e| anyhow::anyhow!("reading a stored passkey: {e}"))?;
    let outcome =
        passkeys
            .webauthn
            .finish_discoverable_authentication_v2(&credential, state, &stored);
    let (passkey, result) = match verified_use(&row, outcome) {
        Ok(verified) => verified,
        Err(err) => {
            failed(accounts, Some(&user), origin, "passkey did not verify").await?;
            return Err(err);
        }
    };
    if user.is_disabled() {
        failed(accounts, Some(&user), origin, "the account is disabled").await?;
        metrics::counter!("latchkey_sign_in_total", "outcome" => "disabled").increment(1);
        return Err(PasskeyError::AccountDisabled);
    }
    if let Err(err) = record_use(accounts, &row, &passkey, &result).await {
        failed(
            accounts,
            Some(&user),
            origin,
            "passkey counter did not move forward",
        )
        .await?;
        return Err(err);
    }
    audit::record(
        &accounts.pool,
        EventKind::SignIn,
        Some(user.id),
        Some(user.email.as_str()),
        origin,
        Some("passkey"),
    )
    .await?;
    metrics::counter!("latchkey_sign_in_total", "outcome" => "success").increment(1);
    Ok(user)
}

/// Begins proving a passkey on the reset form of `user`'s link: options listing the
/// account's passkeys.
pub async fn start_reset(
    accounts: &Accounts,
    passkeys: &Passkeys,
    user: &User,
    binding: &[u8],
) -> Result<Started<RequestChallengeResponse>, PasskeyError> {
    let rows = store::list_for_user(&accounts.pool, user.id).await?;
    let mut stored = Vec::with_capacity(rows.len());
    for row in &rows {
        let passkey: Passkey = serde_json::from_str(&row.passkey)
            .map_err(|e| anyhow::anyhow!("reading a stored passkey: {e}"))?;
        stored.push(passkey);
    }
    if stored.is_empty() {
        return Err(PasskeyError::UnknownCredential);
    }
    let (options, state) = passkeys
        .webauthn
        .start_passkey_authentication(&stored)
        .map_err(|e| anyhow::anyhow!("starting a passkey check: {e}"))?;
    let ceremony = store::begin_ceremony(
        &accounts.pool,
        RESET,
        Some(user.id),
        binding,
        &to_json(&state, "a reset state")?,
        CEREMONY_SECS,
    )
    .await?;
    Ok(Started { ceremony, options })
}

/// Verifies the passkey answer of a reset form for `user`; the proof the reset takes.
pub async fn verify_for_reset(
    accounts: &Accounts,
    passkeys: &Passkeys,
    user: &User,
    ceremony: Uuid,
    binding: &[u8],
    credential_json: &str,
) -> Result<PasskeyVerified, PasskeyError> {
    let Some(taken) = store::take_ceremony(&accounts.pool, ceremony, RESET, binding).await? else {
        return Err(PasskeyError::Ceremony);
    };
    if taken.user_id != Some(user.id) {
        return Err(PasskeyError::Ceremony);
    }
    let state: PasskeyAuthentication = serde_json::from_str(&taken.state)
        .map_err(|e| anyhow::anyhow!("reading a reset state: {e}"))?;
    let credential: PublicKeyCredential =
        serde_json::from_str(credential_json).map_err(|_| PasskeyError::Rejected)?;
    let row = store::find_by_credential(&accounts.pool, credential.get_credential_id())
        .await?
        .filter(|row| row.user_id == user.id)
        .ok_or(PasskeyError::UnknownCredential)?;
    let outcome = passkeys
        .webauthn
        .finish_passkey_authentication(&credential, &state);
    let (passkey, result) = verified_use(&row, outcome)?;
    record_use(accounts, &row, &passkey, &result).await?;
    Ok(PasskeyVerified::for_user(user.id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_of_an_added_passkey_never_prints_its_recovery_codes() {
        let added = Added {
            id: Uuid::nil(),
            recovery_codes: Some(vec!["k7m2-x9qp-4hzt".to_owned(); 10]),
        };
        let printed = format!("{added:?} {added:#?}");
        assert!(!printed.contains("k7m2"), "{printed}");
        assert!(printed.contains("[10 redacted]"), "{printed}");
    }

    #[test]
    fn names_are_trimmed_single_spaced_and_bounded() {
        assert_eq!(
            clean_name("  Chrome \t on\nLinux ").as_deref(),
            Some("Chrome on Linux")
        );
        assert_eq!(clean_name(" \u{7} "), None);
        assert_eq!(clean_name(""), None);
        assert!(clean_name(&"x".repeat(MAX_NAME_CHARS)).is_some());
        assert!(clean_name(&"x".repeat(MAX_NAME_CHARS + 1)).is_none());
    }

    #[test]
    fn passkeys_are_off_for_an_ip_address_and_on_for_a_name() {
        let mut config = Config::defaults().unwrap();
        config.public_url = "http://127.0.0.1:8080".parse().unwrap();
        assert!(Passkeys::from_config(&config).unwrap().is_none());
        config.public_url = "https://auth.example.com".parse().unwrap();
        config.webauthn_rp_id = Some("example.com".into());
        let passkeys = Passkeys::from_config(&config).unwrap().unwrap();
        assert_eq!(passkeys.rp_id(), "example.com");
        config.webauthn_rp_id = Some("other.com".into());
        assert!(Passkeys::from_config(&config).is_err());
    }
}
