//! Sign in with latchkey: the OpenID Connect provider's rules. Clients and keys for the
//! operator, the authorization code flow with PKCE and consent, tokens bound to the
//! latchkey session that authorized them, refresh rotation with theft detection,
//! revocation, introspection and logout. Like `auth`, it knows nothing of HTTP: the web
//! layer parses requests into these calls and turns their answers into responses.

pub mod authorize;
pub mod clients;
pub mod keys;
pub mod logout;
pub mod tokens;

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};

use crate::auth::Accounts;
use crate::config::Config;

pub use keys::{Signer, SigningAlg};

/// Codes are valid this long (at most 60 s).
const CODE_TTL: Duration = Duration::from_secs(60);
/// An authorization request waits this long for a sign-in or a consent answer.
const REQUEST_TTL: Duration = Duration::from_secs(15 * 60);
/// Two refreshes with one token this close together are one application's racing
/// workers, not theft.
const REFRESH_GRACE: Duration = Duration::from_secs(10);

/// A value read from Postgres and reused for a few seconds, with when it was asked for.
pub(crate) type Cached<T> = Arc<RwLock<Option<(Instant, Arc<T>)>>>;

/// What the provider's rules work with. Cheap to clone.
#[derive(Clone)]
pub struct Provider {
    pub accounts: Accounts,
    pub signer: Signer,
    pub settings: Arc<ProviderSettings>,
    redirect_origins: Cached<Vec<String>>,
}

/// The settings the provider reads.
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    /// `public_url` without a trailing slash.
    pub issuer: String,
    pub access_token_ttl: Duration,
    /// A refresh token lives no longer than the longest session could.
    pub refresh_token_ttl: Duration,
}

impl Provider {
    pub fn new(config: &Config, accounts: Accounts) -> Provider {
        let signer = Signer::new(accounts.pool.clone(), accounts.keys.oidc_signing);
        Provider {
            signer,
            settings: Arc::new(ProviderSettings {
                issuer: config.public_base().to_owned(),
                access_token_ttl: Duration::from_secs(config.oidc_access_token_ttl_secs.max(1)),
                refresh_token_ttl: Duration::from_secs(config.session.absolute_timeout_secs.max(1)),
            }),
            accounts,
            redirect_origins: Arc::default(),
        }
    }

    /// The origins of every registered `redirect_uri` and `post_logout_redirect_uri`
    /// (`https://app.example.com:8443`, or `scheme:` for an app's own scheme), read at
    /// most every few seconds: the pages' CSP `form-action` names them, since Chromium
    /// applies it to the redirect that ends a sign-in or a consent.
    pub async fn redirect_origins(&self) -> Arc<Vec<String>> {
        if let Ok(cache) = self.redirect_origins.read()
            && let Some((at, origins)) = cache.as_ref()
            && at.elapsed() < Duration::from_secs(5)
        {
            return origins.clone();
        }
        let asked_at = Instant::now();
        // Bounded, and a failure is remembered like an answer: while Postgres is out of
        // reach, pages (the outage page too) must not each wait for it here.
        let listed = tokio::time::timeout(
            Duration::from_millis(500),
            crate::store::oidc_clients::list(&self.accounts.pool),
        )
        .await;
        let origins = match listed {
            Ok(Ok(clients)) => {
                let mut origins: Vec<String> = clients
                    .iter()
                    .flat_map(|c| c.redirect_uris.iter().chain(&c.post_logout_redirect_uris))
                    .filter_map(|uri| clients::csp_source(uri))
                    .collect();
                origins.sort();
                origins.dedup();
                origins
            }
            Ok(Err(err)) => {
                tracing::warn!(error = format!("{err:#}"), "reading the redirect origins");
                Vec::new()
            }
            Err(_) => {
                tracing::warn!("reading the redirect origins timed out");
                Vec::new()
            }
        };
        let origins = Arc::new(origins);
        if let Ok(mut cache) = self.redirect_origins.write() {
            *cache = Some((asked_at, origins.clone()));
        }
        origins
    }
}

/// A code, token or client secret: 256 bits from the OS, URL-safe. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Opaque(String);

impl Opaque {
    pub fn generate() -> Opaque {
        let mut bytes = [0u8; 32];
        OsRng.fill_bytes(&mut bytes);
        Opaque(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// What a request presented; never stored, only digested.
    pub fn presented(value: &str) -> Opaque {
        Opaque(value.to_owned())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// What the database keeps: SHA-256 of the text. 256 random bits need no slow hash.
    pub fn digest(&self) -> Vec<u8> {
        Sha256::digest(self.0.as_bytes()).to_vec()
    }
}

impl fmt::Debug for Opaque {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Opaque([redacted])")
    }
}

/// The `sid` of a latchkey session as relying parties see it: derived from the session
/// id's digest, so it names the session without being usable as one.
pub fn sid_of(session_hash: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"latchkey oidc sid v1");
    hasher.update(session_hash);
    URL_SAFE_NO_PAD.encode(&hasher.finalize()[..18])
}

/// "Remove" under Connected applications: the consent is forgotten and every grant of the
/// account for the client ends now, with its tokens, on every instance.
pub async fn remove_connection(
    provider: &Provider,
    user_id: uuid::Uuid,
    client_id: &str,
) -> anyhow::Result<()> {
    let mut tx = provider.accounts.pool.begin().await?;
    crate::store::oidc_consents::delete(&mut tx, user_id, client_id).await?;
    crate::store::oidc_grants::revoke_for_user_and_client(&mut tx, user_id, client_id).await?;
    tx.commit().await?;
    Ok(())
}

/// The clients the account allowed, or that hold a live grant of it.
pub async fn connected_applications(
    provider: &Provider,
    user_id: uuid::Uuid,
) -> anyhow::Result<Vec<crate::store::oidc_grants::Connected>> {
    crate::store::oidc_grants::connected_for_user(&provider.accounts.pool, user_id).await
}

/// The scopes latchkey knows; others are ignored (RFC 6749 3.3).
pub const SCOPES: [&str; 4] = ["openid", "email", "profile", "offline_access"];

/// Seconds since the epoch.
pub(crate) fn unix(at: time::OffsetDateTime) -> i64 {
    at.unix_timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opaque_values_are_256_bits_and_never_printed() {
        let a = Opaque::generate();
        assert_eq!(a.expose().len(), 43);
        assert_ne!(a, Opaque::generate());
        assert!(!format!("{a:?}").contains(a.expose()));
        assert_eq!(a.digest(), Opaque::presented(a.expose()).digest());
    }

    #[test]
    fn sids_differ_per_session_and_do_not_show_the_digest() {
        let one = sid_of(&[1u8; 32]);
        assert_ne!(one, sid_of(&[2u8; 32]));
        assert_eq!(one, sid_of(&[1u8; 32]));
        assert_eq!(one.len(), 24);
    }
}
