//! The passkeys flow in Chromium with a virtual authenticator (the W3C WebAuthn
//! WebDriver extension, which chromedriver implements): add a passkey, sign in by
//! autofill and by the button with two-factor on, refuse a disabled account and an
//! authenticator that does not verify the user, reset with the passkey, remove it.
//! The server runs on `http://localhost:PORT`: an IP address cannot be an RP id.

use std::time::{Duration, Instant};

use fantoccini::Client;
use fantoccini::wd::WebDriverCompatibleCommand;
use serde_json::{Value as Json, json};

use crate::driver::cdp;
use crate::helpers::{NEW_PASSWORD, PASSWORD, TestApp};
use crate::page::Page;

const EMAIL: &str = "ada@example.com";

/// A command of the WebAuthn WebDriver extension on the current session.
#[derive(Debug)]
struct WebAuthn {
    method: http::Method,
    path: String,
    body: Option<Json>,
}

impl WebDriverCompatibleCommand for WebAuthn {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/webauthn/{}",
            session_id.unwrap_or_default(),
            self.path
        ))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (http::Method, Option<String>) {
        (self.method.clone(), self.body.as_ref().map(Json::to_string))
    }
}

async fn webauthn(client: &Client, method: http::Method, path: String, body: Option<Json>) -> Json {
    client
        .issue_cmd(WebAuthn {
            method,
            path: path.clone(),
            body,
        })
        .await
        .unwrap_or_else(|e| panic!("webauthn/{path}: {e}"))
}

/// A platform authenticator that keeps resident keys and verifies its user.
async fn add_authenticator(client: &Client) -> String {
    let answer = webauthn(
        client,
        http::Method::POST,
        "authenticator".into(),
        Some(json!({
            "protocol": "ctap2",
            "transport": "internal",
            "hasResidentKey": true,
            "hasUserVerification": true,
            "isUserConsenting": true,
            "isUserVerified": true,
        })),
    )
    .await;
    answer
        .as_str()
        .or_else(|| answer["authenticatorId"].as_str())
        .unwrap_or_else(|| panic!("no authenticator id in {answer}"))
        .to_owned()
}

async fn credentials(client: &Client, authenticator: &str) -> Vec<Json> {
    let answer = webauthn(
        client,
        http::Method::GET,
        format!("authenticator/{authenticator}/credentials"),
        None,
    )
    .await;
    answer.as_array().cloned().unwrap_or_default()
}

async fn set_user_verified(client: &Client, authenticator: &str, verified: bool) {
    webauthn(
        client,
        http::Method::POST,
        format!("authenticator/{authenticator}/uv"),
        Some(json!({ "isUserVerified": verified })),
    )
    .await;
}

/// Waits (up to 20 s) until the browser is on `expected`, as after a script submits a
/// form by itself.
async fn wait_for_path(page: &Page, expected: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let path = page.path().await;
        if path == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "expected to reach {expected}, still on {path}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for_error(page: &Page, message: &str) {
    page.wait_for_text(".error-summary", message).await;
}

async fn sign_in_with_password(page: &Page) {
    page.goto("/sign-in").await;
    page.fill("#email", EMAIL).await;
    page.fill("#password", PASSWORD).await;
    page.enter_and_wait().await;
}

async fn sign_out(page: &Page) {
    page.tab_to(".account-nav button").await;
    page.enter_and_wait().await;
}

/// Tab to "Sign in with a passkey" and press Enter: the script asks the authenticator.
async fn passkey_button(page: &Page) {
    page.goto("/sign-in").await;
    page.tab_to("[data-passkey-button]").await;
    page.enter().await;
}

/// Settings → Two-factor: the key read off the page, a code from it (totp-lite).
async fn turn_on_two_factor(page: &Page) {
    page.goto("/settings/security/two-factor").await;
    let text: String = page
        .text("#totp-secret")
        .await
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let secret = data_encoding::BASE32_NOPAD
        .decode(text.as_bytes())
        .expect("base32 key");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let code = totp_lite::totp_custom::<totp_lite::Sha1>(30, 6, &secret, now);
    page.fill("#current_password", PASSWORD).await;
    page.fill("#totp_code", &code).await;
    page.enter_and_wait().await;
    assert_eq!(page.count("#recovery-codes li").await, 10);
}

/// Waits until the script reports a failure or the server's error summary shows; the
/// browser is still on the sign-in page, signed out.
async fn wait_for_refusal(page: &Page) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if page.is_displayed(".error-summary").await
            || (page.exists("[data-passkey-status]").await
                && !page.text("[data-passkey-status]").await.is_empty())
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no refusal shown on {}",
            page.path().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(page.path().await.starts_with("/sign-in"));
}

pub async fn passkeys(app: &TestApp, page: &Page) {
    app.create_user(EMAIL, PASSWORD).await;
    page.goto("/sign-in").await;
    let autocomplete = page.attr("#email", "autocomplete").await;
    assert_eq!(autocomplete, "username webauthn");
    if !page.javascript {
        // Without a script nothing about passkeys shows, and the password works as ever.
        assert!(!page.is_displayed("#passkey-sign-in").await);
        sign_in_with_password(page).await;
        wait_for_path(page, "/").await;
        page.goto("/settings/security").await;
        page.fill("#passkey_current_password", PASSWORD).await;
        page.tab_to("#add-passkey").await;
        page.enter_and_wait().await;
        assert!(page.is_displayed("[data-passkey-needs-script]").await);
        assert!(!page.is_displayed("[data-passkey-submit]").await);
        page.checkpoint("passkey-add-without-javascript").await;
        return;
    }
    let client = &page.client;
    let authenticator = add_authenticator(client).await;

    // Two-factor on first: a passkey sign-in must not ask for its code.
    sign_in_with_password(page).await;
    turn_on_two_factor(page).await;

    // Add a passkey.
    page.goto("/settings/security").await;
    page.checkpoint("settings-passkeys-empty").await;
    page.fill("#passkey_current_password", PASSWORD).await;
    page.tab_to("#add-passkey").await;
    page.enter_and_wait().await;
    assert_eq!(page.text("h1").await, "Add a passkey");
    assert!(
        page.prop("#name", "value").await.contains(" on "),
        "default name"
    );
    page.checkpoint("passkey-add").await;
    page.tab_to("[data-passkey-submit]").await;
    page.enter().await;
    wait_for_path(page, "/settings/security?notice=passkey-added").await;
    assert_eq!(page.count("#passkeys > li").await, 1);
    page.checkpoint("settings-passkeys").await;
    let stored = credentials(client, &authenticator).await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0]["isResidentCredential"], json!(true), "{stored:?}");
    assert_eq!(stored[0]["rpId"], json!("localhost"));

    // Sign out: the sign-in page's autofill offers the passkey, and a virtual
    // authenticator answers a conditional request at once. No code is asked.
    sign_out(page).await;
    wait_for_path(page, "/").await;

    // The button, in a browser without passkey autofill.
    cdp(
        client,
        "Page.addScriptToEvaluateOnNewDocument",
        json!({ "source": "if (window.PublicKeyCredential) { PublicKeyCredential.isConditionalMediationAvailable = function () { return Promise.resolve(false); }; }" }),
    )
    .await;
    sign_out(page).await;
    wait_for_path(page, "/sign-in?notice=signed-out").await;
    page.checkpoint("sign-in-with-passkey-button").await;
    passkey_button(page).await;
    wait_for_path(page, "/").await;

    // An authenticator that does not verify its user is refused.
    sign_out(page).await;
    set_user_verified(client, &authenticator, false).await;
    passkey_button(page).await;
    wait_for_refusal(page).await;
    page.goto("/").await;
    assert!(page.path().await.starts_with("/sign-in"), "not signed in");
    set_user_verified(client, &authenticator, true).await;

    // A disabled account is refused with the password's page.
    let accounts = &app.state().accounts;
    latchkey::auth::operator::disable(accounts, EMAIL, &Default::default())
        .await
        .expect("disable");
    passkey_button(page).await;
    page.wait_for_text("h1", "This account is disabled").await;
    // The 403 is the only thing the console has to say (Chromium logs the status).
    for entry in crate::driver::console_log(client).await {
        let message = entry["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("/sign-in/passkey") && message.contains("403"),
            "console: {entry}"
        );
    }
    latchkey::auth::operator::enable(accounts, EMAIL, &Default::default())
        .await
        .expect("enable");

    // A reset asks for the passkey (or a code): the passkey answers.
    let before = app.smtp.messages_to(EMAIL).len();
    page.goto("/forgot-password").await;
    page.fill("#email", EMAIL).await;
    page.enter_and_wait().await;
    let mails = app.mails_to(EMAIL, before + 1).await;
    let link = mails
        .last()
        .and_then(|m| m.first_link())
        .expect("a reset link");
    let start = link.find("/reset-password").expect("reset path");
    page.goto(&link[start..]).await;
    page.checkpoint("reset-password-passkey").await;
    page.tab_to("[data-passkey-button]").await;
    page.enter().await;
    page.wait_for_text("[data-passkey-status]", "Passkey confirmed")
        .await;
    page.fill("#new_password", NEW_PASSWORD).await;
    page.fill("#new_password_confirm", NEW_PASSWORD).await;
    page.enter_and_wait().await;
    wait_for_path(page, "/sign-in?notice=password-reset").await;

    // The passkey survived the reset; signed in with it, it can be removed at once.
    passkey_button(page).await;
    wait_for_path(page, "/").await;
    page.goto("/settings/security").await;
    page.tab_to("#passkeys form[action$='/remove'] button")
        .await;
    page.enter_and_wait().await;
    wait_for_path(page, "/settings/security?notice=passkey-removed").await;
    assert_eq!(page.count("#passkeys > li").await, 0);

    // The device still offers it, and the answer is refused with a clear message.
    sign_out(page).await;
    passkey_button(page).await;
    wait_for_error(page, "isn't registered").await;
    page.checkpoint("sign-in-passkey-removed").await;
}
