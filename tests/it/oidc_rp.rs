//! latchkey as the OpenID provider of real relying parties (PRODUCT.md, "Sign in with
//! latchkey"): npm's `openid-client` (OpenID-certified) through a whole sign-in with
//! RS256, ES256 and EdDSA clients; `oauth4webapi` for every way a sign-in must fail; and
//! Debian's Apache with mod_auth_openidc under the shipped `deploy/apache/latchkey-oidc.conf`
//! in front of the echo application, signed out again by back-channel logout. The
//! clients are registered with the operator's `latchkey oidc client add`. The person in
//! the browser is a cookie jar walking latchkey's pages as they are written (forms,
//! hidden fields, CSRF tokens, the pressed button). Without node, Apache or the module
//! these tests fail under `CI` and skip otherwise (`.ci/install-oidc-rp`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value as Json;

use crate::echo::{EchoApp, Seen};
use crate::helpers::*;
use crate::two_factor::{code_at, enabled};
use latchkey_test_support::apache::{self, Apache, OidcProtected, add_client, latchkey};
use latchkey_test_support::relying_party::{
    self, BrowserStep, Decision, Person, Who, query_param, walk,
};

const EMAIL: &str = "ada@example.test";
/// A second account, for the person who presses Deny.
const OTHER_EMAIL: &str = "bob@example.test";
/// A relying party's redirect URI that the walk stops at (never fetched).
const REDIRECT_URI: &str = "https://app.example.test/oidc/callback";
const POST_LOGOUT_REDIRECT_URI: &str = "https://app.example.test/signed-out";

/// The discovery document, as any client reads it.
async fn discovery(app: &TestApp) -> Json {
    let response = app.browser().get("/.well-known/openid-configuration").await;
    assert_status(&response, StatusCode::OK);
    serde_json::from_str(&response.text().await.expect("body")).expect("discovery JSON")
}

/// A person with a signed-in browser, and the way they answer a script's browser steps.
struct People {
    latchkey: String,
    ada: Person,
    ada_browser: Browser,
    bob: Person,
    bob_browser: Browser,
}

impl People {
    fn new(app: &TestApp) -> People {
        let person = |email: &str| Person {
            email: email.to_owned(),
            password: PASSWORD.to_owned(),
            second_step: None,
        };
        People {
            latchkey: app.base.clone(),
            ada: person(EMAIL),
            ada_browser: app.browser(),
            bob: person(OTHER_EMAIL),
            bob_browser: app.browser(),
        }
    }

    /// Walks a script's URL until the browser is sent to the relying party's
    /// redirect_uri or post_logout_redirect_uri; returns that URL.
    async fn answer(&self, step: BrowserStep) -> String {
        let anonymous = Browser::new(&self.latchkey);
        let (browser, person, decision) = match step.who {
            Who::Allow => (&self.ada_browser, Some(&self.ada), Decision::Allow),
            Who::Deny => (&self.bob_browser, Some(&self.bob), Decision::Deny),
            Who::Anonymous => (&anonymous, None, Decision::Allow),
        };
        let walked = walk(
            &browser.client,
            &self.latchkey,
            &step.url,
            person,
            decision,
            |url| url.starts_with(REDIRECT_URI) || url.starts_with(POST_LOGOUT_REDIRECT_URI),
        )
        .await;
        assert!(
            walked.status.is_none(),
            "{:?} never reached the relying party from {}: {:?} at {}\n{}",
            step.who,
            step.url,
            walked.status,
            walked.url,
            relying_party::h1_of(&walked.body)
        );
        walked.url
    }
}

/// The environment a script reads.
fn script_env(
    app: &TestApp,
    client_id: &str,
    secret: Option<&str>,
    auth: &str,
    alg: &str,
) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("OIDC_ISSUER", app.base.clone()),
        ("OIDC_CLIENT_ID", client_id.to_owned()),
        ("OIDC_REDIRECT_URI", REDIRECT_URI.to_owned()),
        (
            "OIDC_POST_LOGOUT_REDIRECT_URI",
            POST_LOGOUT_REDIRECT_URI.to_owned(),
        ),
        ("OIDC_CLIENT_AUTH", auth.to_owned()),
        ("OIDC_SIGNING_ALG", alg.to_owned()),
    ];
    if let Some(secret) = secret {
        env.push(("OIDC_CLIENT_SECRET", secret.to_owned()));
    }
    env
}

fn str_at<'a>(json: &'a Json, pointer: &str) -> &'a str {
    json.pointer(pointer)
        .and_then(Json::as_str)
        .unwrap_or_else(|| panic!("{pointer} is not a string in {json:#}"))
}

fn bool_at(json: &Json, pointer: &str) -> bool {
    json.pointer(pointer)
        .and_then(Json::as_bool)
        .unwrap_or_else(|| panic!("{pointer} is not a boolean in {json:#}"))
}

/// openid-client's whole sign-in with a client registered for `alg` and authenticating
/// with `auth`; asserts everything a relying party relies on.
async fn openid_client_signs_in(test: &str, alg: &str, auth: &str) {
    if !relying_party::node_ready(test) {
        return;
    }
    let app = TestApp::spawn().await;
    let user_id = app.create_user(EMAIL, PASSWORD).await;
    let client_id = format!("app-{}", alg.to_lowercase());
    let mut args = vec![
        "--redirect-uri",
        REDIRECT_URI,
        "--post-logout-redirect-uri",
        POST_LOGOUT_REDIRECT_URI,
        "--signing-alg",
        alg,
    ];
    if auth == "none" {
        args.push("--public");
    }
    let secret = add_client(&app, &client_id, &args);
    let people = People::new(&app);

    let outcome = relying_party::run_script(
        "openid-client-flow.mjs",
        &script_env(&app, &client_id, secret.as_deref(), auth, alg),
        |step| people.answer(step),
    )
    .await;
    let found = outcome.findings();

    // Discovery names latchkey as the issuer and every endpoint under it.
    let server = &found["discovery"];
    assert_eq!(str_at(server, "/issuer"), app.base);
    for endpoint in [
        "authorization_endpoint",
        "token_endpoint",
        "userinfo_endpoint",
        "jwks_uri",
        "end_session_endpoint",
        "revocation_endpoint",
        "introspection_endpoint",
    ] {
        assert!(
            str_at(server, &format!("/{endpoint}")).starts_with(&app.base),
            "{endpoint}: {server:#}"
        );
    }

    // The callback: a code of at least 128 bits, the state as sent, and iss (RFC 9207).
    assert_eq!(str_at(&found, "/callback/iss"), app.base);
    assert!(bool_at(&found, "/callback/state_returned"));
    assert!(
        found["callback"]["code_length"].as_u64().unwrap_or(0) >= 22,
        "{:#}",
        found["callback"]
    );

    // The token response, never cached.
    let tokens = &found["token_response"];
    assert_eq!(str_at(tokens, "/token_type"), "bearer");
    assert!(
        tokens["expires_in"].as_u64().is_some_and(|s| s > 0),
        "{tokens:#}"
    );
    assert!(bool_at(tokens, "/has_refresh_token"));
    assert!(
        str_at(tokens, "/cache_control").contains("no-store"),
        "{tokens:#}"
    );

    // The ID token: signed with the client's algorithm by a key in the JWKS (verified
    // by openid-client and again by jose; refused under any other algorithm), with
    // every claim the contract names.
    assert_eq!(str_at(&found, "/id_token/header/alg"), alg);
    let kid = str_at(&found, "/id_token/header/kid");
    assert_eq!(str_at(&found, "/jwks_verified/alg"), alg);
    assert_eq!(str_at(&found, "/jwks_verified/kid"), kid);
    let keys = found["jwks_kids"].as_array().expect("jwks keys");
    assert!(keys.iter().any(|k| k["kid"] == kid), "{keys:?}");
    assert!(
        keys.iter().all(|k| k["has_private"] == false),
        "the JWKS holds only public keys: {keys:?}"
    );
    assert!(bool_at(&found, "/other_algorithm/refused"));
    let claims = &found["id_token"]["claims"];
    assert_eq!(str_at(claims, "/iss"), app.base);
    assert_eq!(str_at(claims, "/sub"), user_id.to_string());
    assert_eq!(
        claims["aud"],
        Json::String(client_id.clone()),
        "aud: {claims:#}"
    );
    assert!(bool_at(&found, "/nonce_matches"));
    for number in ["exp", "iat", "auth_time"] {
        assert!(claims[number].is_u64(), "{number}: {claims:#}");
    }
    assert!(claims["exp"].as_u64() > claims["iat"].as_u64());
    // A password alone (RFC 8176's "pwd").
    assert_eq!(claims["amr"], serde_json::json!(["pwd"]), "amr: {claims:#}");
    assert!(!str_at(claims, "/sid").is_empty());
    assert!(!str_at(claims, "/at_hash").is_empty());
    assert_eq!(str_at(claims, "/email"), EMAIL);
    assert!(bool_at(claims, "/email_verified"));
    assert!(!str_at(claims, "/preferred_username").is_empty());
    assert!(!str_at(claims, "/name").is_empty());

    // Userinfo answers the same identity.
    let userinfo = &found["userinfo"];
    for claim in ["sub", "email", "preferred_username", "name"] {
        assert_eq!(userinfo[claim], claims[claim], "{claim}: {userinfo:#}");
    }
    assert_eq!(userinfo["email_verified"], Json::Bool(true));
    assert_eq!(found["introspection"]["active"], Json::Bool(true));

    // Refresh rotates, and the new access token opens userinfo.
    assert!(bool_at(&found, "/refresh/rotated"));
    assert!(bool_at(&found, "/refresh/new_access_token"));
    assert_eq!(str_at(&found, "/refresh/userinfo_sub"), user_id.to_string());

    // Revocation: the access token gets 401 invalid_token at userinfo and is inactive;
    // the refresh token gets invalid_grant.
    let revoked = &found["revoked_access_token"];
    assert!(bool_at(revoked, "/userinfo/refused"), "{revoked:#}");
    assert_eq!(revoked["status"], 401, "{revoked:#}");
    assert!(
        str_at(revoked, "/www_authenticate").contains("error=\"invalid_token\""),
        "{revoked:#}"
    );
    assert_eq!(revoked["introspection_active"], Json::Bool(false));
    assert!(bool_at(&found, "/revoked_refresh_token/refused"));
    assert_eq!(
        str_at(&found, "/revoked_refresh_token/error"),
        "invalid_grant"
    );

    // RP-initiated logout: back at post_logout_redirect_uri with the state, and signed
    // out of latchkey.
    assert!(
        bool_at(&found, "/end_session/at_post_logout_redirect_uri"),
        "{:#}",
        found["end_session"]
    );
    assert!(bool_at(&found, "/end_session/state_returned"));
    let home = people.ada_browser.get("/").await;
    assert_eq!(home.status(), StatusCode::SEE_OTHER);
    assert!(
        location(&home).starts_with("/sign-in"),
        "{}",
        location(&home)
    );
}

#[tokio::test]
async fn openid_client_signs_in_with_an_rs256_client_using_client_secret_basic() {
    openid_client_signs_in("openid_client_rs256", "RS256", "client_secret_basic").await;
}

#[tokio::test]
async fn openid_client_signs_in_with_an_es256_client_using_client_secret_post() {
    openid_client_signs_in("openid_client_es256", "ES256", "client_secret_post").await;
}

#[tokio::test]
async fn openid_client_signs_in_with_an_eddsa_public_client_using_pkce_alone() {
    openid_client_signs_in("openid_client_eddsa", "EdDSA", "none").await;
}

#[tokio::test]
async fn oauth4webapi_is_refused_each_wrong_step_with_the_error_the_rfcs_name() {
    if !relying_party::node_ready("oauth4webapi_refusals") {
        return;
    }
    let app = TestApp::spawn().await;
    app.create_user(EMAIL, PASSWORD).await;
    app.create_user(OTHER_EMAIL, PASSWORD).await;
    let secret = add_client(&app, "refusals", &["--redirect-uri", REDIRECT_URI]);
    let people = People::new(&app);
    let outcome = relying_party::run_script(
        "oauth4webapi-refusals.mjs",
        &script_env(
            &app,
            "refusals",
            secret.as_deref(),
            "client_secret_basic",
            "RS256",
        ),
        |step| people.answer(step),
    )
    .await;
    let cases = outcome.findings();
    let case = |name: &str| -> &Json {
        let case = &cases[name];
        assert!(case.is_object(), "no case {name} in {cases:#}");
        case
    };
    let refused_with = |name: &str, error: &str| {
        let c = case(name);
        assert!(bool_at(c, "/refused"), "{name} was not refused: {c:#}");
        assert_eq!(c["error"], error, "{name}: {c:#}");
    };

    // The relying party's own checks: state and nonce.
    let wrong_state = case("wrong_state");
    assert!(bool_at(wrong_state, "/refused"));
    assert!(
        str_at(wrong_state, "/message").contains("\"state\""),
        "{wrong_state:#}"
    );
    let wrong_nonce = case("wrong_nonce");
    assert!(bool_at(wrong_nonce, "/refused"));
    assert_eq!(
        str_at(wrong_nonce, "/code"),
        "OAUTH_JWT_CLAIM_COMPARISON_FAILED"
    );
    assert!(bool_at(wrong_nonce, "/id_token_nonce_is_the_one_sent"));

    // The token endpoint: invalid_grant with 400 for a code that does not match.
    for name in [
        "wrong_code_verifier",
        "missing_code_verifier",
        "other_redirect_uri",
    ] {
        refused_with(name, "invalid_grant");
        assert_eq!(case(name)["status"], 400, "{name}");
    }

    // A replayed code: invalid_grant, and the first redemption's tokens are dead.
    refused_with("replayed_code", "invalid_grant");
    let replayed = case("replayed_code");
    assert_eq!(replayed["first_access_token_before"]["status"], 200);
    assert_eq!(replayed["first_access_token_after"]["status"], 401);
    assert!(
        str_at(replayed, "/first_access_token_after/www_authenticate")
            .contains("error=\"invalid_token\"")
    );
    assert!(bool_at(replayed, "/first_refresh_token_after/refused"));
    assert_eq!(
        replayed["first_refresh_token_after"]["error"], "invalid_grant",
        "{replayed:#}"
    );

    // A wrong client secret: 401 invalid_client, with WWW-Authenticate for Basic; the
    // code is still good for the right secret.
    for name in ["wrong_client_secret_basic", "wrong_client_secret_post"] {
        let c = case(name);
        assert!(bool_at(c, "/refused"), "{name}: {c:#}");
        assert_eq!(c["answer"]["status"], 401, "{name}: {c:#}");
        assert_eq!(
            c["answer"]["body"]["error"], "invalid_client",
            "{name}: {c:#}"
        );
    }
    assert!(
        str_at(
            case("wrong_client_secret_basic"),
            "/answer/www_authenticate"
        )
        .starts_with("Basic"),
        "{:#}",
        case("wrong_client_secret_basic")
    );
    assert!(
        !bool_at(case("right_secret_after_wrong_ones"), "/refused"),
        "{:#}",
        case("right_secret_after_wrong_ones")
    );

    // A tampered ID token: its claims alone would pass, its signature does not.
    let tampered = case("tampered_id_token");
    assert!(bool_at(tampered, "/refused"));
    assert!(
        str_at(tampered, "/message").contains("signature verification failed"),
        "{tampered:#}"
    );
    assert_eq!(
        str_at(tampered, "/tampered_sub"),
        "00000000-0000-0000-0000-000000000001"
    );
    let unsigned = case("unsigned_id_token");
    assert!(bool_at(unsigned, "/refused"));
    assert!(
        str_at(unsigned, "/message").contains("\"alg\""),
        "{unsigned:#}"
    );

    refused_with("unsupported_grant_type", "unsupported_grant_type");
    assert_eq!(case("unsupported_grant_type")["status"], 400);

    // Errors of the authorization itself come back to the client, with iss.
    refused_with("login_required", "login_required");
    assert_eq!(str_at(case("login_required"), "/iss"), app.base);
    refused_with("access_denied", "access_denied");
    assert_eq!(str_at(case("access_denied"), "/iss"), app.base);
    refused_with("unsupported_response_type", "unsupported_response_type");
}

/// latchkey, the echo application, and Apache with mod_auth_openidc in front of it.
struct ApacheStack {
    app: TestApp,
    echo: EchoApp,
    apache: Apache,
    user_id: uuid::Uuid,
    person: Person,
}

impl ApacheStack {
    /// `None` when Apache or the module is not installed (outside CI).
    /// An account with two-factor on: its next sign-in needs a fresh code (one, as a
    /// code is good once).
    async fn start(test: &str, alg: &str) -> Option<ApacheStack> {
        Self::start_with(test, alg, true).await
    }

    async fn start_with(test: &str, alg: &str, two_factor: bool) -> Option<ApacheStack> {
        if !apache::installed(test) {
            return None;
        }
        let OidcProtected { app, echo, apache } = OidcProtected::start_signing(alg).await;
        let second_step: Option<Arc<dyn Fn() -> String + Send + Sync>> = if two_factor {
            let (_, secret, _) = enabled(&app, EMAIL).await;
            Some(Arc::new(move || code_at(&secret, 1)))
        } else {
            app.create_user(EMAIL, PASSWORD).await;
            None
        };
        let user_id = users_id(&app, EMAIL).await;
        let person = Person {
            email: EMAIL.to_owned(),
            password: PASSWORD.to_owned(),
            second_step,
        };
        Some(ApacheStack {
            app,
            echo,
            apache,
            user_id,
            person,
        })
    }

    fn page(&self) -> String {
        format!("{}{PAGE}", self.apache.site.app_url())
    }

    /// A visit to the application's page, as a browser asks for a page.
    async fn visit(&self, browser: &Browser) -> reqwest::Response {
        browser
            .client
            .get(self.page())
            .header("Accept", "text/html,application/xhtml+xml")
            .header("OIDC_CLAIM_email", "mallory@example.test")
            .header("OIDC_CLAIM_sub", "00000000-0000-0000-0000-000000000001")
            .send()
            .await
            .expect("GET through Apache")
    }

    /// Signs `browser` in to the application through latchkey (password, two-factor
    /// step, consent the first time); returns what the application saw.
    async fn signed_in(&self, browser: &Browser) -> Seen {
        let walked = walk(
            &browser.client,
            &self.app.base,
            &self.page(),
            Some(&self.person),
            Decision::Allow,
            |_| false,
        )
        .await;
        assert_eq!(
            walked.status,
            Some(StatusCode::OK),
            "{}\n{}",
            walked.body,
            self.apache.logs()
        );
        assert_eq!(walked.url, self.page());
        serde_json::from_str(&walked.body).expect("the echo's JSON")
    }

    /// The visit is sent to latchkey's authorization endpoint, and nothing reaches the
    /// application; returns the authorization URL.
    async fn sent_to_latchkey(&self, browser: &Browser, authorization_endpoint: &str) -> String {
        let before = self.echo.count();
        let response = self.visit(browser).await;
        let to = location(&response);
        assert_eq!(
            response.status(),
            StatusCode::FOUND,
            "to {to:?}\n{}",
            self.apache.logs()
        );
        assert!(to.starts_with(authorization_endpoint), "{to}");
        assert_eq!(query_param(&to, "client_id").as_deref(), Some("apache"));
        assert_eq!(
            query_param(&to, "code_challenge_method").as_deref(),
            Some("S256")
        );
        assert_eq!(self.echo.count(), before, "nothing reached the application");
        to
    }
}

/// The page the tests ask the application for; its query must survive the round trip.
const PAGE: &str = "/wiki/Some%20Page?tab=history&lang=en&x=%2Fa%3Fb";

async fn users_id(app: &TestApp, email: &str) -> uuid::Uuid {
    let (id,): (uuid::Uuid,) =
        sqlx::query_as("select id from users where lower(email) = lower($1)")
            .bind(email)
            .fetch_one(&app.pool)
            .await
            .expect("the account");
    id
}

#[tokio::test]
async fn apache_with_mod_auth_openidc_signs_in_through_latchkey_and_back_channel_logout_locks_it_again()
 {
    apache_signs_in_and_is_locked_by_back_channel_logout("apache_mod_auth_openidc", "RS256").await;
}

#[tokio::test]
async fn apache_with_an_es256_client_verifies_its_id_and_logout_tokens_too() {
    apache_signs_in_and_is_locked_by_back_channel_logout("apache_mod_auth_openidc_es256", "ES256")
        .await;
}

/// The whole life of an Apache session: anonymous → latchkey's sign-in, two-factor and
/// consent → the page first asked for, with the identity → locked again within seconds
/// of signing out of latchkey (back-channel logout).
async fn apache_signs_in_and_is_locked_by_back_channel_logout(test: &str, alg: &str) {
    let Some(stack) = ApacheStack::start(test, alg).await else {
        return;
    };
    let authorization_endpoint =
        str_at(&discovery(&stack.app).await, "/authorization_endpoint").to_owned();
    let browser = Browser::new(&stack.app.base);

    // Anonymous: to latchkey's authorization endpoint, then its sign-in.
    let authorize = stack
        .sent_to_latchkey(&browser, &authorization_endpoint)
        .await;
    let walked = walk(
        &browser.client,
        &stack.app.base,
        &authorize,
        Some(&stack.person),
        Decision::Allow,
        |_| false,
    )
    .await;

    // Password, two-factor step and consent, then back at the page first asked for,
    // with the identity from latchkey (and none of what the browser forged).
    assert_eq!(
        walked.pages.len(),
        3,
        "sign-in, two-factor, consent: {:?}",
        walked.pages
    );
    assert_eq!(
        walked.status,
        Some(StatusCode::OK),
        "{}\n{}",
        walked.body,
        stack.apache.logs()
    );
    assert_eq!(walked.url, stack.page());
    let seen: Seen = serde_json::from_str(&walked.body).expect("the echo's JSON");
    assert_eq!(seen.path_and_query(), PAGE);
    let user_id = stack.user_id.to_string();
    assert_eq!(seen.header("oidc_claim_email"), Some(EMAIL), "{seen:#?}");
    assert_eq!(seen.header("oidc_claim_sub"), Some(user_id.as_str()));
    assert_eq!(
        seen.header("oidc_claim_email_verified"),
        Some("1"),
        "{seen:#?}"
    );
    assert!(
        seen.header("oidc_claim_preferred_username")
            .is_some_and(|v| !v.is_empty())
    );
    // The sign-in took the password and a one-time code (RFC 8176 values).
    assert_eq!(
        seen.header("oidc_claim_amr"),
        Some("pwd,otp,mfa"),
        "{seen:#?}"
    );
    assert!(
        seen.header_values("cookie")
            .iter()
            .all(|c| !c.contains("mod_auth_openidc_session")),
        "the module's session cookie is kept from the application: {seen:#?}"
    );

    // Signed in, the next visit goes straight through (no new sign-in, no consent).
    let again = stack.visit(&browser).await;
    assert_eq!(again.status(), StatusCode::OK);
    let seen: Seen = serde_json::from_str(&again.text().await.expect("body")).expect("JSON");
    assert_eq!(seen.header("oidc_claim_email"), Some(EMAIL));
    assert!(
        stack.apache.access_log().contains(&format!(" {user_id} ")),
        "REMOTE_USER is the account id:\n{}",
        stack.apache.access_log()
    );

    // Signing out of latchkey: latchkey posts a logout token to the module, which ends
    // its session; the application is locked again within seconds.
    let signed_out_at = Instant::now();
    let response = browser.sign_out().await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    loop {
        let response = stack.visit(&browser).await;
        if response.status() != StatusCode::OK {
            break;
        }
        assert!(
            signed_out_at.elapsed() <= Duration::from_secs(10),
            "the application still answers {:?} after sign-out:\n{}",
            signed_out_at.elapsed(),
            stack.apache.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let authorize = stack
        .sent_to_latchkey(&browser, &authorization_endpoint)
        .await;
    assert!(
        stack
            .apache
            .access_log()
            .contains("\"POST /oidc/callback?logout=backchannel HTTP/1.1\" 200"),
        "the back-channel logout reached the module:\n{}",
        stack.apache.access_log()
    );
    // ...and latchkey asks for the password again.
    let response = browser.client.get(&authorize).send().await.expect("GET");
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert!(
        location(&response).contains("/sign-in"),
        "{}",
        location(&response)
    );
}

#[tokio::test]
async fn signing_out_of_the_apache_application_signs_out_of_latchkey_too() {
    let Some(stack) = ApacheStack::start("apache_rp_initiated_logout", "RS256").await else {
        return;
    };
    let discovery = discovery(&stack.app).await;
    let end_session_endpoint = str_at(&discovery, "/end_session_endpoint").to_owned();
    let authorization_endpoint = str_at(&discovery, "/authorization_endpoint").to_owned();
    let browser = Browser::new(&stack.app.base);
    let seen = stack.signed_in(&browser).await;
    assert_eq!(seen.header("oidc_claim_email"), Some(EMAIL));

    // The application's sign-out link: the module ends its session and sends the browser
    // to latchkey's end_session_endpoint (with the ID token as hint), which signs the
    // person out and returns to the application's registered post-logout URI.
    let app_home = format!("{}/", stack.apache.site.app_url());
    let logout = format!(
        "{}{}?logout={}",
        stack.apache.site.app_url(),
        apache::CALLBACK_PATH,
        app_home.replace(':', "%3A").replace('/', "%2F")
    );
    let first = browser
        .client
        .get(&logout)
        .header("Accept", "text/html")
        .send()
        .await
        .expect("GET the logout link");
    let to = location(&first);
    assert!(
        to.starts_with(&end_session_endpoint),
        "the module sends the browser to latchkey's end_session_endpoint, not {to:?} ({})\n{}",
        first.status(),
        stack.apache.logs()
    );
    assert!(query_param(&to, "id_token_hint").is_some(), "{to}");
    let walked = walk(
        &browser.client,
        &stack.app.base,
        &to,
        Some(&stack.person),
        Decision::Allow,
        |url| url == app_home,
    )
    .await;
    assert_eq!(
        walked.url, app_home,
        "back at the application's post-logout URI: {walked:?}"
    );

    // Signed out of latchkey: its home page asks for the sign-in, and so does the
    // application (through latchkey's authorization endpoint).
    let home = browser.get("/").await;
    assert_eq!(home.status(), StatusCode::SEE_OTHER);
    assert!(
        location(&home).starts_with("/sign-in"),
        "{}",
        location(&home)
    );
    let authorize = stack
        .sent_to_latchkey(&browser, &authorization_endpoint)
        .await;
    let response = browser.client.get(&authorize).send().await.expect("GET");
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert!(
        location(&response).contains("/sign-in"),
        "{}",
        location(&response)
    );
}

#[tokio::test]
async fn apache_keeps_signing_in_after_the_operator_rotates_the_signing_keys() {
    // Two sign-ins in a row: a password-only account (a one-time code is good once).
    let Some(stack) = ApacheStack::start_with("apache_key_rotation", "RS256", false).await else {
        return;
    };
    let jwks_kids = |jwks: &Json| -> Vec<String> {
        jwks["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .filter(|k| k["alg"] == "RS256")
            .map(|k| str_at(k, "/kid").to_owned())
            .collect()
    };
    let jwks_uri = str_at(&discovery(&stack.app).await, "/jwks_uri").to_owned();
    let jwks = |client: reqwest::Client| {
        let uri = jwks_uri.clone();
        async move {
            let text = client
                .get(&uri)
                .send()
                .await
                .expect("GET the JWKS")
                .text()
                .await
                .expect("body");
            serde_json::from_str::<Json>(&text).expect("JWKS JSON")
        }
    };
    let first = Browser::new(&stack.app.base);
    stack.signed_in(&first).await;
    let before = jwks_kids(&jwks(first.client.clone()).await);

    // The module has latchkey's keys cached; the operator rotates them.
    // Every instance reads the keys anew within seconds; the JWKS shows the new one.
    latchkey(&stack.app, &["oidc", "keys", "rotate"]);
    let rotated_at = Instant::now();
    let after = loop {
        let after = jwks_kids(&jwks(first.client.clone()).await);
        if after.len() > before.len() || rotated_at.elapsed() > Duration::from_secs(10) {
            break after;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        before.iter().all(|kid| after.contains(kid)),
        "the old public key stays published: {before:?} → {after:?}"
    );
    assert!(
        after.len() > before.len(),
        "a new key: {before:?} → {after:?}"
    );

    // A new sign-in gets an ID token under the new key, which the module fetches.
    let second = Browser::new(&stack.app.base);
    let seen = stack.signed_in(&second).await;
    assert_eq!(seen.header("oidc_claim_email"), Some(EMAIL));
    // The first session still works, and a sign-out (a logout token under the new key)
    // still locks it.
    assert_eq!(stack.visit(&first).await.status(), StatusCode::OK);
    let signed_out_at = Instant::now();
    assert_eq!(first.sign_out().await.status(), StatusCode::SEE_OTHER);
    while stack.visit(&first).await.status() == StatusCode::OK {
        assert!(
            signed_out_at.elapsed() <= Duration::from_secs(10),
            "still signed in to the application after sign-out:\n{}",
            stack.apache.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
