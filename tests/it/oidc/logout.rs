//! RP-initiated logout, back-channel logout, and the grant's binding to the latchkey
//! session: whatever ends the session ends the tokens, on every instance.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode as AxumStatus;
use reqwest::StatusCode;
use tokio::net::TcpListener;

use super::*;

const BYE: &str = "https://app.example.test/bye";

/// A relying party's back-channel logout endpoint on a local port: it refuses the first
/// `fail_first` posts with 500, and keeps the `logout_token` of every post.
struct LogoutReceiver {
    url: String,
    tokens: Arc<Mutex<Vec<String>>>,
    posts: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct ReceiverState {
    tokens: Arc<Mutex<Vec<String>>>,
    posts: Arc<AtomicUsize>,
    fail_first: usize,
}

async fn receive(State(state): State<ReceiverState>, body: String) -> AxumStatus {
    let n = state.posts.fetch_add(1, Ordering::SeqCst);
    if n < state.fail_first {
        return AxumStatus::INTERNAL_SERVER_ERROR;
    }
    if let Some((_, token)) =
        url::form_urlencoded::parse(body.as_bytes()).find(|(k, _)| k == "logout_token")
    {
        state.tokens.lock().expect("lock").push(token.into_owned());
    }
    AxumStatus::OK
}

impl LogoutReceiver {
    async fn start(fail_first: usize) -> LogoutReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = ReceiverState {
            tokens: Arc::default(),
            posts: Arc::default(),
            fail_first,
        };
        let receiver = LogoutReceiver {
            url: format!("http://{addr}/backchannel"),
            tokens: state.tokens.clone(),
            posts: state.posts.clone(),
        };
        let router = axum::Router::new()
            .route("/backchannel", axum::routing::post(receive))
            .with_state(state);
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        receiver
    }

    /// Waits up to `within` for `n` delivered tokens.
    async fn tokens(&self, n: usize, within: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let tokens = self.tokens.lock().expect("lock").clone();
            if tokens.len() >= n || tokio::time::Instant::now() > deadline {
                return tokens;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Polls until `check` holds, for at most `bound`; whether it did.
async fn within(bound: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn end_session_with_the_sessions_id_token_signs_out_and_returns_with_state() {
    let app = TestApp::spawn().await;
    app.create_user(EMAIL, PASSWORD).await;
    let rp = register(&app, "wiki", |spec| {
        spec.post_logout_redirect_uris = vec![BYE.to_owned()]
    })
    .await;
    let (browser, tokens) = signed_in_with_tokens(&app, &rp).await;
    let hint = tokens["id_token"].as_str().expect("id_token");
    let path = format!(
        "/oidc/logout?id_token_hint={hint}&post_logout_redirect_uri={}&state=bye-1",
        url::form_urlencoded::byte_serialize(BYE.as_bytes()).collect::<String>()
    );
    let response = browser.get(&path).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&response), format!("{BYE}?state=bye-1"));
    let settings = browser.get("/settings/security").await;
    assert!(location(&settings).starts_with("/sign-in"), "signed out");
    assert_status(
        &userinfo(&app.base, tokens["access_token"].as_str().expect("at")).await,
        StatusCode::UNAUTHORIZED,
    );
}

#[tokio::test]
async fn end_session_without_a_matching_hint_asks_first() {
    let app = TestApp::spawn().await;
    app.create_user(EMAIL, PASSWORD).await;
    let rp = register(&app, "wiki", |spec| {
        spec.post_logout_redirect_uris = vec![BYE.to_owned()]
    })
    .await;
    let (browser, tokens) = signed_in_with_tokens(&app, &rp).await;
    let bye: String = url::form_urlencoded::byte_serialize(BYE.as_bytes()).collect();

    let asked = browser
        .get(&format!(
            "/oidc/logout?client_id=wiki&post_logout_redirect_uri={bye}&state=s"
        ))
        .await;
    assert_eq!(asked.status(), StatusCode::SEE_OTHER);
    let confirm = location(&asked);
    assert!(confirm.starts_with("/oidc/logout/confirm?"), "{confirm}");
    let page = browser.get(&confirm).await;
    assert_status(&page, StatusCode::OK);
    let body = page.text().await.expect("body");
    assert!(body.contains("<title>Sign out of latchkey? – latchkey</title>"));
    assert!(body.contains("The wiki app"));
    // Nothing happened yet.
    assert_status(
        &userinfo(&app.base, tokens["access_token"].as_str().expect("at")).await,
        StatusCode::OK,
    );

    let token = csrf_in(&body).expect("csrf");
    let done = browser
        .client
        .post(browser.url("/oidc/logout/confirm"))
        .form(&[
            ("csrf_token", token.as_str()),
            ("client_id", "wiki"),
            ("post_logout_redirect_uri", BYE),
            ("state", "s"),
        ])
        .send()
        .await
        .expect("POST confirm");
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&done), format!("{BYE}?state=s"));
    assert_status(
        &userinfo(&app.base, tokens["access_token"].as_str().expect("at")).await,
        StatusCode::UNAUTHORIZED,
    );
}

#[tokio::test]
async fn end_session_refuses_an_unregistered_return_address_or_a_forged_hint() {
    let app = TestApp::spawn().await;
    app.create_user(EMAIL, PASSWORD).await;
    let rp = register(&app, "wiki", |spec| {
        spec.post_logout_redirect_uris = vec![BYE.to_owned()]
    })
    .await;
    let (browser, tokens) = signed_in_with_tokens(&app, &rp).await;
    for path in [
        "/oidc/logout?client_id=wiki&post_logout_redirect_uri=https%3A%2F%2Fevil.test%2F"
            .to_owned(),
        "/oidc/logout?post_logout_redirect_uri=https%3A%2F%2Fapp.example.test%2Fbye".to_owned(),
        "/oidc/logout?id_token_hint=not.a.token".to_owned(),
        format!(
            "/oidc/logout?id_token_hint={}x",
            tokens["id_token"].as_str().expect("id_token")
        ),
    ] {
        let response = browser.get(&path).await;
        assert_status(&response, StatusCode::BAD_REQUEST);
        assert!(response.headers().get("location").is_none(), "{path}");
    }
    // Still signed in.
    assert_status(&browser.get("/settings/security").await, StatusCode::OK);
}

#[tokio::test]
async fn signing_out_on_one_instance_ends_the_tokens_on_the_other_within_a_second() {
    let app = TestApp::spawn().await;
    let sibling = app.spawn_sibling().await;
    app.create_user(EMAIL, PASSWORD).await;
    let rp = register(&app, "wiki", |_| {}).await;
    let (browser, tokens) = signed_in_with_tokens(&app, &rp).await;
    let access = tokens["access_token"].as_str().expect("at").to_owned();
    assert_status(&userinfo(&sibling.base, &access).await, StatusCode::OK);

    assert_eq!(browser.sign_out().await.status(), StatusCode::SEE_OTHER);
    let refused = within(Duration::from_secs(1), async || {
        userinfo(&sibling.base, &access).await.status() == StatusCode::UNAUTHORIZED
    })
    .await;
    assert!(
        refused,
        "userinfo on the other instance refused within a second"
    );
    let refreshed = refresh(
        &app,
        &sibling.base,
        &rp,
        tokens["refresh_token"].as_str().expect("rt"),
    )
    .await;
    assert_status(&refreshed, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn every_way_a_session_ends_ends_its_tokens() {
    let app = TestApp::spawn().await;
    app.create_user(EMAIL, PASSWORD).await;
    let rp = register(&app, "wiki", |_| {}).await;
    let accounts = &app.state().accounts;
    let origin = latchkey::auth::operator::command_line();

    // Sign out other sessions, from another browser.
    let (_, tokens) = signed_in_with_tokens(&app, &rp).await;
    let other = app.browser();
    other.sign_in(EMAIL, PASSWORD).await;
    assert_eq!(
        other.sign_out_other_sessions().await.status(),
        StatusCode::SEE_OTHER
    );
    assert_status(
        &userinfo(&app.base, tokens["access_token"].as_str().expect("at")).await,
        StatusCode::UNAUTHORIZED,
    );

    // A password change elsewhere.
    let (_, tokens) = signed_in_with_tokens(&app, &rp).await;
    assert_eq!(
        other
            .change_password(PASSWORD, NEW_PASSWORD, NEW_PASSWORD)
            .await
            .status(),
        StatusCode::SEE_OTHER
    );
    assert_status(
        &userinfo(&app.base, tokens["access_token"].as_str().expect("at")).await,
        StatusCode::UNAUTHORIZED,
    );
    latchkey::auth::operator::sign_out_everywhere(accounts, EMAIL, &origin)
        .await
        .expect("sign out");
    sqlx::query("update users set password_hash = $1 where lower(email) = $2")
        .bind(app.password_hash(EMAIL).await)
        .bind(EMAIL)
        .execute(&app.pool)
        .await
        .expect("same hash");

    // The operator: `user sign-out`, then `user disable`.
    let browser = app.browser();
    let response = browser
        .submit(
            "/sign-in",
            "/sign-in",
            &[("email", EMAIL), ("password", NEW_PASSWORD)],
        )
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let (code, verifier) = code_for(&app, &browser, &rp).await;
    let tokens = exchange(&app, &rp, &code, &verifier)
        .await
        .json_value()
        .await;
    latchkey::auth::operator::sign_out_everywhere(accounts, EMAIL, &origin)
        .await
        .expect("sign out");
    let at = tokens["access_token"].as_str().expect("at").to_owned();
    assert!(
        within(Duration::from_secs(1), async || userinfo(&app.base, &at)
            .await
            .status()
            == StatusCode::UNAUTHORIZED)
        .await
    );

    let browser = app.browser();
    browser
        .submit(
            "/sign-in",
            "/sign-in",
            &[("email", EMAIL), ("password", NEW_PASSWORD)],
        )
        .await;
    let (code, verifier) = code_for(&app, &browser, &rp).await;
    let tokens = exchange(&app, &rp, &code, &verifier)
        .await
        .json_value()
        .await;
    latchkey::auth::operator::disable(accounts, EMAIL, &origin)
        .await
        .expect("disable");
    let at = tokens["access_token"].as_str().expect("at").to_owned();
    assert!(
        within(Duration::from_secs(1), async || userinfo(&app.base, &at)
            .await
            .status()
            == StatusCode::UNAUTHORIZED)
        .await
    );
    let refreshed = refresh(
        &app,
        &app.base,
        &rp,
        tokens["refresh_token"].as_str().expect("rt"),
    )
    .await;
    assert_status(&refreshed, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn an_expired_session_ends_its_tokens() {
    let app = TestApp::spawn().await;
    app.create_user(EMAIL, PASSWORD).await;
    let rp = register(&app, "wiki", |_| {}).await;
    let (_, tokens) = signed_in_with_tokens(&app, &rp).await;
    sqlx::query("update sessions set expires_at = now() - interval '1 second'")
        .execute(&app.pool)
        .await
        .expect("expire");
    let at = tokens["access_token"].as_str().expect("at").to_owned();
    assert!(
        within(Duration::from_secs(1), async || userinfo(&app.base, &at)
            .await
            .status()
            == StatusCode::UNAUTHORIZED)
        .await
    );
}

#[tokio::test]
async fn back_channel_logout_delivers_a_signed_logout_token_and_retries_until_it_is_taken() {
    let app = TestApp::spawn().await;
    app.create_user(EMAIL, PASSWORD).await;
    let receiver = LogoutReceiver::start(1).await;
    let rp = register(&app, "wiki", |spec| {
        spec.backchannel_logout_uri = Some(receiver.url.clone());
    })
    .await;
    let bystander = register(&app, "quiet", |_| {}).await;
    let (browser, tokens) = signed_in_with_tokens(&app, &rp).await;
    let (code, verifier) = code_for(&app, &browser, &bystander).await;
    assert_status(
        &exchange(&app, &bystander, &code, &verifier).await,
        StatusCode::OK,
    );
    let id_claims = verified_claims(
        &app,
        tokens["id_token"].as_str().expect("id_token"),
        jsonwebtoken::Algorithm::RS256,
        "wiki",
    )
    .await;

    assert_eq!(browser.sign_out().await.status(), StatusCode::SEE_OTHER);
    // The first post is refused; the retry a second later is taken.
    let delivered = receiver.tokens(1, Duration::from_secs(10)).await;
    assert_eq!(delivered.len(), 1, "one logout token delivered");
    assert!(
        receiver.posts.load(Ordering::SeqCst) >= 2,
        "retried after a failure"
    );

    let logout = verified_claims(&app, &delivered[0], jsonwebtoken::Algorithm::RS256, "wiki").await;
    assert_eq!(logout["sid"], id_claims["sid"]);
    assert_eq!(logout["sub"], id_claims["sub"]);
    assert!(logout["jti"].is_string() && logout["iat"].is_i64());
    assert!(logout.get("nonce").is_none());
    assert_eq!(
        logout["events"],
        serde_json::json!({"http://schemas.openid.net/event/backchannel-logout": {}})
    );
    let header = jsonwebtoken::decode_header(&delivered[0]).expect("header");
    assert_eq!(header.typ.as_deref(), Some("logout+jwt"));
    // Nothing more: one session, one client with a back-channel URI.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.tokens.lock().expect("lock").len(), 1);
    assert_eq!(
        app.count("select count(*) from oidc_logout_outbox where status = 'sent'")
            .await,
        1
    );
}
