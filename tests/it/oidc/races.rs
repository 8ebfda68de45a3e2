//! Codes, refresh tokens and sign-outs under concurrency, attacked as races.rs attacks
//! the account limits: every request of a burst written at once, spread over two
//! instances and several source addresses, several rounds.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use reqwest::StatusCode;

use super::*;
use crate::burst::{self, RawRequest, RawResponse};

const ROUNDS: usize = 3;
const SOURCES: usize = 4;
const AT_ONCE: usize = 20;

/// A token request with `client_secret_basic`, as raw bytes for `base`.
fn token_post(base: &str, rp: &Rp, fields: &[(&str, &str)]) -> Vec<u8> {
    let body: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish();
    let host = base.trim_start_matches("http://");
    let credentials = STANDARD.encode(format!("{}:{}", rp.id, rp.secret.as_deref().unwrap_or("")));
    format!(
        "POST /oidc/token HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Authorization: Basic {credentials}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn spread(bases: [&str; 2], n: usize, make: impl Fn(&str) -> Vec<u8>) -> Vec<RawRequest> {
    (0..n)
        .map(|i| {
            let base = bases[i % 2];
            RawRequest {
                source: burst::source(i, SOURCES),
                target: burst::target(base),
                bytes: make(base),
            }
        })
        .collect()
}

fn ok_bodies(answers: &[RawResponse]) -> Vec<serde_json::Value> {
    answers
        .iter()
        .filter(|a| a.status == 200)
        .map(|a| serde_json::from_str(&a.body).expect("token JSON"))
        .collect()
}

fn all_refused_with_invalid_grant(answers: &[RawResponse]) {
    for answer in answers.iter().filter(|a| a.status != 200) {
        assert_eq!(answer.status, 400, "{}", answer.body);
        assert!(answer.body.contains("\"invalid_grant\""), "{}", answer.body);
    }
}

#[tokio::test]
async fn twenty_redemptions_of_one_code_on_two_instances_give_one_answer_and_its_tokens_die() {
    let app = TestApp::spawn().await;
    let sibling = app.spawn_sibling().await;
    app.create_user(EMAIL, PASSWORD).await;
    let rp = register(&app, "wiki", |_| {}).await;
    let browser = app.browser();
    for round in 0..ROUNDS {
        let (code, verifier) = code_for(&app, &browser, &rp).await;
        let fields = [
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier.as_str()),
        ];
        let answers = burst::burst(spread([&app.base, &sibling.base], AT_ONCE, |base| {
            token_post(base, &rp, &fields)
        }))
        .await;
        let issued = ok_bodies(&answers);
        assert_eq!(
            issued.len(),
            1,
            "round {round}: {:?}",
            burst::tally(&answers)
        );
        all_refused_with_invalid_grant(&answers);
        // The other redemptions revoked what the one issued.
        let access = issued[0]["access_token"].as_str().expect("at");
        for base in [&app.base, &sibling.base] {
            assert_status(&userinfo(base, access).await, StatusCode::UNAUTHORIZED);
        }
        let refreshed = refresh(
            &app,
            &sibling.base,
            &rp,
            issued[0]["refresh_token"].as_str().expect("rt"),
        )
        .await;
        assert_status(&refreshed, StatusCode::BAD_REQUEST);
    }
}

#[tokio::test]
async fn twenty_refreshes_with_one_token_keep_the_person_signed_in_and_one_lineage_continues() {
    let app = TestApp::spawn().await;
    let sibling = app.spawn_sibling().await;
    app.create_user(EMAIL, PASSWORD).await;
    let rp = register(&app, "wiki", |_| {}).await;
    let (_, tokens) = signed_in_with_tokens(&app, &rp).await;
    let mut current = tokens["refresh_token"].as_str().expect("rt").to_owned();
    for round in 0..ROUNDS {
        let fields = [
            ("grant_type", "refresh_token"),
            ("refresh_token", current.as_str()),
        ];
        let answers = burst::burst(spread([&app.base, &sibling.base], AT_ONCE, |base| {
            token_post(base, &rp, &fields)
        }))
        .await;
        let issued = ok_bodies(&answers);
        // Within the grace window every racing worker gets tokens: nobody is signed out.
        assert_eq!(
            issued.len(),
            AT_ONCE,
            "round {round}: {:?}",
            burst::tally(&answers)
        );
        for answer in &issued {
            assert_status(
                &userinfo(&sibling.base, answer["access_token"].as_str().expect("at")).await,
                StatusCode::OK,
            );
        }
        // The first of the new tokens used continues; its siblings are then refused,
        // without ending the grant.
        let chosen = issued[round % AT_ONCE]["refresh_token"]
            .as_str()
            .expect("rt")
            .to_owned();
        let next = refresh(&app, &app.base, &rp, &chosen).await;
        assert_status(&next, StatusCode::OK);
        let next = next.json_value().await;
        for other in issued
            .iter()
            .filter(|a| a["refresh_token"] != chosen.as_str())
            .take(3)
        {
            let lost = refresh(
                &app,
                &sibling.base,
                &rp,
                other["refresh_token"].as_str().expect("rt"),
            )
            .await;
            assert_status(&lost, StatusCode::BAD_REQUEST);
        }
        let (live,): (i64,) = sqlx::query_as(
            "select count(*) from oidc_refresh_tokens
             where used_at is null and revoked_at is null",
        )
        .fetch_one(&app.pool)
        .await
        .expect("count");
        assert_eq!(live, 1, "round {round}: one lineage continues");
        assert_status(
            &userinfo(&app.base, next["access_token"].as_str().expect("at")).await,
            StatusCode::OK,
        );
        current = next["refresh_token"].as_str().expect("rt").to_owned();
    }
}

#[tokio::test]
async fn a_refresh_replayed_after_its_successor_was_used_kills_the_whole_grant_even_in_a_burst() {
    let app = TestApp::spawn().await;
    let sibling = app.spawn_sibling().await;
    app.create_user(EMAIL, PASSWORD).await;
    let rp = register(&app, "wiki", |_| {}).await;
    for round in 0..ROUNDS {
        let (_, tokens) = signed_in_with_tokens(&app, &rp).await;
        let stolen = tokens["refresh_token"].as_str().expect("rt").to_owned();
        let successor = refresh(&app, &app.base, &rp, &stolen)
            .await
            .json_value()
            .await;
        let newest = refresh(
            &app,
            &sibling.base,
            &rp,
            successor["refresh_token"].as_str().expect("rt"),
        )
        .await
        .json_value()
        .await;
        let fields = [
            ("grant_type", "refresh_token"),
            ("refresh_token", stolen.as_str()),
        ];
        let answers = burst::burst(spread([&app.base, &sibling.base], AT_ONCE, |base| {
            token_post(base, &rp, &fields)
        }))
        .await;
        assert!(
            ok_bodies(&answers).is_empty(),
            "round {round}: {:?}",
            burst::tally(&answers)
        );
        all_refused_with_invalid_grant(&answers);
        for base in [&app.base, &sibling.base] {
            assert_status(
                &userinfo(base, newest["access_token"].as_str().expect("at")).await,
                StatusCode::UNAUTHORIZED,
            );
        }
        let dead = refresh(
            &app,
            &sibling.base,
            &rp,
            newest["refresh_token"].as_str().expect("rt"),
        )
        .await;
        assert_status(&dead, StatusCode::BAD_REQUEST);
    }
}

#[tokio::test]
async fn a_sign_out_on_one_instance_ends_userinfo_and_refresh_on_the_other_within_a_second() {
    let app = TestApp::spawn().await;
    let sibling = app.spawn_sibling().await;
    app.create_user(EMAIL, PASSWORD).await;
    let rp = register(&app, "wiki", |_| {}).await;
    for round in 0..ROUNDS {
        let (browser, tokens) = signed_in_with_tokens(&app, &rp).await;
        let access = tokens["access_token"].as_str().expect("at").to_owned();
        // Warm the other instance's session cache, so a stale answer would show.
        assert_status(&userinfo(&sibling.base, &access).await, StatusCode::OK);
        let signed_out_at = tokio::time::Instant::now();
        assert_eq!(browser.sign_out().await.status(), StatusCode::SEE_OTHER);
        // Every check from one second on is refused, on both instances, all at once.
        tokio::time::sleep_until(signed_out_at + Duration::from_secs(1)).await;
        let host = |base: &str| base.trim_start_matches("http://").to_owned();
        let answers = burst::burst(spread([&app.base, &sibling.base], AT_ONCE, |base| {
            format!(
                "GET /oidc/userinfo HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {access}\r\nConnection: close\r\n\r\n",
                host(base)
            )
            .into_bytes()
        }))
        .await;
        assert!(
            answers.iter().all(|a| a.status == 401),
            "round {round}: {:?}",
            burst::tally(&answers)
        );
        let fields = [
            ("grant_type", "refresh_token"),
            (
                "refresh_token",
                tokens["refresh_token"].as_str().expect("rt"),
            ),
        ];
        let answers = burst::burst(spread([&sibling.base, &app.base], 4, |base| {
            token_post(base, &rp, &fields)
        }))
        .await;
        assert!(
            ok_bodies(&answers).is_empty(),
            "round {round}: {:?}",
            burst::tally(&answers)
        );
    }
}
