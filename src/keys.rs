//! The service's secret key and the purpose-bound keys derived from it.

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

fn dev_key(path: &Path) -> anyhow::Result<Vec<u8>> {
    if let Ok(existing) = std::fs::read_to_string(path) {
        return decode(&existing);
    }
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, STANDARD.encode(bytes))
        .with_context(|| format!("writing {}", path.display()))?;
    tracing::warn!(
        path = %path.display(),
        "generated a development secret key; set LATCHKEY_SECRET_KEY in production"
    );
    Ok(bytes.to_vec())
}

fn subkey(master: &[u8], label: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(master)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(label);
    mac.finalize().into_bytes().into()
}
