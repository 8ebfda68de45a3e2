//! Sessions are bound to the password they began with, and forms to the session: races
//! run with the burst harness, on two instances sharing one database.

use reqwest::StatusCode;
use secrecy::SecretString;

use crate::burst::{self, RawRequest, RawResponse};
use crate::helpers::*;

const SESSION: &str = "latchkey_session";

/// A second instance on the first one's database, as behind a load balancer.
async fn second_instance(first: &TestApp) -> TestApp {
    let url = first.database_url.clone();
    TestApp::spawn_with(move |c| c.database_url = SecretString::from(url)).await
}

/// A sign-in form loaded on `app`, ready to post as raw bytes from `source`.
async fn sign_in_request(
    app: &TestApp,
    email: &str,
    password: &str,
    source: std::net::IpAddr,
) -> RawRequest {
    let browser = app.browser();
    let token = browser.csrf_token("/sign-in").await;
    let cookie = burst::cookie_header(&browser, &app.base);
    RawRequest {
        source,
        target: burst::target(&app.base),
        bytes: burst::form_post(
            &app.base,
            "/sign-in",
            &cookie,
            &[
                ("email", email),
                ("password", password),
                ("csrf_token", &token),
            ],
        ),
    }
}

/// Asks for a reset link and returns its token: the first reset link in the mail to
/// `email` that is not in `used` (the notices of earlier resets arrive in between).
async fn fresh_reset_link(
    app: &TestApp,
    browser: &Browser,
    email: &str,
    used: &[String],
) -> String {
    let asked = browser.forgot_password(email).await;
    assert_status(&asked, StatusCode::OK);
    let prefix = format!("{}/reset-password?token=", app.base);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let fresh = app
            .smtp
            .messages_to(email)
            .iter()
            .filter_map(|m| m.first_link())
            .filter_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
            .find(|t| !used.contains(t));
        if let Some(token) = fresh {
            return token;
        }
        assert!(tokio::time::Instant::now() < deadline, "no reset mail");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// What `GET /settings/security` answers to a browser holding only `session`.
async fn security_page_status(app: &TestApp, session: &str) -> StatusCode {
    Browser::with_session_cookie(app, session)
        .get("/settings/security")
        .await
        .status()
}

/// The session cookies that successful sign-ins among `answers` got back.
fn sessions_from(answers: &[RawResponse]) -> Vec<String> {
    answers
        .iter()
        .filter(|a| a.status == 303)
        .filter_map(|a| a.set_cookie(SESSION))
        .collect()
}

/// How many of `sessions` still open Settings on `app`.
async fn alive_on(app: &TestApp, sessions: &[String]) -> usize {
    let mut alive = 0;
    for session in sessions {
        match security_page_status(app, session).await {
            StatusCode::OK => alive += 1,
            StatusCode::SEE_OTHER => {}
            other => panic!("unexpected {other} for an old session"),
        }
    }
    alive
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_sign_in_racing_a_reset_keeps_a_session_with_the_old_password() {
    let a = TestApp::spawn_with(|c| c.throttle.reset_mails_per_hour = 100).await;
    let b = second_instance(&a).await;
    let email = "alice@example.com";
    a.create_user(email, PASSWORD).await;
    let owner = a.browser();

    let mut old = PASSWORD.to_owned();
    let mut survivors = Vec::new();
    let mut raced = Vec::new();
    let mut listed = Vec::new();
    let mut used = Vec::new();
    for round in 1..=5 {
        // Failures from the previous round's late sign-ins must not throttle this one.
        sqlx::query("delete from login_throttle")
            .execute(&a.pool)
            .await
            .expect("clear throttle");
        let token = fresh_reset_link(&a, &owner, email, &used).await;
        used.push(token.clone());
        let new = format!("round {round} brings a fresh long passphrase");

        let mut requests = Vec::new();
        for i in 0..20 {
            let app = if i % 2 == 0 { &a } else { &b };
            requests.push(sign_in_request(app, email, &old, burst::source(i, 5)).await);
        }
        let form = format!("/reset-password?token={token}");
        let csrf = owner.csrf_token(&form).await;
        let cookie = burst::cookie_header(&owner, &a.base);
        requests.push(RawRequest {
            source: burst::source(0, 5),
            target: burst::target(&a.base),
            bytes: burst::form_post(
                &a.base,
                "/reset-password",
                &cookie,
                &[
                    ("token", token.as_str()),
                    ("new_password", &new),
                    ("new_password_confirm", &new),
                    ("csrf_token", &csrf),
                ],
            ),
        });
        let answers = burst::burst(requests).await;
        assert_eq!(answers[20].status, 303, "the reset completes: {answers:?}");

        let sessions = sessions_from(&answers[..20]);
        raced.push(sessions.len());
        // The owner, signed in with the new password, sees only this one session listed.
        sqlx::query("delete from login_throttle")
            .execute(&a.pool)
            .await
            .expect("clear throttle");
        let fresh = b.browser();
        assert_status(&fresh.sign_in(email, &new).await, StatusCode::SEE_OTHER);
        let page = fresh
            .get("/settings/security")
            .await
            .text()
            .await
            .expect("page");
        listed.push(page.matches("<li class=\"session").count());
        // Checked on B first: A's check would flush a dead session for both.
        let alive_b = alive_on(&b, &sessions).await;
        let alive_a = alive_on(&a, &sessions).await;
        survivors.push(alive_a.max(alive_b));
        old = new;
    }
    assert!(
        raced.iter().sum::<usize>() > 0,
        "some sign-ins with the old password got a session: {raced:?}"
    );
    assert_eq!(
        survivors,
        vec![0; 5],
        "old-password sessions that still open Settings, per round (sessions made: {raced:?})"
    );
    assert_eq!(
        listed,
        vec![1; 5],
        "sessions listed to the owner after each reset"
    );
    // The new password still signs in, on both instances.
    for app in [&a, &b] {
        assert_status(
            &app.browser().sign_in(email, &old).await,
            StatusCode::SEE_OTHER,
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_keeps_its_own_session_under_a_new_id_and_ends_sign_ins_racing_it() {
    let a = TestApp::spawn().await;
    let b = second_instance(&a).await;
    let email = "alice@example.com";
    a.create_user(email, PASSWORD).await;
    let one = a.browser();
    assert_status(&one.sign_in(email, PASSWORD).await, StatusCode::SEE_OTHER);
    let before = one.session_cookie().expect("session 1");

    let csrf = one.csrf_token("/settings/security").await;
    let cookie = burst::cookie_header(&one, &a.base);
    let mut requests = vec![RawRequest {
        source: burst::source(0, 4),
        target: burst::target(&a.base),
        bytes: burst::form_post(
            &a.base,
            "/settings/security/password",
            &cookie,
            &[
                ("current_password", PASSWORD),
                ("new_password", NEW_PASSWORD),
                ("new_password_confirm", NEW_PASSWORD),
                ("csrf_token", &csrf),
            ],
        ),
    }];
    // Session 2 and its company: enough sign-ins that some finish after the change.
    for i in 1..=10 {
        let app = if i % 2 == 0 { &a } else { &b };
        requests.push(sign_in_request(app, email, PASSWORD, burst::source(i, 4)).await);
    }
    let answers = burst::burst(requests).await;
    assert_eq!(answers[0].status, 303, "the change succeeds: {answers:?}");
    let after = answers[0]
        .set_cookie(SESSION)
        .expect("the change sets the rotated session cookie");
    assert_ne!(after, before, "the current session's id is rotated");

    let sessions = sessions_from(&answers[1..]);
    assert!(!sessions.is_empty(), "{:?}", burst::tally(&answers));
    assert_eq!(
        alive_on(&b, &sessions).await + alive_on(&a, &sessions).await,
        0,
        "sign-ins with the old password that raced the change ({} of them)",
        sessions.len()
    );
    for app in [&a, &b] {
        assert_eq!(
            security_page_status(app, &after).await,
            StatusCode::OK,
            "the changer stays signed in on {}",
            app.base
        );
    }
    assert_eq!(
        security_page_status(&a, &before).await,
        StatusCode::SEE_OTHER
    );
}

#[tokio::test]
async fn a_setup_key_shown_before_a_reset_is_not_offered_after_it() {
    let app = TestApp::spawn().await;
    let email = "alice@example.com";
    app.create_user(email, PASSWORD).await;
    let holder = app.browser();
    holder.sign_in(email, PASSWORD).await;
    let page = holder.get("/settings/security/two-factor").await;
    let before = crate::two_factor::secret_on(&page.text().await.expect("body"));

    let token = app.request_reset_link(&app.browser(), email, 1).await;
    assert_status(
        &app.browser()
            .reset_password(&token, NEW_PASSWORD, NEW_PASSWORD)
            .await,
        StatusCode::SEE_OTHER,
    );

    let owner = app.browser();
    assert_status(
        &owner.sign_in(email, NEW_PASSWORD).await,
        StatusCode::SEE_OTHER,
    );
    let page = owner.get("/settings/security/two-factor").await;
    let after = crate::two_factor::secret_on(&page.text().await.expect("body"));
    assert_ne!(
        before, after,
        "the setup key shown before the reset is void"
    );
}

#[tokio::test]
async fn turning_two_factor_off_with_a_new_password_rotates_the_session_id() {
    let app = TestApp::spawn().await;
    let email = "alice@example.com";
    let (browser, _secret, codes) = crate::two_factor::enabled(&app, email).await;
    // With two-factor on, 8 characters are enough; off, they are not.
    let short = "short pw";
    let changed = browser.change_password(PASSWORD, short, short).await;
    assert_status(&changed, StatusCode::SEE_OTHER);
    let before = browser.session_cookie().expect("session");

    let off = browser
        .submit(
            "/settings/security/two-factor",
            "/settings/security/two-factor/disable",
            &[
                ("current_password", short),
                ("totp_code", &codes[0]),
                ("new_password", NEW_PASSWORD),
                ("new_password_confirm", NEW_PASSWORD),
            ],
        )
        .await;
    assert_status(&off, StatusCode::SEE_OTHER);
    let after = browser.session_cookie().expect("still signed in");
    assert_ne!(before, after, "the session id is rotated");
    assert_status(&browser.get("/settings/security").await, StatusCode::OK);
    assert_eq!(
        security_page_status(&app, &before).await,
        StatusCode::SEE_OTHER,
        "the old id no longer works"
    );
}

#[tokio::test]
async fn the_client_ip_is_the_last_hop_across_every_forwarded_for_line() {
    let app = TestApp::spawn_with(|c| c.trust_forwarded_for = true).await;
    let browser = app.browser();
    let token = browser.csrf_token("/sign-in").await;
    let response = browser
        .client
        .post(browser.url("/sign-in"))
        .header("x-forwarded-for", "1.1.1.1")
        .header("x-forwarded-for", "2.2.2.2")
        .form(&[
            ("email", "nobody@example.com"),
            ("password", "not the password at all"),
            ("csrf_token", &token),
        ])
        .send()
        .await
        .expect("POST");
    assert_status(&response, StatusCode::UNPROCESSABLE_ENTITY);
    let (ip,): (Option<String>,) =
        sqlx::query_as("select ip from audit_events where kind = 'sign_in_failed'")
            .fetch_one(&app.pool)
            .await
            .expect("one audit row");
    assert_eq!(ip.as_deref(), Some("2.2.2.2"));
}

/// A sign-in POST with the given `Host` and `Origin` headers and a valid token.
async fn sign_in_with_headers(app: &TestApp, host: &str, origin: &str) -> RawResponse {
    let browser = app.browser();
    let token = browser.csrf_token("/sign-in").await;
    let cookie = burst::cookie_header(&browser, &app.base);
    let body: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("email", "alice@example.com"),
            ("password", PASSWORD),
            ("csrf_token", token.as_str()),
        ])
        .finish();
    let bytes = format!(
        "POST /sign-in HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\
         Cookie: {cookie}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes();
    let mut answers = burst::burst(vec![RawRequest {
        source: burst::source(0, 1),
        target: burst::target(&app.base),
        bytes,
    }])
    .await;
    answers.remove(0)
}

#[tokio::test]
async fn an_origin_is_compared_with_public_url_not_with_the_host_header() {
    let app = TestApp::spawn().await;
    app.create_user("alice@example.com", PASSWORD).await;
    let evil = sign_in_with_headers(&app, "evil.example", "http://evil.example").await;
    assert_eq!(evil.status, 403, "{evil:?}");
    assert!(evil.set_cookie(SESSION).is_none());

    let host = app.base.trim_start_matches("http://").to_owned();
    let ours = sign_in_with_headers(&app, &host, &app.base).await;
    assert_eq!(ours.status, 303, "{ours:?}");
}

#[tokio::test]
async fn a_csrf_token_from_one_session_does_not_work_with_another() {
    let app = TestApp::spawn().await;
    let email = "alice@example.com";
    app.create_user(email, PASSWORD).await;
    let browser = app.browser();
    browser.sign_in(email, PASSWORD).await;
    let first = browser.session_cookie().expect("session 1");
    let leaked = browser.csrf_token("/settings/security").await;

    // Session 2 in another tab of the same browser: the CSRF cookie is the same, the
    // session cookie is not.
    let csrf_cookie = burst::cookie_header(&browser, &app.base)
        .split("; ")
        .find(|c| c.starts_with("latchkey_csrf="))
        .expect("a CSRF cookie")
        .to_owned();
    let other = app.browser();
    other.jar.add_cookie_str(
        &format!("{csrf_cookie}; Path=/"),
        &app.base.parse().expect("url"),
    );
    assert_status(&other.sign_in(email, PASSWORD).await, StatusCode::SEE_OTHER);
    let second = other.session_cookie().expect("session 2");
    assert_ne!(first, second);
    assert_eq!(
        burst::cookie_header(&other, &app.base)
            .split("; ")
            .find(|c| c.starts_with("latchkey_csrf=")),
        Some(csrf_cookie.as_str()),
        "both sessions share the CSRF cookie"
    );
    let replayed = other
        .client
        .post(other.url("/settings/security/sessions/revoke-others"))
        .form(&[("csrf_token", leaked.as_str())])
        .send()
        .await
        .expect("POST");
    assert_status(&replayed, StatusCode::FORBIDDEN);
    assert_eq!(
        security_page_status(&app, &first).await,
        StatusCode::OK,
        "nothing was revoked"
    );

    // The token of session 2's own page works.
    let own = other.sign_out_other_sessions().await;
    assert_status(&own, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn a_browser_whose_session_ended_signs_in_again_with_the_sign_in_form() {
    let app = TestApp::spawn().await;
    let email = "alice@example.com";
    app.create_user(email, PASSWORD).await;
    let browser = app.browser();
    assert_status(
        &browser.sign_in(email, PASSWORD).await,
        StatusCode::SEE_OTHER,
    );

    // The state a sign-in that raced a change leaves behind: the session row is there,
    // but the password it began with is no longer the account's. The sign-in page ends
    // it, and its form must work without it.
    sqlx::query("update users set password_changed_at = password_changed_at + interval '1 second'")
        .execute(&app.pool)
        .await
        .expect("update");
    let page = browser.get("/sign-in").await;
    assert_status(&page, StatusCode::OK);
    assert_eq!(
        browser.session_cookie(),
        None,
        "the dead session's cookie is removed"
    );
    assert_status(
        &browser.sign_in(email, PASSWORD).await,
        StatusCode::SEE_OTHER,
    );
    assert_status(&browser.get("/settings/security").await, StatusCode::OK);

    // A reset deletes the session row: the cookie names nothing, and the form still works.
    let token = app.request_reset_link(&app.browser(), email, 1).await;
    assert_status(
        &app.browser()
            .reset_password(&token, NEW_PASSWORD, NEW_PASSWORD)
            .await,
        StatusCode::SEE_OTHER,
    );
    assert!(
        browser.session_cookie().is_some(),
        "the browser still sends it"
    );
    assert_status(
        &browser.sign_in(email, NEW_PASSWORD).await,
        StatusCode::SEE_OTHER,
    );
    assert_status(&browser.get("/settings/security").await, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_racing_a_reset_does_not_outlive_it() {
    let app = TestApp::spawn_with(|c| c.throttle.reset_mails_per_hour = 100).await;
    let email = "alice@example.com";
    app.create_user(email, PASSWORD).await;
    let owner = app.browser();
    let mut current = PASSWORD.to_owned();
    let mut used = Vec::new();
    let mut outlived = Vec::new();
    for round in 1..=5 {
        let token = fresh_reset_link(&app, &owner, email, &used).await;
        used.push(token.clone());
        let reset_to = format!("round {round} the owner resets to this");
        let change_to = format!("round {round} the old session changes to this");

        // Session 1 began with the current password and changes it as the owner resets.
        let one = app.browser();
        assert_status(&one.sign_in(email, &current).await, StatusCode::SEE_OTHER);
        let before = one.session_cookie().expect("session 1");
        let change_csrf = one.csrf_token("/settings/security").await;
        let reset_csrf = owner
            .csrf_token(&format!("/reset-password?token={token}"))
            .await;
        let requests = vec![
            RawRequest {
                source: burst::source(0, 2),
                target: burst::target(&app.base),
                bytes: burst::form_post(
                    &app.base,
                    "/settings/security/password",
                    &burst::cookie_header(&one, &app.base),
                    &[
                        ("current_password", current.as_str()),
                        ("new_password", &change_to),
                        ("new_password_confirm", &change_to),
                        ("csrf_token", &change_csrf),
                    ],
                ),
            },
            RawRequest {
                source: burst::source(1, 2),
                target: burst::target(&app.base),
                bytes: burst::form_post(
                    &app.base,
                    "/reset-password",
                    &burst::cookie_header(&owner, &app.base),
                    &[
                        ("token", token.as_str()),
                        ("new_password", &reset_to),
                        ("new_password_confirm", &reset_to),
                        ("csrf_token", &reset_csrf),
                    ],
                ),
            },
        ];
        let answers = burst::burst(requests).await;
        let reset_done = answers[1].status == 303;
        let changed = answers[0].status == 303
            && answers[0]
                .header("location")
                .is_some_and(|l| l.contains("notice=password-changed"));
        let mut alive = 0;
        for session in std::iter::once(before).chain(answers[0].set_cookie(SESSION)) {
            if security_page_status(&app, &session).await == StatusCode::OK {
                alive += 1;
            }
        }
        let reset_works =
            app.browser().sign_in(email, &reset_to).await.status() == StatusCode::SEE_OTHER;
        // One of the two wins. A reset that went through has the last word: no session
        // that began before it goes on, and its password is the one that works. A change
        // that went through first voided the link (410).
        let fine = if reset_done {
            !changed && alive == 0 && reset_works
        } else {
            changed && answers[1].status == 410
        };
        if !fine {
            outlived.push((round, answers[1].status, changed, alive, reset_works));
        }
        current = if reset_works { reset_to } else { change_to };
    }
    assert_eq!(
        outlived,
        vec![],
        "rounds where both won: (round, reset status, change went through, old sessions \
         still open, the reset's password works)"
    );
}
