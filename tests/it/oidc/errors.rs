//! Every refusal as the RFCs name it: pages where no client can be trusted, redirects
//! with `error`, `state` and `iss` otherwise, 401 with `WWW-Authenticate` for client and
//! token failures, and never a 500 on any input.

use reqwest::StatusCode;

use super::*;

#[tokio::test]
async fn an_unknown_client_or_unregistered_redirect_uri_gets_a_page_never_a_redirect() {
    let app = TestApp::spawn().await;
    let rp = register(&app, "wiki", |_| {}).await;
    let browser = app.browser();
    let (_, challenge) = pkce();
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let mut paths = vec![
        authorize_path(&rp, &challenge, &[("client_id", "nobody")]),
        authorize_path(&rp, &challenge, &[("client_id", "")]),
        authorize_path(&rp, &challenge, &[("redirect_uri", "")]),
        format!(
            "{}&redirect_uri={}",
            authorize_path(&rp, &challenge, &[]),
            enc("https://evil.test/cb")
        ),
        format!("{}&client_id=wiki", authorize_path(&rp, &challenge, &[])),
    ];
    for uri in [
        "https://app.example.test/callback/",
        "https://app.example.test/callbackx",
        "https://app.example.test/call",
        "https://APP.example.test/callback",
        "https://app.example.test:444/callback",
        "https://app.example.test/callback#x",
        "https://app.example.test/callback/../evil",
        "https://app.example.test/x/../callback",
        "http://app.example.test/callback",
        "https://evil.test/callback",
    ] {
        paths.push(authorize_path(&rp, &challenge, &[("redirect_uri", uri)]));
    }
    for path in paths {
        let response = browser.get(&path).await;
        assert_status(&response, StatusCode::BAD_REQUEST);
        assert!(response.headers().get("location").is_none(), "{path}");
        let body = response.text().await.expect("body");
        assert_eq!(body.matches("<h1>").count(), 1, "{path}");
        assert!(body.contains("<title>Sign-in request not valid – latchkey</title>"));
    }
}

#[tokio::test]
async fn other_bad_requests_go_back_to_the_client_with_the_oauth_error_state_and_iss() {
    let app = TestApp::spawn().await;
    app.create_user(EMAIL, PASSWORD).await;
    let rp = register(&app, "wiki", |_| {}).await;
    let public = register(&app, "spa", |spec| spec.public = true).await;
    let browser = app.browser();
    let (_, challenge) = pkce();
    let cases: Vec<(String, &str)> = vec![
        (
            authorize_path(&rp, &challenge, &[("response_type", "token")]),
            "unsupported_response_type",
        ),
        (
            authorize_path(&rp, &challenge, &[("response_type", "")]),
            "invalid_request",
        ),
        (
            authorize_path(&rp, &challenge, &[("scope", "email profile")]),
            "invalid_scope",
        ),
        (
            authorize_path(&rp, &challenge, &[("code_challenge_method", "plain")]),
            "invalid_request",
        ),
        (
            authorize_path(&rp, &challenge, &[("code_challenge_method", "")]),
            "invalid_request",
        ),
        (authorize_path(&rp, "short", &[]), "invalid_request"),
        (
            authorize_path(
                &public,
                "",
                &[("code_challenge", ""), ("code_challenge_method", "")],
            ),
            "invalid_request",
        ),
        (
            format!("{}&scope=openid", authorize_path(&rp, &challenge, &[])),
            "invalid_request",
        ),
        (
            authorize_path(&rp, &challenge, &[("prompt", "none")]),
            "login_required",
        ),
        (
            authorize_path(&rp, &challenge, &[("prompt", "none login")]),
            "invalid_request",
        ),
        (
            authorize_path(&rp, &challenge, &[("max_age", "soon")]),
            "invalid_request",
        ),
        (
            authorize_path(&rp, &challenge, &[("request", "eyJ")]),
            "request_not_supported",
        ),
        (
            authorize_path(&rp, &challenge, &[("response_mode", "fragment")]),
            "invalid_request",
        ),
    ];
    for (path, error) in cases {
        let response = browser.get(&path).await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER, "{path}");
        let to = location(&response);
        assert!(to.starts_with(REDIRECT), "{path} → {to}");
        let query = query_of(&to);
        assert_eq!(query["error"], error, "{path}");
        assert_eq!(query["state"], "state-123", "{path}");
        assert_eq!(query["iss"], app.base, "{path}");
        assert!(!query.contains_key("code"));
    }
    // Signed in but never asked: prompt=none cannot show the consent page.
    browser.sign_in(EMAIL, PASSWORD).await;
    let response = browser
        .get(&authorize_path(&rp, &challenge, &[("prompt", "none")]))
        .await;
    assert_eq!(query_of(&location(&response))["error"], "consent_required");
}

#[tokio::test]
async fn prompt_login_and_an_old_sign_in_ask_for_the_password_again() {
    let app = TestApp::spawn().await;
    app.create_user(EMAIL, PASSWORD).await;
    let rp = register(&app, "wiki", |spec| spec.skip_consent = true).await;
    let browser = app.browser();
    browser.sign_in(EMAIL, PASSWORD).await;
    let (_, challenge) = pkce();

    // Signed in and fresh: prompt=none gets a code at once.
    let quiet = browser
        .get(&authorize_path(&rp, &challenge, &[("prompt", "none")]))
        .await;
    assert!(query_of(&location(&quiet)).contains_key("code"));

    for extra in [("prompt", "login"), ("max_age", "0")] {
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        let response = browser
            .get(&authorize_path(&rp, &challenge, &[extra]))
            .await;
        let to = location(&response);
        assert!(to.starts_with("/sign-in?next="), "{extra:?}: {to}");
        // The sign-in page shows the form (the old session was ended for it).
        let page = browser.get(&to).await;
        assert_status(&page, StatusCode::OK);
        let back = sign_in_with_next(&browser, &to).await;
        let to = follow_to_client(&browser, back).await;
        let query = query_of(&to);
        assert!(query.contains_key("code"), "{extra:?}: {to}");
    }
    // max_age with an old sign-in and prompt=none: login_required.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let response = browser
        .get(&authorize_path(
            &rp,
            &challenge,
            &[("max_age", "1"), ("prompt", "none")],
        ))
        .await;
    assert_eq!(query_of(&location(&response))["error"], "login_required");
}

#[tokio::test]
async fn a_two_factor_account_takes_the_second_step_on_its_way_back() {
    let app = TestApp::spawn().await;
    let (_, secret, _) = crate::two_factor::enabled(&app, EMAIL).await;
    let rp = register(&app, "wiki", |spec| spec.skip_consent = true).await;
    let browser = app.browser();
    let (verifier, challenge) = pkce();
    let first = browser.get(&authorize_path(&rp, &challenge, &[])).await;
    let step = sign_in_with_next(&browser, &location(&first)).await;
    assert_eq!(location(&step), "/sign-in/two-factor");
    let done = browser
        .second_step(&crate::two_factor::code_at(&secret, 1))
        .await;
    let to = follow_to_client(&browser, done).await;
    let code = query_of(&to)["code"].clone();
    let tokens = exchange(&app, &rp, &code, &verifier)
        .await
        .json_value()
        .await;
    let claims = verified_claims(
        &app,
        tokens["id_token"].as_str().expect("id_token"),
        jsonwebtoken::Algorithm::RS256,
        "wiki",
    )
    .await;
    assert_eq!(claims["amr"], serde_json::json!(["pwd", "otp", "mfa"]));
}

#[tokio::test]
async fn the_token_endpoint_names_each_failure() {
    let app = TestApp::spawn().await;
    app.create_user(EMAIL, PASSWORD).await;
    let rp = register(&app, "wiki", |_| {}).await;
    let other = register(&app, "other", |_| {}).await;
    let browser = app.browser();
    let post = |fields: Vec<(&'static str, String)>, auth: Option<(String, String)>| {
        let base = app.base.clone();
        async move {
            let mut request = reqwest::Client::new().post(format!("{base}/oidc/token"));
            if let Some((id, secret)) = auth {
                request = request.basic_auth(id, Some(secret));
            }
            request.form(&fields).send().await.expect("POST token")
        }
    };
    let auth = Some((rp.id.clone(), rp.secret.clone().expect("secret")));

    // Client authentication.
    for (fields, credentials) in [
        (
            vec![("grant_type", "authorization_code".to_owned())],
            Some(("wiki".to_owned(), "wrong".to_owned())),
        ),
        (
            vec![("grant_type", "authorization_code".to_owned())],
            Some(("nobody".to_owned(), "x".to_owned())),
        ),
        (vec![("grant_type", "authorization_code".to_owned())], None),
        (vec![("client_id", "wiki".to_owned())], None),
    ] {
        let response = post(fields, credentials).await;
        assert_status(&response, StatusCode::UNAUTHORIZED);
        assert_eq!(
            response
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok()),
            Some("Basic realm=\"latchkey\"")
        );
        assert_eq!(response.json_value().await["error"], "invalid_client");
    }
    let both = post(
        vec![
            ("grant_type", "authorization_code".to_owned()),
            ("client_secret", "x".to_owned()),
        ],
        auth.clone(),
    )
    .await;
    assert_eq!(both.json_value().await["error"], "invalid_request");

    for (fields, error) in [
        (vec![], "invalid_request"),
        (
            vec![("grant_type", "password".to_owned())],
            "unsupported_grant_type",
        ),
        (
            vec![("grant_type", "client_credentials".to_owned())],
            "unsupported_grant_type",
        ),
        (
            vec![("grant_type", "authorization_code".to_owned())],
            "invalid_request",
        ),
        (
            vec![
                ("grant_type", "authorization_code".to_owned()),
                ("code", "nope".to_owned()),
                ("redirect_uri", REDIRECT.to_owned()),
            ],
            "invalid_grant",
        ),
        (
            vec![
                ("grant_type", "refresh_token".to_owned()),
                ("refresh_token", "nope".to_owned()),
            ],
            "invalid_grant",
        ),
        (
            vec![("grant_type", "refresh_token".to_owned())],
            "invalid_request",
        ),
    ] {
        let response = post(fields.clone(), auth.clone()).await;
        assert_status(&response, StatusCode::BAD_REQUEST);
        assert_eq!(
            response
                .headers()
                .get("cache-control")
                .and_then(|v| v.to_str().ok()),
            Some("no-store")
        );
        assert_eq!(response.json_value().await["error"], error, "{fields:?}");
    }

    // A code is bound to its client, redirect_uri and PKCE verifier; a failed try does
    // not use it up only when the client is wrong.
    let (code, verifier) = code_for(&app, &browser, &rp).await;
    let (other_verifier, _) = pkce();
    let exchange_with = |rp: &Rp, redirect: &str, verifier: &str| {
        let fields = vec![
            ("grant_type", "authorization_code".to_owned()),
            ("code", code.clone()),
            ("redirect_uri", redirect.to_owned()),
            ("code_verifier", verifier.to_owned()),
        ];
        post(
            fields,
            Some((rp.id.clone(), rp.secret.clone().expect("secret"))),
        )
    };
    for response in [
        exchange_with(&other, REDIRECT, &verifier).await,
        exchange_with(&rp, "https://app.example.test/other", &verifier).await,
    ] {
        assert_eq!(response.json_value().await["error"], "invalid_grant");
    }
    let wrong_pkce = exchange_with(&rp, REDIRECT, &other_verifier).await;
    assert_eq!(wrong_pkce.json_value().await["error"], "invalid_grant");
    let malformed = exchange_with(&rp, REDIRECT, "short").await;
    assert_eq!(malformed.json_value().await["error"], "invalid_request");
    let fine = exchange_with(&rp, REDIRECT, &verifier).await;
    assert_status(&fine, StatusCode::OK);

    // An expired code.
    let (code, verifier) = code_for(&app, &browser, &rp).await;
    sqlx::query(
        "update oidc_codes set expires_at = now() - interval '1 second' where used_at is null",
    )
    .execute(&app.pool)
    .await
    .expect("expire codes");
    let late = exchange(&app, &rp, &code, &verifier).await;
    assert_eq!(late.json_value().await["error"], "invalid_grant");
}

#[tokio::test]
async fn a_code_redeemed_twice_gets_invalid_grant_and_revokes_what_the_first_issued() {
    let app = TestApp::spawn().await;
    app.create_user(EMAIL, PASSWORD).await;
    let rp = register(&app, "wiki", |_| {}).await;
    let browser = app.browser();
    let (code, verifier) = code_for(&app, &browser, &rp).await;
    let first = exchange(&app, &rp, &code, &verifier)
        .await
        .json_value()
        .await;
    let access = first["access_token"].as_str().expect("at");
    assert_status(&userinfo(&app.base, access).await, StatusCode::OK);
    let second = exchange(&app, &rp, &code, &verifier).await;
    assert_status(&second, StatusCode::BAD_REQUEST);
    assert_eq!(second.json_value().await["error"], "invalid_grant");
    assert_status(&userinfo(&app.base, access).await, StatusCode::UNAUTHORIZED);
    let refreshed = refresh(
        &app,
        &app.base,
        &rp,
        first["refresh_token"].as_str().expect("rt"),
    )
    .await;
    assert_status(&refreshed, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn failed_client_authentications_are_throttled_and_then_even_the_right_secret_waits() {
    let app = TestApp::spawn().await;
    let rp = register(&app, "wiki", |_| {}).await;
    let post = |secret: &str| {
        let base = app.base.clone();
        let secret = secret.to_owned();
        async move {
            reqwest::Client::new()
                .post(format!("{base}/oidc/introspect"))
                .basic_auth("wiki", Some(secret))
                .form(&[("token", "x")])
                .send()
                .await
                .expect("POST introspect")
        }
    };
    // Below the limit, the right secret still works.
    for _ in 0..4 {
        assert_status(&post("wrong").await, StatusCode::UNAUTHORIZED);
    }
    assert_status(
        &post(rp.secret.as_deref().expect("secret")).await,
        StatusCode::OK,
    );
    assert_status(&post("wrong").await, StatusCode::UNAUTHORIZED);
    let throttled = post("wrong").await;
    assert_status(&throttled, StatusCode::TOO_MANY_REQUESTS);
    assert!(throttled.headers().get("retry-after").is_some());
    let right = post(rp.secret.as_deref().expect("secret")).await;
    assert_status(&right, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn userinfo_refuses_a_missing_or_unknown_bearer_token_with_a_challenge() {
    let app = TestApp::spawn().await;
    let none = reqwest::get(format!("{}/oidc/userinfo", app.base))
        .await
        .expect("GET");
    assert_status(&none, StatusCode::UNAUTHORIZED);
    assert_eq!(
        none.headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer realm=\"latchkey\"")
    );
    for token in ["nope", "", &"A".repeat(43), &"x".repeat(5000)] {
        let response = userinfo(&app.base, token).await;
        assert_status(&response, StatusCode::UNAUTHORIZED);
    }
    let bad = userinfo(&app.base, &"A".repeat(43)).await;
    assert_eq!(
        bad.headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer realm=\"latchkey\", error=\"invalid_token\"")
    );
}

#[tokio::test]
async fn hostile_input_to_every_endpoint_never_gets_a_500() {
    let app = TestApp::spawn().await;
    app.create_user(EMAIL, PASSWORD).await;
    let rp = register(&app, "wiki", |_| {}).await;
    let browser = app.browser();
    browser.sign_in(EMAIL, PASSWORD).await;
    let client = browser.client.clone();
    let weird = [
        "",
        "%",
        "%%",
        "%ff%fe",
        "a=%00",
        "client_id=%00",
        "client_id=wiki&redirect_uri=%ff",
        "client_id=wiki&redirect_uri=https%3A%2F%2Fapp.example.test%2Fcallback&response_type=code&scope=openid&code_challenge=%00&code_challenge_method=S256",
        "request_id=",
        "request_id=AAAA",
        "request_id=%00%00",
        "max_age=-1",
        "=&=&=",
        "grant_type=authorization_code&code=%00&redirect_uri=%00&code_verifier=%00",
        "grant_type=refresh_token&refresh_token=%ff",
        "token=%00&token_type_hint=%00",
        "id_token_hint=a.b.c",
        "id_token_hint=eyJhbGciOiJub25lIn0.e30.",
        "client_id=%ff%ff",
    ];
    let long = "x".repeat(8000);
    for raw in weird.iter().copied().chain([long.as_str()]) {
        for path in [
            "/oidc/authorize",
            "/oidc/logout",
            "/oidc/consent",
            "/oidc/logout/confirm",
        ] {
            let response = browser.get(&format!("{path}?{raw}")).await;
            assert!(
                response.status().as_u16() < 500,
                "GET {path}?{raw}: {}",
                response.status()
            );
        }
        for path in [
            "/oidc/authorize",
            "/oidc/token",
            "/oidc/userinfo",
            "/oidc/revoke",
            "/oidc/introspect",
            "/oidc/logout",
        ] {
            for auth in [None, Some(("wiki", rp.secret.clone().expect("secret")))] {
                let mut request = client
                    .post(format!("{}{path}", app.base))
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(raw.to_owned());
                if let Some((id, secret)) = &auth {
                    request = request.basic_auth(id, Some(secret));
                }
                let response = request
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("POST {path} {raw:?} {auth:?}: {e:?}"));
                assert!(
                    response.status().as_u16() < 500,
                    "POST {path} {raw}: {}",
                    response.status()
                );
            }
        }
    }
    // "%ff:x", ":", "wiki" (no colon), and broken ones.
    for header in [
        "Basic",
        "Basic !!!",
        "Basic Og==",
        "Bearer",
        "Bearer  ",
        "Basic d2lraQ==",
        "Basic JWZmOng=",
    ] {
        for path in ["/oidc/token", "/oidc/userinfo", "/oidc/introspect"] {
            let response = client
                .post(format!("{}{path}", app.base))
                .header("authorization", header)
                .body("grant_type=authorization_code")
                .send()
                .await
                .expect("POST");
            assert!(
                response.status().as_u16() < 500,
                "{path} {header}: {}",
                response.status()
            );
        }
    }
}

#[tokio::test]
async fn waiting_authorization_requests_count_against_the_ip_rate_limit() {
    let app = TestApp::spawn_with(|config| config.ip_rate_limit = 3).await;
    let rp = register(&app, "wiki", |_| {}).await;
    let (_, challenge) = pkce();
    let browser = app.browser();
    for _ in 0..3 {
        let response = browser.get(&authorize_path(&rp, &challenge, &[])).await;
        assert!(location(&response).starts_with("/sign-in?next="));
    }
    let refused = browser.get(&authorize_path(&rp, &challenge, &[])).await;
    assert_status(&refused, StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().get("retry-after").is_some());
    assert_eq!(app.count("select count(*) from oidc_requests").await, 3);
    // Refusals that store nothing are not counted.
    let page = browser
        .get(&authorize_path(&rp, &challenge, &[("client_id", "nobody")]))
        .await;
    assert_status(&page, StatusCode::BAD_REQUEST);
}
