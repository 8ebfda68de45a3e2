//! Two-factor authentication: codes computed from the shown secret with an independent
//! TOTP implementation (totp-lite), never the server's code.

use std::time::{SystemTime, UNIX_EPOCH};

use reqwest::StatusCode;

use crate::helpers::*;

/// The base32 key shown on the setup page, as a person would copy it.
pub(crate) fn secret_on(page: &str) -> Vec<u8> {
    let start =
        page.find("id=\"totp-secret\">").expect("secret shown") + "id=\"totp-secret\">".len();
    let end = start + page[start..].find("</code>").expect("end of secret");
    let mut text = String::new();
    let mut in_tag = false;
    for c in page[start..end].chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    assert!(
        text.chars()
            .all(|c| c.is_ascii_uppercase() || ('2'..='7').contains(&c)),
        "{text}"
    );
    data_encoding::BASE32_NOPAD
        .decode(text.as_bytes())
        .expect("base32")
}

pub(crate) fn code_at(secret: &[u8], offset_steps: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let time = (now + offset_steps * 30) as u64;
    totp_lite::totp_custom::<totp_lite::Sha1>(30, 6, secret, time)
}

fn recovery_codes_on(page: &str) -> Vec<String> {
    let start = page.find("id=\"recovery-codes\"").expect("codes shown");
    let list = &page[start..start + page[start..].find("</ul>").unwrap()];
    list.split("<code>")
        .skip(1)
        .map(|c| c[..c.find("</code>").unwrap()].to_owned())
        .collect()
}

/// Signs in and turns two-factor on; returns the browser, secret and recovery codes.
pub(crate) async fn enabled(app: &TestApp, email: &str) -> (Browser, Vec<u8>, Vec<String>) {
    app.create_user(email, PASSWORD).await;
    let browser = app.browser();
    browser.sign_in(email, PASSWORD).await;
    let page = browser
        .get("/settings/security/two-factor")
        .await
        .text()
        .await
        .unwrap();
    let secret = secret_on(&page);
    let response = browser
        .enable_two_factor(PASSWORD, &code_at(&secret, 0))
        .await;
    assert_status(&response, StatusCode::OK);
    let codes = recovery_codes_on(&response.text().await.unwrap());
    (browser, secret, codes)
}

/// The code of the next 30-second step: accepted (±1 step of drift) and, unlike the
/// current one that enabling used, not a replay.
fn fresh_code(secret: &[u8]) -> String {
    code_at(secret, 1)
}

#[tokio::test]
async fn enabling_needs_the_password_and_a_right_code_and_shows_ten_codes_once() {
    let app = TestApp::spawn().await;
    app.create_user("alice@example.com", PASSWORD).await;
    let browser = app.browser();
    browser.sign_in("alice@example.com", PASSWORD).await;
    let page = browser.get("/settings/security/two-factor").await;
    assert_status(&page, StatusCode::OK);
    let page = page.text().await.unwrap();
    assert!(page.contains("<svg"), "QR code inline");
    assert!(
        page.contains("inputmode=\"numeric\"") && page.contains("autocomplete=\"one-time-code\"")
    );
    let secret = secret_on(&page);
    // Reloading the page shows the same secret until it is confirmed.
    assert_eq!(
        secret_on(
            &browser
                .get("/settings/security/two-factor")
                .await
                .text()
                .await
                .unwrap()
        ),
        secret
    );

    let wrong_code = browser.enable_two_factor(PASSWORD, "000000").await;
    assert_status(&wrong_code, StatusCode::UNPROCESSABLE_ENTITY);
    let wrong_password = browser
        .enable_two_factor("not the password at all", &code_at(&secret, 0))
        .await;
    assert_status(&wrong_password, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        app.count("select count(*) from users where totp_enabled_at is not null")
            .await,
        0
    );

    let right = browser
        .enable_two_factor(PASSWORD, &code_at(&secret, 0))
        .await;
    assert_status(&right, StatusCode::OK);
    let codes = recovery_codes_on(&right.text().await.unwrap());
    assert_eq!(codes.len(), 10);
    let again = browser
        .get("/settings/security/two-factor")
        .await
        .text()
        .await
        .unwrap();
    assert!(!again.contains(&codes[0]), "codes are never shown again");
    assert!(!again.contains("totp-secret"));
    let mails = app.mails_to("alice@example.com", 1).await;
    assert!(
        mails[0]
            .subject()
            .unwrap()
            .contains("Two-factor authentication is on")
    );
    assert_eq!(
        app.count("select count(*) from audit_events where kind = 'two_factor_enabled'")
            .await,
        1
    );
}

#[tokio::test]
async fn the_secret_is_encrypted_at_rest_and_codes_are_hashed() {
    let app = TestApp::spawn().await;
    let (_browser, secret, codes) = enabled(&app, "alice@example.com").await;
    let (stored,): (Vec<u8>,) = sqlx::query_as("select totp_secret_enc from users")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(
        !stored.windows(secret.len()).any(|w| w == secret.as_slice()),
        "plaintext secret stored"
    );
    let b32 = data_encoding::BASE32_NOPAD.encode(&secret);
    let (dump,): (String,) = sqlx::query_as(
        "select concat_ws(' ', (select string_agg(u::text, ' ') from users u), (select string_agg(r::text, ' ') from recovery_codes r))",
    ).fetch_one(&app.pool).await.unwrap();
    assert!(!dump.contains(&b32));
    for code in &codes {
        assert!(!dump.contains(code.as_str()));
    }
}

#[tokio::test]
async fn sign_in_asks_for_the_second_step_and_only_then_signs_in() {
    let app = TestApp::spawn().await;
    let (_setup, secret, _codes) = enabled(&app, "alice@example.com").await;
    let browser = app.browser();
    let response = browser
        .submit(
            "/sign-in?next=/settings/security",
            "/sign-in",
            &[
                ("email", "alice@example.com"),
                ("password", PASSWORD),
                ("next", "/settings/security"),
            ],
        )
        .await;
    assert_status(&response, StatusCode::SEE_OTHER);
    assert_eq!(location(&response), "/sign-in/two-factor");
    // Half signed in: nothing else is reachable.
    assert_status(&browser.get("/").await, StatusCode::SEE_OTHER);
    assert_status(
        &browser.get("/settings/security").await,
        StatusCode::SEE_OTHER,
    );
    let half = browser.session_cookie().unwrap();

    let page = browser.get("/sign-in/two-factor").await;
    assert_status(&page, StatusCode::OK);
    let wrong = browser.second_step("123456").await;
    assert_status(&wrong, StatusCode::UNPROCESSABLE_ENTITY);

    let code = fresh_code(&secret);
    let done = browser.second_step(&code).await;
    assert_status(&done, StatusCode::SEE_OTHER);
    assert_eq!(
        location(&done),
        "/settings/security",
        "next survives the second step"
    );
    assert_status(&browser.get("/settings/security").await, StatusCode::OK);
    assert_ne!(
        browser.session_cookie().unwrap(),
        half,
        "the id is rotated again"
    );

    // The same code again, from another browser: a replay.
    let other = app.browser();
    other.sign_in("alice@example.com", PASSWORD).await;
    let replay = other.second_step(&code).await;
    assert_status(&replay, StatusCode::UNPROCESSABLE_ENTITY);
    assert_status(&other.get("/").await, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn the_second_step_page_is_for_half_signed_in_sessions_only() {
    let app = TestApp::spawn().await;
    let browser = app.browser();
    assert_eq!(
        location(&browser.get("/sign-in/two-factor").await),
        "/sign-in"
    );
    let post = browser
        .submit(
            "/sign-in",
            "/sign-in/two-factor",
            &[("totp_code", "123456")],
        )
        .await;
    assert_eq!(location(&post), "/sign-in");
}

#[tokio::test]
async fn a_recovery_code_works_once() {
    let app = TestApp::spawn().await;
    let (_setup, _secret, codes) = enabled(&app, "alice@example.com").await;
    let browser = app.browser();
    browser.sign_in("alice@example.com", PASSWORD).await;
    let done = browser.second_step(&codes[3].to_uppercase()).await;
    assert_status(&done, StatusCode::SEE_OTHER);
    assert_status(&browser.get("/").await, StatusCode::OK);

    let again = app.browser();
    again.sign_in("alice@example.com", PASSWORD).await;
    let reused = again.second_step(&codes[3]).await;
    assert_status(&reused, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn wrong_codes_count_toward_the_throttle_and_a_password_alone_does_not_clear_it() {
    let app = TestApp::spawn_with(|c| c.throttle.free_failures = 3).await;
    let (_setup, _secret, codes) = enabled(&app, "alice@example.com").await;
    let browser = app.browser();
    browser.sign_in("alice@example.com", PASSWORD).await;
    for _ in 0..2 {
        let r = browser.second_step("000000").await;
        assert_status(&r, StatusCode::UNPROCESSABLE_ENTITY);
    }
    // A correct password does not wipe the count...
    let again = app.browser();
    assert_status(
        &again.sign_in("alice@example.com", PASSWORD).await,
        StatusCode::SEE_OTHER,
    );
    let third = again.second_step("000000").await;
    assert_status(&third, StatusCode::UNPROCESSABLE_ENTITY);
    // ...so now even a right code waits.
    let blocked = again.second_step(&codes[0]).await;
    assert_status(&blocked, StatusCode::TOO_MANY_REQUESTS);
    assert!(blocked.headers().contains_key("retry-after"));
}

#[tokio::test]
async fn a_reset_of_an_account_with_two_factor_needs_a_code() {
    let app = TestApp::spawn().await;
    let (_setup, secret, codes) = enabled(&app, "alice@example.com").await;
    let browser = app.browser();
    browser.forgot_password("alice@example.com").await;
    let mails = app.mails_to("alice@example.com", 2).await;
    let link = mails
        .iter()
        .find_map(|m| m.first_link().filter(|l| l.contains("token=")))
        .expect("reset link");
    let token = link.split("token=").nth(1).unwrap().to_owned();
    let form = browser
        .get(&format!("/reset-password?token={token}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(form.contains("name=\"totp_code\""));

    let eight = "eight ch"; // 8 characters are enough with two-factor
    let submit = |code: String| {
        let (browser, token) = (&browser, token.clone());
        async move {
            browser
                .reset_password_with_code(&token, eight, eight, &code)
                .await
        }
    };
    assert_status(
        &submit(String::new()).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    );
    assert_status(
        &submit("999999".into()).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    );
    assert_status(
        &app.browser().sign_in("alice@example.com", PASSWORD).await,
        StatusCode::SEE_OTHER,
    );
    // The link is still usable after wrong codes.
    assert_status(&submit(fresh_code(&secret)).await, StatusCode::SEE_OTHER);
    let browser2 = app.browser();
    assert_status(
        &browser2.sign_in("alice@example.com", eight).await,
        StatusCode::SEE_OTHER,
    );
    // Two-factor and unused recovery codes survive the reset.
    let done = browser2.second_step(&codes[9]).await;
    assert_status(&done, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn five_wrong_codes_void_the_reset_link() {
    let app = TestApp::spawn_with(|c| c.throttle.free_failures = 50).await;
    let (_setup, secret, _codes) = enabled(&app, "alice@example.com").await;
    let browser = app.browser();
    browser.forgot_password("alice@example.com").await;
    let mails = app.mails_to("alice@example.com", 2).await;
    let link = mails
        .iter()
        .find_map(|m| m.first_link().filter(|l| l.contains("token=")))
        .unwrap();
    let token = link.split("token=").nth(1).unwrap().to_owned();
    for _ in 0..5 {
        browser
            .reset_password_with_code(&token, NEW_PASSWORD, NEW_PASSWORD, "111111")
            .await;
    }
    let late = browser
        .submit(
            "/sign-in",
            "/reset-password",
            &[
                ("token", &token),
                ("new_password", NEW_PASSWORD),
                ("new_password_confirm", NEW_PASSWORD),
                ("totp_code", &code_at(&secret, 0)),
            ],
        )
        .await;
    assert_status(&late, StatusCode::GONE);
}

#[tokio::test]
async fn disabling_needs_the_password_and_a_code() {
    let app = TestApp::spawn().await;
    let (browser, secret, _codes) = enabled(&app, "alice@example.com").await;
    let disable = |password: &'static str, code: String| {
        let browser = &browser;
        async move { browser.disable_two_factor(password, &code).await }
    };
    assert_status(
        &disable("not the password at all", fresh_code(&secret)).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    );
    assert_status(
        &disable(PASSWORD, "000000".into()).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    );
    assert_eq!(
        app.count("select count(*) from users where totp_enabled_at is not null")
            .await,
        1
    );
    let off = disable(PASSWORD, fresh_code(&secret)).await;
    assert_status(&off, StatusCode::SEE_OTHER);
    assert_eq!(
        app.count(
            "select count(*) from users where totp_enabled_at is null and totp_secret_enc is null"
        )
        .await,
        1
    );
    assert_eq!(app.count("select count(*) from recovery_codes").await, 0);
    assert_status(
        &app.browser().sign_in("alice@example.com", PASSWORD).await,
        StatusCode::SEE_OTHER,
    );
    assert_eq!(
        location(&app.browser().sign_in("alice@example.com", PASSWORD).await),
        "/"
    );
    let mails = app.mails_to("alice@example.com", 2).await;
    assert!(
        mails[1]
            .subject()
            .unwrap()
            .contains("Two-factor authentication is off")
    );
}

#[tokio::test]
async fn disabling_with_a_short_password_asks_for_a_new_one_first() {
    let app = TestApp::spawn().await;
    let (browser, secret, codes) = enabled(&app, "alice@example.com").await;
    // With two-factor on, 8 characters are enough.
    let short = "short pw";
    let changed = browser.change_password(PASSWORD, short, short).await;
    assert_status(&changed, StatusCode::SEE_OTHER);

    let asked = browser.disable_two_factor(short, &codes[0]).await;
    assert_status(&asked, StatusCode::UNPROCESSABLE_ENTITY);
    let body = asked.text().await.unwrap();
    assert!(
        body.contains("name=\"new_password\""),
        "the form asks for a new password"
    );
    assert_eq!(
        app.count("select count(*) from users where totp_enabled_at is not null")
            .await,
        1
    );

    let off = browser
        .submit(
            "/settings/security/two-factor",
            "/settings/security/two-factor/disable",
            &[
                ("current_password", short),
                ("totp_code", &fresh_code(&secret)),
                ("new_password", NEW_PASSWORD),
                ("new_password_confirm", NEW_PASSWORD),
            ],
        )
        .await;
    assert_status(&off, StatusCode::SEE_OTHER);
    assert_status(
        &app.browser()
            .sign_in("alice@example.com", NEW_PASSWORD)
            .await,
        StatusCode::SEE_OTHER,
    );
}

#[tokio::test]
async fn new_recovery_codes_replace_the_old_ones() {
    let app = TestApp::spawn().await;
    let (browser, _secret, old) = enabled(&app, "alice@example.com").await;
    let response = browser.regenerate_recovery_codes(PASSWORD, &old[0]).await;
    assert_status(&response, StatusCode::OK);
    let new = recovery_codes_on(&response.text().await.unwrap());
    assert_eq!(new.len(), 10);
    let other = app.browser();
    other.sign_in("alice@example.com", PASSWORD).await;
    assert_status(
        &other.second_step(&old[1]).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    );
    assert_status(&other.second_step(&new[1]).await, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn a_password_change_ends_a_sign_in_waiting_for_its_second_step() {
    let app = TestApp::spawn().await;
    let (owner, secret, _codes) = enabled(&app, "alice@example.com").await;
    // Someone with the old password gets as far as the second step…
    let intruder = app.browser();
    let response = intruder.sign_in("alice@example.com", PASSWORD).await;
    assert_eq!(location(&response), "/sign-in/two-factor");
    // …then the owner changes the password, which ends every other session.
    let changed = owner
        .change_password(PASSWORD, NEW_PASSWORD, NEW_PASSWORD)
        .await;
    assert_status(&changed, StatusCode::SEE_OTHER);
    // Even a right code no longer completes that half-signed-in session.
    let done = intruder.second_step(&fresh_code(&secret)).await;
    assert_status(&done, StatusCode::SEE_OTHER);
    assert_eq!(location(&done), "/sign-in");
    assert_eq!(location(&intruder.get("/").await), "/sign-in");
    assert_status(&owner.get("/").await, StatusCode::OK);
}
