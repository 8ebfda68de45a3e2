//! Postgres goes away (a TCP proxy between service and database is cut) and comes back.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reqwest::{Response, StatusCode};
use secrecy::{ExposeSecret, SecretString};

use crate::helpers::*;
use crate::process;
use crate::tcp_proxy::{Outage, TcpProxy};

/// A request during the outage must be answered within this (acquire timeout is 1 s).
const NO_HANG: Duration = Duration::from_secs(10);

fn postgres_addr() -> SocketAddr {
    let url = url::Url::parse(&postgres_base()).expect("LATCHKEY_TEST_PG is a URL");
    let host = url.host_str().unwrap_or("127.0.0.1");
    let host = if host == "localhost" {
        "127.0.0.1"
    } else {
        host
    };
    format!("{host}:{}", url.port().unwrap_or(5432))
        .parse()
        .expect("Postgres host is an IP address")
}

/// Sends the request made by `send` and checks it was answered within [`NO_HANG`].
async fn quickly<F: std::future::Future<Output = Response>>(what: &str, send: F) -> Response {
    let started = Instant::now();
    let response = tokio::time::timeout(NO_HANG, send)
        .await
        .unwrap_or_else(|_| panic!("{what} hung for more than {NO_HANG:?}"));
    assert!(
        started.elapsed() < NO_HANG,
        "{what} took {:?}",
        started.elapsed()
    );
    response
}

/// The friendly outage page: 503, Retry-After, the error page's wording.
async fn assert_outage_page(what: &str, response: Response) {
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{what}");
    assert!(
        response.headers().contains_key("retry-after"),
        "{what}: no Retry-After"
    );
    let body = response.text().await.expect("body");
    assert!(
        body.contains("Sorry, the service is unavailable"),
        "{what}: {body}"
    );
    assert!(body.contains("Try again"), "{what}: {body}");
}

/// The service on a fresh test database that it reaches only through a proxy the test
/// can cut, with a 1 s pool acquire timeout.
async fn app_behind_proxy() -> (TcpProxy, TestApp) {
    let proxy = TcpProxy::start(postgres_addr()).await;
    let proxy_port = proxy.addr.port();
    let app = TestApp::spawn_with(|config| {
        // Same database (the harness has just named it), reached through the proxy.
        let mut url = url::Url::parse(config.database_url.expose_secret()).expect("url");
        url.set_host(Some("127.0.0.1")).expect("host");
        url.set_port(Some(proxy_port)).expect("port");
        config.database_url = SecretString::from(url.to_string());
        config.db_acquire_timeout_ms = 1000;
    })
    .await;
    (proxy, app)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_answers_503_quickly_and_the_service_recovers_by_itself() {
    let (proxy, mut app) = app_behind_proxy().await;
    // The test's own view of the database does not go through the proxy.
    let direct = process::connect(&app.database_url).await;
    app.create_user("alice@example.com", PASSWORD).await;
    app.create_user("bob@example.com", PASSWORD).await;
    let alice = app.browser();
    assert_status(
        &alice.sign_in("alice@example.com", PASSWORD).await,
        StatusCode::SEE_OTHER,
    );
    let session = alice.session_cookie().expect("signed in");

    // Bob asks for a link while mail is down: the outbox keeps it, the first try fails.
    app.smtp.set_down(true);
    let bob = app.browser();
    let asked = bob.forgot_password("bob@example.com").await;
    assert_status(&asked, StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (tried,): (i64,) = sqlx::query_as(
            "select count(*) from outbox where to_address = 'bob@example.com' and attempts >= 1",
        )
        .fetch_one(&direct)
        .await
        .expect("outbox");
        if tried == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the first delivery was never tried"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    for outage in [Outage::Refused, Outage::Dropped] {
        // The database goes away.
        proxy.cut(outage);
        if outage == Outage::Dropped {
            // Mail comes back during the second outage only, once any send that was under
            // way at the cut has had time to fail: nothing can be delivered before the
            // database returns, so a delivery now would be a bug, not the outbox's
            // documented at-least-once window.
            tokio::time::sleep(Duration::from_millis(500)).await;
            app.smtp.set_down(false);
        }
        answers_503_without_hanging(&app, &session).await;
        // Let the outbox worker meet the outage a few times.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(app.smtp.messages().len(), 0, "nothing could be sent");

        // The database comes back: no restart, the pool reconnects on its own.
        proxy.restore();
        let restored = Instant::now();
        let recovered = loop {
            let response = app.browser().sign_in("alice@example.com", PASSWORD).await;
            match response.status() {
                StatusCode::SEE_OTHER => break restored.elapsed(),
                StatusCode::SERVICE_UNAVAILABLE => {}
                other => panic!("sign-in while recovering answered {other}"),
            }
            assert!(
                restored.elapsed() < Duration::from_secs(60),
                "no successful sign-in within 60 s of the database returning"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        println!(
            "recovery ({outage:?}): first successful sign-in {recovered:?} after the database returned"
        );
        assert_status(&app.browser().get("/readyz").await, StatusCode::OK);
        // The session made before the outage still works.
        let signed_in = Browser::with_session_cookie(&app, &session);
        assert_status(&signed_in.get("/").await, StatusCode::OK);
    }

    // Bob's mail was not lost: it arrives once, and its link works.
    let mails = app.smtp.wait_for(1, Duration::from_secs(90)).await;
    assert_eq!(mails.len(), 1, "bob's reset mail after the outage");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mails = app.smtp.messages_to("bob@example.com");
    assert_eq!(mails.len(), 1, "exactly once");
    let link = mails[0].first_link().expect("link");
    let path = link.strip_prefix(&app.base).expect("link to this service");
    let token = path.split("token=").nth(1).expect("token").to_owned();
    let done = bob.reset_password(&token, NEW_PASSWORD, NEW_PASSWORD).await;
    assert_status(&done, StatusCode::SEE_OTHER);
    assert_status(
        &app.browser().sign_in("bob@example.com", NEW_PASSWORD).await,
        StatusCode::SEE_OTHER,
    );
    // Alice's forgot-password during the outage answered 503 and queued nothing.
    assert_eq!(
        app.count("select count(*) from reset_tokens where user_id = (select id from users where email = 'alice@example.com')")
            .await,
        0
    );
    app.stop().await;
}

/// With the database cut: liveness stays up, readiness and every page that needs the
/// database answer the outage page, none of them hanging or failing with a 500.
async fn answers_503_without_hanging(app: &TestApp, session: &str) {
    let stranger = app.browser();
    let health = quickly("/healthz", stranger.get("/healthz")).await;
    assert_status(&health, StatusCode::OK);
    let ready = quickly("/readyz", stranger.get("/readyz")).await;
    assert_status(&ready, StatusCode::SERVICE_UNAVAILABLE);
    // The sign-in form itself needs no database.
    let form = quickly("GET /sign-in", stranger.get("/sign-in")).await;
    assert_status(&form, StatusCode::OK);

    let sign_in = quickly(
        "POST /sign-in",
        stranger.sign_in("alice@example.com", PASSWORD),
    )
    .await;
    assert_outage_page("POST /sign-in", sign_in).await;
    let forgot = quickly(
        "POST /forgot-password",
        stranger.forgot_password("alice@example.com"),
    )
    .await;
    assert_outage_page("POST /forgot-password", forgot).await;
    let reset = quickly(
        "GET /reset-password",
        stranger.get(&format!("/reset-password?token={}", "A".repeat(43))),
    )
    .await;
    assert_outage_page("GET /reset-password", reset).await;

    let signed_in = Browser::with_session_cookie(app, session);
    for path in ["/", "/settings/security", "/sign-in"] {
        let page = quickly(path, signed_in.get(path)).await;
        assert_outage_page(&format!("GET {path} signed in"), page).await;
    }
    let change = quickly(
        "POST /settings/security/password",
        // The token comes from a page that needs no database.
        signed_in.submit(
            "/forgot-password",
            "/settings/security/password",
            &[
                ("current_password", PASSWORD),
                ("new_password", NEW_PASSWORD),
                ("new_password_confirm", NEW_PASSWORD),
            ],
        ),
    )
    .await;
    assert_outage_page("POST /settings/security/password", change).await;
    let sign_out = quickly(
        "POST /sign-out",
        signed_in.submit("/forgot-password", "/sign-out", &[]),
    )
    .await;
    assert_outage_page("POST /sign-out", sign_out).await;
}

/// The database goes away after the sign-in itself succeeded but while the session is
/// being saved (the session layer's own write, after the handler): the answer is still
/// the outage page, not a bare 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_while_the_session_is_saved_answers_the_outage_page() {
    let (proxy, mut app) = app_behind_proxy().await;
    let direct = process::connect(&app.database_url).await;
    app.create_user("alice@example.com", PASSWORD).await;
    // Holds every new session row for a while, so the cut lands during its insert.
    sqlx::raw_sql(
        "create function slow_session() returns trigger language plpgsql as
             $$ begin perform pg_sleep(3); return new; end $$;
         create trigger slow_session before insert on sessions
             for each row execute function slow_session();",
    )
    .execute(&direct)
    .await
    .expect("trigger");

    let browser = app.browser();
    let signing_in = tokio::spawn(async move {
        let started = Instant::now();
        let response = browser.sign_in("alice@example.com", PASSWORD).await;
        (response, started.elapsed())
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (saving,): (i64,) = sqlx::query_as(
            "select count(*) from pg_stat_activity
             where state = 'active' and query like 'insert into sessions%'",
        )
        .fetch_one(&direct)
        .await
        .expect("pg_stat_activity");
        if saving == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the session insert never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.cut(Outage::Refused);
    let (response, took) = signing_in.await.expect("sign-in task");
    assert!(took < NO_HANG + Duration::from_secs(3), "took {took:?}");
    assert_outage_page("POST /sign-in while saving the session", response).await;

    proxy.restore();
    sqlx::raw_sql("drop trigger slow_session on sessions")
        .execute(&direct)
        .await
        .expect("drop trigger");
    let restored = Instant::now();
    loop {
        let response = app.browser().sign_in("alice@example.com", PASSWORD).await;
        if response.status() == StatusCode::SEE_OTHER {
            break;
        }
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(restored.elapsed() < Duration::from_secs(60), "no recovery");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.stop().await;
}
