//! The code flow end to end, the claims, consent, refresh rotation, revocation and
//! introspection.

use jsonwebtoken::Algorithm;
use reqwest::StatusCode;

use super::*;

#[tokio::test]
async fn discovery_names_every_endpoint_and_what_the_provider_supports() {
    let app = TestApp::spawn().await;
    let response = reqwest::get(format!("{}/.well-known/openid-configuration", app.base))
        .await
        .expect("GET discovery");
    assert_status(&response, StatusCode::OK);
    let d: serde_json::Value = response.json_value().await;
    assert_eq!(d["issuer"], app.base.as_str());
    for endpoint in [
        "authorization_endpoint",
        "token_endpoint",
        "userinfo_endpoint",
        "jwks_uri",
        "end_session_endpoint",
        "revocation_endpoint",
        "introspection_endpoint",
    ] {
        let url = d[endpoint].as_str().unwrap_or_else(|| panic!("{endpoint}"));
        assert!(url.starts_with(&app.base), "{endpoint}: {url}");
    }
    assert_eq!(d["response_types_supported"], serde_json::json!(["code"]));
    assert_eq!(
        d["grant_types_supported"],
        serde_json::json!(["authorization_code", "refresh_token"])
    );
    assert_eq!(
        d["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    assert_eq!(
        d["token_endpoint_auth_methods_supported"],
        serde_json::json!(["client_secret_basic", "client_secret_post", "none"])
    );
    assert_eq!(
        d["id_token_signing_alg_values_supported"],
        serde_json::json!(["RS256", "ES256", "EdDSA"])
    );
    assert_eq!(
        d["scopes_supported"],
        serde_json::json!(["openid", "email", "profile", "offline_access"])
    );
    assert_eq!(d["authorization_response_iss_parameter_supported"], true);
    assert_eq!(d["backchannel_logout_supported"], true);
    assert_eq!(d["backchannel_logout_session_supported"], true);

    let jwks: serde_json::Value = reqwest::get(d["jwks_uri"].as_str().expect("jwks_uri"))
        .await
        .expect("GET jwks")
        .json_value()
        .await;
    let keys = jwks["keys"].as_array().expect("keys");
    for alg in ["RS256", "ES256", "EdDSA"] {
        assert!(
            keys.iter().any(|k| k["alg"] == alg),
            "a {alg} key in {jwks}"
        );
    }
    for key in keys {
        assert!(key["kid"].is_string());
        for private in ["d", "p", "q", "dp", "dq", "qi"] {
            assert!(
                key.get(private).is_none(),
                "no private part {private} in {key}"
            );
        }
    }
}

#[tokio::test]
async fn the_code_flow_signs_in_asks_consent_and_gives_verified_tokens_and_userinfo() {
    let app = TestApp::spawn().await;
    let user_id = app.create_user(EMAIL, PASSWORD).await;
    let rp = register(&app, "wiki", |_| {}).await;
    let browser = app.browser();
    let (verifier, challenge) = pkce();

    // Not signed in: to the sign-in page, and back to the authorization after it.
    let first = browser.get(&authorize_path(&rp, &challenge, &[])).await;
    assert_eq!(first.status(), StatusCode::SEE_OTHER);
    let to = location(&first);
    assert!(to.starts_with("/sign-in?next=%2Foidc%2Fauthorize"), "{to}");
    let signed_in = sign_in_with_next(&browser, &to).await;
    let consent = follow_to_client(&browser, signed_in).await;
    assert!(
        consent.starts_with("/oidc/consent?request_id="),
        "{consent}"
    );

    // The consent page names the client and what it will receive.
    let page = browser.get(&consent).await;
    assert_status(&page, StatusCode::OK);
    let csp = page
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        csp.contains("form-action 'self' https://app.example.test"),
        "{csp}"
    );
    let body = page.text().await.expect("body");
    assert!(
        body.contains("<title>Allow The wiki app? – latchkey</title>"),
        "{body}"
    );
    assert_eq!(body.matches("<h1>").count(), 1);
    assert!(body.contains("Your email address"));
    assert!(body.contains(">Allow</button>") && body.contains(">Deny</button>"));

    let back = answer_consent(&browser, &consent, "allow").await;
    assert!(back.starts_with(REDIRECT), "{back}");
    let query = query_of(&back);
    assert_eq!(query["state"], "state-123");
    assert_eq!(query["iss"], app.base);
    let code = &query["code"];
    assert!(code.len() >= 43, "a code of at least 128 bits");

    let response = exchange(&app, &rp, code, &verifier).await;
    assert_status(&response, StatusCode::OK);
    assert_eq!(
        response
            .headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
    let tokens: serde_json::Value = response.json_value().await;
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 600);
    assert_eq!(tokens["scope"], "openid email profile");
    assert!(tokens["refresh_token"].is_string());
    let access = tokens["access_token"].as_str().expect("access_token");

    let claims = verified_claims(
        &app,
        tokens["id_token"].as_str().expect("id_token"),
        Algorithm::RS256,
        "wiki",
    )
    .await;
    assert_eq!(claims["sub"], user_id.to_string());
    assert_eq!(claims["nonce"], "nonce-456");
    assert_eq!(claims["email"], EMAIL);
    assert_eq!(claims["email_verified"], true);
    assert_eq!(claims["preferred_username"], EMAIL);
    assert_eq!(claims["name"], EMAIL);
    assert_eq!(claims["amr"], serde_json::json!(["pwd"]));
    assert!(claims["sid"].is_string() && claims["auth_time"].is_i64());
    let at_hash = {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(access.as_bytes());
        URL_SAFE_NO_PAD.encode(&digest[..16])
    };
    assert_eq!(claims["at_hash"], at_hash);

    let info = userinfo(&app.base, access).await;
    assert_status(&info, StatusCode::OK);
    let info: serde_json::Value = info.json_value().await;
    assert_eq!(info["sub"], user_id.to_string());
    assert_eq!(info["email"], EMAIL);
    assert_eq!(info["email_verified"], true);
    assert_eq!(info["preferred_username"], EMAIL);
}

#[tokio::test]
async fn es256_and_eddsa_clients_get_id_tokens_signed_with_their_algorithm() {
    let app = TestApp::spawn().await;
    app.create_user(EMAIL, PASSWORD).await;
    for (id, alg, jwt) in [
        ("ec", "ES256", Algorithm::ES256),
        ("ed", "EdDSA", Algorithm::EdDSA),
    ] {
        let rp = register(&app, id, |spec| spec.signing_alg = Some(alg.to_owned())).await;
        let (_, tokens) = signed_in_with_tokens(&app, &rp).await;
        let claims = verified_claims(
            &app,
            tokens["id_token"].as_str().expect("id_token"),
            jwt,
            id,
        )
        .await;
        assert_eq!(claims["aud"], id);
    }
}

#[tokio::test]
async fn client_secret_post_works_and_a_public_client_uses_pkce_alone() {
    let app = TestApp::spawn().await;
    app.create_user(EMAIL, PASSWORD).await;
    let rp = register(&app, "posted", |_| {}).await;
    let browser = app.browser();
    let (code, verifier) = code_for(&app, &browser, &rp).await;
    let response = reqwest::Client::new()
        .post(format!("{}/oidc/token", app.base))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier.as_str()),
            ("client_id", "posted"),
            ("client_secret", rp.secret.as_deref().expect("secret")),
        ])
        .send()
        .await
        .expect("POST token");
    assert_status(&response, StatusCode::OK);

    let public = register(&app, "spa", |spec| spec.public = true).await;
    assert!(public.secret.is_none());
    let (code, verifier) = code_for(&app, &browser, &public).await;
    let response = exchange(&app, &public, &code, &verifier).await;
    assert_status(&response, StatusCode::OK);
}

#[tokio::test]
async fn a_confidential_client_without_pkce_is_not_refused() {
    let app = TestApp::spawn().await;
    app.create_user(EMAIL, PASSWORD).await;
    let rp = register(&app, "legacy", |spec| spec.skip_consent = true).await;
    let browser = app.browser();
    browser.sign_in(EMAIL, PASSWORD).await;
    let response = browser
        .get(&authorize_path(
            &rp,
            "",
            &[("code_challenge", ""), ("code_challenge_method", "")],
        ))
        .await;
    let to = location(&response);
    assert!(to.starts_with(REDIRECT), "{to}");
    let code = query_of(&to)["code"].clone();
    let response = token_request(
        &app,
        &app.base,
        &rp,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
        ],
    )
    .await;
    assert_status(&response, StatusCode::OK);
}

#[tokio::test]
async fn consent_is_asked_once_listed_under_settings_and_removal_ends_the_tokens() {
    let app = TestApp::spawn().await;
    app.create_user(EMAIL, PASSWORD).await;
    let rp = register(&app, "notes", |_| {}).await;
    let (browser, tokens) = signed_in_with_tokens(&app, &rp).await;

    // Asked once: the next authorization goes straight back with a code.
    let (_, challenge) = pkce();
    let again = browser.get(&authorize_path(&rp, &challenge, &[])).await;
    let to = location(&again);
    assert!(to.starts_with(REDIRECT) && to.contains("code="), "{to}");

    let settings = browser
        .get("/settings/security")
        .await
        .text()
        .await
        .expect("body");
    assert!(settings.contains("Connected applications"));
    assert!(settings.contains("The notes app"), "{settings}");

    let removed = browser
        .submit(
            "/settings/security",
            "/settings/security/applications/notes/remove",
            &[],
        )
        .await;
    assert_eq!(removed.status(), StatusCode::SEE_OTHER);
    let info = userinfo(&app.base, tokens["access_token"].as_str().expect("at")).await;
    assert_status(&info, StatusCode::UNAUTHORIZED);
    let refreshed = refresh(
        &app,
        &app.base,
        &rp,
        tokens["refresh_token"].as_str().expect("rt"),
    )
    .await;
    assert_status(&refreshed, StatusCode::BAD_REQUEST);
    let settings = browser
        .get("/settings/security")
        .await
        .text()
        .await
        .expect("body");
    assert!(!settings.contains("The notes app"));

    // Asked again next time.
    let again = browser.get(&authorize_path(&rp, &challenge, &[])).await;
    assert!(
        location(&again).starts_with("/oidc/consent"),
        "{}",
        location(&again)
    );
}

#[tokio::test]
async fn deny_sends_access_denied_with_state_and_iss() {
    let app = TestApp::spawn().await;
    app.create_user(EMAIL, PASSWORD).await;
    let rp = register(&app, "nosy", |_| {}).await;
    let browser = app.browser();
    browser.sign_in(EMAIL, PASSWORD).await;
    let (_, challenge) = pkce();
    let first = browser.get(&authorize_path(&rp, &challenge, &[])).await;
    let to = answer_consent(&browser, &location(&first), "deny").await;
    let query = query_of(&to);
    assert!(to.starts_with(REDIRECT));
    assert_eq!(query["error"], "access_denied");
    assert_eq!(query["state"], "state-123");
    assert_eq!(query["iss"], app.base);
    assert!(!query.contains_key("code"));
}

#[tokio::test]
async fn refresh_rotates_and_a_replay_after_the_successor_was_used_kills_the_grant() {
    let app = TestApp::spawn().await;
    app.create_user(EMAIL, PASSWORD).await;
    let rp = register(&app, "rotating", |_| {}).await;
    let (_, tokens) = signed_in_with_tokens(&app, &rp).await;
    let first = tokens["refresh_token"].as_str().expect("rt").to_owned();

    let second: serde_json::Value = refresh(&app, &app.base, &rp, &first)
        .await
        .json_value()
        .await;
    let second_rt = second["refresh_token"]
        .as_str()
        .expect("rotated")
        .to_owned();
    assert_ne!(second_rt, first);
    assert!(second["id_token"].is_string());
    let third = refresh(&app, &app.base, &rp, &second_rt).await;
    assert_status(&third, StatusCode::OK);
    let third: serde_json::Value = third.json_value().await;

    // The first token again, after its successor was used: theft.
    let replay = refresh(&app, &app.base, &rp, &first).await;
    assert_status(&replay, StatusCode::BAD_REQUEST);
    let error: serde_json::Value = replay.json_value().await;
    assert_eq!(error["error"], "invalid_grant");
    // The whole grant is dead: the newest tokens too.
    let info = userinfo(&app.base, third["access_token"].as_str().expect("at")).await;
    assert_status(&info, StatusCode::UNAUTHORIZED);
    assert_eq!(
        info.headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer realm=\"latchkey\", error=\"invalid_token\"")
    );
    let next = refresh(
        &app,
        &app.base,
        &rp,
        third["refresh_token"].as_str().expect("rt"),
    )
    .await;
    assert_status(&next, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_refresh_token_used_twice_within_the_grace_window_keeps_the_person_signed_in() {
    let app = TestApp::spawn().await;
    app.create_user(EMAIL, PASSWORD).await;
    let rp = register(&app, "workers", |_| {}).await;
    let (_, tokens) = signed_in_with_tokens(&app, &rp).await;
    let rt = tokens["refresh_token"].as_str().expect("rt");
    let a: serde_json::Value = refresh(&app, &app.base, &rp, rt).await.json_value().await;
    let b = refresh(&app, &app.base, &rp, rt).await;
    assert_status(&b, StatusCode::OK);
    let b: serde_json::Value = b.json_value().await;
    // One lineage continues: b's, once used; a's sibling is then refused, harmlessly.
    let c = refresh(
        &app,
        &app.base,
        &rp,
        b["refresh_token"].as_str().expect("rt"),
    )
    .await;
    assert_status(&c, StatusCode::OK);
    let c: serde_json::Value = c.json_value().await;
    let lost = refresh(
        &app,
        &app.base,
        &rp,
        a["refresh_token"].as_str().expect("rt"),
    )
    .await;
    assert_status(&lost, StatusCode::BAD_REQUEST);
    let info = userinfo(&app.base, c["access_token"].as_str().expect("at")).await;
    assert_status(&info, StatusCode::OK);
}

#[tokio::test]
async fn revocation_and_introspection_answer_the_client_about_its_own_tokens() {
    let app = TestApp::spawn().await;
    app.create_user(EMAIL, PASSWORD).await;
    let rp = register(&app, "api", |_| {}).await;
    let other = register(&app, "other", |_| {}).await;
    let (_, tokens) = signed_in_with_tokens(&app, &rp).await;
    let access = tokens["access_token"].as_str().expect("at");
    let introspect = |client: &Rp, token: &str| {
        let client = client.clone();
        let token = token.to_owned();
        let base = app.base.clone();
        async move {
            reqwest::Client::new()
                .post(format!("{base}/oidc/introspect"))
                .basic_auth(&client.id, client.secret.as_deref())
                .form(&[("token", token.as_str())])
                .send()
                .await
                .expect("POST introspect")
                .json_value()
                .await
        }
    };
    let active = introspect(&rp, access).await;
    assert_eq!(active["active"], true);
    assert_eq!(active["client_id"], "api");
    assert_eq!(active["scope"], "openid email profile");
    assert_eq!(
        introspect(&other, access).await,
        serde_json::json!({"active": false})
    );

    let revoked = reqwest::Client::new()
        .post(format!("{}/oidc/revoke", app.base))
        .basic_auth(&rp.id, rp.secret.as_deref())
        .form(&[("token", tokens["refresh_token"].as_str().expect("rt"))])
        .send()
        .await
        .expect("POST revoke");
    assert_status(&revoked, StatusCode::OK);
    assert_eq!(introspect(&rp, access).await["active"], false);
    assert_status(&userinfo(&app.base, access).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_posted_authorization_request_works_and_without_the_cookie_becomes_a_get() {
    let app = TestApp::spawn().await;
    app.create_user(EMAIL, PASSWORD).await;
    let rp = register(&app, "poster", |spec| spec.skip_consent = true).await;
    let (_, challenge) = pkce();
    let path = authorize_path(&rp, &challenge, &[("prompt", "none")]);
    let query = path.split_once('?').expect("query").1.to_owned();

    // A cross-site form POST carries no SameSite=Lax cookie: sent back as a GET.
    let anonymous = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let response = anonymous
        .post(format!("{}/oidc/authorize", app.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(query.clone())
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&response), path);

    // With the session cookie, the POST itself answers.
    let browser = app.browser();
    browser.sign_in(EMAIL, PASSWORD).await;
    let response = browser
        .client
        .post(browser.url("/oidc/authorize"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(query)
        .send()
        .await
        .expect("POST");
    let to = location(&response);
    assert!(
        to.starts_with(REDIRECT) && query_of(&to).contains_key("code"),
        "{to}"
    );
}

#[tokio::test]
async fn a_refresh_token_presented_again_after_the_grace_window_is_theft() {
    let app = TestApp::spawn().await;
    app.create_user(EMAIL, PASSWORD).await;
    let rp = register(&app, "slow", |_| {}).await;
    let (_, tokens) = signed_in_with_tokens(&app, &rp).await;
    let first = tokens["refresh_token"].as_str().expect("rt").to_owned();
    let second = refresh(&app, &app.base, &rp, &first)
        .await
        .json_value()
        .await;
    // The successor is not used yet, but the first use was 11 seconds ago.
    sqlx::query(
        "update oidc_refresh_tokens set used_at = now() - interval '11 seconds'
         where used_at is not null",
    )
    .execute(&app.pool)
    .await
    .expect("age the use");
    let late = refresh(&app, &app.base, &rp, &first).await;
    assert_status(&late, StatusCode::BAD_REQUEST);
    assert_eq!(late.json_value().await["error"], "invalid_grant");
    let successor = refresh(
        &app,
        &app.base,
        &rp,
        second["refresh_token"].as_str().expect("rt"),
    )
    .await;
    assert_status(&successor, StatusCode::BAD_REQUEST);
    assert_status(
        &userinfo(&app.base, second["access_token"].as_str().expect("at")).await,
        StatusCode::UNAUTHORIZED,
    );
}
