//! Clients: what the operator registers (`latchkey oidc client …`), how a request's
//! `redirect_uri` is matched (character for character), and client authentication at the
//! token, revocation and introspection endpoints (throttled per client).

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

use super::{Opaque, Provider, SigningAlg};
use crate::auth::{ServiceError, throttle};
pub use crate::store::oidc_clients::Client;
use crate::store::oidc_clients::{self, NewClient};

/// What `oidc client add` asks for.
#[derive(Debug, Clone, Default)]
pub struct ClientSpec {
    pub id: String,
    pub name: String,
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
    pub backchannel_logout_uri: Option<String>,
    pub public: bool,
    pub skip_consent: bool,
    pub signing_alg: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the client id must be 1 to 64 letters, digits, '.', '_' or '-'")]
    InvalidId,
    #[error("the client name must be 1 to 100 characters")]
    InvalidName,
    #[error("give at least one --redirect-uri")]
    NoRedirectUri,
    #[error("{0:?} is not a usable redirect URI: {1}")]
    InvalidUri(String, &'static str),
    #[error("--signing-alg must be RS256, ES256 or EdDSA")]
    InvalidAlg,
    #[error("a client with the id {0} already exists")]
    Taken(String),
    #[error("no client has the id {0}")]
    Unknown(String),
    #[error("the client {0} is public: it has no secret")]
    Public(String),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// A client id as registered: 1 to 64 letters, digits, `.`, `_` or `-`.
pub fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A URI a client may register: absolute, no fragment, no userinfo, not a scheme that
/// runs code, ASCII, at most 2000 characters; `http`/`https` need a host.
pub fn check_registered_uri(uri: &str) -> Result<(), &'static str> {
    if uri.len() > 2000 || !uri.is_ascii() || uri.bytes().any(|b| b.is_ascii_control() || b == b' ')
    {
        return Err("it must be ASCII without spaces, at most 2000 characters");
    }
    let url = url::Url::parse(uri).map_err(|_| "it is not an absolute URI")?;
    if url.fragment().is_some() || uri.contains('#') {
        return Err("it must not have a fragment");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("it must not hold a user name or password");
    }
    match url.scheme() {
        "javascript" | "data" | "vbscript" | "file" | "blob" | "about" => {
            return Err("that scheme is not allowed");
        }
        "http" | "https" if url.host_str().is_none_or(str::is_empty) => {
            return Err("it needs a host");
        }
        _ => {}
    }
    Ok(())
}

/// The registered URI that equals `given` character for character; no normalisation
/// (case, port, trailing slash, dot segments, percent-encoding) ever makes two match.
pub fn registered<'a>(registered: &'a [String], given: &str) -> Option<&'a str> {
    registered
        .iter()
        .find(|uri| uri.as_bytes().ct_eq(given.as_bytes()).into())
        .map(String::as_str)
}

/// The CSP source for a registered URI: its origin for http(s), `scheme:` otherwise;
/// `None` for anything that could not be written into a header safely.
pub fn csp_source(uri: &str) -> Option<String> {
    let url = url::Url::parse(uri).ok()?;
    let source = match url.scheme() {
        "http" | "https" => url.origin().ascii_serialization(),
        scheme => format!("{scheme}:"),
    };
    let safe = source.bytes().all(|b| {
        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'/' | b'[' | b']' | b'+')
    });
    (safe && source != "null").then_some(source)
}

fn secret_hash(secret: &Opaque) -> Vec<u8> {
    secret.digest()
}

/// `latchkey oidc client add`: stores the client; a confidential client's secret is
/// returned once (only its SHA-256 digest is kept: 256 random bits need no slow hash).
pub async fn add(
    provider: &Provider,
    spec: &ClientSpec,
) -> Result<Option<SecretString>, ClientError> {
    if !valid_id(&spec.id) {
        return Err(ClientError::InvalidId);
    }
    let name = spec.name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(ClientError::InvalidName);
    }
    if spec.redirect_uris.is_empty() {
        return Err(ClientError::NoRedirectUri);
    }
    for uri in spec
        .redirect_uris
        .iter()
        .chain(&spec.post_logout_redirect_uris)
        .chain(&spec.backchannel_logout_uri)
    {
        check_registered_uri(uri).map_err(|why| ClientError::InvalidUri(uri.clone(), why))?;
    }
    if let Some(uri) = &spec.backchannel_logout_uri
        && !(uri.starts_with("http://") || uri.starts_with("https://"))
    {
        return Err(ClientError::InvalidUri(
            uri.clone(),
            "it must be http or https",
        ));
    }
    let alg = match spec.signing_alg.as_deref() {
        None => SigningAlg::Rs256,
        Some(alg) => SigningAlg::parse(alg).ok_or(ClientError::InvalidAlg)?,
    };
    let secret = (!spec.public).then(Opaque::generate);
    let hash = secret.as_ref().map(secret_hash);
    let stored = oidc_clients::insert(
        &provider.accounts.pool,
        &NewClient {
            id: &spec.id,
            name,
            secret_hash: hash.as_deref(),
            redirect_uris: &spec.redirect_uris,
            post_logout_redirect_uris: &spec.post_logout_redirect_uris,
            backchannel_logout_uri: spec.backchannel_logout_uri.as_deref(),
            skip_consent: spec.skip_consent,
            signing_alg: alg.as_str(),
        },
    )
    .await?;
    if !stored {
        return Err(ClientError::Taken(spec.id.clone()));
    }
    Ok(secret.map(|s| SecretString::from(s.expose().to_owned())))
}

/// `latchkey oidc client list`.
pub async fn list(provider: &Provider) -> Result<Vec<Client>, ClientError> {
    Ok(oidc_clients::list(&provider.accounts.pool).await?)
}

/// `latchkey oidc client remove`: its codes, grants and tokens go with it at once.
pub async fn remove(provider: &Provider, id: &str) -> Result<(), ClientError> {
    if oidc_clients::delete(&provider.accounts.pool, id).await? {
        Ok(())
    } else {
        Err(ClientError::Unknown(id.to_owned()))
    }
}

/// `latchkey oidc client rotate-secret`: a new secret, returned once; the old one stops
/// working at once.
pub async fn rotate_secret(provider: &Provider, id: &str) -> Result<SecretString, ClientError> {
    let Some(client) = oidc_clients::find(&provider.accounts.pool, id).await? else {
        return Err(ClientError::Unknown(id.to_owned()));
    };
    if client.is_public() {
        return Err(ClientError::Public(id.to_owned()));
    }
    let secret = Opaque::generate();
    if !oidc_clients::set_secret(&provider.accounts.pool, id, &secret_hash(&secret)).await? {
        return Err(ClientError::Unknown(id.to_owned()));
    }
    Ok(SecretString::from(secret.expose().to_owned()))
}

/// How a request authenticated its client.
#[derive(Debug)]
pub struct Credentials {
    pub client_id: String,
    /// `None`: the `none` method (public clients).
    pub secret: Option<SecretString>,
}

/// Why a client was not authenticated.
#[derive(Debug, thiserror::Error)]
pub enum ClientAuthError {
    /// Unknown client, wrong or missing secret, a secret for a public client (401).
    #[error("client authentication failed")]
    Invalid,
    /// Too many failures for this client: wait this long (429).
    #[error("too many failed client authentications")]
    Throttled { retry_after: Duration },
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

fn throttle_key(client_id: &str) -> String {
    // Client ids hold no '@', so this never meets an address's key.
    format!("oidc-client:{client_id}")
}

/// Authenticates a client. A wrong secret reserves and fails an attempt on the client's
/// throttle row (the sign-in mechanism: atomic, so concurrent guesses are held to the
/// free failures); while the client waits out its delay even the right secret is refused,
/// so the throttle is no oracle.
pub async fn authenticate(
    provider: &Provider,
    credentials: &Credentials,
) -> Result<Client, ClientAuthError> {
    let accounts = &provider.accounts;
    if !valid_id(&credentials.client_id) {
        return Err(ClientAuthError::Invalid);
    }
    let key = throttle_key(&credentials.client_id);
    let found =
        oidc_clients::find_for_authentication(&accounts.pool, &credentials.client_id, &key).await?;
    let (client, blocked) = match found {
        Some((client, blocked)) => (Some(client), blocked),
        None => (None, None),
    };
    let right = match (&client, &credentials.secret) {
        (Some(client), None) => client.is_public(),
        (Some(client), Some(secret)) => client.secret_hash.as_ref().is_some_and(|hash| {
            let given = Opaque::presented(secret.expose_secret()).digest();
            bool::from(hash.as_slice().ct_eq(&given))
        }),
        (None, _) => false,
    };
    if right {
        if let Some(until) = blocked {
            let secs = (until - time::OffsetDateTime::now_utc()).whole_seconds();
            return Err(ClientAuthError::Throttled {
                retry_after: Duration::from_secs(u64::try_from(secs).unwrap_or(0).max(1)),
            });
        }
        return client.ok_or(ClientAuthError::Invalid);
    }
    if client.is_some() {
        match throttle::reserve(accounts, &key).await {
            Ok(reservation) => reservation.fail(accounts).await?,
            Err(ServiceError::Throttled { retry_after }) => {
                return Err(ClientAuthError::Throttled { retry_after });
            }
            Err(ServiceError::Busy) => return Err(ClientAuthError::Invalid),
            Err(ServiceError::Unexpected(e)) => return Err(e.into()),
        }
    }
    tracing::info!(client_id = %credentials.client_id, "client authentication failed");
    Err(ClientAuthError::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uris() -> Vec<String> {
        vec![
            "https://app.example.com/callback".to_owned(),
            "http://127.0.0.1:8080/cb?x=1".to_owned(),
        ]
    }

    #[test]
    fn a_redirect_uri_matches_only_character_for_character() {
        let uris = uris();
        assert_eq!(
            registered(&uris, "https://app.example.com/callback"),
            Some("https://app.example.com/callback")
        );
        assert!(registered(&uris, "http://127.0.0.1:8080/cb?x=1").is_some());
    }

    #[test]
    fn a_redirect_uri_that_differs_in_any_way_is_refused() {
        let uris = uris();
        for refused in [
            // prefix and suffix
            "https://app.example.com/call",
            "https://app.example.com/callback/",
            "https://app.example.com/callback/evil",
            "https://app.example.com/callback?next=evil",
            "https://app.example.com/callbackx",
            "https://app.example.com.evil.test/callback",
            // case
            "https://APP.example.com/callback",
            "HTTPS://app.example.com/callback",
            "https://app.example.com/Callback",
            // port
            "https://app.example.com:443/callback",
            "https://app.example.com:8443/callback",
            "http://127.0.0.1:8081/cb?x=1",
            "http://127.0.0.1/cb?x=1",
            // fragment
            "https://app.example.com/callback#",
            "https://app.example.com/callback#frag",
            // path traversal and encodings
            "https://app.example.com/callback/../evil",
            "https://app.example.com/x/../callback",
            "https://app.example.com/./callback",
            "https://app.example.com/%63allback",
            "https://app.example.com/callback%2F..%2Fevil",
            // scheme, userinfo, whitespace
            "http://app.example.com/callback",
            "https://evil@app.example.com/callback",
            " https://app.example.com/callback",
            "https://app.example.com/callback ",
            "",
        ] {
            assert_eq!(
                registered(&uris, refused),
                None,
                "{refused:?} must be refused"
            );
        }
    }

    #[test]
    fn registration_refuses_fragments_code_schemes_and_relative_uris() {
        assert!(check_registered_uri("https://app.example.com/cb").is_ok());
        assert!(check_registered_uri("com.example.app:/oauth").is_ok());
        for bad in [
            "https://app.example.com/cb#x",
            "javascript:alert(1)",
            "data:text/html,x",
            "/relative",
            "https://user:pw@app.example.com/cb",
            "https://app.example.com/c b",
        ] {
            assert!(check_registered_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn csp_sources_are_origins_or_schemes() {
        assert_eq!(
            csp_source("https://app.example.com:8443/cb?x=1").as_deref(),
            Some("https://app.example.com:8443")
        );
        assert_eq!(
            csp_source("https://app.example.com/cb").as_deref(),
            Some("https://app.example.com")
        );
        assert_eq!(
            csp_source("com.example.app:/cb").as_deref(),
            Some("com.example.app:")
        );
        assert_eq!(csp_source("not a uri"), None);
    }

    #[test]
    fn client_ids_are_plain() {
        assert!(valid_id("grafana"));
        assert!(valid_id("my-app_2.prod"));
        for bad in ["", "a b", "a@b", "a:b", &"x".repeat(65), "é"] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }
}
