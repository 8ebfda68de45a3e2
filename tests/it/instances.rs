//! Two `latchkey serve` processes on one database, as behind a load balancer.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::StatusCode;

use crate::helpers::*;
use crate::process::{self, ServiceProcess};
use crate::smtp_sink::SmtpSink;

/// A link made by one instance, pointed at the other (a load balancer would pick either).
fn on(base: &str, link: &str) -> String {
    let path = &link[link.find("/reset-password").expect("reset link")..];
    format!("{base}{path}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_sessions_links_throttling_and_the_outbox() {
    let database_url = process::fresh_database();
    two_instances_share_everything(&database_url, &database_url, &[]).await;
}

/// The checks above, with the instances on `service_url` (e.g. through PgBouncer) plus
/// `extra` environment, and the test's own queries on `direct_url` (the same database).
/// Returns the two instances' logs.
pub async fn two_instances_share_everything(
    service_url: &str,
    direct_url: &str,
    extra: &[(&str, &str)],
) -> [String; 2] {
    let smtp = SmtpSink::start().await;
    if service_url != direct_url {
        // Through a pooler, migrations go straight to Postgres (docs/scale.md); the
        // caller made the database.
        let db = process::connect(direct_url).await;
        latchkey::db::migrate(&db).await.expect("migrate directly");
        db.close().await;
    }
    // At info level each instance logs "mail sent" per message it delivered.
    let mut env = vec![("LATCHKEY_LOG", "info")];
    env.extend_from_slice(extra);
    let a = ServiceProcess::start(service_url, &smtp.url(), &env).await;
    let b = ServiceProcess::start(service_url, &smtp.url(), &env).await;
    let db = process::connect(direct_url).await;
    let emails: Vec<String> = (0..20).map(|i| format!("user{i}@example.com")).collect();
    process::create_users(&db, &emails, PASSWORD).await;
    process::create_users(
        &db,
        &["alice@example.com".into(), "mallory@example.com".into()],
        PASSWORD,
    )
    .await;

    // Every account signs in at once, half on each instance, and each session is its
    // own account's, on both instances.
    concurrent_sign_ins_land_in_their_own_accounts(&[&a.base, &b.base], &emails).await;

    // A session made on A works on B, and signing out on B ends it on A.
    let on_a = Browser::new(&a.base);
    assert_status(
        &on_a.sign_in("alice@example.com", PASSWORD).await,
        StatusCode::SEE_OTHER,
    );
    let cookie = on_a.session_cookie().expect("session");
    let on_b = Browser::new(&b.base);
    on_b.jar.add_cookie_str(
        &format!("latchkey_session={cookie}; Path=/"),
        &b.base.parse().expect("url"),
    );
    let home = on_b.get("/").await;
    assert_status(&home, StatusCode::OK);
    assert!(
        home.text()
            .await
            .expect("body")
            .contains("alice@example.com")
    );
    assert_status(&on_b.sign_out().await, StatusCode::SEE_OTHER);
    assert_status(&on_a.get("/").await, StatusCode::SEE_OTHER);

    // A link issued by A is redeemed on B; the new password works on A.
    let asked = on_a.forgot_password("alice@example.com").await;
    assert_status(&asked, StatusCode::OK);
    let mails = smtp.wait_for(1, Duration::from_secs(60)).await;
    assert_eq!(mails.len(), 1);
    let link = on(&b.base, &mails[0].first_link().expect("link"));
    assert!(
        mails[0]
            .first_link()
            .expect("link")
            .starts_with(&format!("{}/", a.base)),
        "issued by A"
    );
    let token = link.split("token=").nth(1).expect("token").to_owned();
    let reset = Browser::new(&b.base);
    let done = reset
        .reset_password(&token, NEW_PASSWORD, NEW_PASSWORD)
        .await;
    assert_status(&done, StatusCode::SEE_OTHER);
    assert_status(
        &Browser::new(&a.base)
            .sign_in("alice@example.com", NEW_PASSWORD)
            .await,
        StatusCode::SEE_OTHER,
    );
    // ...and it was used once: A refuses it now.
    let again = Browser::new(&a.base)
        .get(&format!("/reset-password?token={token}"))
        .await;
    assert_ne!(again.status(), StatusCode::OK);

    // The per-account throttle counts failures on both: 3 on A + 2 on B reach the five
    // free failures, so the sixth attempt, even with the right password, is held back
    // on either instance.
    for (instance, attempt) in [(&a, 1), (&a, 2), (&a, 3), (&b, 4), (&b, 5)] {
        let wrong = Browser::new(&instance.base)
            .sign_in("mallory@example.com", "not the password at all")
            .await;
        assert_eq!(
            wrong.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "failure {attempt}"
        );
    }
    for instance in [&b, &a] {
        let right = Browser::new(&instance.base)
            .sign_in("mallory@example.com", PASSWORD)
            .await;
        assert_status(&right, StatusCode::TOO_MANY_REQUESTS);
    }

    // Both outbox workers run; every mail is delivered exactly once: 20 reset requests
    // split over the two instances, plus 40 messages queued in one transaction so that
    // both workers find them due at the same moment.
    for (i, email) in emails.iter().enumerate() {
        let instance = if i % 2 == 0 { &a } else { &b };
        let asked = Browser::new(&instance.base).forgot_password(email).await;
        assert_status(&asked, StatusCode::OK);
    }
    let mut tx = db.begin().await.expect("tx");
    for i in 0..40 {
        sqlx::query(
            "insert into outbox (to_address, subject, text_body) values ($1, $2, 'queued by the test')",
        )
        .bind("bulk@example.com")
        .bind(format!("bulk {i}"))
        .execute(&mut *tx)
        .await
        .expect("queue");
    }
    tx.commit().await.expect("commit");
    // 1 (alice's reset) + 1 (alice's password-changed notice) + 20 + 40.
    let expected = 62;
    let mails = smtp.wait_for(expected, Duration::from_secs(120)).await;
    assert_eq!(mails.len(), expected, "mail delivered in time");
    // Give a would-be duplicate time to show up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mails = smtp.messages();
    let mut seen: HashMap<(String, String), usize> = HashMap::new();
    for mail in &mails {
        let key = (
            mail.to.join(","),
            mail.subject().unwrap_or_default().to_owned(),
        );
        *seen.entry(key).or_default() += 1;
    }
    let duplicates: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(duplicates.is_empty(), "sent twice: {duplicates:?}");
    assert_eq!(mails.len(), expected, "no mail twice, none lost");
    for email in &emails {
        assert_eq!(smtp.messages_to(email).len(), 1, "{email}");
    }
    let (unsent,): (i64,) = sqlx::query_as("select count(*) from outbox where status <> 'sent'")
        .fetch_one(&db)
        .await
        .expect("outbox");
    assert_eq!(unsent, 0);
    // Both workers took part, and between them sent each message once.
    let sent_by = |log: String| log.lines().filter(|l| l.contains("mail sent")).count();
    let (by_a, by_b) = (sent_by(a.log()), sent_by(b.log()));
    println!("outbox: {by_a} mails sent by A, {by_b} by B, {expected} expected");
    assert!(by_a > 0 && by_b > 0, "A sent {by_a}, B sent {by_b}");
    assert_eq!(by_a + by_b, expected);
    assert!(!a.log().contains("panicked"), "{}", a.log());
    assert!(!b.log().contains("panicked"), "{}", b.log());
    [a.log(), b.log()]
}

/// Signs every account in at the same moment (`bases` in turn), then asks, many at once
/// and on every instance, whose each session is: each must be its own account's. Behind
/// a pooler that let statements cross between clients this is where rows would mix.
async fn concurrent_sign_ins_land_in_their_own_accounts(bases: &[&str], emails: &[String]) {
    let sign_ins = emails.iter().enumerate().map(|(i, email)| {
        let base = bases[i % bases.len()].to_owned();
        let email = email.clone();
        tokio::spawn(async move {
            // The hashing queue answers a busy 503 past its capacity: nothing happened,
            // try again.
            for _ in 0..100 {
                let browser = Browser::new(&base);
                let response = browser.sign_in(&email, PASSWORD).await;
                match response.status() {
                    StatusCode::SEE_OTHER => return (email, browser.session_cookie()),
                    StatusCode::SERVICE_UNAVAILABLE => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    other => panic!("{email}: sign-in answered {other}"),
                }
            }
            panic!("{email}: the hashing queue stayed busy");
        })
    });
    let mut sessions = Vec::new();
    for signed_in in futures_join(sign_ins.collect()).await {
        let (email, cookie) = signed_in;
        sessions.push((
            email.clone(),
            cookie.unwrap_or_else(|| panic!("{email}: no cookie")),
        ));
    }
    let checks = sessions.iter().flat_map(|(email, cookie)| {
        bases.iter().flat_map(move |base| {
            (0..3).map(move |_| {
                let (email, cookie, base) = (email.clone(), cookie.clone(), base.to_string());
                tokio::spawn(async move {
                    let reply = reqwest::Client::new()
                        .get(format!("{base}/api/whoami"))
                        .header("cookie", format!("latchkey_session={cookie}"))
                        .send()
                        .await
                        .expect("whoami");
                    let status = reply.status();
                    let body = reply.text().await.unwrap_or_default();
                    (email, status, body)
                })
            })
        })
    });
    let mut wrong = Vec::new();
    for (email, status, body) in futures_join(checks.collect()).await {
        let mine = body.contains(&format!("\"email\":\"{email}\""));
        if status != StatusCode::OK || !mine {
            wrong.push(format!("{email}: {status} {body}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "sessions that are not their own account's: {wrong:#?}"
    );
}

/// Awaits every task, in order.
async fn futures_join<T>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut done = Vec::with_capacity(tasks.len());
    for task in tasks {
        done.push(task.await.expect("task"));
    }
    done
}
