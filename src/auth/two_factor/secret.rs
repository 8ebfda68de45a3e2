//! The TOTP secret: made from the OS generator, sealed for the database with
//! XChaCha20-Poly1305 under a key derived from `LATCHKEY_SECRET_KEY` and bound to its
//! account, shown as base32, and checked against a code within one step of now.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use rand::rngs::OsRng;
use subtle::ConstantTimeEq;
use totp_rs::{Algorithm, TOTP};
use uuid::Uuid;

const SECRET_BYTES: usize = 20;
const STEP_SECS: u64 = 30;

/// A TOTP secret in the clear, only ever in memory.
pub struct TotpSecret(Vec<u8>);

impl TotpSecret {
    pub(super) fn generate() -> TotpSecret {
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
    pub(super) fn matching_step(&self, email: &str, code: &str) -> anyhow::Result<Option<i64>> {
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
pub(super) fn seal(key: &[u8; 32], user_id: Uuid, secret: &TotpSecret) -> anyhow::Result<Vec<u8>> {
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

pub(super) fn open(key: &[u8; 32], user_id: Uuid, sealed: &[u8]) -> anyhow::Result<TotpSecret> {
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
}
