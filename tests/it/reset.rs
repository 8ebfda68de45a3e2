//! "Forgot your password?": the emailed single-use link, end to end over real SMTP.

use std::time::Duration;

use reqwest::StatusCode;

use crate::helpers::*;

#[tokio::test]
async fn a_forgotten_password_is_replaced_through_the_emailed_link() {
    let app = TestApp::spawn().await;
    app.create_user("alice@example.com", PASSWORD).await;
    // A session opened before the reset, e.g. on a stolen laptop.
    let before = app.browser();
    before.sign_in("alice@example.com", PASSWORD).await;
    assert_status(&before.get("/").await, StatusCode::OK);

    let browser = app.browser();
    let sign_in_page = browser.get("/sign-in").await.text().await.unwrap();
    assert!(sign_in_page.contains("href=\"/forgot-password\""));
    assert!(sign_in_page.contains("Forgot your password?"));
    let token = app
        .request_reset_link(&browser, "alice@example.com", 1)
        .await;
    let mail = &app.smtp.messages_to("alice@example.com")[0];
    assert_eq!(
        mail.subject().as_deref(),
        Some("Reset your latchkey password")
    );
    assert!(mail.text_body().unwrap().contains("expires in 30 minutes"));

    let form = browser.get(&format!("/reset-password?token={token}")).await;
    assert_status(&form, StatusCode::OK);
    let form = form.text().await.unwrap();
    assert!(
        form.contains("name=\"new_password\"") && form.contains("name=\"new_password_confirm\"")
    );
    assert!(form.contains("autocomplete=\"new-password\""));

    let done = browser
        .reset_password(&token, NEW_PASSWORD, NEW_PASSWORD)
        .await;
    assert_status(&done, StatusCode::SEE_OTHER);
    assert!(location(&done).starts_with("/sign-in"));
    // A reset never signs anyone in by itself.
    assert_eq!(browser.get("/").await.status(), StatusCode::SEE_OTHER);
    let notice = browser.get(&location(&done)).await.text().await.unwrap();
    assert!(notice.contains("Your password was changed"));

    assert_status(
        &app.browser().sign_in("alice@example.com", PASSWORD).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    );
    assert_status(
        &app.browser()
            .sign_in("alice@example.com", NEW_PASSWORD)
            .await,
        StatusCode::SEE_OTHER,
    );
    assert_eq!(
        before.get("/").await.status(),
        StatusCode::SEE_OTHER,
        "old sessions are dead"
    );

    let mails = app.mails_to("alice@example.com", 2).await;
    assert_eq!(mails.len(), 2);
    assert_eq!(
        mails[1].subject().as_deref(),
        Some("Your latchkey password was changed")
    );
    let body = mails[1].text_body().unwrap();
    assert!(body.contains("127.0.0.1") && body.contains("Forgot your password?"));
    assert!(!body.contains(NEW_PASSWORD));
    assert_eq!(
        app.count("select count(*) from audit_events where kind = 'reset_completed'")
            .await,
        1
    );
}

#[tokio::test]
async fn known_and_unknown_addresses_get_the_same_page_and_only_one_gets_mail() {
    let app = TestApp::spawn().await;
    app.create_user("alice@example.com", PASSWORD).await;
    let browser = app.browser();
    let known = browser.forgot_password("alice@example.com").await;
    let unknown = browser.forgot_password("nobody@example.com").await;
    assert_status(&known, StatusCode::OK);
    assert_status(&unknown, StatusCode::OK);
    let known = known.text().await.unwrap();
    let unknown = unknown.text().await.unwrap();
    assert!(known.contains("Check your email"));
    assert_eq!(
        without_tokens(&known).replace("alice@example.com", "X"),
        without_tokens(&unknown).replace("nobody@example.com", "X")
    );
    app.mails_to("alice@example.com", 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.smtp.messages_to("nobody@example.com").len(), 0);
    assert_eq!(app.smtp.messages().len(), 1);
}

#[tokio::test]
async fn malformed_or_injected_addresses_are_refused_with_422() {
    let app = TestApp::spawn().await;
    let browser = app.browser();
    for bad in [
        "",
        "not-an-address",
        "a@b.com\r\nBcc: victim@example.com",
        &format!("{}@example.com", "a".repeat(300)),
    ] {
        let response = browser.forgot_password(bad).await;
        assert_status(&response, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(
            response
                .text()
                .await
                .unwrap()
                .contains("There is a problem")
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.count("select count(*) from outbox").await, 0);
}

#[tokio::test]
async fn a_link_works_once() {
    let app = TestApp::spawn().await;
    app.create_user("alice@example.com", PASSWORD).await;
    let browser = app.browser();
    let token = app
        .request_reset_link(&browser, "alice@example.com", 1)
        .await;
    assert_status(
        &browser
            .reset_password(&token, NEW_PASSWORD, NEW_PASSWORD)
            .await,
        StatusCode::SEE_OTHER,
    );

    let again = browser
        .reset_password(
            &token,
            "yet another passphrase here",
            "yet another passphrase here",
        )
        .await;
    assert_status(&again, StatusCode::GONE);
    assert!(again.text().await.unwrap().contains("Request a new link"));
    assert_status(
        &browser.get(&format!("/reset-password?token={token}")).await,
        StatusCode::GONE,
    );
    assert_status(
        &app.browser()
            .sign_in("alice@example.com", NEW_PASSWORD)
            .await,
        StatusCode::SEE_OTHER,
    );
}

#[tokio::test]
async fn opening_the_link_twice_does_not_use_it_up() {
    let app = TestApp::spawn().await;
    app.create_user("alice@example.com", PASSWORD).await;
    let browser = app.browser();
    let token = app
        .request_reset_link(&browser, "alice@example.com", 1)
        .await;
    // A mail scanner opens it, then the person does.
    assert_status(
        &app.browser()
            .get(&format!("/reset-password?token={token}"))
            .await,
        StatusCode::OK,
    );
    assert_status(
        &browser.get(&format!("/reset-password?token={token}")).await,
        StatusCode::OK,
    );
    assert_status(
        &browser
            .reset_password(&token, NEW_PASSWORD, NEW_PASSWORD)
            .await,
        StatusCode::SEE_OTHER,
    );
}

#[tokio::test]
async fn an_expired_link_is_refused_and_changes_nothing() {
    let app = TestApp::spawn_with(|c| c.reset_token_ttl_secs = 1).await;
    app.create_user("alice@example.com", PASSWORD).await;
    let browser = app.browser();
    let token = app
        .request_reset_link(&browser, "alice@example.com", 1)
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_status(
        &browser.get(&format!("/reset-password?token={token}")).await,
        StatusCode::GONE,
    );
    assert_status(
        &browser
            .reset_password(&token, NEW_PASSWORD, NEW_PASSWORD)
            .await,
        StatusCode::GONE,
    );
    assert_status(
        &app.browser().sign_in("alice@example.com", PASSWORD).await,
        StatusCode::SEE_OTHER,
    );
}

#[tokio::test]
async fn tampered_tokens_fail() {
    let app = TestApp::spawn().await;
    app.create_user("alice@example.com", PASSWORD).await;
    let browser = app.browser();
    let token = app
        .request_reset_link(&browser, "alice@example.com", 1)
        .await;
    let mut tampered: Vec<char> = token.chars().collect();
    tampered[5] = if tampered[5] == 'A' { 'B' } else { 'A' };
    let tampered: String = tampered.into_iter().collect();
    for bad in [tampered.as_str(), &token[..20], "", "x"] {
        let response = browser
            .reset_password(bad, NEW_PASSWORD, NEW_PASSWORD)
            .await;
        assert_status(&response, StatusCode::BAD_REQUEST);
    }
    assert_status(
        &browser
            .reset_password(&token, NEW_PASSWORD, NEW_PASSWORD)
            .await,
        StatusCode::SEE_OTHER,
    );
}

#[tokio::test]
async fn a_token_only_ever_changes_its_own_account() {
    let app = TestApp::spawn().await;
    app.create_user("alice@example.com", PASSWORD).await;
    app.create_user("bob@example.com", PASSWORD).await;
    let browser = app.browser();
    let alice_token = app
        .request_reset_link(&browser, "alice@example.com", 1)
        .await;
    // The form's hidden username is decoration: the token alone names the account.
    let response = browser
        .submit(
            &format!("/reset-password?token={alice_token}"),
            "/reset-password",
            &[
                ("token", &alice_token),
                ("username", "bob@example.com"),
                ("new_password", NEW_PASSWORD),
                ("new_password_confirm", NEW_PASSWORD),
            ],
        )
        .await;
    assert_status(&response, StatusCode::SEE_OTHER);
    assert_status(
        &app.browser().sign_in("bob@example.com", PASSWORD).await,
        StatusCode::SEE_OTHER,
    );
    assert_status(
        &app.browser()
            .sign_in("alice@example.com", NEW_PASSWORD)
            .await,
        StatusCode::SEE_OTHER,
    );
}

#[tokio::test]
async fn a_newer_link_voids_the_older_one() {
    let app = TestApp::spawn().await;
    app.create_user("alice@example.com", PASSWORD).await;
    let browser = app.browser();
    let first = app
        .request_reset_link(&browser, "alice@example.com", 1)
        .await;
    let second = app
        .request_reset_link(&browser, "alice@example.com", 2)
        .await;
    assert_status(
        &browser
            .reset_password(&first, NEW_PASSWORD, NEW_PASSWORD)
            .await,
        StatusCode::GONE,
    );
    assert_status(
        &browser
            .reset_password(&second, NEW_PASSWORD, NEW_PASSWORD)
            .await,
        StatusCode::SEE_OTHER,
    );
}

#[tokio::test]
async fn twenty_concurrent_redemptions_of_one_token_give_exactly_one_success() {
    let app = TestApp::spawn_with(|c| c.argon2.queue = 64).await;
    app.create_user("alice@example.com", PASSWORD).await;
    let browser = app.browser();
    let token = app
        .request_reset_link(&browser, "alice@example.com", 1)
        .await;
    let csrf = browser.csrf_token("/sign-in").await;
    let attempts = (0..20).map(|i| {
        let client = browser.client.clone();
        let url = browser.url("/reset-password");
        let (token, csrf) = (token.clone(), csrf.clone());
        tokio::spawn(async move {
            let password = format!("concurrent passphrase number {i}");
            client
                .post(url)
                .form(&[
                    ("token", token.as_str()),
                    ("new_password", &password),
                    ("new_password_confirm", &password),
                    ("csrf_token", &csrf),
                ])
                .send()
                .await
                .unwrap()
                .status()
        })
    });
    let mut statuses = Vec::new();
    for attempt in attempts {
        statuses.push(attempt.await.unwrap());
    }
    let wins = statuses
        .iter()
        .filter(|s| **s == StatusCode::SEE_OTHER)
        .count();
    assert_eq!(wins, 1, "{statuses:?}");
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::SEE_OTHER || *s == StatusCode::GONE),
        "{statuses:?}"
    );
    assert_eq!(
        app.count("select count(*) from audit_events where kind = 'reset_completed'")
            .await,
        1
    );
}

#[tokio::test]
async fn the_raw_token_is_stored_nowhere() {
    let app = TestApp::spawn().await;
    app.create_user("alice@example.com", PASSWORD).await;
    let browser = app.browser();
    let token = app
        .request_reset_link(&browser, "alice@example.com", 1)
        .await;
    // Delivered mail has its body cleared, so no live link stays in the outbox.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (dump,): (String,) = sqlx::query_as(
        "select concat_ws(' ',
            (select string_agg(t::text, ' ') from reset_tokens t),
            (select string_agg(o::text, ' ') from outbox o),
            (select string_agg(a::text, ' ') from audit_events a),
            (select string_agg(encode(token_hash, 'escape'), ' ') from reset_tokens))",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(!dump.contains(&token), "token found in the database");
    assert_eq!(
        app.count(
            "select count(*) from outbox where text_body is not null or html_body is not null"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn links_use_public_url_whatever_host_the_request_names() {
    let app = TestApp::spawn().await;
    app.create_user("alice@example.com", PASSWORD).await;
    let browser = app.browser();
    let token = browser.csrf_token("/forgot-password").await;
    let response = browser
        .client
        .post(browser.url("/forgot-password"))
        .header("host", "evil.example")
        .header("x-forwarded-host", "evil.example")
        .form(&[
            ("email", "alice@example.com"),
            ("csrf_token", token.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_status(&response, StatusCode::OK);
    let mails = app.mails_to("alice@example.com", 1).await;
    let link = mails[0].first_link().unwrap();
    assert!(
        link.starts_with(&format!("{}/reset-password?token=", app.base)),
        "{link}"
    );
    assert!(!mails[0].data.contains("evil.example"));
}

#[tokio::test]
async fn policy_failures_are_explained_beside_the_field_and_keep_the_link() {
    let app = TestApp::spawn().await;
    app.create_user("alice@example.com", PASSWORD).await;
    let browser = app.browser();
    let token = app
        .request_reset_link(&browser, "alice@example.com", 1)
        .await;
    for (password, confirm, message) in [
        (
            "too short",
            "too short",
            "Password must be 15 characters or more",
        ),
        (
            NEW_PASSWORD,
            "something else entirely",
            "Enter the same password in both fields",
        ),
        ("password1234567", "password1234567", "too common"),
        (
            "alice loves her latch",
            "alice loves her latch",
            "must not contain",
        ),
    ] {
        let response = browser.reset_password(&token, password, confirm).await;
        assert_status(&response, StatusCode::UNPROCESSABLE_ENTITY);
        let body = response.text().await.unwrap();
        assert!(body.contains(message), "{message}: {body}");
        assert!(body.contains("<title>Error: "));
        assert!(body.contains("aria-invalid=\"true\""));
    }
    let long: String = "ünïcødé and spaces 🔑 ".repeat(8);
    assert!(long.chars().count() >= 128);
    assert_status(
        &browser.reset_password(&token, &long, &long).await,
        StatusCode::SEE_OTHER,
    );
    assert_status(
        &app.browser().sign_in("alice@example.com", &long).await,
        StatusCode::SEE_OTHER,
    );
}

#[tokio::test]
async fn an_address_gets_at_most_three_links_an_hour() {
    let app = TestApp::spawn().await;
    app.create_user("alice@example.com", PASSWORD).await;
    let browser = app.browser();
    for n in 1..=3 {
        app.request_reset_link(&browser, "alice@example.com", n)
            .await;
    }
    let fourth = browser.forgot_password("alice@example.com").await;
    assert_status(&fourth, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(app.smtp.messages_to("alice@example.com").len(), 3);
}

#[tokio::test]
async fn one_ip_may_ask_for_links_only_so_often() {
    let app = TestApp::spawn_with(|c| c.ip_rate_limit = 2).await;
    let browser = app.browser();
    for _ in 0..2 {
        let r = browser.forgot_password("x@example.com").await;
        assert_status(&r, StatusCode::OK);
    }
    let limited = browser.forgot_password("x@example.com").await;
    assert_status(&limited, StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.headers().contains_key("retry-after"));
}

#[tokio::test]
async fn mail_queued_while_smtp_is_down_is_delivered_once_it_returns_even_across_a_restart() {
    let mut app = TestApp::spawn().await;
    app.create_user("alice@example.com", PASSWORD).await;
    app.smtp.set_down(true);
    let browser = app.browser();
    let r = browser.forgot_password("alice@example.com").await;
    assert_status(&r, StatusCode::OK);
    // The first attempt fails and is scheduled for later.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while app
        .count("select count(*) from outbox where attempts > 0")
        .await
        == 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no delivery attempt"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.smtp.messages().len(), 0);

    // The service restarts on the same database while SMTP is still down...
    app.stop().await;
    let url = app.database_url.clone();
    let smtp_url = app.smtp.url();
    let restarted = TestApp::spawn_with(|c| {
        c.database_url = secrecy::SecretString::from(url);
        c.smtp_url = Some(secrecy::SecretString::from(smtp_url));
    })
    .await;
    // ...and SMTP comes back; the retry is due now rather than after its backoff.
    app.smtp.set_down(false);
    sqlx::query("update outbox set next_attempt_at = now()")
        .execute(&restarted.pool)
        .await
        .unwrap();
    let mails = app.mails_to("alice@example.com", 1).await;
    assert_eq!(mails.len(), 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        app.smtp.messages_to("alice@example.com").len(),
        1,
        "delivered exactly once"
    );
    assert_eq!(
        restarted
            .count("select count(*) from outbox where status = 'sent'")
            .await,
        1
    );
}

/// The operator's knob, as the real binary reads it from its environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_link_lifetime_follows_latchkey_reset_token_ttl_secs() {
    let smtp = crate::smtp_sink::SmtpSink::start().await;
    let database_url = crate::process::fresh_database();
    let service = crate::process::ServiceProcess::start(
        &database_url,
        &smtp.url(),
        &[("LATCHKEY_RESET_TOKEN_TTL_SECS", "3")],
    )
    .await;
    let db = crate::process::connect(&database_url).await;
    crate::process::create_users(&db, &["alice@example.com".into()], PASSWORD).await;
    let browser = Browser::new(&service.base);
    let asked = browser.forgot_password("alice@example.com").await;
    assert_status(&asked, StatusCode::OK);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let link = loop {
        if let Some(link) = smtp
            .messages_to("alice@example.com")
            .first()
            .and_then(|m| m.first_link())
        {
            break link;
        }
        assert!(tokio::time::Instant::now() < deadline, "no reset mail");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (lifetime,): (f64,) = sqlx::query_as(
        "select extract(epoch from expires_at - created_at)::float8 from reset_tokens",
    )
    .fetch_one(&db)
    .await
    .expect("token row");
    assert!((lifetime - 3.0).abs() < 0.5, "lifetime {lifetime} s");
    let token = link.split("token=").nth(1).expect("token").to_owned();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_status(
        &browser.get(&format!("/reset-password?token={token}")).await,
        StatusCode::GONE,
    );
}
