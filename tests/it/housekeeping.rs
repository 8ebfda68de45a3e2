//! Housekeeping: the sweep deletes what has served its purpose (expired sessions, dead
//! reset tokens, idle throttle rows, delivered mail past its retention) and nothing that
//! is still live; the periodic job runs it by itself.

use std::str::FromStr;
use std::time::Duration;

use latchkey::store::housekeeping::{Swept, sweep};
use latchkey::web::session_store::id_hash;
use reqwest::StatusCode;
use tower_sessions::session::Id;

use crate::helpers::*;

const EMAIL: &str = "alice@example.com";

/// The row key of the session `browser` holds.
fn session_key(browser: &Browser) -> Vec<u8> {
    let id = browser.session_id().expect("a session cookie");
    id_hash(&Id::from_str(&id).expect("a session id"))
}

async fn signed_in(app: &TestApp) -> Browser {
    let browser = app.browser();
    assert_status(
        &browser.sign_in(EMAIL, PASSWORD).await,
        StatusCode::SEE_OTHER,
    );
    browser
}

async fn exec(app: &TestApp, sql: &str) {
    sqlx::query(sql).execute(&app.pool).await.expect(sql);
}

async fn age_session(app: &TestApp, browser: &Browser, set: &str) {
    sqlx::query(&format!("update sessions set {set} where id_hash = $1"))
        .bind(session_key(browser))
        .execute(&app.pool)
        .await
        .expect("aging a session");
}

async fn wait_until_delivered(app: &TestApp) {
    for _ in 0..300 {
        if app
            .count(
                "select count(*) from outbox where status = 'pending' and next_attempt_at <= now()",
            )
            .await
            == 0
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the outbox did not drain");
}

#[tokio::test]
async fn the_sweep_deletes_only_what_is_dead_and_keeps_what_is_live() {
    // The periodic job runs once at start-up; an hour's interval keeps it out of the way.
    let app = TestApp::spawn_with(|c| c.housekeeping_interval_secs = 3600).await;
    let alice = app.create_user(EMAIL, PASSWORD).await;

    // Sessions: one live, one idle too long, one past its absolute lifetime.
    let live = signed_in(&app).await;
    let idle = signed_in(&app).await;
    let old = signed_in(&app).await;
    age_session(
        &app,
        &idle,
        "last_seen_at = now() - interval '2 days', expires_at = now() - interval '1 day'",
    )
    .await;
    // What the store computes for a session signed in 15 days ago and used a minute ago:
    // created_at + the 14-day absolute limit.
    age_session(
        &app,
        &old,
        "created_at = now() - interval '15 days', last_seen_at = now() - interval '1 minute',
         expires_at = now() - interval '1 day'",
    )
    .await;
    assert_status(&idle.get("/").await, StatusCode::SEE_OTHER);
    assert_status(&old.get("/").await, StatusCode::SEE_OTHER);
    assert_eq!(
        app.count(&format!(
            "select count(*) from sessions where user_id = '{alice}'"
        ))
        .await,
        3,
        "expired rows linger until the sweep"
    );

    // Reset tokens: a live one from the mail, then dead and recently dead ones.
    let token = app.request_reset_link(&app.browser(), EMAIL, 1).await;
    wait_until_delivered(&app).await;
    for (expires, used) in [
        ("now() - interval '2 days'", "null"), // expired long ago: goes
        ("now() - interval '3 days'", "now() - interval '2 days'"), // used long ago: goes
        ("now() - interval '1 hour'", "null"), // just expired: kept, still says "expired"
        ("now() + interval '1 hour'", "now() - interval '1 hour'"), // just used: kept
    ] {
        exec(
            &app,
            &format!(
                "insert into reset_tokens (token_hash, user_id, created_at, expires_at, used_at)
                 values (sha256(gen_random_uuid()::text::bytea), '{alice}',
                         {expires} - interval '30 minutes', {expires}, {used})"
            ),
        )
        .await;
    }

    // Throttles: idle ones go; a running block and recent counts stay.
    exec(
        &app,
        "insert into login_throttle (email_key, failures, blocked_until, updated_at) values
           ('idle@example.com', 3, null, now() - interval '2 days'),
           ('served@example.com', 9, now() - interval '1 day', now() - interval '2 days'),
           ('blocked@example.com', 9, now() + interval '1 hour', now() - interval '2 days'),
           ('recent@example.com', 2, null, now())",
    )
    .await;
    exec(
        &app,
        "insert into ip_throttle (scope, ip, window_start, attempts) values
           ('sign_in', '192.0.2.1', now() - interval '11 minutes', 30),
           ('sign_in', '192.0.2.2', now() - interval '30 seconds', 3)",
    )
    .await;

    // Outbox: delivered or given up a week ago goes; recent and undelivered mail stays.
    exec(
        &app,
        "insert into outbox (to_address, subject, text_body, status, created_at, sent_at, next_attempt_at) values
           ('a@example.com', 'old sent', null, 'sent', now() - interval '8 days', now() - interval '8 days', now()),
           ('b@example.com', 'old failed', 'x', 'failed', now() - interval '8 days', null, now()),
           ('c@example.com', 'recent sent', null, 'sent', now() - interval '1 day', now() - interval '1 day', now()),
           ('d@example.com', 'old pending', 'x', 'pending', now() - interval '8 days', null, now() + interval '1 day')",
    )
    .await;

    // Sign-ups: used or expired ones go once they no longer count against the address's
    // hourly limit; live ones, and dead ones still inside that hour, stay.
    exec(
        &app,
        "insert into sign_ups (email, email_key, token_hash, password_hash, created_at, expires_at, used_at) values
           ('used@example.com', 'used@example.com', '\\x01', '$argon2id$x', now() - interval '2 hours', now() - interval '90 minutes', now() - interval '2 hours'),
           ('expired@example.com', 'expired@example.com', '\\x02', '$argon2id$x', now() - interval '3 hours', now() - interval '150 minutes', null),
           ('counted@example.com', 'counted@example.com', '\\x03', '$argon2id$x', now() - interval '40 minutes', now() - interval '1 minute', null),
           ('pending@example.com', 'pending@example.com', '\\x04', '$argon2id$x', now() - interval '10 minutes', now() + interval '20 minutes', null)",
    )
    .await;

    // Mail requests a day old that never went through go; a younger one waiting for its
    // retry stays.
    exec(
        &app,
        "insert into mail_requests (kind, email, created_at, not_before) values
           ('reset', 'stale@example.com', now() - interval '25 hours', now() + interval '1 hour'),
           ('reset', 'waiting@example.com', now() - interval '2 hours', now() + interval '1 hour')",
    )
    .await;

    let swept = sweep(&app.pool).await.expect("sweep");
    let (waiting,): (Vec<String>,) =
        sqlx::query_as("select coalesce(array_agg(email order by email), '{}') from mail_requests")
            .fetch_one(&app.pool)
            .await
            .expect("mail requests left");
    assert_eq!(waiting, ["waiting@example.com"]);
    let (kept,): (Vec<String>,) =
        sqlx::query_as("select coalesce(array_agg(email order by email), '{}') from sign_ups")
            .fetch_one(&app.pool)
            .await
            .expect("sign-ups left");
    assert_eq!(kept, ["counted@example.com", "pending@example.com"]);

    assert_eq!(
        swept,
        Swept {
            sessions: 2,
            reset_tokens: 2,
            throttles: 3,
            outbox: 2,
            sign_ups: 2,
            mail_requests: 1,
            oidc: 0,
        }
    );
    // The live session still works, and the account's sessions are exactly the live one:
    // the list in Settings and "sign out other sessions" agree with the table.
    assert_status(&live.get("/").await, StatusCode::OK);
    assert_eq!(
        app.count(&format!(
            "select count(*) from sessions where user_id = '{alice}'"
        ))
        .await,
        1
    );
    let page = live.get("/settings/security").await.text().await.unwrap();
    assert_eq!(
        page.matches("/revoke\"").count(),
        0,
        "no other session listed"
    );
    let revoked = live.sign_out_other_sessions().await;
    assert_eq!(
        location(&revoked),
        "/settings/security?notice=sessions-revoked&count=0"
    );
    assert_eq!(
        app.count("select count(*) from sessions where user_id is not null and user_id not in (select id from users)")
            .await,
        0
    );

    // Tokens: the two recent dead ones and the live one remain; the live one still redeems.
    assert_eq!(app.count("select count(*) from reset_tokens").await, 3);
    let reset = app
        .browser()
        .reset_password(&token, NEW_PASSWORD, NEW_PASSWORD)
        .await;
    assert_status(&reset, StatusCode::SEE_OTHER);

    let kept: Vec<(String,)> = sqlx::query_as("select email_key from login_throttle order by 1")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert!(kept.contains(&("blocked@example.com".to_owned(),)));
    assert!(kept.contains(&("recent@example.com".to_owned(),)));
    assert!(
        !kept
            .iter()
            .any(|(k,)| k == "idle@example.com" || k == "served@example.com")
    );
    assert_eq!(
        app.count("select count(*) from ip_throttle where ip like '192.0.2.%'")
            .await,
        1
    );
    let subjects: Vec<(String,)> = sqlx::query_as("select subject from outbox")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert!(subjects.contains(&("recent sent".to_owned(),)));
    assert!(
        subjects.contains(&("old pending".to_owned(),)),
        "undelivered mail stays"
    );
    assert!(
        !subjects
            .iter()
            .any(|(s,)| s.starts_with("old sent") || s == "old failed")
    );

    // A second sweep finds nothing more: it is idempotent, so every instance may run it.
    let again = sweep(&app.pool).await.expect("sweep");
    assert_eq!(again.sessions + again.reset_tokens + again.outbox, 0);
}

#[tokio::test]
async fn the_periodic_job_sweeps_by_itself() {
    let app = TestApp::spawn_with(|c| c.housekeeping_interval_secs = 1).await;
    app.create_user(EMAIL, PASSWORD).await;
    let live = signed_in(&app).await;
    let expired = signed_in(&app).await;
    age_session(&app, &expired, "expires_at = now() - interval '1 second'").await;
    exec(
        &app,
        "insert into outbox (to_address, subject, status, created_at, sent_at) values
           ('a@example.com', 'old sent', 'sent', now() - interval '8 days', now() - interval '8 days')",
    )
    .await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let sessions = app.count("select count(*) from sessions").await;
        let old_mail = app
            .count("select count(*) from outbox where subject = 'old sent'")
            .await;
        if sessions == 1 && old_mail == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing swept: {sessions} sessions, {old_mail} old mails"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_status(&live.get("/").await, StatusCode::OK);
}
