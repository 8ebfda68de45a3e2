//! The flows, each done with the keyboard alone (Tab to a control, type, Enter), with
//! JavaScript on and off. Every page met passes a checkpoint (see `page.rs`).

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use latchkey_test_support::apache::{self, CLIENT_ID, OidcProtected};
use latchkey_test_support::proxies::{APP_HOST, Kind, Protected};

use crate::driver::Driver;
use crate::helpers::{NEW_PASSWORD, PASSWORD, TestApp};
use crate::page::{Page, Report};

const EMAIL: &str = "ada@example.com";

/// A TOTP code for `secret`, `offset` 30-second steps from now (totp-lite, not the
/// server's implementation).
fn code_at(secret: &[u8], offset: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    totp_lite::totp_custom::<totp_lite::Sha1>(30, 6, secret, (now + offset * 30) as u64)
}

/// The secret from `#totp-secret`, read as a person would copy it.
async fn secret_on(page: &Page) -> Vec<u8> {
    let text: String = page
        .text("#totp-secret")
        .await
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    data_encoding::BASE32_NOPAD
        .decode(text.as_bytes())
        .unwrap_or_else(|e| panic!("#totp-secret {text:?} is not base32: {e}"))
}

async fn assert_path(page: &Page, expected: &str) {
    let path = page.path().await;
    assert_eq!(path, expected, "expected to be on {expected}");
}

async fn assert_banner(page: &Page, contains: &str) {
    assert!(
        page.is_displayed(".banner-success").await,
        "no success banner"
    );
    let banner = page.text(".banner-success").await;
    assert!(
        banner.starts_with("Success") && banner.contains(contains),
        "banner {banner:?} should say {contains:?}"
    );
}

async fn assert_error(page: &Page, message: &str) {
    let summary = page.text(".error-summary").await;
    assert!(
        summary.contains("There is a problem") && summary.contains(message),
        "error summary {summary:?} should say {message:?}"
    );
    let title = page.client.title().await.expect("title");
    assert!(title.starts_with("Error: "), "title {title:?}");
    if page.javascript {
        assert!(
            page.focused_is(".error-summary").await,
            "the error summary should have focus"
        );
    }
}

async fn sign_in(page: &Page, email: &str, password: &str) {
    page.goto("/sign-in").await;
    page.fill("#email", email).await;
    page.fill("#password", password).await;
    page.enter_and_wait().await;
}

/// Tab to the header's "Sign out" button and press Enter.
async fn sign_out(page: &Page) {
    page.tab_to(".account-nav button").await;
    page.enter_and_wait().await;
    assert!(page.path().await.starts_with("/sign-in"));
}

/// From the home page to Settings → Security by keyboard.
async fn open_settings(page: &Page) {
    page.goto("/").await;
    page.tab_to(".account-nav a[href='/settings/security']")
        .await;
    page.enter_and_wait().await;
    assert_path(page, "/settings/security").await;
}

pub async fn sign_in_and_out(app: &TestApp, page: &Page) {
    app.create_user(EMAIL, PASSWORD).await;
    page.goto("/").await;
    assert_path(page, "/sign-in").await;
    page.checkpoint("sign-in").await;

    // Show/Hide only exists where a script can make it work.
    page.fill("#password", "not the password at all").await;
    if page.javascript {
        page.tab_to("button[aria-controls='password']").await;
        let toggle = page
            .prop("button[aria-controls='password']", "textContent")
            .await;
        assert_eq!(toggle.trim(), "Show password");
        page.enter().await;
        assert_eq!(page.attr("#password", "type").await, "text");
        assert_eq!(
            page.prop("button[aria-controls='password']", "textContent")
                .await
                .trim(),
            "Hide password"
        );
        page.enter().await;
        assert_eq!(page.attr("#password", "type").await, "password");
    } else {
        assert!(!page.is_displayed("button[aria-controls='password']").await);
    }

    // A wrong password: one message, the address kept, the password cleared.
    page.tab_to("#email").await;
    page.type_text(EMAIL).await;
    page.tab_to("#password").await;
    page.enter_and_wait().await;
    assert_path(page, "/sign-in").await;
    assert_error(page, "Incorrect email or password.").await;
    assert_eq!(page.prop("#email", "value").await, EMAIL);
    assert_eq!(page.prop("#password", "value").await, "");
    page.checkpoint("sign-in-error").await;

    page.fill("#password", PASSWORD).await;
    page.enter_and_wait().await;
    assert_path(page, "/").await;
    assert!(page.text("main").await.contains(EMAIL));
    page.checkpoint("home").await;

    sign_out(page).await;
    page.checkpoint("signed-out").await;
    page.goto("/").await;
    assert_path(page, "/sign-in").await;
}

pub async fn forgot_password(app: &TestApp, page: &Page) {
    app.create_user(EMAIL, PASSWORD).await;
    page.goto("/sign-in").await;
    page.tab_to("#forgot-password-link").await;
    if page.javascript {
        // The dialog: Cancel closes it and gives focus back to the link...
        page.enter().await;
        assert!(page.is_displayed("#reset-dialog").await, "dialog open");
        assert!(page.focused_is("#reset-dialog-title").await);
        assert!(page.text("#reset-dialog").await.contains("30 minutes"));
        page.checkpoint("sign-in-dialog").await;
        page.tab_to("#reset-dialog button").await;
        page.enter().await;
        assert!(!page.is_displayed("#reset-dialog").await, "dialog closed");
        assert!(page.focused_is("#forgot-password-link").await);
        // ...and Proceed goes on.
        page.enter().await;
        assert!(page.is_displayed("#reset-dialog").await);
        page.tab_to("#reset-dialog a[href='/forgot-password']")
            .await;
    }
    page.enter_and_wait().await;
    assert_path(page, "/forgot-password").await;
    assert!(page.text("main").await.contains("30 minutes"));
    page.checkpoint("forgot-password").await;

    page.tab_to("#email").await;
    page.enter_and_wait().await;
    assert_error(page, "Enter").await;
    page.checkpoint("forgot-password-error").await;

    page.fill("#email", EMAIL).await;
    page.enter_and_wait().await;
    assert!(page.text("main").await.contains(EMAIL));
    page.checkpoint("check-email").await;

    let mails = app.mails_to(EMAIL, 1).await;
    assert_eq!(mails.len(), 1, "one reset mail");
    let link = mails[0].first_link().expect("a link in the mail");
    assert!(link.starts_with(&page.base), "{link}");
    page.goto(&link[page.base.len()..]).await;
    assert!(page.path().await.starts_with("/reset-password?token="));
    page.checkpoint("reset-password").await;

    page.fill("#new_password", NEW_PASSWORD).await;
    if page.javascript {
        page.wait_for_text("#new_password-strength", "Strength:")
            .await;
        page.checkpoint("reset-password-strength").await;
    }
    page.fill("#new_password_confirm", "not the same password at all")
        .await;
    page.enter_and_wait().await;
    assert_error(page, "Enter the same password in both fields").await;
    page.checkpoint("reset-password-error").await;

    page.fill("#new_password", NEW_PASSWORD).await;
    page.fill("#new_password_confirm", NEW_PASSWORD).await;
    page.enter_and_wait().await;
    assert!(page.path().await.starts_with("/sign-in"));
    assert_banner(page, "").await;
    page.checkpoint("sign-in-after-reset").await;
    let mails = app.mails_to(EMAIL, 2).await;
    assert_eq!(
        mails[1].subject().as_deref(),
        Some("Your latchkey password was changed")
    );

    // The old password is gone, the new one works.
    page.fill("#email", EMAIL).await;
    page.fill("#password", PASSWORD).await;
    page.enter_and_wait().await;
    assert_error(page, "Incorrect email or password.").await;
    page.fill("#password", NEW_PASSWORD).await;
    page.enter_and_wait().await;
    assert_path(page, "/").await;

    // The link worked once.
    page.goto(&link[page.base.len()..]).await;
    assert_eq!(page.text("h1").await, "This link has already been used");
    page.checkpoint("reset-link-used").await;
    page.tab_to("main a[href='/forgot-password']").await;
    page.enter_and_wait().await;
    assert_path(page, "/forgot-password").await;

    if page.javascript {
        for (name, mail) in [
            ("mail-reset", &mails[0]),
            ("mail-password-changed", &mails[1]),
        ] {
            let html = mail.html_body().expect("an HTML part");
            page.photograph_mail(name, &html).await;
        }
    }
}

pub async fn change_password(app: &TestApp, page: &Page) {
    app.create_user(EMAIL, PASSWORD).await;
    sign_in(page, EMAIL, PASSWORD).await;
    assert_path(page, "/").await;
    open_settings(page).await;
    page.checkpoint("settings-security").await;

    // The meter rates as the policy does: a common password is "Very weak", with why.
    page.fill("#current_password", "not my current password")
        .await;
    page.fill("#new_password", "passwordpassword").await;
    if page.javascript {
        page.wait_for_text("#new_password-strength", "Strength: Very weak.")
            .await;
        assert!(
            page.text("#new_password-strength")
                .await
                .contains("too common")
        );
    }
    page.fill("#new_password_confirm", "passwordpassword").await;
    page.enter_and_wait().await;
    assert_error(page, "password").await;
    page.checkpoint("settings-security-error").await;

    page.fill("#current_password", PASSWORD).await;
    page.fill("#new_password", NEW_PASSWORD).await;
    if page.javascript {
        page.wait_for_text("#new_password-strength", "Strength:")
            .await;
    }
    page.fill("#new_password_confirm", NEW_PASSWORD).await;
    page.enter_and_wait().await;
    assert!(page.path().await.starts_with("/settings/security"));
    assert_banner(page, "password").await;
    page.checkpoint("settings-security-changed").await;

    sign_out(page).await;
    sign_in(page, EMAIL, NEW_PASSWORD).await;
    assert_path(page, "/").await;
}

/// Two browsers signed in to one account; the first signs the second out.
pub async fn sign_out_other_sessions(app: &TestApp, page: &Page, driver: &Driver) {
    app.create_user(EMAIL, PASSWORD).await;
    let second = driver.session(page.javascript).await;
    let other = Page::plain(second, &page.base, page.javascript);
    sign_in(&other, EMAIL, PASSWORD).await;
    assert_path(&other, "/").await;

    sign_in(page, EMAIL, PASSWORD).await;
    open_settings(page).await;
    assert_eq!(page.count(".session-list > li").await, 2);
    assert!(page.text(".session-current").await.contains("This device"));
    page.checkpoint("settings-sessions").await;

    page.tab_to("form[action$='/revoke-others'] button").await;
    page.enter_and_wait().await;
    assert!(page.path().await.starts_with("/settings/security"));
    assert_banner(page, "").await;
    assert_eq!(page.count(".session-list > li").await, 1);
    assert!(!page.exists("form[action$='/revoke-others']").await);
    page.checkpoint("settings-sessions-revoked").await;

    // The other browser is signed out; this one is not.
    other.goto("/").await;
    assert_path(&other, "/sign-in").await;
    let _ = other.client.close().await;
    page.goto("/").await;
    assert_path(page, "/").await;
}

pub async fn two_factor(app: &TestApp, page: &Page) {
    app.create_user(EMAIL, PASSWORD).await;
    sign_in(page, EMAIL, PASSWORD).await;
    open_settings(page).await;
    page.tab_to("main a[href='/settings/security/two-factor']")
        .await;
    page.enter_and_wait().await;
    assert_path(page, "/settings/security/two-factor").await;
    assert!(page.exists(".qr svg").await, "QR code");
    page.checkpoint("two-factor-setup").await;

    let secret = secret_on(page).await;
    page.fill("#current_password", PASSWORD).await;
    page.fill("#totp_code", &code_at(&secret, 0)).await;
    page.enter_and_wait().await;
    assert_eq!(page.count("#recovery-codes li").await, 10);
    if page.javascript {
        assert!(page.is_displayed("[data-copy-codes]").await);
    } else {
        assert!(!page.is_displayed("[data-recovery-actions]").await);
    }
    page.checkpoint("recovery-codes").await;
    page.tab_to("main a[href='/settings/security']").await;
    page.enter_and_wait().await;
    assert_path(page, "/settings/security").await;
    assert!(page.text(".status-on").await.starts_with("On."));

    page.tab_to("main a[href='/settings/security/two-factor']")
        .await;
    page.enter_and_wait().await;
    page.checkpoint("two-factor-manage").await;

    sign_out(page).await;
    sign_in(page, EMAIL, PASSWORD).await;
    assert_path(page, "/sign-in/two-factor").await;
    page.checkpoint("sign-in-two-factor").await;
    page.fill("#totp_code", "000000").await;
    page.enter_and_wait().await;
    assert_error(page, "code").await;
    page.checkpoint("sign-in-two-factor-error").await;
    page.fill("#totp_code", &code_at(&secret, 1)).await;
    page.enter_and_wait().await;
    assert_path(page, "/").await;
}

/// Pages met off the main paths: a link that never was, and a page that is not there.
pub async fn dead_ends(_app: &TestApp, page: &Page) {
    page.goto("/reset-password?token=not-a-real-token").await;
    assert_eq!(page.text("h1").await, "This link doesn't work");
    page.checkpoint("reset-link-invalid").await;
    page.goto("/no-such-page").await;
    page.checkpoint("not-found").await;
    page.tab_to("main a[href='/']").await;
    page.enter_and_wait().await;
    assert_path(page, "/sign-in").await;
}

/// An application behind the real nginx under deploy/nginx/latchkey.conf: a visit
/// lands on latchkey's sign-in, signing in comes back to the exact URL, the
/// application sees who it is, and signing out locks it again. Chromium resolves
/// latchkey's and the application's host names (`*.example.test`) to loopback, so the
/// cookie on `example.test` is the browser's own, shared by the two hosts as in
/// production; the two origins count as secure (as they would under https; on a
/// plain-http name Chromium ignores `Cross-Origin-Opener-Policy` and says so in the
/// console). Without nginx this flow fails under `CI` and is skipped otherwise.
pub async fn forward_auth(
    driver: &Driver,
    javascript: bool,
    axe: Arc<String>,
    report: Arc<Mutex<Report>>,
) {
    if !Kind::Nginx.installed("browser forward_auth") {
        return;
    }
    let stack = Protected::start(Kind::Nginx).await;
    let switches = [
        "--host-resolver-rules=MAP *.example.test 127.0.0.1".to_owned(),
        format!(
            "--unsafely-treat-insecure-origin-as-secure={},{}",
            stack.auth_base(),
            stack.url_on(APP_HOST, "")
        ),
    ];
    let switches: Vec<&str> = switches.iter().map(String::as_str).collect();
    let client = driver.session_with(javascript, &switches).await;
    let closer = client.clone();
    let outcome = tokio::spawn(async move {
        let page = Page::new(client, &stack.auth_base(), javascript, axe, report).await;
        forward_auth_flow(&stack, &page).await;
    })
    .await;
    let _ = closer.close().await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn forward_auth_flow(stack: &Protected, page: &Page) {
    stack.app.create_user(EMAIL, PASSWORD).await;
    let wanted = stack.url_on(APP_HOST, "/reports/q3?team=ops&view=full");

    page.goto_url(&wanted).await;
    let sign_in_prefix = format!("{}/sign-in?next=", stack.auth_base());
    let url = page.current_url().await;
    assert!(url.starts_with(&sign_in_prefix), "sent to {url}");
    assert_eq!(stack.echo.count(), 0, "nothing reached the application");
    page.checkpoint("forward-auth-sign-in").await;

    page.fill("#email", EMAIL).await;
    page.fill("#password", PASSWORD).await;
    page.enter_and_wait().await;
    assert_eq!(page.current_url().await, wanted, "back to the exact URL");
    // The page's own request (the browser may ask for /favicon.ico as well).
    let seen = stack.echo.seen();
    let last = seen
        .iter()
        .find(|s| s.path_and_query() == "/reports/q3?team=ops&view=full")
        .unwrap_or_else(|| panic!("the page never reached the application: {seen:?}"));
    assert_eq!(last.header("remote-email"), Some(EMAIL));
    assert!(last.header("remote-user").is_some_and(|id| !id.is_empty()));
    assert!(
        page.text("body").await.contains(EMAIL),
        "the application's page shows who signed in"
    );

    // Signing out on latchkey's own host locks the application again.
    page.goto("/").await;
    sign_out(page).await;
    let reached = stack.echo.count();
    page.goto_url(&wanted).await;
    let url = page.current_url().await;
    assert!(
        url.starts_with(&sign_in_prefix),
        "after sign-out, sent to {url}"
    );
    assert_eq!(
        stack.echo.count(),
        reached,
        "nothing reached the application"
    );
    page.checkpoint("forward-auth-signed-out").await;

    tossed_cookie_is_ignored(stack, page, &wanted).await;
}

/// Cookie tossing (docs/security.md, finding 8): a page on a sibling host sets the shared
/// session cookie on the parent domain to the attacker's own session (the echo
/// application's `/toss-cookie` plays that page). latchkey's own pages must not take it:
/// this browser is signed out there, never signed in to the attacker's account.
async fn tossed_cookie_is_ignored(stack: &Protected, page: &Page, wanted: &str) {
    const ATTACKER: &str = "mallory@example.com";
    stack.app.create_user(ATTACKER, PASSWORD).await;
    let signed_in = stack.app.browser().sign_in(ATTACKER, PASSWORD).await;
    let tossed = signed_in
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("latchkey_session="))
        .and_then(|v| v.split(';').next())
        .expect("the attacker's session cookie")
        .to_owned();

    // The victim signs in again and is on the application's page.
    page.goto("/sign-in").await;
    page.fill("#email", EMAIL).await;
    page.fill("#password", PASSWORD).await;
    page.enter_and_wait().await;
    page.goto_url(wanted).await;
    assert_eq!(page.current_url().await, wanted);

    // The sibling host's page (the application's host here) answers with the tossed
    // cookie, through the real nginx.
    page.goto_url(&stack.url_on(APP_HOST, &format!("/toss-cookie?value={tossed}")))
        .await;

    page.goto("/settings/security").await;
    let path = page.path().await;
    assert!(
        path.starts_with("/sign-in?"),
        "signed out on latchkey's pages, not swapped: on {path}"
    );
    assert!(
        !page.text("body").await.contains(ATTACKER),
        "the tossed cookie put the browser in the attacker's account"
    );
    page.goto("/").await;
    assert_path(page, "/sign-in").await;
    page.checkpoint("forward-auth-tossed-cookie").await;
}

/// Sign-up (open): sign-in page → Create an account → the form (a mismatch first) →
/// check your email → the link from the mail → Create account → sign in.
pub async fn sign_up(app: &TestApp, page: &Page) {
    page.goto("/sign-in").await;
    page.tab_to("#sign-up-link").await;
    page.enter_and_wait().await;
    assert_path(page, "/sign-up").await;
    page.checkpoint("sign-up").await;

    page.fill("#email", EMAIL).await;
    page.fill("#new_password", PASSWORD).await;
    if page.javascript {
        page.wait_for_text("#new_password-strength", "Strength:")
            .await;
    }
    page.fill("#new_password_confirm", "not the same password at all")
        .await;
    page.enter_and_wait().await;
    assert_error(page, "Enter the same password in both fields").await;
    page.checkpoint("sign-up-error").await;

    page.fill("#new_password", PASSWORD).await;
    page.fill("#new_password_confirm", PASSWORD).await;
    page.enter_and_wait().await;
    assert!(page.text("main").await.contains(EMAIL));
    page.checkpoint("sign-up-check-email").await;

    // Nobody can sign in before the link is confirmed.
    let mails = app.mails_to(EMAIL, 1).await;
    assert_eq!(mails.len(), 1, "one sign-up mail");
    assert_eq!(app.count("select count(*) from users").await, 0);
    let link = mails[0].first_link().expect("a link in the mail");
    assert!(link.starts_with(&page.base), "{link}");
    page.goto(&link[page.base.len()..]).await;
    assert!(page.path().await.starts_with("/sign-up/confirm?token="));
    assert!(page.text("main").await.contains(EMAIL));
    page.checkpoint("sign-up-confirm").await;
    // The link asks again for the password chosen with it.
    page.fill("#password", PASSWORD).await;
    page.tab_to("form[action='/sign-up/confirm'] button[type='submit']")
        .await;
    page.enter_and_wait().await;
    assert!(page.path().await.starts_with("/sign-in"));
    assert_banner(page, "Your account is ready").await;
    page.checkpoint("sign-in-account-ready").await;

    sign_in(page, EMAIL, PASSWORD).await;
    assert_path(page, "/").await;
    assert!(page.text("main").await.contains(EMAIL) || page.text("header").await.contains(EMAIL));
}

/// An application behind Apache with mod_auth_openidc (deploy/apache/latchkey-oidc.conf)
/// that signs people in with latchkey as its OpenID provider: the anonymous visit ends
/// on latchkey's sign-in, then its consent page, then the page first asked for with the
/// identity; signing out of latchkey locks the application again (back-channel logout).
pub async fn oidc_apache(
    driver: &Driver,
    javascript: bool,
    axe: Arc<String>,
    report: Arc<Mutex<Report>>,
) {
    if !apache::installed("browser oidc_apache") {
        return;
    }
    let stack = OidcProtected::start().await;
    let client = driver.session(javascript).await;
    let closer = client.clone();
    let outcome = tokio::spawn(async move {
        let page = Page::new(client, &stack.app.base, javascript, axe, report).await;
        oidc_apache_flow(&stack, &page).await;
    })
    .await;
    let _ = closer.close().await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn oidc_apache_flow(stack: &OidcProtected, page: &Page) {
    stack.app.create_user(EMAIL, PASSWORD).await;
    let wanted = format!(
        "{}/reports/q3?team=ops&view=full",
        stack.apache.site.app_url()
    );

    page.goto_url(&wanted).await;
    let url = page.current_url().await;
    assert!(
        url.starts_with(&format!("{}/sign-in", page.base)),
        "sent to {url}\n{}",
        stack.apache.logs()
    );
    assert_eq!(stack.echo.count(), 0, "nothing reached the application");
    page.checkpoint("oidc-sign-in").await;

    page.fill("#email", EMAIL).await;
    page.fill("#password", PASSWORD).await;
    page.enter_and_wait().await;
    // The consent page names the application; Allow is a button reached by keyboard.
    assert!(
        page.current_url().await.starts_with(&page.base),
        "consent is asked on latchkey: {}",
        page.current_url().await
    );
    assert!(
        page.text("main").await.contains(CLIENT_ID),
        "the consent page names the client: {}",
        page.text("main").await
    );
    page.checkpoint("oidc-consent").await;
    page.tab_to("button[value='allow']").await;
    let focused = page.prop(":focus", "textContent").await;
    assert!(
        focused.contains("Allow"),
        "Tab reached {focused:?}, not Allow"
    );
    page.enter_and_wait().await;
    assert_eq!(
        page.current_url().await,
        wanted,
        "back to the exact URL\n{}",
        stack.apache.logs()
    );
    let seen = stack.echo.seen();
    let reached = seen
        .iter()
        .find(|s| s.path_and_query() == "/reports/q3?team=ops&view=full")
        .unwrap_or_else(|| panic!("the page never reached the application: {seen:?}"));
    assert_eq!(reached.header("oidc_claim_email"), Some(EMAIL));
    assert!(
        page.text("body").await.contains(EMAIL),
        "the application's page shows who signed in"
    );

    // Signing out on latchkey's own pages locks the application again (the module's
    // session ends by back-channel logout), and the visit asks for the password again.
    page.goto("/").await;
    sign_out(page).await;
    let signed_out = std::time::Instant::now();
    loop {
        let reached = stack.echo.count();
        page.goto_url(&wanted).await;
        if stack.echo.count() == reached {
            break;
        }
        assert!(
            signed_out.elapsed() < std::time::Duration::from_secs(10),
            "the application still answers after sign-out\n{}",
            stack.apache.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let url = page.current_url().await;
    assert!(
        url.starts_with(&format!("{}/sign-in", page.base)),
        "after sign-out, sent to {url}"
    );
    // While the module's session ended, the browser's own requests to the application
    // (its /favicon.ico) got the module's 401: the application's console lines, not
    // latchkey's. Anything else stays for the checkpoint to report.
    let app_origin = stack.apache.site.app_url();
    for entry in crate::driver::console_log(&page.client).await {
        let message = entry["message"].as_str().unwrap_or("");
        assert!(
            message.contains(&app_origin) && message.contains("status of 401"),
            "console: {entry}"
        );
    }
    page.checkpoint("oidc-signed-out").await;
}

/// A relying party's pages on a local port: `/cb` and `/bye` answer a plain page.
async fn relying_party() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let page = || async {
        axum::response::Html(
            "<!doctype html><html lang=\"en\"><title>App – app</title><h1>App</h1></html>",
        )
    };
    let router = axum::Router::new()
        .route("/cb", axum::routing::get(page))
        .route("/bye", axum::routing::get(page));
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    base
}

/// Sign in with latchkey: from an application to the sign-in page, the consent page
/// (Allow, whose 303 to the application's registered address Chromium checks against
/// the CSP's form-action), back to the application with a code; then the application's
/// logout, which asks first.
pub async fn oidc(app: &TestApp, page: &Page) {
    app.create_user(EMAIL, PASSWORD).await;
    let rp = relying_party().await;
    latchkey::oidc::clients::add(
        &app.state().oidc,
        &latchkey::oidc::clients::ClientSpec {
            id: "notes".to_owned(),
            name: "Notes".to_owned(),
            redirect_uris: vec![format!("{rp}/cb")],
            post_logout_redirect_uris: vec![format!("{rp}/bye")],
            ..Default::default()
        },
    )
    .await
    .expect("client");
    let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
    let query: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("response_type", "code"),
            ("client_id", "notes"),
            ("redirect_uri", &format!("{rp}/cb")),
            ("scope", "openid email"),
            ("state", "s1"),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
        ])
        .finish();
    page.goto(&format!("/oidc/authorize?{query}")).await;
    assert!(page.path().await.starts_with("/sign-in?next="));
    page.fill("#email", EMAIL).await;
    page.fill("#password", PASSWORD).await;
    page.enter_and_wait().await;
    assert!(
        page.path().await.starts_with("/oidc/consent?"),
        "{}",
        page.path().await
    );
    page.checkpoint("oidc-consent").await;
    assert!(page.text("main").await.contains("Your email address"));
    page.tab_to("button[value='allow']").await;
    page.enter_and_wait().await;
    let back = page.current_url().await;
    assert!(back.starts_with(&format!("{rp}/cb?code=")), "{back}");
    assert!(back.contains("state=s1") && back.contains("iss="), "{back}");

    let bye: String =
        url::form_urlencoded::byte_serialize(format!("{rp}/bye").as_bytes()).collect();
    page.goto(&format!(
        "/oidc/logout?client_id=notes&post_logout_redirect_uri={bye}&state=s2"
    ))
    .await;
    assert!(page.path().await.starts_with("/oidc/logout/confirm"));
    page.checkpoint("oidc-logout").await;
    page.tab_to(".button-row button[type='submit']").await;
    page.enter_and_wait().await;
    let left = page.current_url().await;
    assert_eq!(left, format!("{rp}/bye?state=s2"));
    page.goto("/").await;
    assert_path(page, "/sign-in").await;
}
