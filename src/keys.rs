//! The service's secret key and the purpose-bound keys derived from it.

use std::fs::{DirBuilder, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use rand::rngs::OsRng;
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

const DEV_KEY_FILE: &str = "var/secret_key";

/// Keys derived from `LATCHKEY_SECRET_KEY`, one per purpose, so no key serves two jobs.
#[derive(Clone)]
pub struct Keys {
    pub csrf: [u8; 32],
    pub totp: [u8; 32],
    pub recovery: [u8; 32],
    /// Seals queued mail bodies in the outbox until they are delivered.
    pub outbox: [u8; 32],
    /// Seals the OpenID provider's private signing keys in the database.
    pub oidc_signing: [u8; 32],
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys([redacted])")
    }
}

impl Keys {
    /// Uses the configured key; without one, a development key kept in `var/`, which an
    /// https deployment refuses (every instance must share one real key).
    pub fn load(configured: Option<&SecretString>, https: bool) -> anyhow::Result<Keys> {
        let master = match configured {
            Some(key) => decode(key.expose_secret())?,
            None if https => bail!(
                "LATCHKEY_SECRET_KEY must be set when public_url is https \
                 (32 random bytes, base64: `openssl rand -base64 32`)"
            ),
            None => dev_key(Path::new(DEV_KEY_FILE))?,
        };
        Ok(Keys::derive(&master))
    }

    pub fn derive(master: &[u8]) -> Keys {
        Keys {
            csrf: subkey(master, b"latchkey csrf v1"),
            totp: subkey(master, b"latchkey totp v1"),
            recovery: subkey(master, b"latchkey recovery codes v1"),
            outbox: subkey(master, b"latchkey outbox v1"),
            oidc_signing: subkey(master, b"latchkey oidc signing keys v1"),
        }
    }
}

fn decode(key: &str) -> anyhow::Result<Vec<u8>> {
    let bytes = STANDARD
        .decode(key.trim())
        .context("LATCHKEY_SECRET_KEY is not base64")?;
    if bytes.len() < 32 {
        bail!("LATCHKEY_SECRET_KEY must hold at least 32 bytes");
    }
    Ok(bytes)
}

/// Reads the development key, or makes one: `var/` (0700) and the file (0600) are created
/// private, so the key is never readable by others, not even for a moment.
fn dev_key(path: &Path) -> anyhow::Result<Vec<u8>> {
    if let Some(existing) = read_dev_key(path)? {
        return Ok(existing);
    }
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    if let Some(dir) = path.parent() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let created = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    let mut file = match created {
        Ok(file) => file,
        // Another instance in this directory made one first: use that one.
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            return read_dev_key(path)?
                .with_context(|| format!("{} vanished while reading it", path.display()));
        }
        Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
    };
    file.write_all(STANDARD.encode(bytes).as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    tracing::warn!(
        path = %path.display(),
        "generated a development secret key; set LATCHKEY_SECRET_KEY in production"
    );
    Ok(bytes.to_vec())
}

fn read_dev_key(path: &Path) -> anyhow::Result<Option<Vec<u8>>> {
    let existing = match std::fs::read_to_string(path) {
        Ok(existing) => existing,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{:o}", meta.permissions().mode() & 0o777),
            "the development secret key is readable by others; chmod 600 it"
        );
    }
    decode(&existing).map(Some)
}

const SEAL_NONCE_LEN: usize = 24;

/// nonce || XChaCha20-Poly1305(`plain`), bound to `context` (associated data), so a sealed
/// value moved onto another row does not open.
pub fn seal(key: &[u8; 32], context: &[u8], plain: &[u8]) -> anyhow::Result<Vec<u8>> {
    use chacha20poly1305::aead::{Aead, KeyInit, Payload};
    let mut nonce = [0u8; SEAL_NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    let sealed = chacha20poly1305::XChaCha20Poly1305::new(key.into())
        .encrypt(
            chacha20poly1305::XNonce::from_slice(&nonce),
            Payload {
                msg: plain,
                aad: context,
            },
        )
        .map_err(|_| anyhow::anyhow!("sealing a value"))?;
    Ok([nonce.as_slice(), &sealed].concat())
}

/// Opens what [`seal`] made with the same key and context.
pub fn open(key: &[u8; 32], context: &[u8], sealed: &[u8]) -> anyhow::Result<Vec<u8>> {
    use chacha20poly1305::aead::{Aead, KeyInit, Payload};
    if sealed.len() < SEAL_NONCE_LEN {
        bail!("a sealed value is too short");
    }
    let (nonce, ciphertext) = sealed.split_at(SEAL_NONCE_LEN);
    chacha20poly1305::XChaCha20Poly1305::new(key.into())
        .decrypt(
            chacha20poly1305::XNonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad: context,
            },
        )
        .map_err(|_| {
            anyhow::anyhow!("a sealed value does not open (was LATCHKEY_SECRET_KEY changed?)")
        })
}

fn subkey(master: &[u8], label: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(master)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(label);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_only_with_its_key_and_context() {
        let key = [3u8; 32];
        let sealed = seal(&key, b"kid-1", b"private").expect("seal");
        assert_eq!(open(&key, b"kid-1", &sealed).expect("open"), b"private");
        assert!(open(&key, b"kid-2", &sealed).is_err());
        assert!(open(&[4u8; 32], b"kid-1", &sealed).is_err());
        assert!(open(&key, b"kid-1", &sealed[..10]).is_err());
    }

    #[test]
    fn a_development_key_is_made_private_and_then_reused() {
        let root = std::env::temp_dir().join(format!("latchkey-keys-{}", uuid::Uuid::new_v4()));
        let path = root.join("var/secret_key");
        let made = dev_key(&path).expect("made");
        let mode = |p: &Path| std::fs::metadata(p).expect("exists").permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&root.join("var")), 0o700);
        assert_eq!(
            dev_key(&path).expect("read back"),
            made,
            "the same key next time"
        );
        std::fs::remove_dir_all(&root).expect("clean up");
    }
}
