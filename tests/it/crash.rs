//! SIGKILL in the middle of password changes and resets: every account is left with
//! exactly one valid password, old or new, and the rest of the change (token, sessions,
//! audit event, notification mail) agrees with which one it is.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use sqlx::PgPool;

use crate::helpers::*;
use crate::process::{self, ServiceProcess};
use crate::smtp_sink::SmtpSink;

const ROUNDS: usize = 3;
/// Accounts per round changing their password from Settings, and resetting it by link.
const CHANGERS: usize = 10;
const RESETTERS: usize = 10;

/// One account's request, ready to be posted the moment the storm starts.
struct Prepared {
    email: String,
    browser: Browser,
    action: &'static str,
    form: Vec<(&'static str, String)>,
    /// Another signed-in session of the account: revoked exactly when the password changed.
    other_session: String,
}

async fn status_of(response: reqwest::Response) -> StatusCode {
    response.status()
}

async fn prepare_change(base: &str, email: String) -> Prepared {
    let other = Browser::new(base);
    assert_status(
        &other.sign_in(&email, PASSWORD).await,
        StatusCode::SEE_OTHER,
    );
    let browser = Browser::new(base);
    assert_status(
        &browser.sign_in(&email, PASSWORD).await,
        StatusCode::SEE_OTHER,
    );
    let token = browser.csrf_token("/settings/security").await;
    Prepared {
        email,
        browser,
        action: "/settings/security/password",
        form: vec![
            ("current_password", PASSWORD.to_owned()),
            ("new_password", NEW_PASSWORD.to_owned()),
            ("new_password_confirm", NEW_PASSWORD.to_owned()),
            ("csrf_token", token),
        ],
        other_session: other.session_cookie().expect("signed in"),
    }
}

async fn prepare_reset(base: &str, smtp: &SmtpSink, email: String) -> Prepared {
    let other = Browser::new(base);
    assert_status(
        &other.sign_in(&email, PASSWORD).await,
        StatusCode::SEE_OTHER,
    );
    let browser = Browser::new(base);
    let asked = browser.forgot_password(&email).await;
    assert_status(&asked, StatusCode::OK);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mail = loop {
        if let Some(mail) = smtp.messages_to(&email).pop() {
            break mail;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no reset mail for {email}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let link = mail.first_link().expect("link");
    let path = link.strip_prefix(base).expect("link to this instance");
    let token = path.split("token=").nth(1).expect("token").to_owned();
    let csrf = browser.csrf_token(path).await;
    Prepared {
        email,
        browser,
        action: "/reset-password",
        form: vec![
            ("token", token),
            ("new_password", NEW_PASSWORD.to_owned()),
            ("new_password_confirm", NEW_PASSWORD.to_owned()),
            ("csrf_token", csrf),
        ],
        other_session: other.session_cookie().expect("signed in"),
    }
}

async fn count(pool: &PgPool, sql: &str, email: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(sql)
        .bind(email)
        .fetch_one(pool)
        .await
        .expect(sql);
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_changes_and_resets_leaves_old_or_new_password_never_neither() {
    let smtp = SmtpSink::start().await;
    let database_url = process::fresh_database();
    let seed: u64 = rand::random();
    println!("crash test seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut pool: Option<PgPool> = None;

    for round in 0..ROUNDS {
        let mut service = ServiceProcess::start(&database_url, &smtp.url(), &[]).await;
        let db = match &pool {
            Some(db) => db.clone(),
            None => pool.insert(process::connect(&database_url).await).clone(),
        };
        let changers: Vec<String> = (0..CHANGERS)
            .map(|i| format!("change-{round}-{i}@example.com"))
            .collect();
        let resetters: Vec<String> = (0..RESETTERS)
            .map(|i| format!("reset-{round}-{i}@example.com"))
            .collect();
        let everyone: Vec<String> = changers.iter().chain(&resetters).cloned().collect();
        process::create_users(&db, &everyone, PASSWORD).await;

        // Interleaved, so that both kinds are in flight whenever the kill comes.
        let mut prepared = Vec::new();
        for (change, reset) in changers.into_iter().zip(resetters) {
            prepared.push(prepare_change(&service.base, change).await);
            prepared.push(prepare_reset(&service.base, &smtp, reset).await);
        }

        // The storm: every request at once, and SIGKILL after a random short delay.
        let mut storm = Vec::new();
        let mut finished = Vec::new();
        for p in prepared {
            let request = p
                .browser
                .client
                .post(p.browser.url(p.action))
                .form(&p.form)
                .send();
            storm.push(tokio::spawn(async move {
                match request.await {
                    Ok(response) => Some(status_of(response).await),
                    Err(_) => None,
                }
            }));
            let token = (p.action == "/reset-password").then(|| p.form[0].1.clone());
            finished.push((p.email, token, p.other_session));
        }
        // Early, middle, late: random within a window that moves each round, so that
        // kills land while resets (one hash) and changes (two) are still running.
        let (from, to) = [(10, 300), (150, 700), (400, 1500)][round % 3];
        let delay = Duration::from_millis(rng.gen_range(from..to));
        tokio::time::sleep(delay).await;
        service.kill();
        let mut answered = Vec::new();
        for task in storm {
            answered.push(task.await.expect("request task"));
        }
        let acknowledged = answered
            .iter()
            .filter(|a| **a == Some(StatusCode::SEE_OTHER))
            .count();
        for status in answered.iter().flatten() {
            assert_eq!(
                *status,
                StatusCode::SEE_OTHER,
                "a request answered before the kill did not succeed"
            );
        }

        // A fresh instance on the same database: what does every account look like now?
        let fresh = ServiceProcess::start(&database_url, &smtp.url(), &[]).await;
        let (mut changes, mut resets) = (0, 0);
        for ((email, token, other_session), answer) in finished.iter().zip(&answered) {
            let old_works = Browser::new(&fresh.base).sign_in(email, PASSWORD).await;
            let old_works = old_works.status() == StatusCode::SEE_OTHER;
            let new_works = Browser::new(&fresh.base).sign_in(email, NEW_PASSWORD).await;
            let new_works = new_works.status() == StatusCode::SEE_OTHER;
            assert!(
                old_works != new_works,
                "{email}: old password works: {old_works}, new works: {new_works}"
            );
            if *answer == Some(StatusCode::SEE_OTHER) {
                assert!(new_works, "{email}: an acknowledged change was lost");
            }
            if new_works {
                *(if token.is_some() {
                    &mut resets
                } else {
                    &mut changes
                }) += 1;
            }
            let new = i64::from(new_works);

            // The other session was revoked together with the change, and only then.
            let other = Browser::new(&fresh.base);
            let url = fresh.base.parse().expect("url");
            other
                .jar
                .add_cookie_str(&format!("latchkey_session={other_session}; Path=/"), &url);
            let home = other.get("/").await.status();
            let expected = if new_works {
                StatusCode::SEE_OTHER
            } else {
                StatusCode::OK
            };
            assert_eq!(home, expected, "{email}: other session after the crash");

            let kind = if token.is_some() {
                "reset_completed"
            } else {
                "password_changed"
            };
            let events = count(
                &db,
                &format!("select count(*) from audit_events where email = $1 and kind = '{kind}'"),
                email,
            )
            .await;
            assert_eq!(events, new, "{email}: {kind} audit events");
            let notices = count(
                &db,
                "select count(*) from outbox where to_address = $1
                 and subject = 'Your latchkey password was changed'",
                email,
            )
            .await;
            assert_eq!(notices, new, "{email}: password-changed notices queued");

            if token.is_some() {
                // No half-consumed token: used exactly when the password changed.
                let used = count(
                    &db,
                    "select count(*) from reset_tokens t join users u on u.id = t.user_id
                     where u.email = $1 and t.used_at is not null",
                    email,
                )
                .await;
                assert_eq!(used, new, "{email}: used reset tokens");
            }
            if let (Some(token), false) = (token, new_works) {
                // The link the crash interrupted still works, once.
                let browser = Browser::new(&fresh.base);
                let redeemed = browser
                    .reset_password(token, NEW_PASSWORD, NEW_PASSWORD)
                    .await;
                assert_status(&redeemed, StatusCode::SEE_OTHER);
            }
        }
        println!(
            "crash round {round}: SIGKILL after {delay:?}: {acknowledged} requests acknowledged; \
             {changes} of {CHANGERS} changes and {resets} of {RESETTERS} resets took effect, \
             the other accounts kept the old password"
        );
        drop(fresh);
    }
}

/// Mail waiting on the pages' answers: "Forgot your password?" and sign-up answer before
/// their link is made (so every address takes the same time), and SIGKILL right after the
/// answer must not lose the mail. The test holds the locks the work needs (the account's
/// row, the new address's sign-up lock) so the kill surely comes first; after a restart
/// each mail arrives exactly once, its link works, and an unknown address still gets
/// nothing. Before requests were committed ahead of the answer, both mails were lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_right_after_the_answer_delays_reset_and_sign_up_mail_but_never_loses_it() {
    const KNOWN: &str = "known@example.com";
    const NEWCOMER: &str = "newcomer@example.com";
    const STRANGER: &str = "stranger@example.com";
    let smtp = SmtpSink::start().await;
    let database_url = process::fresh_database();
    let open = [("LATCHKEY_SIGN_UP", "open")];
    let mut service = ServiceProcess::start(&database_url, &smtp.url(), &open).await;
    let db = process::connect(&database_url).await;
    process::create_users(&db, &[KNOWN.to_owned()], PASSWORD).await;

    let mut holder = db.begin().await.expect("begin");
    sqlx::query("select id from users where email_key = $1 for update")
        .bind(KNOWN)
        .fetch_one(&mut *holder)
        .await
        .expect("lock the account");
    sqlx::query("select pg_advisory_xact_lock(hashtextextended('sign_up:' || $1, 0))")
        .bind(NEWCOMER)
        .execute(&mut *holder)
        .await
        .expect("lock the address");

    let browser = Browser::new(&service.base);
    assert_status(&browser.forgot_password(KNOWN).await, StatusCode::OK);
    assert_status(&browser.forgot_password(STRANGER).await, StatusCode::OK);
    let signed_up = browser
        .submit(
            "/sign-up",
            "/sign-up",
            &[
                ("email", NEWCOMER),
                ("new_password", NEW_PASSWORD),
                ("new_password_confirm", NEW_PASSWORD),
            ],
        )
        .await;
    assert_status(&signed_up, StatusCode::OK);

    // Both works are in flight, each waiting on a lock the test holds.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (waiting,): (i64,) = sqlx::query_as(
            "select count(*) from pg_stat_activity
             where datname = current_database() and wait_event_type = 'Lock'",
        )
        .fetch_one(&db)
        .await
        .expect("pg_locks");
        if waiting >= 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the mail work never reached the held locks ({waiting} waiting)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    service.kill();
    holder.rollback().await.expect("release the locks");

    // Nothing went out from the killed instance, and the two requests are still there (the
    // stranger's was done: it had nothing to wait for, and nothing to send).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(smtp.count(), 0, "mail sent by a killed instance");
    let (waiting,): (i64,) = sqlx::query_as("select count(*) from mail_requests")
        .fetch_one(&db)
        .await
        .expect("mail requests");
    assert_eq!(waiting, 2, "the answered requests must outlive the process");

    let service = ServiceProcess::start(&database_url, &smtp.url(), &open).await;
    let mails = smtp.wait_for(2, Duration::from_secs(30)).await;
    assert_eq!(mails.len(), 2, "both mails after the restart");
    // Settled: nothing waits, and nobody got a second mail.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (left,): (i64,) = sqlx::query_as("select count(*) from mail_requests")
            .fetch_one(&db)
            .await
            .expect("mail requests");
        if left == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{left} requests left"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(smtp.count_to(KNOWN), 1);
    assert_eq!(smtp.count_to(NEWCOMER), 1);
    assert_eq!(smtp.count_to(STRANGER), 0);

    let browser = Browser::new(&service.base);
    for (address, page) in [(KNOWN, "/reset-password"), (NEWCOMER, "/sign-up/confirm")] {
        let link = smtp.messages_to(address)[0].first_link().expect("a link");
        let (_, query) = link.split_once('?').expect("a token");
        let opened = browser.get(&format!("{page}?{query}")).await;
        assert_status(&opened, StatusCode::OK);
        let body = opened.text().await.expect("page");
        assert!(
            body.contains("<form"),
            "{address}'s link shows no form: {body}"
        );
    }
}
