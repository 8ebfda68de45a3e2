//! The signed session cookie (`<id>.<mac>`), as an attacker and a second instance see
//! it: every cookie that is not one this deployment signed is refused before Postgres is
//! asked anything (statements counted on the wire, as in round_trips.rs), on the pages,
//! in the CSRF check and in forward auth alike.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use reqwest::{Client, StatusCode};
use secrecy::SecretString;
use sha2::Sha256;

use crate::helpers::*;
use crate::round_trips::{of_the_request, spawn_counted};

const EMAIL: &str = "ada@example.com";
const ORIGINAL: &str = "http://app.example.com/wiki";

/// `id.mac` with the MAC made under `key`, as someone holding another key would make it.
fn signed_with(key: &[u8], id: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
    mac.update(id.as_bytes());
    format!(
        "{id}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

/// Changes the character at `at` to another one of the base64url alphabet.
fn altered(value: &str, at: usize) -> String {
    let mut bytes = value.as_bytes().to_vec();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).expect("ascii")
}

/// What a proxy, an application and a browser get with `cookie` as the session cookie:
/// (nginx auth-request, /api/whoami, GET /settings/security).
async fn answers_to(app: &TestApp, cookie: &str) -> (StatusCode, StatusCode, StatusCode) {
    let client = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let header = format!("latchkey_session={cookie}");
    let nginx = client
        .get(format!("{}/api/authz/auth-request", app.base))
        .header("x-original-url", ORIGINAL)
        .header("cookie", &header)
        .send()
        .await
        .expect("auth-request");
    let whoami = client
        .get(format!("{}/api/whoami", app.base))
        .header("cookie", &header)
        .send()
        .await
        .expect("whoami");
    let page = client
        .get(format!("{}/settings/security", app.base))
        .header("cookie", &header)
        .send()
        .await
        .expect("page");
    (nginx.status(), whoami.status(), page.status())
}

#[tokio::test]
async fn a_forged_altered_truncated_foreign_or_unsigned_cookie_is_refused_without_a_database_read()
{
    let (app, executed) = spawn_counted(|c| {
        c.allowed_hosts = vec!["app.example.com".into()];
        // Every check of a real session reads, so the count below can see a read.
        c.forward_auth_cache_ms = 0;
    })
    .await;
    app.create_user(EMAIL, PASSWORD).await;
    let browser = app.browser();
    assert_status(
        &browser.sign_in(EMAIL, PASSWORD).await,
        StatusCode::SEE_OTHER,
    );
    let cookie = browser.session_cookie().expect("a session cookie");
    let (id, mac) = cookie.split_once('.').expect("id.mac");
    assert_eq!((id.len(), mac.len()), (22, 43), "{cookie}");

    let forged = [
        ("a made-up id", "AAAAAAAAAAAAAAAAAAAAAA".to_owned()),
        (
            "the live session's id unsigned, as before signing",
            id.to_owned(),
        ),
        (
            "truncated by one character",
            cookie[..cookie.len() - 1].to_owned(),
        ),
        ("the MAC cut off after the dot", format!("{id}.")),
        ("another id under this MAC", altered(&cookie, 5)),
        ("this id under an altered MAC", altered(&cookie, 30)),
        (
            "the live id signed with another key",
            signed_with(&[9u8; 32], id),
        ),
        (
            "the live id signed with the master key itself",
            signed_with(&[42u8; 32], id),
        ),
        (
            "a MAC of the right length made up",
            format!("{id}.{}", "A".repeat(43)),
        ),
        ("a long value", format!("{cookie}{}", "A".repeat(4000))),
    ];
    // Let start-up and the sign-in settle, so their statements are out of the windows.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut windows = Vec::new();
    for (what, value) in &forged {
        let before = executed.lock().expect("log").len();
        let answers = answers_to(&app, value).await;
        let end = executed.lock().expect("log").len();
        assert_eq!(
            answers,
            (
                StatusCode::UNAUTHORIZED,
                StatusCode::UNAUTHORIZED,
                StatusCode::SEE_OTHER
            ),
            "{what}: refused"
        );
        windows.push((what, before..end));
    }
    // The real cookie, as a control: it is let in, and reading it shows in the count.
    let before = executed.lock().expect("log").len();
    let answers = answers_to(&app, &cookie).await;
    let end = executed.lock().expect("log").len();
    assert_eq!(
        answers,
        (StatusCode::OK, StatusCode::OK, StatusCode::OK),
        "the real cookie"
    );
    // An outbox-worker transaction open at a window's end shows its statements later.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log = executed.lock().expect("log").clone();
    assert!(
        !of_the_request(&log, before..end).is_empty(),
        "the real session was read from Postgres"
    );
    for (what, window) in windows {
        let statements = of_the_request(&log, window);
        assert!(statements.is_empty(), "{what}: {statements:#?}");
    }

    // The person with an unsigned cookie (from before the upgrade) signs in again and
    // gets a signed one; the old value stays refused.
    let unsigned = Browser::with_session_cookie(&app, id);
    assert_eq!(location(&unsigned.get("/").await), "/sign-in");
    assert_status(
        &unsigned.sign_in(EMAIL, PASSWORD).await,
        StatusCode::SEE_OTHER,
    );
    let fresh = unsigned.session_cookie().expect("a new cookie");
    assert!(
        fresh.len() == cookie.len() && fresh.contains('.'),
        "{fresh}"
    );
    assert_status(&unsigned.get("/").await, StatusCode::OK);
}

#[tokio::test]
async fn a_cookie_signed_by_one_instance_works_on_another_with_the_same_key_only() {
    let app = TestApp::spawn().await;
    app.create_user(EMAIL, PASSWORD).await;
    let browser = app.browser();
    assert_status(
        &browser.sign_in(EMAIL, PASSWORD).await,
        StatusCode::SEE_OTHER,
    );
    let cookie = browser.session_cookie().expect("a session cookie");

    // Same database, same key: the cookie is good there, and signing out there ends it.
    let sibling = app.spawn_sibling().await;
    let there = Browser::new(&sibling.base);
    there.jar.add_cookie_str(
        &format!("latchkey_session={cookie}; Path=/"),
        &sibling.base.parse().expect("url"),
    );
    let home = there.get("/").await;
    assert_status(&home, StatusCode::OK);
    assert!(home.text().await.expect("body").contains(EMAIL));

    // Same database, another key: the cookie is nobody's.
    let other_key = TestApp::spawn_with(|c| {
        c.database_url = SecretString::from(app.database_url.clone());
        c.secret_key = Some(SecretString::from(
            base64::engine::general_purpose::STANDARD.encode([7u8; 32]),
        ));
    })
    .await;
    let elsewhere = Browser::with_session_cookie(&other_key, &cookie);
    assert_eq!(location(&elsewhere.get("/").await), "/sign-in");
    assert_status(
        &elsewhere.get("/api/whoami").await,
        StatusCode::UNAUTHORIZED,
    );

    assert_status(&there.sign_out().await, StatusCode::SEE_OTHER);
    assert_eq!(location(&browser.get("/").await), "/sign-in");
}
