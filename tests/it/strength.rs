//! `POST /password-strength`: the strength meter's rating comes from the same policy as
//! the forms, needs the page's CSRF token, and changes nothing.

use reqwest::StatusCode;

use crate::helpers::*;

async fn rate(browser: &Browser, fields: &[(&str, &str)]) -> serde_json::Value {
    let response = browser
        .submit("/sign-in", "/password-strength", fields)
        .await;
    assert_status(&response, StatusCode::OK);
    serde_json::from_str(&response.text().await.expect("body")).expect("JSON rating")
}

#[tokio::test]
async fn the_meter_rates_as_the_policy_decides() {
    let app = TestApp::spawn().await;
    let browser = app.browser();

    let common = rate(&browser, &[("password", "passwordpassword")]).await;
    assert_eq!(common["score"], 0);
    assert_eq!(common["label"], "Very weak");
    assert!(
        common["tip"].as_str().unwrap().contains("too common"),
        "{common}"
    );

    let short = rate(&browser, &[("password", "zebra-quilt")]).await;
    assert_eq!(short["score"], 0);
    assert_eq!(short["tip"], "Password must be 15 characters or more");
    // With two-factor, 8 characters are enough.
    let two_factor = rate(
        &browser,
        &[("password", "zebra-quilt-77"), ("two_factor", "true")],
    )
    .await;
    assert_ne!(two_factor["score"], 0, "{two_factor}");

    let with_email = rate(
        &browser,
        &[
            ("password", "hello margaret, how are you today"),
            ("email", "margaret@example.com"),
        ],
    )
    .await;
    assert_eq!(with_email["score"], 0);
    assert_eq!(
        with_email["tip"],
        "Password must not contain your email address"
    );

    let strong = rate(&browser, &[("password", NEW_PASSWORD)]).await;
    assert_eq!(strong["score"], 4, "{strong}");
    assert_eq!(strong["label"], "Strong");
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
