//! `latchkey oidc client …` and `latchkey oidc keys rotate`, run as an operator would.

use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;

use super::*;

fn latchkey(app: &TestApp, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .args(args)
        .env("DATABASE_URL", &app.database_url)
        .env("LATCHKEY_LOG", "warn")
        .env(
            "LATCHKEY_SECRET_KEY",
            base64::engine::general_purpose::STANDARD.encode([42u8; 32]),
        )
        .stdin(Stdio::null())
        .output()
        .expect("run latchkey");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn introspect_status(app: &TestApp, id: &str, secret: &str) -> StatusCode {
    reqwest::Client::new()
        .post(format!("{}/oidc/introspect", app.base))
        .basic_auth(id, Some(secret))
        .form(&[("token", "x")])
        .send()
        .await
        .expect("POST introspect")
        .status()
}

#[tokio::test]
async fn client_commands_print_the_secret_once_list_rotate_and_remove() {
    let app = TestApp::spawn().await;
    let (ok, secret, err) = latchkey(
        &app,
        &[
            "oidc",
            "client",
            "add",
            "--id",
            "grafana",
            "--name",
            "Grafana",
            "--redirect-uri",
            "https://grafana.example.test/login/generic_oauth",
            "--post-logout-redirect-uri",
            "https://grafana.example.test/login",
            "--backchannel-logout-uri",
            "https://grafana.example.test/bcl",
            "--signing-alg",
            "ES256",
        ],
    );
    assert!(ok, "{err}");
    let secret = secret.trim().to_owned();
    assert_eq!(secret.len(), 43, "one secret line on standard output");
    assert!(err.contains("shown this once"), "{err}");
    assert_eq!(
        introspect_status(&app, "grafana", &secret).await,
        StatusCode::OK
    );

    let (ok, out, _) = latchkey(
        &app,
        &[
            "oidc",
            "client",
            "add",
            "--id",
            "spa",
            "--name",
            "SPA",
            "--redirect-uri",
            "https://spa.example.test/cb",
            "--public",
            "--skip-consent",
        ],
    );
    assert!(ok);
    assert!(
        out.trim().is_empty(),
        "a public client has no secret: {out}"
    );

    for (args, message) in [
        (
            vec![
                "--id",
                "grafana",
                "--name",
                "Again",
                "--redirect-uri",
                "https://x.test/cb",
            ],
            "already exists",
        ),
        (
            vec![
                "--id",
                "frag",
                "--name",
                "F",
                "--redirect-uri",
                "https://x.test/cb#f",
            ],
            "fragment",
        ),
        (
            vec![
                "--id",
                "bad id",
                "--name",
                "F",
                "--redirect-uri",
                "https://x.test/cb",
            ],
            "client id",
        ),
        (
            vec![
                "--id",
                "alg",
                "--name",
                "F",
                "--redirect-uri",
                "https://x.test/cb",
                "--signing-alg",
                "HS256",
            ],
            "RS256, ES256 or EdDSA",
        ),
    ] {
        let mut full = vec!["oidc", "client", "add"];
        full.extend(args);
        let (ok, _, err) = latchkey(&app, &full);
        assert!(!ok, "{full:?}");
        assert!(err.contains(message), "{full:?}: {err}");
    }

    let (ok, out, _) = latchkey(&app, &["oidc", "client", "list", "--json"]);
    assert!(ok);
    let list: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let list = list.as_array().expect("array");
    assert_eq!(list.len(), 2);
    let grafana = list.iter().find(|c| c["id"] == "grafana").expect("grafana");
    assert_eq!(grafana["public"], false);
    assert_eq!(grafana["signing_alg"], "ES256");
    assert_eq!(
        grafana["backchannel_logout_uri"],
        "https://grafana.example.test/bcl"
    );
    assert!(!out.contains(&secret), "never the secret");
    let (ok, table, _) = latchkey(&app, &["oidc", "client", "list"]);
    assert!(ok && table.contains("grafana") && table.contains("public"));

    let (ok, new_secret, err) = latchkey(
        &app,
        &["oidc", "client", "rotate-secret", "--id", "grafana"],
    );
    assert!(ok, "{err}");
    let new_secret = new_secret.trim();
    assert_ne!(new_secret, secret);
    assert_eq!(
        introspect_status(&app, "grafana", &secret).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        introspect_status(&app, "grafana", new_secret).await,
        StatusCode::OK
    );
    let (ok, _, err) = latchkey(&app, &["oidc", "client", "rotate-secret", "--id", "spa"]);
    assert!(!ok && err.contains("public"), "{err}");

    let (ok, _, err) = latchkey(&app, &["oidc", "client", "remove", "--id", "grafana"]);
    assert!(ok, "{err}");
    assert_eq!(
        introspect_status(&app, "grafana", new_secret).await,
        StatusCode::UNAUTHORIZED
    );
    let (ok, _, err) = latchkey(&app, &["oidc", "client", "remove", "--id", "grafana"]);
    assert!(!ok && err.contains("no client"), "{err}");
}

#[tokio::test]
async fn removing_a_client_ends_its_tokens_at_once() {
    let app = TestApp::spawn().await;
    app.create_user(EMAIL, PASSWORD).await;
    let rp = register(&app, "wiki", |_| {}).await;
    let (_, tokens) = signed_in_with_tokens(&app, &rp).await;
    let (ok, _, err) = latchkey(&app, &["oidc", "client", "remove", "--id", "wiki"]);
    assert!(ok, "{err}");
    assert_status(
        &userinfo(&app.base, tokens["access_token"].as_str().expect("at")).await,
        StatusCode::UNAUTHORIZED,
    );
}

#[tokio::test]
async fn keys_rotate_signs_with_a_new_key_and_keeps_the_old_one_published() {
    let app = TestApp::spawn().await;
    app.create_user(EMAIL, PASSWORD).await;
    let rp = register(&app, "wiki", |_| {}).await;
    let (browser, tokens) = signed_in_with_tokens(&app, &rp).await;
    let old_kid = jsonwebtoken::decode_header(tokens["id_token"].as_str().expect("id_token"))
        .expect("header")
        .kid
        .expect("kid");

    let (ok, out, err) = latchkey(&app, &["oidc", "keys", "rotate"]);
    assert!(ok, "{err}");
    assert!(out.contains("rs256-"), "{out}");

    // Every instance reads the keys again within a few seconds.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    let new_kid = loop {
        let (code, verifier) = code_for(&app, &browser, &rp).await;
        let tokens = exchange(&app, &rp, &code, &verifier)
            .await
            .json_value()
            .await;
        let id_token = tokens["id_token"].as_str().expect("id_token").to_owned();
        let kid = jsonwebtoken::decode_header(&id_token)
            .expect("header")
            .kid
            .expect("kid");
        if kid != old_kid {
            verified_claims(&app, &id_token, jsonwebtoken::Algorithm::RS256, "wiki").await;
            break kid;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a new key signs within seconds"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let jwks = reqwest::get(format!("{}/oidc/jwks", app.base))
        .await
        .expect("GET jwks")
        .json_value()
        .await;
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter_map(|k| k["kid"].as_str())
        .collect();
    assert_eq!(kids.len(), 6, "three new keys and the three they replaced");
    assert!(kids.contains(&old_kid.as_str()) && kids.contains(&new_kid.as_str()));
}
