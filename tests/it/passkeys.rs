//! Passkeys, driven as a browser with a software authenticator would drive them — and as
//! an attacker would, sending what no browser sends: a replayed assertion, one made for
//! another origin or RP id, a challenge used twice or from another browser, an unknown
//! credential, a counter that goes backwards, and one ceremony finished twenty times at
//! once on two instances. The authenticator is built here from its specification (CBOR
//! by hand, ECDSA P-256 from `ring`); the server verifies with webauthn-rs.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use reqwest::StatusCode;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};

use crate::burst::{self, RawRequest};
use crate::helpers::*;
use crate::two_factor::{code_at, enabled};

/// A test server whose `public_url` names `localhost` (an IP address cannot be an RP id);
/// requests still go to 127.0.0.1.
async fn spawn() -> TestApp {
    spawn_with(|_| {}).await
}

async fn spawn_with(tweak: impl FnOnce(&mut latchkey::config::Config)) -> TestApp {
    TestApp::spawn_with(|config| {
        let port = config.listen.port();
        config.public_url = format!("http://localhost:{port}").parse().expect("url");
        tweak(config);
    })
    .await
}

fn origin_of(app: &TestApp) -> String {
    app.state().config.public_url.origin().ascii_serialization()
}

/// One credential of a software authenticator.
struct SoftPasskey {
    key: EcdsaKeyPair,
    credential_id: Vec<u8>,
    user_handle: Vec<u8>,
    counter: u32,
    /// A synced passkey: backup eligible and backed up, counter always 0.
    synced: bool,
    /// Whether the authenticator reports user verification.
    verifies_user: bool,
}

fn cbor_head(major: u8, len: usize) -> Vec<u8> {
    let major = major << 5;
    match len {
        0..24 => vec![major | len as u8],
        24..256 => vec![major | 24, len as u8],
        _ => vec![major | 25, (len >> 8) as u8, len as u8],
    }
}

fn cbor_text(text: &str) -> Vec<u8> {
    [cbor_head(3, text.len()), text.as_bytes().to_vec()].concat()
}

fn cbor_bytes(bytes: &[u8]) -> Vec<u8> {
    [cbor_head(2, bytes.len()), bytes.to_vec()].concat()
}

fn sha256(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

impl SoftPasskey {
    fn new(synced: bool) -> SoftPasskey {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .expect("generate a key");
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .expect("load the key");
        let mut credential_id = vec![0u8; 32];
        ring::rand::SecureRandom::fill(&rng, &mut credential_id).expect("random id");
        SoftPasskey {
            key,
            credential_id,
            user_handle: Vec::new(),
            counter: 0,
            synced,
            verifies_user: true,
        }
    }

    fn flags(&self, attested: bool) -> u8 {
        let mut flags = 0x01; // user present
        if self.verifies_user {
            flags |= 0x04;
        }
        if self.synced {
            flags |= 0x08 | 0x10;
        }
        if attested {
            flags |= 0x40;
        }
        flags
    }

    fn cose_key(&self) -> Vec<u8> {
        let point = self.key.public_key().as_ref();
        let (x, y) = (&point[1..33], &point[33..65]);
        // {1: 2 (EC2), 3: -7 (ES256), -1: 1 (P-256), -2: x, -3: y}
        [
            vec![0xa5, 0x01, 0x02, 0x03, 0x26, 0x20, 0x01, 0x21],
            cbor_bytes(x),
            vec![0x22],
            cbor_bytes(y),
        ]
        .concat()
    }

    fn next_counter(&mut self) -> u32 {
        if !self.synced {
            self.counter += 1;
        }
        self.counter
    }

    /// The answer to creation options: `navigator.credentials.create()`'s JSON.
    fn register(&mut self, options: &Value, origin: &str) -> String {
        let public_key = &options["publicKey"];
        let rp_id = public_key["rp"]["id"].as_str().expect("rp id");
        self.user_handle = B64
            .decode(public_key["user"]["id"].as_str().expect("user id"))
            .expect("user id is base64url");
        let client_data = json!({
            "type": "webauthn.create",
            "challenge": public_key["challenge"],
            "origin": origin,
            "crossOrigin": false,
        })
        .to_string();
        let counter = self.next_counter();
        let auth_data = [
            sha256(rp_id.as_bytes()),
            vec![self.flags(true)],
            counter.to_be_bytes().to_vec(),
            vec![0u8; 16],
            (self.credential_id.len() as u16).to_be_bytes().to_vec(),
            self.credential_id.clone(),
            self.cose_key(),
        ]
        .concat();
        let attestation = [
            vec![0xa3],
            cbor_text("fmt"),
            cbor_text("none"),
            cbor_text("attStmt"),
            vec![0xa0],
            cbor_text("authData"),
            cbor_bytes(&auth_data),
        ]
        .concat();
        json!({
            "id": B64.encode(&self.credential_id),
            "rawId": B64.encode(&self.credential_id),
            "type": "public-key",
            "response": {
                "attestationObject": B64.encode(attestation),
                "clientDataJSON": B64.encode(client_data),
            },
            "extensions": {},
        })
        .to_string()
    }

    /// The answer to request options: `navigator.credentials.get()`'s JSON, signed for
    /// `origin` and `rp_id` (which a real browser would take from the page).
    fn assert_for(&mut self, options: &Value, origin: &str, rp_id: &str) -> String {
        let client_data = json!({
            "type": "webauthn.get",
            "challenge": options["publicKey"]["challenge"],
            "origin": origin,
            "crossOrigin": false,
        })
        .to_string();
        let counter = self.next_counter();
        let auth_data = [
            sha256(rp_id.as_bytes()),
            vec![self.flags(false)],
            counter.to_be_bytes().to_vec(),
        ]
        .concat();
        let signed = [auth_data.clone(), sha256(client_data.as_bytes())].concat();
        let signature = self.key.sign(&SystemRandom::new(), &signed).expect("sign");
        json!({
            "id": B64.encode(&self.credential_id),
            "rawId": B64.encode(&self.credential_id),
            "type": "public-key",
            "response": {
                "authenticatorData": B64.encode(auth_data),
                "clientDataJSON": B64.encode(client_data),
                "signature": B64.encode(signature.as_ref()),
                "userHandle": B64.encode(&self.user_handle),
            },
            "extensions": {},
        })
        .to_string()
    }

    fn assert(&mut self, options: &Value, app: &TestApp) -> String {
        self.assert_for(options, &origin_of(app), "localhost")
    }
}

fn unescape(html: &str) -> String {
    html.replace("&quot;", "\"")
        .replace("&#34;", "\"")
        .replace("&#x27;", "'")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

fn attribute<'a>(page: &'a str, name: &str) -> &'a str {
    let marker = format!("{name}=\"");
    let start = page
        .find(&marker)
        .unwrap_or_else(|| panic!("{name} on the page"))
        + marker.len();
    &page[start..start + page[start..].find('"').expect("end of attribute")]
}

fn hidden_value<'a>(page: &'a str, name: &str) -> &'a str {
    let marker = format!("name=\"{name}\" value=\"");
    let start = page
        .find(&marker)
        .unwrap_or_else(|| panic!("{name} on the page"))
        + marker.len();
    &page[start..start + page[start..].find('"').expect("end of value")]
}

/// Settings → Add a passkey with the current password: the ceremony and its options.
async fn begin_adding(browser: &Browser, password: &str) -> (String, Value, StatusCode) {
    let response = browser
        .submit(
            "/settings/security",
            "/settings/security/passkeys/add",
            &[("current_password", password)],
        )
        .await;
    let status = response.status();
    let page = response.text().await.expect("page");
    if status != StatusCode::OK {
        return (String::new(), Value::Null, status);
    }
    let options: Value =
        serde_json::from_str(&unescape(attribute(&page, "data-options"))).expect("options JSON");
    (hidden_value(&page, "ceremony").to_owned(), options, status)
}

/// Adds `passkey` to the signed-in account of `browser`; the page after.
async fn add_passkey(
    app: &TestApp,
    browser: &Browser,
    passkey: &mut SoftPasskey,
    name: &str,
) -> reqwest::Response {
    let (ceremony, options, status) = begin_adding(browser, PASSWORD).await;
    assert_status_code(status, StatusCode::OK);
    let credential = passkey.register(&options, &origin_of(app));
    browser
        .submit(
            "/settings/security",
            "/settings/security/passkeys",
            &[
                ("ceremony", &ceremony),
                ("credential", &credential),
                ("name", name),
            ],
        )
        .await
}

fn assert_status_code(status: StatusCode, expected: StatusCode) {
    assert_eq!(status, expected);
}

/// A new account with `passkey` added; the browser that added it stays signed in.
async fn account_with_passkey(app: &TestApp, email: &str, passkey: &mut SoftPasskey) -> Browser {
    app.create_user(email, PASSWORD).await;
    let browser = app.browser();
    browser.sign_in(email, PASSWORD).await;
    let response = add_passkey(app, &browser, passkey, "Test key").await;
    assert_eq!(response.status(), StatusCode::OK, "recovery codes page");
    browser
}

/// The sign-in options for `browser`: (ceremony, options).
async fn sign_in_options(browser: &Browser) -> (String, Value) {
    let token = browser.csrf_token("/sign-in").await;
    let response = browser
        .client
        .post(browser.url("/sign-in/passkey/options"))
        .form(&[("csrf_token", token.as_str())])
        .send()
        .await
        .expect("POST options");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response
            .headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
    let body: Value = serde_json::from_str(&response.text().await.expect("body")).expect("JSON");
    (
        body["ceremony"].as_str().expect("ceremony").to_owned(),
        body["options"].clone(),
    )
}

async fn finish_sign_in(
    browser: &Browser,
    ceremony: &str,
    credential: &str,
    next: &str,
) -> reqwest::Response {
    // The token from a page every browser gets, signed in or not.
    browser
        .submit(
            "/forgot-password",
            "/sign-in/passkey",
            &[
                ("ceremony", ceremony),
                ("credential", credential),
                ("next", next),
            ],
        )
        .await
}

async fn passkey_sign_in(
    app: &TestApp,
    browser: &Browser,
    passkey: &mut SoftPasskey,
) -> reqwest::Response {
    let (ceremony, options) = sign_in_options(browser).await;
    let credential = passkey.assert(&options, app);
    finish_sign_in(browser, &ceremony, &credential, "").await
}

async fn signed_in_email(browser: &Browser) -> Option<String> {
    let response = browser.get("/settings/security").await;
    (response.status() == StatusCode::OK).then_some(())?;
    let page = response.text().await.ok()?;
    let start = page.find("class=\"account-email\">")? + "class=\"account-email\">".len();
    Some(page[start..start + page[start..].find('<')?].to_owned())
}

/// A reset link for `email`, after every mail queued so far has gone out (security
/// notices come first).
async fn reset_token(app: &TestApp, browser: &Browser, email: &str) -> String {
    for _ in 0..300 {
        if app
            .count("select count(*) from outbox where status not in ('sent', 'failed')")
            .await
            == 0
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let nth = app.smtp.messages_to(email).len() + 1;
    let response = browser.forgot_password(email).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mails = app.mails_to(email, nth).await;
    assert_eq!(mails.len(), nth, "mails to {email}");
    let link = mails[nth - 1].first_link().expect("a link in the mail");
    let start =
        link.find("/reset-password?token=").expect("a reset link") + "/reset-password?token=".len();
    link[start..].to_owned()
}

async fn sessions_of(app: &TestApp, email: &str) -> i64 {
    app.count(&format!(
        "select count(*) from sessions s join users u on u.id = s.user_id \
         where lower(u.email) = lower('{email}') and s.expires_at > now()"
    ))
    .await
}

#[tokio::test]
async fn a_passkey_is_added_as_a_discoverable_credential_and_listed_with_its_name() {
    let app = spawn().await;
    let email = "ada@example.com";
    app.create_user(email, PASSWORD).await;
    let browser = app.browser();
    browser.sign_in(email, PASSWORD).await;

    let (ceremony, options, _) = begin_adding(&browser, PASSWORD).await;
    let selection = &options["publicKey"]["authenticatorSelection"];
    assert_eq!(selection["residentKey"], "required", "{options}");
    assert_eq!(selection["requireResidentKey"], true);
    assert_eq!(selection["userVerification"], "required");
    assert_eq!(options["publicKey"]["rp"]["id"], "localhost");
    let mut passkey = SoftPasskey::new(false);
    let credential = passkey.register(&options, &origin_of(&app));
    let response = browser
        .submit(
            "/settings/security",
            "/settings/security/passkeys",
            &[
                ("ceremony", &ceremony),
                ("credential", &credential),
                ("name", "  Work   laptop "),
            ],
        )
        .await;

    // The first passkey of an account without recovery codes shows ten, once.
    assert_eq!(response.status(), StatusCode::OK);
    let page = response.text().await.unwrap();
    assert!(page.contains("Your passkey is added"), "{page}");
    assert_eq!(page.matches("<li><code>").count(), 10);
    let settings = browser
        .get("/settings/security")
        .await
        .text()
        .await
        .unwrap();
    let list = &settings[settings.find("id=\"passkeys\"").expect("list")..];
    let list = &list[..list.find("</ul>").unwrap()];
    assert_eq!(list.matches("<li").count(), 1);
    assert!(list.contains("<strong>Work laptop</strong>"), "{list}");
    assert!(list.contains("never used"));
    assert!(list.contains("Remove"));
    // The account id is the user handle.
    let user_id: (uuid::Uuid,) = sqlx::query_as("select id from users where email = $1")
        .bind(email)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(passkey.user_handle, user_id.0.as_bytes());
    // Audited, and mailed.
    assert_eq!(
        app.count("select count(*) from audit_events where kind = 'passkey_added'")
            .await,
        1
    );
    let mails = app.mails_to(email, 1).await;
    assert!(
        mails.iter().any(|m| m
            .data
            .contains("A passkey was added to your latchkey account")),
        "mail about the passkey"
    );

    // A second passkey: the first is excluded, and no new recovery codes.
    let (_, options, _) = begin_adding(&browser, PASSWORD).await;
    let excluded = options["publicKey"]["excludeCredentials"]
        .as_array()
        .expect("excluded credentials");
    assert_eq!(excluded.len(), 1);
    assert_eq!(excluded[0]["id"], B64.encode(&passkey.credential_id));
    let response = add_passkey(&app, &browser, &mut SoftPasskey::new(true), "Phone").await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        location(&response),
        "/settings/security?notice=passkey-added"
    );
}

#[tokio::test]
async fn adding_a_passkey_needs_the_current_password() {
    let app = spawn().await;
    app.create_user("bo@example.com", PASSWORD).await;
    let browser = app.browser();
    browser.sign_in("bo@example.com", PASSWORD).await;

    let (_, _, status) = begin_adding(&browser, "not my password").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (_, _, status) = begin_adding(&browser, "").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        app.count("select count(*) from passkey_ceremonies").await,
        0
    );
    let (_, _, status) = begin_adding(&browser, PASSWORD).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_passkey_signs_in_completely_even_with_two_factor_and_lands_on_next() {
    let app = spawn().await;
    let email = "cy@example.com";
    let (browser, _, _) = enabled(&app, email).await;
    let mut passkey = SoftPasskey::new(false);
    let response = add_passkey(&app, &browser, &mut passkey, "Laptop").await;
    // Two-factor made recovery codes already: none shown again.
    assert_eq!(response.status(), StatusCode::SEE_OTHER);

    // A browser halfway through a password sign-in (waiting for its code) has a session.
    let stranger = app.browser();
    stranger.sign_in(email, PASSWORD).await;
    let planted = stranger.session_cookie();
    assert!(planted.is_some());
    let (ceremony, options) = sign_in_options(&stranger).await;
    assert_eq!(options["mediation"], "conditional");
    assert_eq!(options["publicKey"]["userVerification"], "required");
    let credential = passkey.assert(&options, &app);
    let response = finish_sign_in(&stranger, &ceremony, &credential, "/settings/security").await;

    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&response), "/settings/security");
    assert_eq!(signed_in_email(&stranger).await.as_deref(), Some(email));
    assert_ne!(stranger.session_cookie(), planted, "a fresh session id");
    assert_eq!(
        app.count(
            "select count(*) from audit_events where kind = 'sign_in' and detail = 'passkey'"
        )
        .await,
        1
    );
    let settings = stranger
        .get("/settings/security")
        .await
        .text()
        .await
        .unwrap();
    assert!(settings.contains("last used"), "the use is recorded");
    // A recent passkey sign-in may add a passkey without the password.
    assert!(!settings.contains("id=\"passkey_current_password\""));
    let (_, _, status) = begin_adding(&stranger, "").await;
    assert_eq!(status, StatusCode::OK);
    // An unsafe next is not followed.
    let other = app.browser();
    let (ceremony, options) = sign_in_options(&other).await;
    let credential = passkey.assert(&options, &app);
    let response = finish_sign_in(&other, &ceremony, &credential, "https://evil.example/").await;
    assert_eq!(location(&response), "/");
}

#[tokio::test]
async fn a_replayed_assertion_is_refused() {
    let app = spawn().await;
    let mut passkey = SoftPasskey::new(false);
    account_with_passkey(&app, "di@example.com", &mut passkey).await;
    let browser = app.browser();
    let (ceremony, options) = sign_in_options(&browser).await;
    let credential = passkey.assert(&options, &app);
    let first = finish_sign_in(&browser, &ceremony, &credential, "").await;
    assert_eq!(first.status(), StatusCode::SEE_OTHER);

    // The same answer again, from a fresh browser with the same ceremony: gone.
    let thief = app.browser();
    thief.get("/sign-in").await;
    let again = finish_sign_in(&thief, &ceremony, &credential, "").await;
    assert_eq!(again.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // The same answer against a ceremony of its own: the challenge does not match.
    let (fresh, _) = sign_in_options(&thief).await;
    let replay = finish_sign_in(&thief, &fresh, &credential, "").await;
    assert_eq!(replay.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let page = replay.text().await.unwrap();
    assert!(page.contains("could not be verified"), "{page}");
    assert_eq!(signed_in_email(&thief).await, None);
}

#[tokio::test]
async fn a_challenge_is_used_once_and_only_by_the_browser_that_asked() {
    let app = spawn().await;
    let mut passkey = SoftPasskey::new(false);
    account_with_passkey(&app, "ed@example.com", &mut passkey).await;
    let owner = app.browser();
    let (ceremony, options) = sign_in_options(&owner).await;

    // Another browser with this ceremony and a valid answer to its challenge: refused,
    // and the ceremony stays for the browser that asked.
    let other = app.browser();
    other.get("/sign-in").await;
    let credential = passkey.assert(&options, &app);
    let stolen = finish_sign_in(&other, &ceremony, &credential, "").await;
    assert_eq!(stolen.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        stolen
            .text()
            .await
            .unwrap()
            .contains("expired or was already used")
    );
    assert_eq!(signed_in_email(&other).await, None);

    let credential = passkey.assert(&options, &app);
    let mine = finish_sign_in(&owner, &ceremony, &credential, "").await;
    assert_eq!(mine.status(), StatusCode::SEE_OTHER);
    // Used: a second answer to the same challenge is refused.
    let credential = passkey.assert(&options, &app);
    let twice = finish_sign_in(&owner, &ceremony, &credential, "").await;
    assert_eq!(twice.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // A ceremony id that is not one: the same clear refusal, never a 500.
    let junk = finish_sign_in(&owner, "not-a-uuid", "{", "").await;
    assert_eq!(junk.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn a_ceremony_expires_after_five_minutes() {
    let app = spawn().await;
    let mut passkey = SoftPasskey::new(false);
    account_with_passkey(&app, "fi@example.com", &mut passkey).await;
    let browser = app.browser();
    let (ceremony, options) = sign_in_options(&browser).await;
    let ttl = app
        .count(
            "select extract(epoch from expires_at - now())::bigint from passkey_ceremonies \
             where purpose = 'sign_in'",
        )
        .await;
    assert!((295..=300).contains(&ttl), "{ttl}");
    sqlx::query("update passkey_ceremonies set expires_at = now() - interval '1 second'")
        .execute(&app.pool)
        .await
        .unwrap();
    let credential = passkey.assert(&options, &app);
    let late = finish_sign_in(&browser, &ceremony, &credential, "").await;
    assert_eq!(late.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn an_assertion_for_another_origin_or_rp_id_is_refused() {
    let app = spawn().await;
    let mut passkey = SoftPasskey::new(false);
    account_with_passkey(&app, "gu@example.com", &mut passkey).await;
    let port = app.state().config.listen.port();

    for (origin, rp_id) in [
        (format!("http://evil.localhost:{port}"), "localhost"),
        (format!("https://localhost:{port}"), "localhost"),
        (
            format!("http://localhost:{}", port.wrapping_add(1)),
            "localhost",
        ),
        (origin_of(&app), "evil.example"),
    ] {
        let browser = app.browser();
        let (ceremony, options) = sign_in_options(&browser).await;
        let credential = passkey.assert_for(&options, &origin, rp_id);
        let response = finish_sign_in(&browser, &ceremony, &credential, "").await;
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{origin} {rp_id}"
        );
        assert_eq!(signed_in_email(&browser).await, None);
    }
    // The right origin and RP id still sign in.
    let browser = app.browser();
    let response = passkey_sign_in(&app, &browser, &mut passkey).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn user_verification_is_required() {
    let app = spawn().await;
    let mut passkey = SoftPasskey::new(false);
    account_with_passkey(&app, "ha@example.com", &mut passkey).await;
    passkey.verifies_user = false;
    let browser = app.browser();
    let response = passkey_sign_in(&app, &browser, &mut passkey).await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(signed_in_email(&browser).await, None);
}

#[tokio::test]
async fn an_unknown_credential_is_refused_and_counted_against_the_ip() {
    // Four attempts a minute: the password sign-in that adds the passkey, then three.
    let app = spawn_with(|config| config.ip_rate_limit = 4).await;
    let mut known = SoftPasskey::new(false);
    account_with_passkey(&app, "io@example.com", &mut known).await;
    let browser = app.browser();
    for attempt in 0..3 {
        let mut stranger = SoftPasskey::new(false);
        stranger.user_handle = known.user_handle.clone();
        let response = passkey_sign_in(&app, &browser, &mut stranger).await;
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{attempt}"
        );
        let page = response.text().await.unwrap();
        assert!(page.contains("registered with latchkey"), "{page}");
    }
    // Past the limit even the right passkey waits.
    let response = passkey_sign_in(&app, &browser, &mut known).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(
        app.count(
            "select count(*) from audit_events where kind = 'sign_in_failed' \
             and detail = 'unknown passkey'"
        )
        .await,
        3
    );
}

#[tokio::test]
async fn a_counter_going_backwards_is_refused_but_a_synced_passkey_keeps_zero() {
    let app = spawn().await;
    let mut hardware = SoftPasskey::new(false);
    account_with_passkey(&app, "ju@example.com", &mut hardware).await;
    for _ in 0..2 {
        let response = passkey_sign_in(&app, &app.browser(), &mut hardware).await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
    }
    // A clone of the key, a step behind.
    hardware.counter -= 2;
    let browser = app.browser();
    let response = passkey_sign_in(&app, &browser, &mut hardware).await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(signed_in_email(&browser).await, None);

    // A synced passkey reports 0 every time, with its backup flags.
    let mut synced = SoftPasskey::new(true);
    account_with_passkey(&app, "ka@example.com", &mut synced).await;
    for _ in 0..3 {
        let response = passkey_sign_in(&app, &app.browser(), &mut synced).await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
    }
    let (counter, eligible, backed_up): (i64, bool, bool) = sqlx::query_as(
        "select p.counter, p.backup_eligible, p.backup_state from passkeys p \
         join users u on u.id = p.user_id where u.email = 'ka@example.com'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((counter, eligible, backed_up), (0, true, true));
}

#[tokio::test]
async fn a_disabled_account_is_refused_with_the_same_page_as_a_password() {
    let app = spawn().await;
    let mut passkey = SoftPasskey::new(false);
    account_with_passkey(&app, "li@example.com", &mut passkey).await;
    latchkey::auth::operator::disable(&app.state().accounts, "li@example.com", &Default::default())
        .await
        .expect("disable");
    let browser = app.browser();
    let response = passkey_sign_in(&app, &browser, &mut passkey).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let page = response.text().await.unwrap();
    assert!(page.contains("This account is disabled"), "{page}");
    let by_password = app.browser().sign_in("li@example.com", PASSWORD).await;
    assert_eq!(by_password.status(), StatusCode::FORBIDDEN);
    assert_eq!(signed_in_email(&browser).await, None);
}

#[tokio::test]
async fn a_removed_passkey_signs_in_no_more() {
    let app = spawn().await;
    let email = "mo@example.com";
    let mut passkey = SoftPasskey::new(false);
    let browser = account_with_passkey(&app, email, &mut passkey).await;
    let (id,): (uuid::Uuid,) = sqlx::query_as("select id from passkeys")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let path = format!("/settings/security/passkeys/{id}/remove");

    // Without the password: a page that asks for it; a wrong one changes nothing.
    let ask = browser.submit("/settings/security", &path, &[]).await;
    assert_eq!(ask.status(), StatusCode::OK);
    assert!(ask.text().await.unwrap().contains("Remove this passkey?"));
    let wrong = browser
        .submit(
            "/settings/security",
            &path,
            &[("current_password", "wrong one")],
        )
        .await;
    assert_eq!(wrong.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(app.count("select count(*) from passkeys").await, 1);
    // Another account cannot remove it.
    app.create_user("no@example.com", PASSWORD).await;
    let other = app.browser();
    other.sign_in("no@example.com", PASSWORD).await;
    let theirs = other
        .submit(
            "/settings/security",
            &path,
            &[("current_password", PASSWORD)],
        )
        .await;
    assert_eq!(theirs.status(), StatusCode::NOT_FOUND);

    let removed = browser
        .submit(
            "/settings/security",
            &path,
            &[("current_password", PASSWORD)],
        )
        .await;
    assert_eq!(removed.status(), StatusCode::SEE_OTHER);
    assert_eq!(app.count("select count(*) from passkeys").await, 0);
    let mails = app.mails_to(email, 2).await;
    assert!(mails.iter().any(|m| {
        m.data
            .contains("A passkey was removed from your latchkey account")
    }));
    let later = app.browser();
    let response = passkey_sign_in(&app, &later, &mut passkey).await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let page = response.text().await.unwrap();
    assert!(page.contains("registered with latchkey"), "{page}");
}

#[tokio::test]
async fn a_reset_asks_for_the_passkey_or_a_recovery_code_and_keeps_the_passkeys() {
    let app = spawn().await;
    let email = "pa@example.com";
    app.create_user(email, PASSWORD).await;
    let browser = app.browser();
    browser.sign_in(email, PASSWORD).await;
    let mut passkey = SoftPasskey::new(false);
    let page = add_passkey(&app, &browser, &mut passkey, "Laptop")
        .await
        .text()
        .await
        .unwrap();
    let first_code = {
        let start = page.find("<li><code>").unwrap() + "<li><code>".len();
        page[start..start + page[start..].find('<').unwrap()].to_owned()
    };
    let passkey_session = app.browser();
    assert_eq!(
        passkey_sign_in(&app, &passkey_session, &mut passkey)
            .await
            .status(),
        StatusCode::SEE_OTHER
    );

    // A reset link alone is not enough.
    let anyone = app.browser();
    let token = reset_token(&app, &anyone, email).await;
    let form = anyone
        .get(&format!("/reset-password?token={token}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(form.contains("data-passkey-reset"));
    assert!(form.contains("Recovery code"));
    let bare = anyone
        .reset_password(&token, NEW_PASSWORD, NEW_PASSWORD)
        .await;
    assert_eq!(bare.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        bare.text()
            .await
            .unwrap()
            .contains("Confirm with one of your passkeys, or enter one of your recovery codes")
    );
    let wrong = anyone
        .reset_password_with_code(&token, NEW_PASSWORD, NEW_PASSWORD, "aaaa-bbbb-cccc")
        .await;
    assert_eq!(wrong.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // The passkey proves it.
    let csrf = anyone
        .csrf_token(&format!("/reset-password?token={token}"))
        .await;
    let options = anyone
        .client
        .post(anyone.url("/reset-password/passkey/options"))
        .form(&[("csrf_token", csrf.as_str()), ("token", token.as_str())])
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let options: Value = serde_json::from_str(&options).expect("JSON");
    let allowed = options["options"]["publicKey"]["allowCredentials"]
        .as_array()
        .expect("the account's passkeys");
    assert_eq!(allowed.len(), 1);
    let credential = passkey.assert(&options["options"], &app);
    let ceremony = options["ceremony"].as_str().unwrap();
    let done = anyone
        .submit(
            &format!("/reset-password?token={token}"),
            "/reset-password",
            &[
                ("token", token.as_str()),
                ("new_password", NEW_PASSWORD),
                ("new_password_confirm", NEW_PASSWORD),
                ("passkey_ceremony", ceremony),
                ("passkey_credential", credential.as_str()),
            ],
        )
        .await;
    assert_eq!(
        done.status(),
        StatusCode::SEE_OTHER,
        "{}",
        done.text().await.unwrap()
    );

    // Every session ended, the passkey's too; the passkey itself survives.
    assert_eq!(signed_in_email(&passkey_session).await, None);
    assert_eq!(signed_in_email(&browser).await, None);
    assert_eq!(app.count("select count(*) from passkeys").await, 1);
    assert_eq!(
        passkey_sign_in(&app, &app.browser(), &mut passkey)
            .await
            .status(),
        StatusCode::SEE_OTHER
    );

    // Without JavaScript, a recovery code does it too.
    let token = reset_token(&app, &anyone, email).await;
    let by_code = anyone
        .reset_password_with_code(&token, PASSWORD, PASSWORD, &first_code)
        .await;
    assert_eq!(by_code.status(), StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn two_factor_codes_still_work_on_the_reset_of_an_account_with_passkeys() {
    let app = spawn().await;
    let email = "qi@example.com";
    let (browser, secret, _) = enabled(&app, email).await;
    add_passkey(&app, &browser, &mut SoftPasskey::new(false), "Key").await;
    let anyone = app.browser();
    let token = reset_token(&app, &anyone, email).await;
    let response = anyone
        .reset_password_with_code(&token, NEW_PASSWORD, NEW_PASSWORD, &code_at(&secret, 1))
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn passkeys_are_off_when_public_url_is_an_ip_address() {
    let app = TestApp::spawn().await;
    let page = app.browser().get("/sign-in").await.text().await.unwrap();
    assert!(!page.contains("webauthn"));
    assert!(!page.contains("Sign in with a passkey"));
    let browser = app.browser();
    let token = browser.csrf_token("/sign-in").await;
    let response = browser
        .client
        .post(browser.url("/sign-in/passkey/options"))
        .form(&[("csrf_token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

/// Twenty answers to one ceremony written at once, alternately to two instances and
/// from four source addresses: exactly one signs in, and exactly one session exists.
#[tokio::test]
async fn twenty_concurrent_finishes_of_one_ceremony_make_exactly_one_session() {
    let app = spawn().await;
    let other = app.spawn_sibling().await;
    for round in 0..3 {
        let email = format!("race{round}@example.com");
        let mut passkey = SoftPasskey::new(false);
        let owner = account_with_passkey(&app, &email, &mut passkey).await;
        owner.sign_out().await;
        let before = sessions_of(&app, &email).await;
        let browser = app.browser();
        let (ceremony, options) = sign_in_options(&browser).await;
        let credential = passkey.assert(&options, &app);
        let token = browser.csrf_token("/sign-in").await;
        let cookie = burst::cookie_header(&browser, &app.base);
        let bases = [app.base.as_str(), other.base.as_str()];
        let requests = (0..20)
            .map(|i| {
                let base = bases[i % 2];
                RawRequest {
                    source: burst::source(i, 4),
                    target: burst::target(base),
                    bytes: burst::form_post(
                        base,
                        "/sign-in/passkey",
                        &cookie,
                        &[
                            ("ceremony", ceremony.as_str()),
                            ("credential", credential.as_str()),
                            ("csrf_token", token.as_str()),
                        ],
                    ),
                }
            })
            .collect();
        let answers = burst::burst(requests).await;
        let tally = burst::tally(&answers);
        let signed_in = answers.iter().filter(|a| a.status == 303).count();
        let refused = answers.iter().filter(|a| a.status == 422).count();
        eprintln!("round {round}: {tally:?}");
        assert_eq!((signed_in, refused), (1, 19), "round {round}: {tally:?}");
        assert_eq!(sessions_of(&app, &email).await - before, 1, "round {round}");
        assert_eq!(
            app.count(&format!(
                "select count(*) from audit_events where kind = 'sign_in' \
                 and detail = 'passkey' and email = '{email}'"
            ))
            .await,
            1
        );
    }
}

#[tokio::test]
async fn a_registration_without_user_verification_or_with_a_taken_credential_is_refused() {
    let app = spawn().await;
    let mut first = SoftPasskey::new(false);
    account_with_passkey(&app, "ru@example.com", &mut first).await;

    app.create_user("sa@example.com", PASSWORD).await;
    let browser = app.browser();
    browser.sign_in("sa@example.com", PASSWORD).await;
    let mut unverified = SoftPasskey::new(false);
    unverified.verifies_user = false;
    let response = add_passkey(&app, &browser, &mut unverified, "No UV").await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("could not be verified")
    );

    // The same credential id as another account's passkey.
    let mut copy = SoftPasskey::new(false);
    copy.credential_id = first.credential_id.clone();
    let response = add_passkey(&app, &browser, &mut copy, "Copy").await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("already registered")
    );
    assert_eq!(app.count("select count(*) from passkeys").await, 1);
    assert_eq!(
        app.count(
            "select count(*) from recovery_codes r join users u on u.id = r.user_id \
                   where u.email = 'sa@example.com'"
        )
        .await,
        0,
        "no codes for a passkey that was not added"
    );
}

#[tokio::test]
async fn a_passkey_is_renamed_within_the_length_limit() {
    let app = spawn().await;
    let mut passkey = SoftPasskey::new(false);
    let browser = account_with_passkey(&app, "ti@example.com", &mut passkey).await;
    let (id,): (uuid::Uuid,) = sqlx::query_as("select id from passkeys")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let path = format!("/settings/security/passkeys/{id}/rename");
    let longest = "é".repeat(64);
    let ok = browser
        .submit("/settings/security", &path, &[("name", &longest)])
        .await;
    assert_eq!(ok.status(), StatusCode::SEE_OTHER);
    for bad in ["é".repeat(65), "   ".to_owned()] {
        let refused = browser
            .submit("/settings/security", &path, &[("name", &bad)])
            .await;
        assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    }
    let (name,): (String,) = sqlx::query_as("select name from passkeys")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(name, longest);
    let unknown = browser
        .submit(
            "/settings/security",
            &format!(
                "/settings/security/passkeys/{}/rename",
                uuid::Uuid::new_v4()
            ),
            &[("name", "x")],
        )
        .await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
}

/// Moves the passkey sign-in of every session of the account `secs` into the past.
async fn signed_in_ago(app: &TestApp, email: &str, secs: i64) {
    sqlx::query(
        "update sessions s set data = jsonb_set(s.data, '{signed_in_at}',
             to_jsonb(extract(epoch from now())::bigint - $2))
         from users u where u.id = s.user_id and u.email = $1",
    )
    .bind(email)
    .bind(secs)
    .execute(&app.pool)
    .await
    .expect("backdate the sign-in");
}

#[tokio::test]
async fn a_passkey_sign_in_stands_in_for_the_password_for_five_minutes() {
    let app = spawn().await;
    let email = "uma@example.com";
    let mut passkey = SoftPasskey::new(false);
    let first = account_with_passkey(&app, email, &mut passkey).await;
    first.sign_out().await;
    let browser = app.browser();
    assert_eq!(
        passkey_sign_in(&app, &browser, &mut passkey).await.status(),
        StatusCode::SEE_OTHER
    );

    signed_in_ago(&app, email, 290).await;
    let (_, _, status) = begin_adding(&browser, "").await;
    assert_eq!(status, StatusCode::OK, "within five minutes");

    // A few seconds past (the clock of the database and the server's may round apart).
    signed_in_ago(&app, email, 305).await;
    let settings = browser
        .get("/settings/security")
        .await
        .text()
        .await
        .unwrap();
    assert!(settings.contains("id=\"passkey_current_password\""));
    let (_, _, status) = begin_adding(&browser, "").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "five minutes on");
    let (_, _, status) = begin_adding(&browser, PASSWORD).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn turning_two_factor_off_keeps_the_recovery_codes_of_an_account_with_passkeys() {
    let app = spawn().await;
    let email = "vi@example.com";
    let (browser, secret, codes) = enabled(&app, email).await;
    add_passkey(&app, &browser, &mut SoftPasskey::new(false), "Key").await;
    let off = browser
        .disable_two_factor(PASSWORD, &code_at(&secret, 1))
        .await;
    assert_eq!(off.status(), StatusCode::SEE_OTHER);

    // The reset still asks for a proof, and a saved recovery code is one.
    let anyone = app.browser();
    let token = reset_token(&app, &anyone, email).await;
    let bare = anyone
        .reset_password(&token, NEW_PASSWORD, NEW_PASSWORD)
        .await;
    assert_eq!(bare.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let response = anyone
        .reset_password_with_code(&token, NEW_PASSWORD, NEW_PASSWORD, &codes[0])
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
}
