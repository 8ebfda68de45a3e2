//! Sign-in, sign-out, CSRF, throttling and the hardening every page shares.

use std::time::Duration;

use reqwest::StatusCode;

use crate::helpers::*;

#[tokio::test]
async fn signing_in_with_the_right_password_lands_on_home() {
    let app = TestApp::spawn().await;
    app.create_user("alice@example.com", PASSWORD).await;
    let browser = app.browser();

    let response = browser.sign_in("alice@example.com", PASSWORD).await;
    assert_status(&response, StatusCode::SEE_OTHER);
    assert_eq!(location(&response), "/");

    let home = browser.get("/").await;
    assert_status(&home, StatusCode::OK);
    let body = home.text().await.unwrap();
    assert!(body.contains("alice@example.com"));
    assert!(body.contains("href=\"/settings/security\""));
}

#[tokio::test]
async fn the_email_is_matched_whatever_its_case() {
    let app = TestApp::spawn().await;
    app.create_user("Alice@Example.com", PASSWORD).await;
    let response = app
        .browser()
        .sign_in("  alice@EXAMPLE.com ", PASSWORD)
        .await;
    assert_status(&response, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn home_sends_strangers_to_sign_in() {
    let app = TestApp::spawn().await;
    let response = app.browser().get("/").await;
    assert_status(&response, StatusCode::SEE_OTHER);
    assert_eq!(location(&response), "/sign-in");
}

#[tokio::test]
async fn wrong_password_and_unknown_email_get_the_same_answer() {
    let app = TestApp::spawn().await;
    app.create_user("alice@example.com", PASSWORD).await;
    let browser = app.browser();

    let wrong = browser
        .sign_in("alice@example.com", "not the password at all")
        .await;
    assert_status(&wrong, StatusCode::UNPROCESSABLE_ENTITY);
    let wrong = wrong.text().await.unwrap();
    let unknown = browser
        .sign_in(
            "alice@example.com".replace("alice", "nobody").as_str(),
            "not the password at all",
        )
        .await;
    assert_status(&unknown, StatusCode::UNPROCESSABLE_ENTITY);
    let unknown = unknown.text().await.unwrap();

    assert!(wrong.contains("Incorrect email or password."));
    assert_eq!(
        without_tokens(&wrong).replace("alice@example.com", "X"),
        without_tokens(&unknown).replace("nobody@example.com", "X")
    );
    // The typed address is kept; the password is never sent back.
    assert!(wrong.contains("value=\"alice@example.com\""));
    assert!(!wrong.contains("not the password at all"));
    assert_eq!(browser.get("/").await.status(), StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn a_password_is_checked_whole_not_by_its_first_72_bytes() {
    let app = TestApp::spawn().await;
    let long = "x".repeat(40) + &"y".repeat(40);
    app.create_user("long@example.com", &long).await;
    let browser = app.browser();
    let prefix = browser.sign_in("long@example.com", &long[..72]).await;
    assert_status(&prefix, StatusCode::UNPROCESSABLE_ENTITY);
    let whole = browser.sign_in("long@example.com", &long).await;
    assert_status(&whole, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn posts_without_a_valid_csrf_token_are_refused_and_change_nothing() {
    let app = TestApp::spawn().await;
    app.create_user("alice@example.com", PASSWORD).await;
    let browser = app.browser();
    let token = browser.csrf_token("/sign-in").await;
    let creds = [("email", "alice@example.com"), ("password", PASSWORD)];

    let missing = browser
        .client
        .post(browser.url("/sign-in"))
        .form(&creds)
        .send()
        .await
        .unwrap();
    assert_status(&missing, StatusCode::FORBIDDEN);

    let mut wrong = creds.to_vec();
    wrong.push(("csrf_token", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"));
    let wrong = browser
        .client
        .post(browser.url("/sign-in"))
        .form(&wrong)
        .send()
        .await
        .unwrap();
    assert_status(&wrong, StatusCode::FORBIDDEN);

    // A token is worth nothing without the cookie it was made for.
    let other = app.browser();
    let mut stolen = creds.to_vec();
    stolen.push(("csrf_token", token.as_str()));
    let stolen = other
        .client
        .post(other.url("/sign-in"))
        .form(&stolen)
        .send()
        .await
        .unwrap();
    assert_status(&stolen, StatusCode::FORBIDDEN);

    assert_eq!(browser.get("/").await.status(), StatusCode::SEE_OTHER);
    assert_eq!(app.count("select count(*) from sessions").await, 0);
}

#[tokio::test]
async fn cross_site_posts_are_refused_even_with_a_token() {
    let app = TestApp::spawn().await;
    app.create_user("alice@example.com", PASSWORD).await;
    let browser = app.browser();
    let token = browser.csrf_token("/sign-in").await;
    let form = [
        ("email", "alice@example.com"),
        ("password", PASSWORD),
        ("csrf_token", token.as_str()),
    ];

    let other_origin = browser
        .client
        .post(browser.url("/sign-in"))
        .header("origin", "https://evil.example")
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_status(&other_origin, StatusCode::FORBIDDEN);
    let cross_site = browser
        .client
        .post(browser.url("/sign-in"))
        .header("sec-fetch-site", "cross-site")
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_status(&cross_site, StatusCode::FORBIDDEN);
    assert_eq!(app.count("select count(*) from sessions").await, 0);
}

#[tokio::test]
async fn origin_null_from_a_no_referrer_page_is_not_refused_by_itself() {
    let app = TestApp::spawn().await;
    app.create_user("alice@example.com", PASSWORD).await;
    let browser = app.browser();
    let token = browser.csrf_token("/sign-in").await;
    let response = browser
        .client
        .post(browser.url("/sign-in"))
        .header("origin", "null")
        .header("sec-fetch-site", "same-origin")
        .form(&[
            ("email", "alice@example.com"),
            ("password", PASSWORD),
            ("csrf_token", token.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_status(&response, StatusCode::SEE_OTHER);
    assert_eq!(location(&response), "/");

    // Signed in now: the token is the one the session's own page carries.
    let token = browser.csrf_token("/").await;
    let same_origin = browser
        .client
        .post(browser.url("/sign-out"))
        .header("origin", app.base.as_str())
        .form(&[("csrf_token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_status(&same_origin, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn the_session_id_changes_at_sign_in() {
    let app = TestApp::spawn().await;
    app.create_user("alice@example.com", PASSWORD).await;
    // An attacker plants a session id before the victim signs in.
    let planted = "AAAAAAAAAAAAAAAAAAAAAA";
    let browser = Browser::with_session_cookie(&app, planted);
    assert_status(
        &browser.sign_in("alice@example.com", PASSWORD).await,
        StatusCode::SEE_OTHER,
    );
    let first = browser.session_cookie().expect("session cookie");
    assert_ne!(first, planted);
    assert!(first.len() >= 22, "at least 128 bits");

    // Signing in again over a live session rotates it too, and the old id dies.
    let again = browser
        .submit(
            "/",
            "/sign-in",
            &[("email", "alice@example.com"), ("password", PASSWORD)],
        )
        .await;
    assert_status(&again, StatusCode::SEE_OTHER);
    let second = browser.session_cookie().expect("session cookie");
    assert_ne!(first, second);
    let replay = Browser::with_session_cookie(&app, &first);
    assert_eq!(replay.get("/").await.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        Browser::with_session_cookie(&app, &second)
            .get("/")
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn sign_out_deletes_the_session_on_the_server() {
    let app = TestApp::spawn().await;
    app.create_user("alice@example.com", PASSWORD).await;
    let browser = app.browser();
    browser.sign_in("alice@example.com", PASSWORD).await;
    let cookie = browser.session_cookie().expect("session cookie");
    assert_eq!(app.count("select count(*) from sessions").await, 1);

    let response = browser.sign_out().await;
    assert_status(&response, StatusCode::SEE_OTHER);
    assert!(location(&response).starts_with("/sign-in"));
    assert_eq!(app.count("select count(*) from sessions").await, 0);
    let replay = Browser::with_session_cookie(&app, &cookie);
    assert_eq!(replay.get("/").await.status(), StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn next_is_followed_only_to_paths_on_this_site() {
    let app = TestApp::spawn().await;
    app.create_user("alice@example.com", PASSWORD).await;
    for (next, expected) in [
        ("/settings/security", "/settings/security"),
        ("//evil.example", "/"),
        ("https://evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("javascript:alert(1)", "/"),
    ] {
        let browser = app.browser();
        let response = browser
            .submit(
                "/sign-in",
                "/sign-in",
                &[
                    ("email", "alice@example.com"),
                    ("password", PASSWORD),
                    ("next", next),
                ],
            )
            .await;
        assert_status(&response, StatusCode::SEE_OTHER);
        assert_eq!(location(&response), expected, "next={next}");
    }
}

#[tokio::test]
async fn failed_sign_ins_slow_the_address_down_and_a_success_resets_it() {
    let app = TestApp::spawn_with(|c| {
        c.throttle.free_failures = 3;
        c.throttle.base_delay_secs = 1;
    })
    .await;
    app.create_user("alice@example.com", PASSWORD).await;
    let browser = app.browser();
    for _ in 0..3 {
        let r = browser
            .sign_in("alice@example.com", "wrong password for sure")
            .await;
        assert_status(&r, StatusCode::UNPROCESSABLE_ENTITY);
    }
    // Even the right password waits now, and nothing is hashed.
    let throttled = browser.sign_in("alice@example.com", PASSWORD).await;
    assert_status(&throttled, StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = throttled.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "retry-after {retry}");
    assert!(
        throttled
            .text()
            .await
            .unwrap()
            .contains("Too many attempts. Wait")
    );

    // Unknown addresses are throttled alike: a 429 says nothing about existence.
    for _ in 0..3 {
        browser
            .sign_in("nobody@example.com", "wrong password for sure")
            .await;
    }
    assert_status(
        &browser.sign_in("nobody@example.com", "x").await,
        StatusCode::TOO_MANY_REQUESTS,
    );

    tokio::time::sleep(Duration::from_secs(retry) + Duration::from_millis(300)).await;
    assert_status(
        &browser.sign_in("alice@example.com", PASSWORD).await,
        StatusCode::SEE_OTHER,
    );
    assert_eq!(
        app.count("select count(*) from login_throttle where email_key = 'alice@example.com'")
            .await,
        0
    );
    let after = app
        .browser()
        .sign_in("alice@example.com", "wrong password for sure")
        .await;
    assert_status(&after, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn one_ip_is_limited_per_minute() {
    let app = TestApp::spawn_with(|c| c.ip_rate_limit = 3).await;
    let browser = app.browser();
    for _ in 0..3 {
        let r = browser
            .sign_in("someone@example.com", "whatever it is")
            .await;
        assert_status(&r, StatusCode::UNPROCESSABLE_ENTITY);
    }
    let limited = browser
        .sign_in("someone@example.com", "whatever it is")
        .await;
    assert_status(&limited, StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.headers().contains_key("retry-after"));
}

#[tokio::test]
async fn an_old_hash_is_upgraded_at_sign_in() {
    use argon2::password_hash::PasswordHasher;
    use argon2::password_hash::phc::PasswordHash;
    let app = TestApp::spawn().await;
    let weak = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon2::Params::new(8192, 1, 1, None).unwrap(),
    );
    let old: PasswordHash = weak.hash_password(PASSWORD.as_bytes()).unwrap();
    let old = old.to_string();
    sqlx::query(
        "insert into users (email, email_key, password_hash)
         values ('old@example.com', 'old@example.com', $1)",
    )
    .bind(&old)
    .execute(&app.pool)
    .await
    .unwrap();

    assert_status(
        &app.browser().sign_in("old@example.com", PASSWORD).await,
        StatusCode::SEE_OTHER,
    );
    let upgraded = app.password_hash("old@example.com").await;
    assert!(
        upgraded.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{upgraded}"
    );
    assert_status(
        &app.browser().sign_in("old@example.com", PASSWORD).await,
        StatusCode::SEE_OTHER,
    );
}

#[tokio::test]
async fn bodies_over_16_kib_are_refused_with_413() {
    let app = TestApp::spawn().await;
    let browser = app.browser();
    let token = browser.csrf_token("/sign-in").await;
    let big = "a".repeat(17 * 1024);
    let response = browser
        .client
        .post(browser.url("/sign-in"))
        .form(&[("email", big.as_str()), ("csrf_token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_status(&response, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn malformed_requests_never_cause_a_server_error() {
    let app = TestApp::spawn().await;
    let browser = app.browser();
    let token = browser.csrf_token("/sign-in").await;
    let bodies: Vec<(String, &str)> = vec![
        (
            format!("csrf_token={token}&email=%ZZ&password=%"),
            "application/x-www-form-urlencoded",
        ),
        (
            format!("csrf_token={token}&email=a&email=b"),
            "application/x-www-form-urlencoded",
        ),
        (
            format!("csrf_token={token}"),
            "application/x-www-form-urlencoded",
        ),
        (
            format!("csrf_token={token}&email=\u{0}&password=\u{FFFF}"),
            "application/x-www-form-urlencoded",
        ),
        (
            format!("{{\"csrf_token\":\"{token}\"}}"),
            "application/json",
        ),
        (
            format!("csrf_token={token}&password={}", "p".repeat(2000)),
            "application/x-www-form-urlencoded",
        ),
        ("\u{FF}\u{FE}garbage".to_owned(), "text/plain"),
    ];
    for path in [
        "/sign-in",
        "/forgot-password",
        "/reset-password",
        "/sign-out",
        "/settings/security/password",
    ] {
        for (body, content_type) in &bodies {
            let response = browser
                .client
                .post(browser.url(path))
                .header("content-type", *content_type)
                .body(body.clone())
                .send()
                .await
                .unwrap();
            assert!(
                response.status().is_client_error() || response.status().is_redirection(),
                "{path} {body:?} -> {}",
                response.status()
            );
        }
    }
    for path in [
        "/reset-password?token=%FF",
        "/reset-password?token=",
        "/sign-in?next=%00",
        "/nowhere",
        "/settings/security/sessions/x/revoke",
    ] {
        let response = browser.get(path).await;
        assert!(
            !response.status().is_server_error(),
            "{path} -> {}",
            response.status()
        );
    }
}

#[tokio::test]
async fn every_page_carries_the_security_headers() {
    let app = TestApp::spawn().await;
    for path in [
        "/sign-in",
        "/forgot-password",
        "/",
        "/reset-password?token=x",
        "/healthz",
    ] {
        let response = app.browser().get(path).await;
        let h = response.headers();
        assert!(
            h["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("default-src 'self'"),
            "{path}"
        );
        assert!(
            h["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("frame-ancestors 'none'"),
            "{path}"
        );
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["cache-control"], "no-store", "{path}");
        assert!(h.contains_key("x-request-id"), "{path}");
    }
}

#[tokio::test]
async fn cookies_are_http_only_lax_and_host_prefixed_under_https() {
    let app = TestApp::spawn().await;
    app.create_user("alice@example.com", PASSWORD).await;
    let browser = app.browser();
    let page = browser.get("/sign-in").await;
    let csrf_cookie = page.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(csrf_cookie.starts_with("latchkey_csrf="));
    assert!(csrf_cookie.contains("HttpOnly") && csrf_cookie.contains("SameSite=Lax"));
    let signed_in = browser.sign_in("alice@example.com", PASSWORD).await;
    // Among the cookies a sign-in sets (the device cookie too), the session's.
    let session_cookie = signed_in
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("latchkey_session="))
        .unwrap_or_default()
        .to_owned();
    assert!(
        session_cookie.starts_with("latchkey_session="),
        "{session_cookie}"
    );
    assert!(session_cookie.contains("HttpOnly") && session_cookie.contains("SameSite=Lax"));
    assert!(!session_cookie.contains("Secure"));

    let https =
        TestApp::spawn_with(|c| c.public_url = "https://id.example.com".parse().unwrap()).await;
    let page = https.browser().get("/sign-in").await;
    let cookie = page.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.starts_with("__Host-latchkey_csrf="), "{cookie}");
    assert!(cookie.contains("Secure") && cookie.contains("Path=/") && !cookie.contains("Domain"));
}

#[tokio::test]
async fn anonymous_pages_write_no_rows() {
    let app = TestApp::spawn().await;
    let browser = app.browser();
    for _ in 0..5 {
        assert_status(&browser.get("/sign-in").await, StatusCode::OK);
        assert_status(&browser.get("/forgot-password").await, StatusCode::OK);
    }
    assert_eq!(app.count("select count(*) from sessions").await, 0);
}

#[tokio::test]
async fn health_readiness_and_metrics_answer() {
    let app =
        TestApp::spawn_with(|c| c.metrics_listen = Some("127.0.0.1:0".parse().expect("addr")))
            .await;
    app.create_user("alice@example.com", PASSWORD).await;
    app.browser().sign_in("alice@example.com", PASSWORD).await;
    let browser = app.browser();
    assert_status(&browser.get("/healthz").await, StatusCode::OK);
    assert_status(&browser.get("/readyz").await, StatusCode::OK);
    let metrics_base = app.metrics_base().expect("a metrics listener");
    let metrics = Browser::new(&metrics_base)
        .get("/metrics")
        .await
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("latchkey_sign_in_total"), "{metrics}");
    assert!(metrics.contains("latchkey_password_hash_seconds"));
    assert!(metrics.contains("latchkey_http_request_duration_seconds"));
}

#[tokio::test]
async fn a_failed_and_a_successful_sign_in_are_audited() {
    let app = TestApp::spawn().await;
    app.create_user("alice@example.com", PASSWORD).await;
    let browser = app.browser();
    browser
        .sign_in("alice@example.com", "wrong password for sure")
        .await;
    browser.sign_in("alice@example.com", PASSWORD).await;
    assert_eq!(
        app.count(
            "select count(*) from audit_events where kind = 'sign_in_failed' and ip = '127.0.0.1'"
        )
        .await,
        1
    );
    assert_eq!(
        app.count(
            "select count(*) from audit_events where kind = 'sign_in' and user_agent is null"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn an_idle_session_expires_on_the_server() {
    let app = TestApp::spawn_with(|c| c.session.idle_timeout_secs = 1).await;
    app.create_user("alice@example.com", PASSWORD).await;
    let browser = app.browser();
    browser.sign_in("alice@example.com", PASSWORD).await;
    assert_status(&browser.get("/").await, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_status(&browser.get("/").await, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn an_absurdly_long_current_password_is_simply_wrong() {
    let app = TestApp::spawn().await;
    app.create_user("alice@example.com", PASSWORD).await;
    let browser = app.browser();
    browser.sign_in("alice@example.com", PASSWORD).await;
    let huge = "x".repeat(4000);
    let response = browser
        .change_password(&huge, NEW_PASSWORD, NEW_PASSWORD)
        .await;
    assert_status(&response, StatusCode::UNPROCESSABLE_ENTITY);
    assert_status(
        &app.browser().sign_in("alice@example.com", &huge).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_hashing_queue_answers_503_instead_of_piling_up() {
    let app = TestApp::spawn_with(|c| {
        // One slow hashing thread (≈ 0.5 s a hash) and room for one waiting job, so
        // a burst of twelve cannot all be served and must not pile up either.
        c.argon2.threads = 1;
        c.argon2.queue = 1;
        c.argon2.iterations = 50;
    })
    .await;
    app.create_user("alice@example.com", PASSWORD).await;
    let browser = app.browser();
    let token = browser.csrf_token("/sign-in").await;
    // Collected first: spawning lazily inside the loop below would send them one by one.
    let attempts: Vec<_> = (0..12)
        .map(|i| {
            let client = browser.client.clone();
            let url = browser.url("/sign-in");
            let token = token.clone();
            tokio::spawn(async move {
                let email = format!("user{i}@example.com");
                client
                    .post(url)
                    .form(&[
                        ("email", email.as_str()),
                        ("password", PASSWORD),
                        ("csrf_token", &token),
                    ])
                    .send()
                    .await
                    .unwrap()
                    .status()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for attempt in attempts {
        statuses.push(attempt.await.unwrap());
    }
    assert!(
        statuses.contains(&StatusCode::SERVICE_UNAVAILABLE),
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(
            |s| *s == StatusCode::SERVICE_UNAVAILABLE || *s == StatusCode::UNPROCESSABLE_ENTITY
        ),
        "{statuses:?}"
    );
    // Once the burst is over, sign-in works again.
    assert_status(
        &browser.sign_in("alice@example.com", PASSWORD).await,
        StatusCode::SEE_OTHER,
    );
}
