//! The strength meter's answers come from the same policy that judges the forms.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{PASSWORD, TestApp, assert_status};

/// Asks the meter, with the token of the page a person would be on.
async fn rate_on(browser: &crate::helpers::Browser, page: &str, fields: &[(&str, &str)]) -> Value {
    let response = browser.submit(page, "/password-strength", fields).await;
    assert_status(&response, StatusCode::OK);
    serde_json::from_str(&response.text().await.expect("body")).expect("json")
}

async fn rate(browser: &crate::helpers::Browser, fields: &[(&str, &str)]) -> Value {
    rate_on(browser, "/sign-in", fields).await
}

#[tokio::test]
async fn the_meter_calls_a_common_password_very_weak_and_says_why() {
    let app = TestApp::spawn().await;
    let browser = app.browser();
    let answer = rate(&browser, &[("password", "password1234567")]).await;
    assert_eq!(answer["score"], 0);
    assert_eq!(answer["label"], "Very weak");
    assert_eq!(
        answer["tip"],
        "This password is too common. Choose a less common one"
    );
}

#[tokio::test]
async fn the_meter_rates_a_long_uncommon_passphrase_strong() {
    let app = TestApp::spawn().await;
    let answer = rate(&app.browser(), &[("password", PASSWORD)]).await;
    assert_eq!(answer["score"], 4, "{answer}");
    assert_eq!(answer["label"], "Strong");
}

#[tokio::test]
async fn the_meter_knows_the_signed_in_accounts_address() {
    let app = TestApp::spawn().await;
    app.create_user("marigold@example.com", PASSWORD).await;
    let browser = app.browser();
    assert_status(
        &browser.sign_in("marigold@example.com", PASSWORD).await,
        StatusCode::SEE_OTHER,
    );
    // The address in the form is ignored once signed in.
    let answer = rate_on(
        &browser,
        "/settings/security",
        &[
            ("password", "marigold keeps the garden tidy"),
            ("email", "someone@else.example"),
        ],
    )
    .await;
    assert_eq!(answer["score"], 0);
    assert_eq!(
        answer["tip"],
        "Password must not contain your email address"
    );
}

#[tokio::test]
async fn the_meter_takes_the_address_from_the_page_when_signed_out() {
    let app = TestApp::spawn().await;
    let answer = rate(
        &app.browser(),
        &[
            ("password", "hello margaret, how are you today"),
            ("email", "margaret@example.com"),
        ],
    )
    .await;
    assert_eq!(answer["score"], 0);
    assert_eq!(
        answer["tip"],
        "Password must not contain your email address"
    );
}

#[tokio::test]
async fn the_meter_applies_the_shorter_minimum_only_with_two_factor() {
    let app = TestApp::spawn().await;
    let browser = app.browser();
    let without = rate(&browser, &[("password", "vq7#Lm2!pz")]).await;
    assert_eq!(without["tip"], "Password must be 15 characters or more");
    let with = rate(
        &browser,
        &[("password", "vq7#Lm2!pz"), ("two_factor", "true")],
    )
    .await;
    assert_ne!(with["score"], 0, "{with}");
}

#[tokio::test]
async fn the_meter_needs_the_csrf_token() {
    let app = TestApp::spawn().await;
    let browser = app.browser();
    browser.get("/sign-in").await;
    let response = browser
        .client
        .post(browser.url("/password-strength"))
        .form(&[("password", PASSWORD)])
        .send()
        .await
        .expect("POST");
    assert_status(&response, StatusCode::FORBIDDEN);
}
