//! The account limits under concurrency, attacked as an attacker would: every request of
//! a burst written at once (tests/support/src/burst.rs), spread over two instances on one database
//! and several source addresses, several rounds each — a race that loses once in ten is
//! still a race.

use latchkey::domain::token::ResetToken;
use reqwest::StatusCode;

use crate::burst::{self, RawRequest, RawResponse};
use crate::helpers::*;
use crate::two_factor::{code_at, enabled};

const ROUNDS: usize = 3;
/// The default `[throttle] free_failures`: attempts an address gets before it waits.
const FREE_FAILURES: i64 = 5;
const SOURCES: usize = 4;

/// `n` requests, alternately to each instance and from `SOURCES` source addresses;
/// `make(i, base)` writes the i-th for the instance at `base`.
fn spread(bases: [&str; 2], n: usize, make: impl Fn(usize, &str) -> Vec<u8>) -> Vec<RawRequest> {
    (0..n)
        .map(|i| {
            let base = bases[i % 2];
            RawRequest {
                source: burst::source(i, SOURCES),
                target: burst::target(base),
                bytes: make(i, base),
            }
        })
        .collect()
}

fn with_status(answers: &[RawResponse], status: u16) -> usize {
    answers.iter().filter(|a| a.status == status).count()
}

/// Failed attempts the address has on record (each one a password or code that was
/// checked and wrong).
async fn failures_on_record(app: &TestApp, email: &str) -> i64 {
    let row: Option<(i32,)> =
        sqlx::query_as("select failures from login_throttle where email_key = lower($1)")
            .bind(email)
            .fetch_optional(&app.pool)
            .await
            .expect("throttle row");
    row.map_or(0, |(n,)| i64::from(n))
}

/// `sign_in_failed` audit events for the address (with `detail`, if given): one per
/// password or code that was checked and wrong.
async fn audited_failures(app: &TestApp, email: &str, detail: Option<&str>) -> i64 {
    let (n,): (i64,) = sqlx::query_as(
        "select count(*) from audit_events
         where kind = 'sign_in_failed' and lower(email) = lower($1)
           and ($2::text is null or detail = $2)",
    )
    .bind(email)
    .bind(detail)
    .fetch_one(&app.pool)
    .await
    .expect("audit count");
    n
}

/// Six-digit guesses that are none of the codes live around now, then `last`.
fn guesses(secret: &[u8], n: usize, last: String) -> Vec<String> {
    let live: Vec<String> = (-2..=2).map(|step| code_at(secret, step)).collect();
    (0u64..)
        .map(|k| format!("{:06}", (k * 7919 + 13) % 1_000_000))
        .filter(|c| !live.contains(c))
        .take(n - 1)
        .chain([last])
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_wrong_passwords_at_once_on_two_instances_get_at_most_five_verified() {
    let app = TestApp::spawn().await;
    let other = app.spawn_sibling().await;
    for round in 0..ROUNDS {
        let email = format!("alice{round}@example.com");
        app.create_user(&email, PASSWORD).await;
        let browser = app.browser();
        let token = browser.csrf_token("/sign-in").await;
        let cookie = burst::cookie_header(&browser, &app.base);
        let requests = spread([&app.base, &other.base], 30, |i, base| {
            let wrong = format!("not the password, guess {i}");
            let fields = [
                ("email", email.as_str()),
                ("password", wrong.as_str()),
                ("csrf_token", token.as_str()),
            ];
            burst::form_post(base, "/sign-in", &cookie, &fields)
        });
        let answers = burst::burst(requests).await;
        let tally = burst::tally(&answers);
        let verified = audited_failures(&app, &email, None).await;
        eprintln!("round {round}: {verified}/30 verified, answers {tally:?}");
        assert!(
            verified <= FREE_FAILURES,
            "round {round}: {verified}/30 verified; {tally:?}"
        );
        assert_eq!(
            with_status(&answers, 422) + with_status(&answers, 429),
            30,
            "round {round}: {tally:?}"
        );
        assert!(
            with_status(&answers, 422) as i64 <= FREE_FAILURES,
            "{tally:?}"
        );
        assert!(
            answers
                .iter()
                .filter(|a| a.status == 429)
                .all(|a| a.header("retry-after").is_some_and(|v| v != "0")),
            "every 429 says when to come back"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_codes_at_once_at_the_second_step_get_at_most_five_checked() {
    let app = TestApp::spawn().await;
    let other = app.spawn_sibling().await;
    for round in 0..ROUNDS {
        let email = format!("alice{round}@example.com");
        let (_setup, secret, _codes) = enabled(&app, &email).await;
        // One half-signed-in session, its cookie sent to both instances.
        let browser = app.browser();
        let signed_in = browser.sign_in(&email, PASSWORD).await;
        assert_status(&signed_in, StatusCode::SEE_OTHER);
        assert_eq!(location(&signed_in), "/sign-in/two-factor");
        let token = browser.csrf_token("/sign-in/two-factor").await;
        let cookie = burst::cookie_header(&browser, &app.base);
        let codes = guesses(&secret, 300, code_at(&secret, 1));
        let requests = spread([&app.base, &other.base], codes.len(), |i, base| {
            let fields = [
                ("totp_code", codes[i].as_str()),
                ("csrf_token", token.as_str()),
            ];
            burst::form_post(base, "/sign-in/two-factor", &cookie, &fields)
        });
        let answers = burst::burst(requests).await;
        let tally = burst::tally(&answers);
        let checked = audited_failures(&app, &email, Some("wrong two-factor code")).await;
        let answered = answers.iter().filter(|a| a.status != 429).count();
        eprintln!(
            "round {round}: {checked} wrong codes checked, {answered} answers not 429, {tally:?}"
        );
        assert_eq!(with_status(&answers, 0), 0, "every request was answered");
        // The right code is one of the 300; when the order the server takes them in puts
        // it among the five it checks (the allowance, 5 in 300), the step completes and
        // clears the count, and the wrong codes still in flight on that session may be
        // checked under a fresh count: the attacker is in already, so they buy nothing.
        // Every other round: five checked, everything else 429.
        let got_in = with_status(&answers, 303) as i64;
        let allowed = FREE_FAILURES * (1 + got_in);
        assert!(got_in <= 1, "a code works once: {tally:?}");
        assert!(checked <= allowed, "round {round}: {checked} checked");
        assert!(
            answered as i64 <= allowed,
            "round {round}: {answered} answers were not 429: {tally:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_wrong_current_passwords_at_once_get_at_most_five_verified() {
    let app = TestApp::spawn().await;
    let other = app.spawn_sibling().await;
    for round in 0..ROUNDS {
        let email = format!("alice{round}@example.com");
        app.create_user(&email, PASSWORD).await;
        let browser = app.browser();
        assert_status(
            &browser.sign_in(&email, PASSWORD).await,
            StatusCode::SEE_OTHER,
        );
        let token = browser.csrf_token("/settings/security").await;
        let cookie = burst::cookie_header(&browser, &app.base);
        let requests = spread([&app.base, &other.base], 30, |i, base| {
            let wrong = format!("not the password, guess {i}");
            let fields = [
                ("current_password", wrong.as_str()),
                ("new_password", NEW_PASSWORD),
                ("new_password_confirm", NEW_PASSWORD),
                ("csrf_token", token.as_str()),
            ];
            burst::form_post(base, "/settings/security/password", &cookie, &fields)
        });
        let answers = burst::burst(requests).await;
        let tally = burst::tally(&answers);
        assert_eq!(with_status(&answers, 422), 30, "{tally:?}");
        assert_held_to_the_allowance(
            &app,
            &email,
            "wrong current password on change password",
            round,
            &tally,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_wrong_codes_at_once_on_the_reset_form_get_at_most_five_checked() {
    let app = TestApp::spawn().await;
    let other = app.spawn_sibling().await;
    for round in 0..ROUNDS {
        let email = format!("alice{round}@example.com");
        let (_setup, secret, _codes) = enabled(&app, &email).await;
        let browser = app.browser();
        let asked = browser.forgot_password(email.as_str()).await;
        assert_status(&asked, StatusCode::OK);
        // The first mail said two-factor was turned on; the second carries the link.
        let mails = app.mails_to(&email, 2).await;
        let link = mails
            .iter()
            .find_map(|m| m.first_link().filter(|l| l.contains("token=")))
            .expect("a reset link");
        let reset_token = link.split("token=").nth(1).expect("token").to_owned();
        let csrf = browser
            .csrf_token(&format!("/reset-password?token={reset_token}"))
            .await;
        let cookie = burst::cookie_header(&browser, &app.base);
        let codes = guesses(&secret, 30, "000000".into());
        let requests = spread([&app.base, &other.base], codes.len(), |i, base| {
            let fields = [
                ("token", reset_token.as_str()),
                ("new_password", NEW_PASSWORD),
                ("new_password_confirm", NEW_PASSWORD),
                ("totp_code", codes[i].as_str()),
                ("csrf_token", csrf.as_str()),
            ];
            burst::form_post(base, "/reset-password", &cookie, &fields)
        });
        let answers = burst::burst(requests).await;
        let tally = burst::tally(&answers);
        assert_eq!(with_status(&answers, 0), 0, "every request was answered");
        assert_held_to_the_allowance(
            &app,
            &email,
            "wrong two-factor code on the reset form",
            round,
            &tally,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_wrong_codes_at_once_on_disable_get_at_most_five_checked() {
    let app = TestApp::spawn().await;
    let other = app.spawn_sibling().await;
    for round in 0..ROUNDS {
        let email = format!("alice{round}@example.com");
        let (browser, secret, _codes) = enabled(&app, &email).await;
        let csrf = browser.csrf_token("/settings/security/two-factor").await;
        let cookie = burst::cookie_header(&browser, &app.base);
        let codes = guesses(&secret, 30, "000000".into());
        let requests = spread([&app.base, &other.base], codes.len(), |i, base| {
            let fields = [
                ("current_password", PASSWORD),
                ("totp_code", codes[i].as_str()),
                ("csrf_token", csrf.as_str()),
            ];
            burst::form_post(
                base,
                "/settings/security/two-factor/disable",
                &cookie,
                &fields,
            )
        });
        let answers = burst::burst(requests).await;
        let tally = burst::tally(&answers);
        // The password is right every time, so every failure on record is a checked code.
        let checked = failures_on_record(&app, &email).await;
        eprintln!("round {round}: {checked}/30 codes checked, {tally:?}");
        assert_eq!(with_status(&answers, 422), 30, "{tally:?}");
        assert!(
            checked <= FREE_FAILURES,
            "round {round}: {checked}/30 checked"
        );
        let (still_on,): (i64,) = sqlx::query_as(
            "select count(*) from users
             where lower(email) = lower($1) and totp_enabled_at is not null",
        )
        .bind(&email)
        .fetch_one(&app.pool)
        .await
        .expect("count");
        assert_eq!(still_on, 1, "two-factor stays on");
    }
}

/// Of 30 wrong answers sent at once, at most the free allowance was checked (audited with
/// `detail`) and is on the address's record.
async fn assert_held_to_the_allowance(
    app: &TestApp,
    email: &str,
    detail: &str,
    round: usize,
    tally: &[(u16, usize)],
) {
    let checked = audited_failures(app, email, Some(detail)).await;
    let on_record = failures_on_record(app, email).await;
    eprintln!("round {round}: {checked}/30 checked ({on_record} on record), {tally:?}");
    assert!(
        checked <= FREE_FAILURES,
        "round {round}: {checked}/30 checked"
    );
    assert!(
        on_record <= FREE_FAILURES,
        "round {round}: {on_record} on record"
    );
}

/// The mail `email` got once the mail has settled (`TestApp::settled_mail`).
async fn settled_mail(app: &TestApp, email: &str) -> Vec<crate::smtp_sink::ReceivedMail> {
    app.settled_mail(&[email]).await;
    app.smtp.messages_to(email)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reset_requests_at_once_send_at_most_three_mails_and_leave_one_live_link() {
    let app = TestApp::spawn().await;
    let other = app.spawn_sibling().await;
    for round in 0..ROUNDS {
        let email = format!("alice{round}@example.com");
        app.create_user(&email, PASSWORD).await;
        let browser = app.browser();
        let csrf = browser.csrf_token("/forgot-password").await;
        let cookie = burst::cookie_header(&browser, &app.base);
        let requests = spread([&app.base, &other.base], 20, |_, base| {
            let fields = [("email", email.as_str()), ("csrf_token", csrf.as_str())];
            burst::form_post(base, "/forgot-password", &cookie, &fields)
        });
        let answers = burst::burst(requests).await;
        assert_eq!(
            with_status(&answers, 200),
            20,
            "{:?}",
            burst::tally(&answers)
        );

        let mails = settled_mail(&app, &email).await;
        let (live,): (i64,) = sqlx::query_as(
            "select count(*) from reset_tokens r join users u on u.id = r.user_id
             where lower(u.email) = lower($1) and r.used_at is null and r.expires_at > now()",
        )
        .bind(&email)
        .fetch_one(&app.pool)
        .await
        .expect("count");
        let (newest,): (Vec<u8>,) = sqlx::query_as(
            "select r.token_hash from reset_tokens r join users u on u.id = r.user_id
             where lower(u.email) = lower($1) order by r.id desc limit 1",
        )
        .bind(&email)
        .fetch_one(&app.pool)
        .await
        .expect("newest token");
        let mut opened = Vec::new();
        for mail in &mails {
            let link = mail.first_link().expect("a link");
            let token = link.split("token=").nth(1).expect("token").to_owned();
            let status = browser
                .get(&format!("/reset-password?token={token}"))
                .await
                .status();
            let digest = ResetToken::parse(&token).expect("token").digest();
            opened.push((status, digest == newest));
        }
        let opens = opened.iter().filter(|(s, _)| *s == StatusCode::OK).count();
        eprintln!(
            "round {round}: {} mails, {live} live links, {opens} mailed links open",
            mails.len()
        );
        assert!(mails.len() <= 3, "round {round}: {} mails", mails.len());
        assert_eq!(live, 1, "round {round}: {live} live links");
        for (status, is_newest) in &opened {
            if *is_newest {
                assert_eq!(*status, StatusCode::OK, "the newest link opens the form");
            } else {
                assert!(
                    [StatusCode::BAD_REQUEST, StatusCode::GONE].contains(status),
                    "an older link answered {status}"
                );
            }
        }
        assert_eq!(opens, 1, "round {round}: {opened:?}");
    }
}

/// "Check your email" promises one mail per answered request: each request's row is taken
/// by exactly one worker (the answering instance's task, or either instance's resume
/// loop), and turned into one mail. 20 addresses with accounts, one request each, all at
/// once on two instances: exactly one mail each, and no request left waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reset_requests_for_twenty_accounts_at_once_send_exactly_one_mail_each() {
    let app = TestApp::spawn().await;
    let other = app.spawn_sibling().await;
    for round in 0..ROUNDS {
        let emails: Vec<String> = (0..20)
            .map(|i| format!("r{round}-{i}@example.com"))
            .collect();
        for email in &emails {
            app.create_user(email, PASSWORD).await;
        }
        let browser = app.browser();
        let csrf = browser.csrf_token("/forgot-password").await;
        let cookie = burst::cookie_header(&browser, &app.base);
        let requests = spread([&app.base, &other.base], 20, |i, base| {
            let fields = [("email", emails[i].as_str()), ("csrf_token", csrf.as_str())];
            burst::form_post(base, "/forgot-password", &cookie, &fields)
        });
        let answers = burst::burst(requests).await;
        assert_eq!(
            with_status(&answers, 200),
            20,
            "{:?}",
            burst::tally(&answers)
        );
        let emails: Vec<&str> = emails.iter().map(String::as_str).collect();
        let got = app.settled_mail(&emails).await;
        for (email, got) in emails.iter().zip(got) {
            assert_eq!(got, 1, "round {round}: {email} got {got} mails");
        }
        assert_eq!(
            app.count("select count(*) from mail_requests").await,
            0,
            "round {round}: requests left waiting"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_reset_lets_the_owner_in_at_once_after_someone_else_locked_the_account() {
    let app = TestApp::spawn().await;
    let other = app.spawn_sibling().await;
    for round in 0..ROUNDS {
        let email = format!("alice{round}@example.com");
        app.create_user(&email, PASSWORD).await;
        // Someone else guesses on the other instance until the account waits.
        let attacker = Browser::new(&other.base);
        let mut statuses = Vec::new();
        for _ in 0..FREE_FAILURES + 1 {
            let guess = attacker.sign_in(&email, "not the password at all").await;
            statuses.push(guess.status());
            if guess.status() == StatusCode::TOO_MANY_REQUESTS {
                break;
            }
        }
        assert_eq!(
            statuses.last(),
            Some(&StatusCode::TOO_MANY_REQUESTS),
            "{statuses:?}"
        );
        // The owner resets through the mailed link (redeemed on the other instance)...
        let owner = app.browser();
        let token = app.request_reset_link(&owner, &email, 1).await;
        let done = Browser::new(&other.base)
            .reset_password(&token, NEW_PASSWORD, NEW_PASSWORD)
            .await;
        assert_status(&done, StatusCode::SEE_OTHER);
        // ...and the new password works at once.
        let signed_in = owner.sign_in(&email, NEW_PASSWORD).await;
        eprintln!(
            "round {round}: sign-in after the reset: {}",
            signed_in.status()
        );
        assert_status(&signed_in, StatusCode::SEE_OTHER);
        assert_eq!(location(&signed_in), "/");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_turned_away_by_a_full_hashing_queue_do_not_count_as_failures() {
    let app = TestApp::spawn_with(|c| {
        // One slow hashing thread per instance and room for one waiting job, so most of
        // the burst answers 503 unchecked; no delays, so every attempt is reserved.
        c.argon2.threads = 1;
        c.argon2.queue = 1;
        c.argon2.iterations = 50;
        c.throttle.free_failures = 100;
    })
    .await;
    let other = app.spawn_sibling().await;
    let email = "alice@example.com";
    app.create_user(email, PASSWORD).await;
    let browser = app.browser();
    let token = browser.csrf_token("/sign-in").await;
    let cookie = burst::cookie_header(&browser, &app.base);
    let requests = spread([&app.base, &other.base], 20, |i, base| {
        let wrong = format!("not the password, guess {i}");
        let fields = [
            ("email", email),
            ("password", wrong.as_str()),
            ("csrf_token", token.as_str()),
        ];
        burst::form_post(base, "/sign-in", &cookie, &fields)
    });
    let answers = burst::burst(requests).await;
    let tally = burst::tally(&answers);
    let (checked, busy) = (with_status(&answers, 422), with_status(&answers, 503));
    assert_eq!(checked + busy, 20, "{tally:?}");
    assert!(busy > 0, "the queue was full for some: {tally:?}");
    assert_eq!(
        failures_on_record(&app, email).await,
        checked as i64,
        "only the checked attempts count: {tally:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twelve_right_passwords_at_once_on_two_instances_all_sign_in() {
    let app = TestApp::spawn().await;
    let other = app.spawn_sibling().await;
    for round in 0..ROUNDS {
        let email = format!("alice{round}@example.com");
        app.create_user(&email, PASSWORD).await;
        // Twelve devices of the owner: more than the free failures, all right at once.
        let mut requests = Vec::new();
        for i in 0..12 {
            let base = [&app.base, &other.base][i % 2];
            let browser = Browser::new(base);
            let token = browser.csrf_token("/sign-in").await;
            let cookie = burst::cookie_header(&browser, base);
            let fields = [
                ("email", email.as_str()),
                ("password", PASSWORD),
                ("csrf_token", token.as_str()),
            ];
            requests.push(RawRequest {
                source: burst::source(i, SOURCES),
                target: burst::target(base),
                bytes: burst::form_post(base, "/sign-in", &cookie, &fields),
            });
        }
        let answers = burst::burst(requests).await;
        let tally = burst::tally(&answers);
        eprintln!("round {round}: {tally:?}");
        assert_eq!(tally, vec![(303, 12)], "round {round}");
        assert_eq!(failures_on_record(&app, &email).await, 0);
    }
}
