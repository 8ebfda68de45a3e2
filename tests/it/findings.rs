//! What an outside security test found (issue 21), each played as the attacker did: the
//! public listener read for counters, the development mailbox asked with a foreign
//! `Host`, forged identity headers and long original URLs at forward auth, and the
//! "New sign-in to your account" notice that tells an owner about a browser they never
//! used. (The sign-up hijack is in sign_up.rs, the proxies' part in proxies.rs, the
//! operator's `two-factor-off` in operator.rs.)

use latchkey::config::OnOff;
use reqwest::{Client, StatusCode};

use crate::helpers::*;

const EMAIL: &str = "alice@example.com";

#[tokio::test]
async fn the_public_listener_serves_no_counters_and_readiness_without_detail() {
    // The attack: a forgot-password request, then the counters, for a known and an
    // unknown address; any difference tells which has an account.
    let app = TestApp::spawn().await;
    app.create_user(EMAIL, PASSWORD).await;
    let browser = app.browser();
    let mut seen = Vec::new();
    for email in [EMAIL, "nobody@example.com"] {
        assert_status(&browser.forgot_password(email).await, StatusCode::OK);
        let metrics = browser.get("/metrics").await;
        assert_status(&metrics, StatusCode::NOT_FOUND);
        let ready = browser.get("/readyz").await;
        assert_status(&ready, StatusCode::OK);
        seen.push(ready.text().await.expect("body"));
    }
    assert_eq!(seen, ["ready\n", "ready\n"]);

    // With a metrics listener, the detail is there and only there.
    let app =
        TestApp::spawn_with(|c| c.metrics_listen = Some("127.0.0.1:0".parse().expect("addr")))
            .await;
    let metrics_base = app.metrics_base().expect("a metrics listener");
    assert_status(&app.browser().get("/metrics").await, StatusCode::NOT_FOUND);
    let public = app
        .browser()
        .get("/readyz")
        .await
        .text()
        .await
        .expect("body");
    assert_eq!(public, "ready\n");
    let detailed = Browser::new(&metrics_base).get("/readyz").await;
    assert_status(&detailed, StatusCode::OK);
    let detailed = detailed.text().await.expect("body");
    assert!(detailed.contains("outbox pending="), "{detailed}");
    let metrics = Browser::new(&metrics_base).get("/metrics").await;
    assert_status(&metrics, StatusCode::OK);
}

/// A service whose mail goes to files, with the development mailbox on.
async fn mailbox_app() -> TestApp {
    TestApp::spawn_with(|c| {
        c.smtp_url = None;
        c.mail_dir = std::env::temp_dir().join(format!(
            "latchkey-findings-mail-{}",
            uuid::Uuid::new_v4().simple()
        ));
    })
    .await
}

#[tokio::test]
async fn the_dev_mailbox_answers_only_requests_for_public_urls_own_host() {
    let app = mailbox_app().await;
    app.create_user(EMAIL, PASSWORD).await;
    assert_status(&app.browser().forgot_password(EMAIL).await, StatusCode::OK);
    // DNS rebinding: a page on another site, its name now resolving to 127.0.0.1, asks
    // with its own Host. Written by hand, so the Host header is exactly this one.
    for host in ["evil.example", "evil.example:80", "localhost", "127.0.0.1"] {
        let answer = raw_get(&app.base, "/dev/mailbox", host).await;
        assert!(answer.starts_with("HTTP/1.1 404"), "Host: {host}: {answer}");
        assert!(!answer.contains("reset-password?token="), "Host: {host}");
    }
    let own_host = app.base.trim_start_matches("http://").to_owned();
    let own = raw_get(&app.base, "/dev/mailbox", &own_host).await;
    assert!(own.starts_with("HTTP/1.1 200"), "{own}");
}

/// A GET with exactly `host` as its Host header; the whole answer as text.
async fn raw_get(base: &str, path: &str, host: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("read");
    String::from_utf8_lossy(&answer).into_owned()
}

/// The session cookie of a browser signed in as `EMAIL`.
async fn signed_in_cookie(app: &TestApp) -> String {
    let browser = app.browser();
    assert_status(
        &browser.sign_in(EMAIL, PASSWORD).await,
        StatusCode::SEE_OTHER,
    );
    format!(
        "latchkey_session={}",
        browser.session_cookie().expect("a session cookie")
    )
}

fn proxy() -> Client {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

#[tokio::test]
async fn forward_auth_answers_all_four_identity_headers() {
    let app = TestApp::spawn_with(|c| c.allowed_hosts = vec!["app.example.com".into()]).await;
    let id = app.create_user(EMAIL, PASSWORD).await;
    let cookie = signed_in_cookie(&app).await;
    let nginx = proxy()
        .get(format!("{}/api/authz/auth-request", app.base))
        .header("x-original-url", "http://app.example.com/")
        .header("cookie", &cookie)
        .send()
        .await
        .expect("auth-request");
    let caddy = proxy()
        .get(format!("{}/api/authz/forward-auth", app.base))
        .header("x-forwarded-proto", "http")
        .header("x-forwarded-host", "app.example.com")
        .header("x-forwarded-uri", "/")
        .header("cookie", &cookie)
        .send()
        .await
        .expect("forward-auth");
    for answer in [nginx, caddy] {
        assert_status(&answer, StatusCode::OK);
        let header = |name: &str| {
            answer
                .headers()
                .get(name)
                .map(|v| v.to_str().expect("ascii").to_owned())
        };
        assert_eq!(header("remote-user"), Some(id.to_string()));
        assert_eq!(header("remote-email").as_deref(), Some(EMAIL));
        assert_eq!(header("remote-name").as_deref(), Some(EMAIL));
        assert_eq!(header("remote-groups").as_deref(), Some(""));
    }
}

#[tokio::test]
async fn original_urls_up_to_8_kib_and_with_utf_8_work_and_longer_ones_get_400() {
    let app = TestApp::spawn_with(|c| c.allowed_hosts = vec!["app.example.com".into()]).await;
    app.create_user(EMAIL, PASSWORD).await;
    let check = |original: Vec<u8>| {
        let client = proxy();
        let url = format!("{}/api/authz/auth-request", app.base);
        async move {
            client
                .get(url)
                .header(
                    "x-original-url",
                    reqwest::header::HeaderValue::from_bytes(&original).expect("header"),
                )
                .send()
                .await
                .expect("auth-request")
        }
    };
    let prefix = "http://app.example.com";
    let long = format!("{prefix}/{}", "a".repeat(8 * 1024 - 1));
    let answer = check(long.clone().into_bytes()).await;
    assert_status(&answer, StatusCode::UNAUTHORIZED);
    let to = location(&answer);
    assert!(
        to.ends_with(&"a".repeat(8 * 1024 - 1)),
        "the whole URL is kept"
    );

    // Raw UTF-8 in the request target, as nginx passes it on: the same URL, encoded.
    let answer = check(format!("{prefix}/wiki/Zürich?q=ü").into_bytes()).await;
    assert_status(&answer, StatusCode::UNAUTHORIZED);
    assert!(
        location(&answer).contains("Z%25C3%25BCrich"),
        "{}",
        location(&answer)
    );

    let too_long = format!("{prefix}/{}", "a".repeat(16 * 1024));
    assert_status(&check(too_long.into_bytes()).await, StatusCode::BAD_REQUEST);
}

/// A service that mails "New sign-in to your account" (the tests' default is off).
async fn notifying_app() -> TestApp {
    TestApp::spawn_with(|c| c.new_device_mail = OnOff::On).await
}

async fn new_sign_in_mails(app: &TestApp) -> i64 {
    // Queued in the sign-in's own transaction, so counted the moment it answers.
    app.count("select count(*) from audit_events where kind = 'new_device_sign_in'")
        .await
}

#[tokio::test]
async fn a_sign_in_from_a_new_browser_mails_the_owner_once_per_browser() {
    let app = notifying_app().await;
    app.create_user(EMAIL, PASSWORD).await;
    let browser = app.browser();
    let first = browser.sign_in(EMAIL, PASSWORD).await;
    assert_status(&first, StatusCode::SEE_OTHER);
    let cookie = first
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("latchkey_device="))
        .expect("a device cookie")
        .to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("Max-Age=34560000"),
        "{cookie}"
    );
    assert!(
        !cookie.to_ascii_lowercase().contains("domain="),
        "host-only: {cookie}"
    );
    assert_eq!(new_sign_in_mails(&app).await, 1);
    let mails = app.mails_to(EMAIL, 1).await;
    assert_eq!(mails.len(), 1);
    assert_eq!(
        mails[0].subject().as_deref(),
        Some("New sign-in to your account")
    );
    let text = mails[0].text_body().expect("text");
    assert!(text.contains("127.0.0.1"), "the IP: {text}");
    assert!(text.contains(" UTC"), "the time: {text}");
    assert!(
        text.contains(&format!("{}/settings/security", app.base)),
        "{text}"
    );

    // The same browser again: nothing.
    assert_status(&browser.sign_out().await, StatusCode::SEE_OTHER);
    assert_status(
        &browser.sign_in(EMAIL, PASSWORD).await,
        StatusCode::SEE_OTHER,
    );
    assert_eq!(new_sign_in_mails(&app).await, 1);

    // Cookies cleared (a fresh jar), or a forged device cookie: one again each.
    assert_status(
        &app.browser().sign_in(EMAIL, PASSWORD).await,
        StatusCode::SEE_OTHER,
    );
    assert_eq!(new_sign_in_mails(&app).await, 2);
    let forged = app.browser();
    let url = app.base.parse().expect("url");
    forged.jar.add_cookie_str(
        "latchkey_device=AAAAAAAAAAAAAAAAAAAAAA.forged; Path=/",
        &url,
    );
    assert_status(
        &forged.sign_in(EMAIL, PASSWORD).await,
        StatusCode::SEE_OTHER,
    );
    assert_eq!(new_sign_in_mails(&app).await, 3);
    assert_eq!(app.mails_to(EMAIL, 3).await.len(), 3);

    // The owner sees it under Recent activity.
    let page = browser
        .get("/settings/security")
        .await
        .text()
        .await
        .expect("body");
    assert!(page.contains("Signed in from a new browser"));
}

#[tokio::test]
async fn the_sign_in_after_a_reset_in_that_browser_mails_nothing_new() {
    let app = notifying_app().await;
    app.create_user(EMAIL, PASSWORD).await;
    let browser = app.browser();
    let token = app.request_reset_link(&browser, EMAIL, 1).await;
    assert_status(
        &browser
            .reset_password(&token, NEW_PASSWORD, NEW_PASSWORD)
            .await,
        StatusCode::SEE_OTHER,
    );
    assert_status(
        &browser.sign_in(EMAIL, NEW_PASSWORD).await,
        StatusCode::SEE_OTHER,
    );
    assert_eq!(new_sign_in_mails(&app).await, 0);
}

#[tokio::test]
async fn no_new_sign_in_mail_when_it_is_turned_off() {
    let app = TestApp::spawn_with(|c| c.new_device_mail = OnOff::Off).await;
    app.create_user(EMAIL, PASSWORD).await;
    assert_status(
        &app.browser().sign_in(EMAIL, PASSWORD).await,
        StatusCode::SEE_OTHER,
    );
    assert_eq!(app.count("select count(*) from outbox").await, 0);
}
