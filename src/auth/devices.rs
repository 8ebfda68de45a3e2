//! Known browsers: a long-lived device cookie, signed with a key derived from
//! `LATCHKEY_SECRET_KEY`, names the browser; a sign-in from a browser the account has not
//! used before mails its owner "New sign-in to your account" (through the outbox).
//!
//! Every way a sign-in completes (password only, the two-factor step, a passkey) calls
//! [`note_sign_in`]; a browser that just proved the mailbox (a completed reset, a
//! confirmed sign-up) is remembered with [`remember`], so the sign-in that follows sends
//! nothing.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use super::{Accounts, Origin};
use crate::store::audit::EventKind;
use crate::store::devices;

const ID_BYTES: usize = 16;

/// A browser's device id, checked against its signature. Its `Debug` prints nothing of it.
pub struct DeviceId([u8; ID_BYTES]);

impl std::fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceId([redacted])")
    }
}

impl DeviceId {
    fn generate() -> DeviceId {
        let mut id = [0u8; ID_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut id);
        DeviceId(id)
    }

    fn mac(key: &[u8; 32], id: &[u8]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(b"device:");
        mac.update(id);
        mac
    }

    /// `id.signature`, both unpadded base64url: the cookie's value.
    pub fn cookie_value(&self, key: &[u8; 32]) -> String {
        let tag = DeviceId::mac(key, &self.0).finalize().into_bytes();
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(self.0),
            URL_SAFE_NO_PAD.encode(tag)
        )
    }

    /// The id a cookie value names, if its signature is ours (compared in constant time).
    pub fn verify(key: &[u8; 32], value: &str) -> Option<DeviceId> {
        let (id, tag) = value.split_once('.')?;
        let id: [u8; ID_BYTES] = URL_SAFE_NO_PAD.decode(id).ok()?.try_into().ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        DeviceId::mac(key, &id).verify_slice(&tag).ok()?;
        Some(DeviceId(id))
    }

    fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.0).into()
    }
}

/// The presented cookie's device, or a new one when it is missing or not ours.
fn device_for(accounts: &Accounts, presented: Option<&str>) -> DeviceId {
    presented
        .and_then(|value| DeviceId::verify(&accounts.keys.device, value))
        .unwrap_or_else(DeviceId::generate)
}

/// A sign-in completed for `user_id` in the browser that presented `presented`: when the
/// account has not used this browser before, its owner is mailed "New sign-in to your
/// account" with the time, the browser and the IP, and the event audited. Returns the
/// device cookie's value to set (the same device when the cookie was valid), or `None`
/// when the notice is off (then nothing is stored or set).
///
/// A known browser costs one statement (a password sign-in folds even that into its own,
/// with [`for_sign_in`]); only a new one opens a transaction for the audit row and the
/// mail. Should that fail, the browser is forgotten again, so the next sign-in tries
/// anew rather than never telling.
#[tracing::instrument(skip_all, fields(user_id = %user_id))]
pub async fn note_sign_in(
    accounts: &Accounts,
    user_id: Uuid,
    email: &str,
    presented: Option<&str>,
    origin: &Origin,
) -> anyhow::Result<Option<String>> {
    if !accounts.settings.new_device_mail {
        return Ok(None);
    }
    let device = device_for(accounts, presented);
    let new = devices::remember(&accounts.pool, user_id, &device.digest()).await?;
    after_remembering(accounts, user_id, email, &device, new, origin)
        .await
        .map(Some)
}

/// The browser a password sign-in comes from, to be remembered in the sign-in's own
/// statement (`store::sign_in::succeed`, with [`SignInDevice::digest`]); `None` when the
/// notice is off.
pub fn for_sign_in(accounts: &Accounts, presented: Option<&str>) -> Option<SignInDevice> {
    accounts
        .settings
        .new_device_mail
        .then(|| SignInDevice(device_for(accounts, presented)))
}

/// A browser a sign-in is coming from (its `Debug` prints nothing of it).
#[derive(Debug)]
pub struct SignInDevice(DeviceId);

impl SignInDevice {
    /// What the sign-in's statement stores.
    pub fn digest(&self) -> [u8; 32] {
        self.0.digest()
    }

    /// The sign-in's statement remembered the device (`new`: the account had not used
    /// it): mails the owner for a new one, and returns the cookie's value to set.
    pub async fn remembered(
        &self,
        accounts: &Accounts,
        user_id: Uuid,
        email: &str,
        new: bool,
        origin: &Origin,
    ) -> anyhow::Result<String> {
        after_remembering(accounts, user_id, email, &self.0, new, origin).await
    }
}

/// After `device` was remembered for the account: a new one is told to the owner (should
/// that fail, the device is forgotten again, so the next sign-in tries anew rather than
/// never telling). The cookie's value to set.
async fn after_remembering(
    accounts: &Accounts,
    user_id: Uuid,
    email: &str,
    device: &DeviceId,
    new: bool,
    origin: &Origin,
) -> anyhow::Result<String> {
    if new && let Err(err) = tell_owner(accounts, user_id, email, origin).await {
        devices::forget(&accounts.pool, user_id, &device.digest()).await?;
        return Err(err);
    }
    Ok(device.cookie_value(&accounts.keys.device))
}

/// The audit row and the queued mail of a sign-in from a new browser, one transaction.
async fn tell_owner(
    accounts: &Accounts,
    user_id: Uuid,
    email: &str,
    origin: &Origin,
) -> anyhow::Result<()> {
    let mut tx = accounts.pool.begin().await?;
    super::record_and_tell_owner(
        accounts,
        &mut tx,
        user_id,
        email,
        EventKind::NewDeviceSignIn,
        None,
        origin,
    )
    .await?;
    tx.commit().await?;
    accounts.outbox.notify();
    Ok(())
}

/// Remembers the browser for the account without a mail: it has just proven the
/// account's mailbox (a completed reset, a confirmed sign-up). Returns the cookie's
/// value, or `None` when the notice is off.
#[tracing::instrument(skip_all, fields(user_id = %user_id))]
pub async fn remember(
    accounts: &Accounts,
    user_id: Uuid,
    presented: Option<&str>,
) -> anyhow::Result<Option<String>> {
    if !accounts.settings.new_device_mail {
        return Ok(None);
    }
    let device = device_for(accounts, presented);
    devices::remember(&accounts.pool, user_id, &device.digest()).await?;
    Ok(Some(device.cookie_value(&accounts.keys.device)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_cookie_verifies_only_under_its_key_and_unaltered() {
        let key = [7u8; 32];
        let device = DeviceId::generate();
        let value = device.cookie_value(&key);
        assert!(DeviceId::verify(&key, &value).is_some());
        assert!(DeviceId::verify(&[8u8; 32], &value).is_none());
        let (id, tag) = value.split_once('.').expect("two parts");
        let other = DeviceId::generate().cookie_value(&key);
        let (other_id, _) = other.split_once('.').expect("two parts");
        assert!(DeviceId::verify(&key, &format!("{other_id}.{tag}")).is_none());
        assert!(DeviceId::verify(&key, id).is_none());
        assert!(DeviceId::verify(&key, "").is_none());
        assert!(!format!("{device:?}").contains(id));
    }
}
