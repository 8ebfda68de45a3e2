//! Codes, tokens and secrets never appear in a log, even at debug level.

use reqwest::StatusCode;

use super::*;
use crate::process::ServiceProcess;

#[tokio::test]
async fn a_whole_flow_at_debug_level_logs_no_code_token_or_secret() {
    let app = TestApp::spawn().await;
    app.create_user(EMAIL, PASSWORD).await;
    let rp = register(&app, "logged", |spec| spec.skip_consent = true).await;
    let secret = rp.secret.clone().expect("secret");
    let service = ServiceProcess::start(
        &app.database_url,
        &app.smtp.url(),
        &[("LATCHKEY_LOG", "debug")],
    )
    .await;
    let base = service.base.clone();
    let browser = Browser::new(&base);
    assert_eq!(
        browser.sign_in(EMAIL, PASSWORD).await.status(),
        StatusCode::SEE_OTHER
    );
    let session = browser.session_cookie().expect("session cookie");

    let (verifier, challenge) = pkce();
    let response = browser.get(&authorize_path(&rp, &challenge, &[])).await;
    let code = query_of(&location(&response))["code"].clone();
    let http = reqwest::Client::new();
    let tokens = http
        .post(format!("{base}/oidc/token"))
        .basic_auth(&rp.id, Some(&secret))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier.as_str()),
        ])
        .send()
        .await
        .expect("POST token")
        .json_value()
        .await;
    let access = tokens["access_token"].as_str().expect("at").to_owned();
    let refresh_token = tokens["refresh_token"].as_str().expect("rt").to_owned();
    let id_token = tokens["id_token"].as_str().expect("id_token").to_owned();
    assert_status(&userinfo(&base, &access).await, StatusCode::OK);
    let rotated = http
        .post(format!("{base}/oidc/token"))
        .basic_auth(&rp.id, Some(&secret))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.as_str()),
        ])
        .send()
        .await
        .expect("POST refresh")
        .json_value()
        .await;
    let wrong = http
        .post(format!("{base}/oidc/introspect"))
        .basic_auth(&rp.id, Some("not-the-secret"))
        .form(&[("token", access.as_str())])
        .send()
        .await
        .expect("POST introspect");
    assert_status(&wrong, StatusCode::UNAUTHORIZED);
    // A replay (theft) and a code presented again are logged as events, without values.
    http.post(format!("{base}/oidc/token"))
        .basic_auth(&rp.id, Some(&secret))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.as_str()),
        ])
        .send()
        .await
        .expect("POST replay");
    http.post(format!("{base}/oidc/token"))
        .basic_auth(&rp.id, Some(&secret))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier.as_str()),
        ])
        .send()
        .await
        .expect("POST code again");
    browser
        .get(&format!("/oidc/logout?id_token_hint={id_token}"))
        .await;

    let log = service.log();
    assert!(log.contains("oidc"), "the debug log covers the flow");
    for (what, value) in [
        ("the code", code.as_str()),
        ("the verifier", verifier.as_str()),
        ("the access token", access.as_str()),
        ("the refresh token", refresh_token.as_str()),
        (
            "the rotated refresh token",
            rotated["refresh_token"].as_str().expect("rt"),
        ),
        ("the ID token", id_token.as_str()),
        ("the client secret", secret.as_str()),
        ("the session id", session.as_str()),
        ("the password", PASSWORD),
    ] {
        assert!(!log.contains(value), "{what} appears in the log");
    }
}
