//! The token endpoint (code exchange with PKCE, refresh rotation), userinfo, revocation
//! (RFC 7009) and introspection (RFC 7662). Every use of a token checks that the latchkey
//! session behind its grant still holds, by the rule the pages and forward auth use.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::{Opaque, Provider, REFRESH_GRACE, SigningAlg, unix};
use crate::auth::session::authenticate;
use crate::domain::SessionDigest;
use crate::store::oidc_clients::Client;
use crate::store::oidc_grants::{self, Grant, Refreshed};

/// A token endpoint failure, named as RFC 6749 5.2 names it.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("invalid_request: {0}")]
    InvalidRequest(&'static str),
    #[error("invalid_grant: {0}")]
    InvalidGrant(&'static str),
    #[error("unsupported_grant_type")]
    UnsupportedGrantType,
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// A successful token response.
#[derive(Serialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
    pub id_token: String,
    pub refresh_token: String,
    pub scope: String,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenResponse([redacted])")
    }
}

/// Who the grant's account is now, if the session that authorized it still holds.
async fn live_identity(provider: &Provider, grant: &Grant) -> anyhow::Result<Option<String>> {
    let digest = SessionDigest::from_stored(grant.session_hash.clone());
    let identity = authenticate(&provider.accounts, &digest).await?;
    Ok(identity
        .filter(|identity| identity.user_id == grant.user_id)
        .map(|identity| identity.email.as_str().to_owned()))
}

/// The claims a grant's scopes allow, beside `sub`.
fn identity_claims(
    grant: &Grant,
    email: &str,
    claims: &mut serde_json::Map<String, serde_json::Value>,
) {
    use serde_json::Value;
    if grant.scopes.iter().any(|s| s == "email") {
        claims.insert("email".into(), Value::from(email));
        // Every address was proven by a sign-up link or entered by the operator.
        claims.insert("email_verified".into(), Value::Bool(true));
    }
    if grant.scopes.iter().any(|s| s == "profile") {
        claims.insert("preferred_username".into(), Value::from(email));
        claims.insert("name".into(), Value::from(email));
    }
}

fn signing_alg(client: &Client) -> SigningAlg {
    SigningAlg::parse(&client.signing_alg).unwrap_or(SigningAlg::Rs256)
}

async fn id_token(
    provider: &Provider,
    client: &Client,
    grant: &Grant,
    email: &str,
    access_token: &Opaque,
    with_nonce: bool,
) -> anyhow::Result<String> {
    use serde_json::Value;
    let alg = signing_alg(client);
    let now = unix(OffsetDateTime::now_utc());
    let ttl = i64::try_from(provider.settings.access_token_ttl.as_secs()).unwrap_or(600);
    let mut claims = serde_json::Map::new();
    claims.insert("iss".into(), Value::from(provider.settings.issuer.as_str()));
    claims.insert("sub".into(), Value::from(grant.user_id.to_string()));
    claims.insert("aud".into(), Value::from(client.id.as_str()));
    claims.insert("exp".into(), Value::from(now + ttl));
    claims.insert("iat".into(), Value::from(now));
    claims.insert("auth_time".into(), Value::from(unix(grant.auth_time)));
    if with_nonce && let Some(nonce) = &grant.nonce {
        claims.insert("nonce".into(), Value::from(nonce.as_str()));
    }
    claims.insert("amr".into(), Value::from(grant.amr.clone()));
    claims.insert("sid".into(), Value::from(grant.sid.as_str()));
    claims.insert(
        "at_hash".into(),
        Value::from(alg.left_half_hash(access_token.expose().as_bytes())),
    );
    identity_claims(grant, email, &mut claims);
    provider.signer.sign(alg, "JWT", &claims).await
}

fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// `grant_type=authorization_code`: the code once, for the client that got it, with the
/// same `redirect_uri` and the PKCE verifier of its challenge. A code presented again
/// revokes everything the first redemption issued.
pub async fn exchange_code(
    provider: &Provider,
    client: &Client,
    code: &str,
    redirect_uri: Option<&str>,
    verifier: Option<&str>,
) -> Result<TokenResponse, TokenError> {
    let redirect_uri =
        redirect_uri.ok_or(TokenError::InvalidRequest("redirect_uri is required"))?;
    if let Some(v) = verifier {
        // RFC 7636 4.1: 43 to 128 unreserved characters.
        let ok = (43..=128).contains(&v.len())
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
        if !ok {
            return Err(TokenError::InvalidRequest("code_verifier is malformed"));
        }
    }
    if client.is_public() && verifier.is_none() {
        return Err(TokenError::InvalidRequest("code_verifier is required"));
    }
    if code.is_empty() || code.len() > 100 {
        return Err(TokenError::InvalidGrant("the code is not valid"));
    }
    let code = Opaque::presented(code);
    let challenge = verifier.map(s256);
    let pool = &provider.accounts.pool;
    let Some(grant) = oidc_grants::redeem_code(
        pool,
        &code.digest(),
        &client.id,
        redirect_uri,
        challenge.as_deref(),
    )
    .await?
    else {
        if oidc_grants::revoke_for_replayed_code(pool, &code.digest()).await? {
            tracing::warn!(client_id = %client.id, "an authorization code was presented again; its grant is revoked");
        }
        return Err(TokenError::InvalidGrant("the code is not valid"));
    };
    let Some(email) = live_identity(provider, &grant).await? else {
        oidc_grants::revoke(pool, grant.id).await?;
        return Err(TokenError::InvalidGrant(
            "the session that authorized this code has ended",
        ));
    };
    let access = Opaque::generate();
    let refresh = Opaque::generate();
    let settings = &provider.settings;
    oidc_grants::issue_first_tokens(
        pool,
        grant.id,
        &access.digest(),
        settings.access_token_ttl.as_secs_f64(),
        &refresh.digest(),
        settings.refresh_token_ttl.as_secs_f64(),
    )
    .await?;
    let id_token = id_token(provider, client, &grant, &email, &access, true).await?;
    Ok(TokenResponse {
        access_token: access.expose().to_owned(),
        token_type: "Bearer",
        expires_in: settings.access_token_ttl.as_secs(),
        id_token,
        refresh_token: refresh.expose().to_owned(),
        scope: grant.scopes.join(" "),
    })
}

/// `grant_type=refresh_token`: rotation with a grace window and theft detection (see
/// `store::oidc_grants::refresh`); the session must still hold, and the refresh counts as
/// its activity.
pub async fn refresh(
    provider: &Provider,
    client: &Client,
    refresh_token: &str,
) -> Result<TokenResponse, TokenError> {
    if refresh_token.is_empty() || refresh_token.len() > 100 {
        return Err(TokenError::InvalidGrant("the refresh token is not valid"));
    }
    let presented = Opaque::presented(refresh_token);
    let next = Opaque::generate();
    let access = Opaque::generate();
    let settings = &provider.settings;
    let pool = &provider.accounts.pool;
    let grant = match oidc_grants::refresh(
        pool,
        &presented.digest(),
        &client.id,
        &next.digest(),
        settings.refresh_token_ttl.as_secs_f64(),
        &access.digest(),
        settings.access_token_ttl.as_secs_f64(),
        REFRESH_GRACE.as_secs_f64(),
    )
    .await?
    {
        Refreshed::Issued(grant) => grant,
        Refreshed::Refused => {
            return Err(TokenError::InvalidGrant("the refresh token is not valid"));
        }
        Refreshed::Theft => {
            tracing::warn!(client_id = %client.id, "a used refresh token was presented again; the grant is revoked");
            return Err(TokenError::InvalidGrant("the refresh token is not valid"));
        }
    };
    let Some(email) = live_identity(provider, &grant).await? else {
        oidc_grants::revoke(pool, grant.id).await?;
        return Err(TokenError::InvalidGrant(
            "the session behind this grant has ended",
        ));
    };
    let id_token = id_token(provider, client, &grant, &email, &access, false).await?;
    Ok(TokenResponse {
        access_token: access.expose().to_owned(),
        token_type: "Bearer",
        expires_in: settings.access_token_ttl.as_secs(),
        id_token,
        refresh_token: next.expose().to_owned(),
        scope: grant.scopes.join(" "),
    })
}

/// The userinfo claims for a Bearer access token; `None` when it is unknown, expired,
/// revoked, or its session has ended.
pub async fn userinfo(
    provider: &Provider,
    access_token: &str,
) -> anyhow::Result<Option<serde_json::Value>> {
    if access_token.is_empty() || access_token.len() > 100 {
        return Ok(None);
    }
    let token = Opaque::presented(access_token);
    let Some((grant, _)) =
        oidc_grants::find_by_access_token(&provider.accounts.pool, &token.digest()).await?
    else {
        return Ok(None);
    };
    let Some(email) = live_identity(provider, &grant).await? else {
        return Ok(None);
    };
    let mut claims = serde_json::Map::new();
    claims.insert(
        "sub".into(),
        serde_json::Value::from(grant.user_id.to_string()),
    );
    identity_claims(&grant, &email, &mut claims);
    Ok(Some(serde_json::Value::Object(claims)))
}

/// RFC 7009: a refresh token of this client ends its whole grant; an access token ends
/// alone. Anything else is ignored (the answer is the same either way).
pub async fn revoke(
    provider: &Provider,
    client: &Client,
    token: &str,
    hint: Option<&str>,
) -> anyhow::Result<()> {
    if token.is_empty() || token.len() > 100 {
        return Ok(());
    }
    let digest = Opaque::presented(token).digest();
    let pool = &provider.accounts.pool;
    if hint == Some("access_token") {
        if !oidc_grants::revoke_access_token(pool, &digest, &client.id).await? {
            oidc_grants::revoke_by_refresh_token(pool, &digest, &client.id).await?;
        }
    } else if !oidc_grants::revoke_by_refresh_token(pool, &digest, &client.id).await? {
        oidc_grants::revoke_access_token(pool, &digest, &client.id).await?;
    }
    Ok(())
}

/// RFC 7662: what this client may learn about one of its own tokens; `{"active": false}`
/// for anything else.
pub async fn introspect(
    provider: &Provider,
    client: &Client,
    token: &str,
    hint: Option<&str>,
) -> anyhow::Result<serde_json::Value> {
    let inactive = serde_json::json!({ "active": false });
    if token.is_empty() || token.len() > 100 {
        return Ok(inactive);
    }
    let digest = Opaque::presented(token).digest();
    let pool = &provider.accounts.pool;
    let (found, kind) = if hint == Some("refresh_token") {
        match oidc_grants::find_by_refresh_token(pool, &digest).await? {
            Some(found) => (Some(found), "refresh_token"),
            None => (
                oidc_grants::find_by_access_token(pool, &digest).await?,
                "access_token",
            ),
        }
    } else {
        match oidc_grants::find_by_access_token(pool, &digest).await? {
            Some(found) => (Some(found), "access_token"),
            None => (
                oidc_grants::find_by_refresh_token(pool, &digest).await?,
                "refresh_token",
            ),
        }
    };
    let Some((grant, expires_at)) = found else {
        return Ok(inactive);
    };
    if grant.client_id != client.id {
        return Ok(inactive);
    }
    let Some(email) = live_identity(provider, &grant).await? else {
        return Ok(inactive);
    };
    let mut answer = serde_json::json!({
        "active": true,
        "scope": grant.scopes.join(" "),
        "client_id": grant.client_id,
        "sub": grant.user_id.to_string(),
        "exp": unix(expires_at),
        "iss": provider.settings.issuer,
        "aud": grant.client_id,
        "sid": grant.sid,
        "token_type": if kind == "access_token" { "Bearer" } else { "refresh_token" },
        "auth_time": unix(grant.auth_time),
    });
    if grant.scopes.iter().any(|s| s == "email")
        && let Some(map) = answer.as_object_mut()
    {
        map.insert("username".into(), serde_json::Value::from(email));
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s256_matches_rfc_7636_appendix_b() {
        assert_eq!(
            s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }
}
