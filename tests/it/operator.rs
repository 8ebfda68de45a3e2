//! The operator's `latchkey user …` commands, run as the real binary against the test's
//! database, and what a disabled account sees over HTTP.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use reqwest::StatusCode;

use crate::burst::{self, RawRequest};
use crate::helpers::*;

const SOURCES: usize = 8;

/// Runs `latchkey` with `args` on the app's database, links built on the app's address.
fn latchkey(app: &TestApp, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .args(args)
        .env("DATABASE_URL", &app.database_url)
        .env("LATCHKEY_PUBLIC_URL", &app.base)
        .env("LATCHKEY_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run latchkey")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn succeeded(out: &Output) {
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        stdout(out),
        stderr(out)
    );
}

/// The Security page as the signed-in owner sees it.
async fn security_page(browser: &Browser) -> String {
    let page = browser.get("/settings/security").await;
    assert_status(&page, StatusCode::OK);
    page.text().await.expect("body")
}

/// Whether the browser's session still signs it in (the home page, not a redirect).
async fn signed_in(browser: &Browser) -> bool {
    let home = browser.get("/").await;
    match home.status() {
        StatusCode::OK => true,
        StatusCode::SEE_OTHER => {
            assert!(
                location(&home).starts_with("/sign-in"),
                "{}",
                location(&home)
            );
            false
        }
        other => panic!("home page answered {other}"),
    }
}

#[tokio::test]
async fn every_command_refuses_an_unknown_address_and_bad_input() {
    let app = TestApp::spawn().await;
    app.create_user("alice@example.com", PASSWORD).await;
    for command in ["disable", "enable", "sign-out", "reset-link"] {
        let out = latchkey(&app, &["user", command, "--email", "nobody@example.com"]);
        assert!(!out.status.success(), "{command}: {}", stdout(&out));
        assert!(
            stderr(&out).contains("no account has the address nobody@example.com"),
            "{command}: {}",
            stderr(&out)
        );
        let bad = latchkey(&app, &["user", command, "--email", "not an address"]);
        assert!(!bad.status.success(), "{command}");
        assert!(!stderr(&bad).is_empty(), "{command}: a message");
        let missing = latchkey(&app, &["user", command]);
        assert!(!missing.status.success(), "{command} without --email");
    }
    // Nothing changed, nothing audited.
    assert_eq!(
        app.count("select count(*) from users where disabled_at is not null")
            .await,
        0
    );
    assert_eq!(app.count("select count(*) from reset_tokens").await, 0);
    assert_eq!(app.count("select count(*) from audit_events").await, 0);
}

#[tokio::test]
async fn user_list_shows_every_account_as_a_table_and_as_json() {
    let app = TestApp::spawn().await;
    app.create_user("alice@example.com", PASSWORD).await;
    app.create_user("bob@example.com", PASSWORD).await;
    let browser = app.browser();
    assert_status(
        &browser.sign_in("alice@example.com", PASSWORD).await,
        StatusCode::SEE_OTHER,
    );
    succeeded(&latchkey(
        &app,
        &["user", "disable", "--email", "bob@example.com"],
    ));

    let table = latchkey(&app, &["user", "list"]);
    succeeded(&table);
    let table = stdout(&table);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    for heading in [
        "ID",
        "EMAIL",
        "CREATED",
        "LAST SIGN-IN",
        "TWO-FACTOR",
        "DISABLED",
    ] {
        assert!(lines[0].contains(heading), "{table}");
    }
    assert!(
        lines[1].contains("alice@example.com") && lines[1].ends_with("no"),
        "{table}"
    );
    assert!(
        lines[2].contains("bob@example.com") && lines[2].contains("never"),
        "{table}"
    );
    assert!(!lines[2].ends_with("no"), "bob is disabled: {table}");

    let json = latchkey(&app, &["user", "list", "--json"]);
    succeeded(&json);
    let list: serde_json::Value = serde_json::from_str(&stdout(&json)).expect("JSON");
    let list = list.as_array().expect("an array");
    assert_eq!(list.len(), 2);
    let keys = [
        "id",
        "email",
        "created_at",
        "last_sign_in_at",
        "two_factor",
        "disabled",
        "disabled_at",
    ];
    for account in list {
        let object = account.as_object().expect("objects");
        assert_eq!(object.len(), keys.len(), "{account}");
        for key in keys {
            assert!(object.contains_key(key), "{key} in {account}");
        }
    }
    assert_eq!(list[0]["email"], "alice@example.com");
    assert!(list[0]["last_sign_in_at"].is_string());
    assert_eq!(list[0]["disabled"], false);
    assert_eq!(list[0]["two_factor"], false);
    assert_eq!(list[1]["email"], "bob@example.com");
    assert!(list[1]["last_sign_in_at"].is_null());
    assert_eq!(list[1]["disabled"], true);
    assert!(list[1]["disabled_at"].is_string());
}

#[tokio::test]
async fn disable_ends_a_live_session_and_only_the_right_password_learns_why() {
    let app = TestApp::spawn().await;
    app.create_user("alice@example.com", PASSWORD).await;
    let browser = app.browser();
    assert_status(
        &browser.sign_in("alice@example.com", PASSWORD).await,
        StatusCode::SEE_OTHER,
    );
    assert!(signed_in(&browser).await);

    let out = latchkey(&app, &["user", "disable", "--email", "alice@example.com"]);
    succeeded(&out);
    assert!(
        stdout(&out).contains("disabled alice@example.com") && stdout(&out).contains("1 session"),
        "{}",
        stdout(&out)
    );
    assert!(!signed_in(&browser).await, "the live session ended");
    assert_eq!(
        app.count("select count(*) from sessions where user_id is not null")
            .await,
        0
    );

    let other = app.browser();
    let right = other.sign_in("alice@example.com", PASSWORD).await;
    assert_status(&right, StatusCode::FORBIDDEN);
    let body = right.text().await.expect("body");
    assert!(body.contains("This account is disabled"), "{body}");
    assert!(body.contains("administrator"), "{body}");
    assert!(!signed_in(&other).await);

    let wrong = other
        .sign_in("alice@example.com", "not the password at all")
        .await;
    assert_status(&wrong, StatusCode::UNPROCESSABLE_ENTITY);
    let body = wrong.text().await.expect("body");
    assert!(body.contains("Incorrect email or password"), "{body}");
    assert!(!body.contains("disabled"), "{body}");

    // Enabled again: sign-in works, the old session stays ended.
    succeeded(&latchkey(
        &app,
        &["user", "enable", "--email", "alice@example.com"],
    ));
    assert!(!signed_in(&browser).await);
    assert_status(
        &other.sign_in("alice@example.com", PASSWORD).await,
        StatusCode::SEE_OTHER,
    );
    assert!(signed_in(&other).await);
    let page = security_page(&other).await;
    assert!(
        page.contains("An administrator disabled this account"),
        "{page}"
    );
    assert!(
        page.contains("An administrator enabled this account again"),
        "{page}"
    );
}

#[tokio::test]
async fn sign_out_ends_every_session_and_the_owner_sees_it() {
    let app = TestApp::spawn().await;
    app.create_user("alice@example.com", PASSWORD).await;
    let (one, two) = (app.browser(), app.browser());
    for browser in [&one, &two] {
        assert_status(
            &browser.sign_in("alice@example.com", PASSWORD).await,
            StatusCode::SEE_OTHER,
        );
    }
    let out = latchkey(&app, &["user", "sign-out", "--email", "alice@example.com"]);
    succeeded(&out);
    assert!(
        stdout(&out).contains("2 sessions ended"),
        "{}",
        stdout(&out)
    );
    assert!(!signed_in(&one).await);
    assert!(!signed_in(&two).await);
    // Not disabled: the owner signs in again and reads what happened.
    assert_status(
        &one.sign_in("alice@example.com", PASSWORD).await,
        StatusCode::SEE_OTHER,
    );
    let page = security_page(&one).await;
    assert!(
        page.contains("An administrator signed out every session"),
        "{page}"
    );
}

#[tokio::test]
async fn a_printed_reset_link_works_once_and_voids_older_ones() {
    let app = TestApp::spawn().await;
    app.create_user("alice@example.com", PASSWORD).await;
    let first = latchkey(
        &app,
        &["user", "reset-link", "--email", "alice@example.com"],
    );
    succeeded(&first);
    let second = latchkey(
        &app,
        &["user", "reset-link", "--email", "alice@example.com"],
    );
    succeeded(&second);
    let prefix = format!("{}/reset-password?token=", app.base);
    let token_of = |out: &Output| {
        let link = stdout(out).trim().to_owned();
        assert!(link.starts_with(&prefix), "{link}");
        link[prefix.len()..].to_owned()
    };
    let (old, new) = (token_of(&first), token_of(&second));
    assert_ne!(old, new);
    // Only a digest is stored, and no mail went anywhere.
    assert_eq!(
        app.count("select count(*) from reset_tokens where used_at is null")
            .await,
        1
    );
    let stored: (Vec<u8>,) =
        sqlx::query_as("select token_hash from reset_tokens where used_at is null")
            .fetch_one(&app.pool)
            .await
            .expect("token");
    assert_ne!(stored.0, new.as_bytes());
    assert_eq!(app.smtp.count(), 0);

    let browser = app.browser();
    let opened = browser.get(&format!("/reset-password?token={new}")).await;
    assert_status(&opened, StatusCode::OK);
    let stale = browser
        .reset_password(&old, NEW_PASSWORD, NEW_PASSWORD)
        .await;
    assert_ne!(
        stale.status(),
        StatusCode::SEE_OTHER,
        "the older link is void"
    );
    let reset = browser
        .reset_password(&new, NEW_PASSWORD, NEW_PASSWORD)
        .await;
    assert_status(&reset, StatusCode::SEE_OTHER);
    let again = app
        .browser()
        .reset_password(
            &new,
            "yet another passphrase here",
            "yet another passphrase here",
        )
        .await;
    assert_ne!(again.status(), StatusCode::SEE_OTHER, "single use");
    assert_status(
        &browser.sign_in("alice@example.com", NEW_PASSWORD).await,
        StatusCode::SEE_OTHER,
    );
    let page = security_page(&browser).await;
    assert!(
        page.contains("An administrator created a reset link"),
        "{page}"
    );
}

#[tokio::test]
async fn a_disabled_account_gets_no_reset_mail_and_its_links_do_nothing() {
    let app = TestApp::spawn().await;
    app.create_user("alice@example.com", PASSWORD).await;
    let link = latchkey(
        &app,
        &["user", "reset-link", "--email", "alice@example.com"],
    );
    succeeded(&link);
    let token = stdout(&link)
        .trim()
        .rsplit_once("token=")
        .map(|(_, t)| t.to_owned())
        .expect("a token");
    succeeded(&latchkey(
        &app,
        &["user", "disable", "--email", "alice@example.com"],
    ));

    let browser = app.browser();
    let forgot = browser.forgot_password("alice@example.com").await;
    assert_status(&forgot, StatusCode::OK);
    let unknown = browser.forgot_password("nobody@example.com").await;
    assert_status(&unknown, StatusCode::OK);
    assert_eq!(
        without_tokens(&forgot.text().await.expect("body")).replace("alice@example.com", "X"),
        without_tokens(&unknown.text().await.expect("body")).replace("nobody@example.com", "X"),
        "the same page as for an unknown address"
    );
    // A known, enabled address's mail arrives well within this; none for alice.
    app.create_user("bob@example.com", PASSWORD).await;
    browser.forgot_password("bob@example.com").await;
    assert_eq!(app.mails_to("bob@example.com", 1).await.len(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.smtp.count_to("alice@example.com"), 0);

    let used = browser
        .reset_password(&token, NEW_PASSWORD, NEW_PASSWORD)
        .await;
    assert_ne!(used.status(), StatusCode::SEE_OTHER);
    let refused = latchkey(
        &app,
        &["user", "reset-link", "--email", "alice@example.com"],
    );
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("disabled"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(
        app.count(
            "select count(*) from reset_tokens t join users u on u.id = t.user_id \
             where u.email = 'alice@example.com' and t.used_at is null"
        )
        .await,
        0,
        "disabling voided alice's link, and none was made since"
    );
    // The password is unchanged: after enable, the old one signs in.
    succeeded(&latchkey(
        &app,
        &["user", "enable", "--email", "alice@example.com"],
    ));
    assert_status(
        &browser.sign_in("alice@example.com", PASSWORD).await,
        StatusCode::SEE_OTHER,
    );
}

#[tokio::test]
async fn user_create_goes_through_the_account_rules() {
    let app = TestApp::spawn().await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .args(["user", "create", "--email", "Carol@Example.com"])
        .env("DATABASE_URL", &app.database_url)
        .env("LATCHKEY_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run latchkey");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(format!("{PASSWORD}\n").as_bytes())
            .expect("write");
    }
    let out = child.wait_with_output().expect("wait");
    succeeded(&out);
    let list = latchkey(&app, &["user", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&stdout(&list)).expect("JSON");
    // The domain is kept lower-case, as every account's is.
    assert_eq!(list[0]["email"], "Carol@example.com");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_ins_in_flight_while_disable_runs_leave_no_live_session() {
    const ROUNDS: usize = 3;
    const SIGN_INS: usize = 16;
    let app = TestApp::spawn().await;
    let other = app.spawn_sibling().await;
    let bases = [app.base.clone(), other.base.clone()];
    for round in 0..ROUNDS {
        let email = format!("alice{round}@example.com");
        app.create_user(&email, PASSWORD).await;
        let browser = app.browser();
        let token = browser.csrf_token("/sign-in").await;
        let cookie = burst::cookie_header(&browser, &app.base);
        let requests: Vec<RawRequest> = (0..SIGN_INS)
            .map(|i| {
                let base = &bases[i % 2];
                let fields = [
                    ("email", email.as_str()),
                    ("password", PASSWORD),
                    ("csrf_token", token.as_str()),
                ];
                RawRequest {
                    source: burst::source(i, SOURCES),
                    target: burst::target(base),
                    bytes: burst::form_post(base, "/sign-in", &cookie, &fields),
                }
            })
            .collect();
        let database_url = app.database_url.clone();
        let public_url = app.base.clone();
        let disable_email = email.clone();
        let disable = tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_latchkey"))
                .args(["user", "disable", "--email", &disable_email])
                .env("DATABASE_URL", database_url)
                .env("LATCHKEY_PUBLIC_URL", public_url)
                .env("LATCHKEY_LOG", "warn")
                .output()
                .expect("run latchkey")
        });
        let answers = burst::burst(requests.clone()).await;
        let disabled = disable.await.expect("join");
        succeeded(&disabled);
        let tally = burst::tally(&answers);
        eprintln!(
            "round {round}: answers {tally:?}; {}",
            stdout(&disabled).trim()
        );
        assert!(
            answers.iter().all(|a| a.status == 303 || a.status == 403),
            "round {round}: {tally:?}"
        );
        // Every session a sign-in handed out, on either instance, is refused now.
        let probes: Vec<RawRequest> = answers
            .iter()
            .zip(&requests)
            .filter_map(|(answer, request)| {
                let session = answer.set_cookie("latchkey_session")?;
                let base = if request.target == burst::target(&bases[0]) {
                    &bases[0]
                } else {
                    &bases[1]
                };
                Some(RawRequest {
                    source: request.source,
                    target: request.target,
                    bytes: burst::get(base, "/", &format!("{cookie}; latchkey_session={session}")),
                })
            })
            .collect();
        let probed = burst::burst(probes).await;
        assert!(
            probed.iter().all(|p| p.status == 303
                && p.header("location")
                    .is_some_and(|l| l.starts_with("/sign-in"))),
            "round {round}: {:?}",
            burst::tally(&probed)
        );
        assert_eq!(
            app.count(&format!(
                "select count(*) from sessions s join users u on u.id = s.user_id \
                 where u.email = '{email}' and s.expires_at > now()"
            ))
            .await,
            0,
            "round {round}: no session row of the account is left"
        );
    }
}

#[tokio::test]
async fn a_half_finished_two_factor_sign_in_is_refused_once_disabled() {
    use crate::two_factor::{code_at, enabled};
    let app = TestApp::spawn().await;
    let (owner, secret, _codes) = enabled(&app, "alice@example.com").await;
    let browser = app.browser();
    let first = browser.sign_in("alice@example.com", PASSWORD).await;
    assert_status(&first, StatusCode::SEE_OTHER);
    assert_eq!(location(&first), "/sign-in/two-factor");

    succeeded(&latchkey(
        &app,
        &["user", "disable", "--email", "alice@example.com"],
    ));
    assert!(!signed_in(&owner).await, "the owner's full session ended");
    let second = browser.second_step(&code_at(&secret, 1)).await;
    assert_status(&second, StatusCode::FORBIDDEN);
    let body = second.text().await.expect("body");
    assert!(body.contains("This account is disabled"), "{body}");
    assert!(!signed_in(&browser).await);

    // A fresh attempt: the right password is told at the first step; a wrong one is not.
    let again = app.browser();
    let right = again.sign_in("alice@example.com", PASSWORD).await;
    assert_status(&right, StatusCode::FORBIDDEN);
    let wrong = again
        .sign_in("alice@example.com", "not the password at all")
        .await;
    assert_status(&wrong, StatusCode::UNPROCESSABLE_ENTITY);
}

/// `latchkey` with `args`, keyed as the app is: what it queues in the outbox is sealed
/// under the key the app's mail worker opens it with.
fn latchkey_keyed(app: &TestApp, args: &[&str]) -> Output {
    use base64::Engine as _;
    Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .args(args)
        .env("DATABASE_URL", &app.database_url)
        .env("LATCHKEY_PUBLIC_URL", &app.base)
        .env(
            "LATCHKEY_SECRET_KEY",
            base64::engine::general_purpose::STANDARD.encode([42u8; 32]),
        )
        .env("LATCHKEY_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run latchkey")
}

#[tokio::test]
async fn two_factor_off_removes_the_authenticator_and_codes_ends_every_session_and_tells_the_owner()
{
    let app = TestApp::spawn().await;
    let (browser, _secret, codes) = crate::two_factor::enabled(&app, "alice@example.com").await;
    assert!(signed_in(&browser).await);
    let mails_before = app.mails_to("alice@example.com", 1).await.len();

    let out = latchkey_keyed(
        &app,
        &["user", "two-factor-off", "--email", "alice@example.com"],
    );
    succeeded(&out);
    assert!(
        stdout(&out).contains("two-factor turned off for alice@example.com"),
        "{}",
        stdout(&out)
    );

    // Every session ended at once.
    assert!(!signed_in(&browser).await);
    assert_eq!(
        app.count("select count(*) from recovery_codes").await,
        0,
        "recovery codes removed"
    );
    // The password alone signs in now: no second step, and no recovery code is asked.
    let owner = app.browser();
    let signed = owner.sign_in("alice@example.com", PASSWORD).await;
    assert_status(&signed, StatusCode::SEE_OTHER);
    assert_eq!(location(&signed), "/");
    assert!(!codes.is_empty());

    // The owner is told by mail and under Recent activity; the change is audited.
    let mails = app.mails_to("alice@example.com", mails_before + 1).await;
    let told = mails
        .iter()
        .find(|m| {
            m.subject().as_deref()
                == Some("An administrator turned off two-factor authentication for your latchkey account")
        })
        .expect("the owner is mailed");
    assert!(
        told.text_body()
            .unwrap_or_default()
            .contains("/settings/security")
    );
    assert!(
        security_page(&owner)
            .await
            .contains("An administrator removed two-factor authentication")
    );
    assert_eq!(
        app.count(
            "select count(*) from audit_events where kind = 'two_factor_removed_by_operator'"
        )
        .await,
        1
    );

    // Again, or for an unknown address: a clear message and a non-zero exit.
    let again = latchkey_keyed(
        &app,
        &["user", "two-factor-off", "--email", "alice@example.com"],
    );
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("has no two-factor authentication"),
        "{}",
        stderr(&again)
    );
    let unknown = latchkey_keyed(
        &app,
        &["user", "two-factor-off", "--email", "nobody@example.com"],
    );
    assert!(!unknown.status.success());
    assert!(stderr(&unknown).contains("no account has the address nobody@example.com"));
}
