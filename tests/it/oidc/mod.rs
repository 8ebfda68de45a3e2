//! Sign in with latchkey (the OpenID Connect provider) over real HTTP: the code flow with
//! PKCE, consent, tokens and their claims, refresh rotation and theft, userinfo,
//! revocation, introspection, logout (RP-initiated and back-channel), and races.

mod cli;
mod errors;
mod flow;
mod logout;
mod logs;
mod races;

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use latchkey::oidc::clients::{self, ClientSpec};
use reqwest::StatusCode;
use sha2::{Digest, Sha256};

use crate::helpers::*;

pub const EMAIL: &str = "ada@example.com";
pub const REDIRECT: &str = "https://app.example.test/callback";

/// A response body as JSON (the harness's reqwest has no `json` feature).
pub trait JsonBody {
    async fn json_value(self) -> serde_json::Value;
}

impl JsonBody for reqwest::Response {
    async fn json_value(self) -> serde_json::Value {
        let text = self.text().await.expect("a body");
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("JSON: {text}"))
    }
}

/// A registered client as its relying party knows it.
#[derive(Clone)]
pub struct Rp {
    pub id: String,
    pub secret: Option<String>,
    pub redirect_uri: String,
}

/// Registers a confidential client (as `latchkey oidc client add` does), after `tweak`.
pub async fn register(app: &TestApp, id: &str, tweak: impl FnOnce(&mut ClientSpec)) -> Rp {
    let mut spec = ClientSpec {
        id: id.to_owned(),
        name: format!("The {id} app"),
        redirect_uris: vec![REDIRECT.to_owned()],
        ..ClientSpec::default()
    };
    tweak(&mut spec);
    let secret = clients::add(&app.state().oidc, &spec)
        .await
        .expect("client added");
    Rp {
        id: id.to_owned(),
        secret: secret.map(|s| secrecy::ExposeSecret::expose_secret(&s).to_owned()),
        redirect_uri: spec.redirect_uris[0].clone(),
    }
}

/// A PKCE verifier and its S256 challenge.
pub fn pkce() -> (String, String) {
    let verifier = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

/// The authorization request's path for `rp`, with `extra` parameters (overriding).
pub fn authorize_path(rp: &Rp, challenge: &str, extra: &[(&str, &str)]) -> String {
    let mut params: Vec<(&str, &str)> = vec![
        ("response_type", "code"),
        ("client_id", &rp.id),
        ("redirect_uri", &rp.redirect_uri),
        ("scope", "openid email profile"),
        ("state", "state-123"),
        ("nonce", "nonce-456"),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
    ];
    for (name, value) in extra {
        params.retain(|(n, _)| n != name);
        if !value.is_empty() {
            params.push((name, value));
        }
    }
    let query: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    format!("/oidc/authorize?{query}")
}

/// The query parameters of a redirect's `Location`.
pub fn query_of(location: &str) -> HashMap<String, String> {
    let url = url::Url::parse(location).unwrap_or_else(|_| panic!("absolute: {location}"));
    url.query_pairs().into_owned().collect()
}

/// Path and query of a same-site `Location` (absolute or not).
pub fn path_of(location: &str) -> String {
    match url::Url::parse(location) {
        Ok(url) => format!("{}?{}", url.path(), url.query().unwrap_or("")),
        Err(_) => location.to_owned(),
    }
}

/// Signs in through the sign-in page with `next`, as the authorization redirect asks.
pub async fn sign_in_with_next(browser: &Browser, next_location: &str) -> reqwest::Response {
    let next = query_of(&browser.url(&path_of(next_location)))
        .get("next")
        .cloned()
        .expect("a next parameter");
    browser
        .submit(
            "/sign-in",
            "/sign-in",
            &[("email", EMAIL), ("password", PASSWORD), ("next", &next)],
        )
        .await
}

/// Follows same-site redirects (`GET`) until one leaves for the client; its `Location`.
pub async fn follow_to_client(browser: &Browser, mut response: reqwest::Response) -> String {
    for _ in 0..10 {
        assert!(
            response.status().is_redirection(),
            "expected a redirect, got {} for {}",
            response.status(),
            response.url()
        );
        let to = location(&response);
        if to.starts_with("https://app.") || to.starts_with("http://app") {
            return to;
        }
        if to.starts_with("/oidc/consent") {
            return to;
        }
        response = browser.get(&path_of(&to)).await;
    }
    panic!("too many redirects");
}

/// Allows (or denies) on the consent page at `consent_path`; the redirect's `Location`.
pub async fn answer_consent(browser: &Browser, consent_path: &str, decision: &str) -> String {
    let page = browser.get(consent_path).await;
    assert_status(&page, StatusCode::OK);
    let body = page.text().await.expect("body");
    let request_id = query_of(&browser.url(consent_path))["request_id"].clone();
    let token = csrf_in(&body).expect("csrf token on the consent page");
    let response = browser
        .client
        .post(browser.url("/oidc/consent"))
        .form(&[
            ("csrf_token", token.as_str()),
            ("request_id", request_id.as_str()),
            ("decision", decision),
        ])
        .send()
        .await
        .expect("POST consent");
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    location(&response)
}

/// A browser signed in as [`EMAIL`] that went through authorization and consent for
/// `rp`; the code and the PKCE verifier.
pub async fn code_for(app: &TestApp, browser: &Browser, rp: &Rp) -> (String, String) {
    let (verifier, challenge) = pkce();
    let first = browser.get(&authorize_path(rp, &challenge, &[])).await;
    let mut to = location(&first);
    if to.starts_with("/sign-in") {
        let signed_in = sign_in_with_next(browser, &to).await;
        to = follow_to_client(browser, signed_in).await;
    } else if !to.starts_with("/oidc/consent") && !to.starts_with("https://") {
        to = follow_to_client(browser, first).await;
    }
    if to.starts_with("/oidc/consent") {
        to = answer_consent(browser, &to, "allow").await;
    }
    let query = query_of(&to);
    assert!(to.starts_with(&rp.redirect_uri), "{to}");
    assert_eq!(query.get("state").map(String::as_str), Some("state-123"));
    assert_eq!(query.get("iss"), Some(&app.base));
    (query["code"].clone(), verifier)
}

/// Posts to the token endpoint with `client_secret_basic` (or `none` for a public client).
pub async fn token_request(
    app: &TestApp,
    base: &str,
    rp: &Rp,
    fields: &[(&str, &str)],
) -> reqwest::Response {
    let client = reqwest::Client::new();
    let mut request = client.post(format!("{base}/oidc/token"));
    let mut form: Vec<(&str, &str)> = fields.to_vec();
    match &rp.secret {
        Some(secret) => request = request.basic_auth(&rp.id, Some(secret)),
        None => form.push(("client_id", &rp.id)),
    }
    let _ = app;
    request.form(&form).send().await.expect("POST token")
}

pub async fn exchange(app: &TestApp, rp: &Rp, code: &str, verifier: &str) -> reqwest::Response {
    token_request(
        app,
        &app.base,
        rp,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &rp.redirect_uri),
            ("code_verifier", verifier),
        ],
    )
    .await
}

pub async fn refresh(app: &TestApp, base: &str, rp: &Rp, token: &str) -> reqwest::Response {
    token_request(
        app,
        base,
        rp,
        &[("grant_type", "refresh_token"), ("refresh_token", token)],
    )
    .await
}

pub async fn userinfo(base: &str, access_token: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("{base}/oidc/userinfo"))
        .bearer_auth(access_token)
        .send()
        .await
        .expect("GET userinfo")
}

/// A signed-in browser, a registered client and the token response of a full flow.
pub async fn signed_in_with_tokens(app: &TestApp, rp: &Rp) -> (Browser, serde_json::Value) {
    let browser = app.browser();
    let (code, verifier) = code_for(app, &browser, rp).await;
    let response = exchange(app, rp, &code, &verifier).await;
    assert_status(&response, StatusCode::OK);
    (browser, response.json_value().await)
}

/// The ID token's claims, checked against the JWKS: signature, algorithm, `kid`.
pub async fn verified_claims(
    app: &TestApp,
    id_token: &str,
    alg: jsonwebtoken::Algorithm,
    aud: &str,
) -> serde_json::Value {
    let header = jsonwebtoken::decode_header(id_token).expect("a JWS header");
    assert_eq!(header.alg, alg);
    let kid = header.kid.expect("kid in the header");
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_value(
        reqwest::get(format!("{}/oidc/jwks", app.base))
            .await
            .expect("GET jwks")
            .json_value()
            .await,
    )
    .expect("a JWK set");
    let jwk = jwks.find(&kid).expect("the kid is in the JWKS");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).expect("decoding key");
    let mut validation = jsonwebtoken::Validation::new(alg);
    validation.set_audience(&[aud]);
    validation.set_issuer(&[&app.base]);
    jsonwebtoken::decode::<serde_json::Value>(id_token, &key, &validation)
        .expect("the ID token verifies")
        .claims
}
