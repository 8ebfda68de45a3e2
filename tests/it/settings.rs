//! Settings → Security: change password, sessions, recent activity.

use reqwest::StatusCode;

use crate::helpers::*;

#[tokio::test]
async fn settings_asks_strangers_to_sign_in_and_brings_them_back() {
    let app = TestApp::spawn().await;
    app.create_user("alice@example.com", PASSWORD).await;
    let browser = app.browser();
    let response = browser.get("/settings/security").await;
    assert_status(&response, StatusCode::SEE_OTHER);
    assert_eq!(location(&response), "/sign-in?next=%2Fsettings%2Fsecurity");

    let page = browser
        .get(&location(&response))
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains("name=\"next\" value=\"/settings/security\""));
    let signed_in = browser
        .submit(
            &location(&response),
            "/sign-in",
            &[
                ("email", "alice@example.com"),
                ("password", PASSWORD),
                ("next", "/settings/security"),
            ],
        )
        .await;
    assert_eq!(location(&signed_in), "/settings/security");
    let page = browser.get("/settings/security").await;
    assert_status(&page, StatusCode::OK);
    let page = page.text().await.unwrap();
    for expected in [
        "General",
        "Change password",
        "name=\"current_password\"",
        "autocomplete=\"current-password\"",
        "Sessions",
        "This device",
        "Recent activity",
        "aria-current=\"page\"",
    ] {
        assert!(page.contains(expected), "{expected}");
    }
}

#[tokio::test]
async fn changing_the_password_keeps_this_session_and_ends_the_others() {
    let app = TestApp::spawn().await;
    app.create_user("alice@example.com", PASSWORD).await;
    let one = app.browser();
    let two = app.browser();
    one.sign_in("alice@example.com", PASSWORD).await;
    two.sign_in("alice@example.com", PASSWORD).await;
    let old_cookie = one.session_cookie().unwrap();

    let response = one
        .change_password(PASSWORD, NEW_PASSWORD, NEW_PASSWORD)
        .await;
    assert_status(&response, StatusCode::SEE_OTHER);
    assert!(location(&response).starts_with("/settings/security?notice=password-changed"));
    let page = one.get(&location(&response)).await;
    assert_status(&page, StatusCode::OK);
    assert!(
        page.text()
            .await
            .unwrap()
            .contains("1 other session was signed out")
    );

    let new_cookie = one.session_cookie().unwrap();
    assert_ne!(
        old_cookie, new_cookie,
        "the current session's id is rotated"
    );
    assert_eq!(
        Browser::with_session_cookie(&app, &old_cookie)
            .get("/")
            .await
            .status(),
        StatusCode::SEE_OTHER
    );
    assert_eq!(
        two.get("/").await.status(),
        StatusCode::SEE_OTHER,
        "the other session is signed out"
    );
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

    let mails = app.mails_to("alice@example.com", 1).await;
    assert_eq!(mails.len(), 1);
    assert_eq!(
        mails[0].subject().as_deref(),
        Some("Your latchkey password was changed")
    );
    assert!(
        mails[0]
            .text_body()
            .unwrap()
            .contains("1 other session was signed out")
    );
}

#[tokio::test]
async fn bad_changes_are_refused_with_422_and_change_nothing() {
    let app = TestApp::spawn().await;
    app.create_user("alice@example.com", PASSWORD).await;
    let browser = app.browser();
    browser.sign_in("alice@example.com", PASSWORD).await;
    let hash = app.password_hash("alice@example.com").await;
    for (current, new, confirm, message) in [
        (
            "not my password at all",
            NEW_PASSWORD,
            NEW_PASSWORD,
            "Your current password is incorrect",
        ),
        (
            PASSWORD,
            NEW_PASSWORD,
            "a different passphrase",
            "Enter the same password in both fields",
        ),
        (PASSWORD, "qwertyuiop12345", "qwertyuiop12345", "too common"),
        (PASSWORD, "short one", "short one", "15 characters or more"),
        (
            PASSWORD,
            PASSWORD,
            PASSWORD,
            "must be different from your current password",
        ),
    ] {
        let response = browser.change_password(current, new, confirm).await;
        assert_status(&response, StatusCode::UNPROCESSABLE_ENTITY);
        let body = response.text().await.unwrap();
        assert!(body.contains(message), "{message}");
        assert!(body.contains("There is a problem"));
    }
    assert_eq!(app.password_hash("alice@example.com").await, hash);
    assert_eq!(browser.get("/").await.status(), StatusCode::OK);
    assert_eq!(app.count("select count(*) from outbox").await, 0);
}

#[tokio::test]
async fn a_change_without_the_csrf_token_is_refused() {
    let app = TestApp::spawn().await;
    app.create_user("alice@example.com", PASSWORD).await;
    let browser = app.browser();
    browser.sign_in("alice@example.com", PASSWORD).await;
    let hash = app.password_hash("alice@example.com").await;
    let response = browser
        .client
        .post(browser.url("/settings/security/password"))
        .form(&[
            ("current_password", PASSWORD),
            ("new_password", NEW_PASSWORD),
            ("new_password_confirm", NEW_PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_status(&response, StatusCode::FORBIDDEN);
    assert_eq!(app.password_hash("alice@example.com").await, hash);
}

#[tokio::test]
async fn wrong_current_passwords_count_toward_the_throttle() {
    let app = TestApp::spawn_with(|c| c.throttle.free_failures = 2).await;
    app.create_user("alice@example.com", PASSWORD).await;
    let browser = app.browser();
    browser.sign_in("alice@example.com", PASSWORD).await;
    for _ in 0..2 {
        browser
            .change_password("guess number one two", NEW_PASSWORD, NEW_PASSWORD)
            .await;
    }
    let throttled = browser
        .change_password(PASSWORD, NEW_PASSWORD, NEW_PASSWORD)
        .await;
    assert_status(&throttled, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        throttled
            .text()
            .await
            .unwrap()
            .contains("Too many attempts")
    );
    assert_status(
        &app.browser().sign_in("alice@example.com", PASSWORD).await,
        StatusCode::TOO_MANY_REQUESTS,
    );
}

/// Alice's account, signed in on three browsers.
async fn three_signed_in_devices(app: &TestApp) -> [Browser; 3] {
    app.create_user("alice@example.com", PASSWORD).await;
    let devices = [app.browser(), app.browser(), app.browser()];
    for device in &devices {
        assert_status(
            &device.sign_in("alice@example.com", PASSWORD).await,
            StatusCode::SEE_OTHER,
        );
    }
    devices
}

#[tokio::test]
async fn other_sessions_can_be_signed_out_all_at_once_or_one_by_one() {
    let app = TestApp::spawn().await;
    let [me, laptop, phone] = three_signed_in_devices(&app).await;
    let page = me.get("/settings/security").await.text().await.unwrap();
    assert!(page.contains("Sign out other sessions"));
    assert_eq!(
        page.matches("/revoke\"").count(),
        2,
        "a sign-out button per other session"
    );

    // One by one: the first listed other session.
    let start = page.find("/settings/security/sessions/").unwrap();
    let action = &page[start..start + page[start..].find('"').unwrap()];
    let response = me.submit("/settings/security", action, &[]).await;
    assert_status(&response, StatusCode::SEE_OTHER);
    let alive = [
        laptop.get("/").await.status(),
        phone.get("/").await.status(),
    ];
    assert_eq!(alive.iter().filter(|s| **s == StatusCode::OK).count(), 1);

    let response = me.sign_out_other_sessions().await;
    assert_status(&response, StatusCode::SEE_OTHER);
    assert_eq!(laptop.get("/").await.status(), StatusCode::SEE_OTHER);
    assert_eq!(phone.get("/").await.status(), StatusCode::SEE_OTHER);
    assert_eq!(me.get("/").await.status(), StatusCode::OK);
    let page = me.get("/settings/security").await.text().await.unwrap();
    assert!(!page.contains("Sign out other sessions"));
}

#[tokio::test]
async fn one_account_cannot_sign_out_another_accounts_session() {
    let app = TestApp::spawn().await;
    app.create_user("alice@example.com", PASSWORD).await;
    app.create_user("bob@example.com", PASSWORD).await;
    let alice = app.browser();
    let bob = app.browser();
    alice.sign_in("alice@example.com", PASSWORD).await;
    bob.sign_in("bob@example.com", PASSWORD).await;
    let (bob_session,): (uuid::Uuid,) = sqlx::query_as(
        "select s.public_id from sessions s join users u on u.id = s.user_id where u.email = 'bob@example.com'",
    ).fetch_one(&app.pool).await.unwrap();
    let response = alice.sign_out_session(&bob_session).await;
    assert_status(&response, StatusCode::SEE_OTHER);
    assert_eq!(bob.get("/").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn recent_activity_lists_the_accounts_security_events() {
    let app = TestApp::spawn().await;
    app.create_user("alice@example.com", PASSWORD).await;
    let browser = app.browser();
    browser
        .sign_in("alice@example.com", "a wrong password here")
        .await;
    browser.sign_in("alice@example.com", PASSWORD).await;
    browser
        .change_password(PASSWORD, NEW_PASSWORD, NEW_PASSWORD)
        .await;
    let page = browser
        .get("/settings/security")
        .await
        .text()
        .await
        .unwrap();
    let activity = &page[page.find("Recent activity").unwrap()..];
    let changed = activity
        .find("Password changed")
        .expect("password change listed");
    let signed_in = activity.find("Signed in").expect("sign-in listed");
    let failed = activity
        .find("Failed sign-in attempt")
        .expect("failure listed");
    assert!(changed < signed_in && signed_in < failed, "newest first");
    assert!(activity.contains("127.0.0.1"));
}

#[tokio::test]
async fn sign_out_other_sessions_counts_only_the_live_ones() {
    let app = TestApp::spawn().await;
    let [me, laptop, old_phone] = three_signed_in_devices(&app).await;
    // The old phone's session ran out; housekeeping has not swept it yet.
    let id: tower_sessions::session::Id = old_phone
        .session_id()
        .expect("cookie")
        .parse()
        .expect("session id");
    sqlx::query("update sessions set expires_at = now() - interval '1 minute' where id_hash = $1")
        .bind(latchkey::web::session_store::id_hash(&id))
        .execute(&app.pool)
        .await
        .expect("expire a session");
    assert_eq!(old_phone.get("/").await.status(), StatusCode::SEE_OTHER);

    let response = me.sign_out_other_sessions().await;
    assert_status(&response, StatusCode::SEE_OTHER);
    assert!(
        location(&response).contains("count=1"),
        "{}",
        location(&response)
    );
    assert_eq!(laptop.get("/").await.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        app.count("select count(*) from sessions where user_id is not null")
            .await,
        1
    );
}
