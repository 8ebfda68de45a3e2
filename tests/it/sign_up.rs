//! Self-service sign-up (`LATCHKEY_SIGN_UP=open`) and the development mailbox, end to end
//! over HTTP and real SMTP: the same answer for every address, the emailed single-use
//! link, one account however the confirmations race, and nothing signs in before it.

use std::time::Duration;

use latchkey::config::{DomainList, SignUp};
use latchkey::domain::token::ResetToken;
use reqwest::{Response, StatusCode};

use crate::burst::{self, RawRequest, RawResponse};
use crate::helpers::*;

const ROUNDS: usize = 3;
const SOURCES: usize = 4;

/// A service with sign-up open (and what `tweak` adds).
async fn open_app_with(tweak: impl FnOnce(&mut latchkey::config::Config)) -> TestApp {
    TestApp::spawn_with(|c| {
        c.sign_up = SignUp::Open;
        tweak(c);
    })
    .await
}

async fn open_app() -> TestApp {
    open_app_with(|_| {}).await
}

/// The sign-up form, submitted as a browser does after loading it.
async fn sign_up(browser: &Browser, email: &str, password: &str, confirm: &str) -> Response {
    browser
        .submit(
            "/sign-up",
            "/sign-up",
            &[
                ("email", email),
                ("new_password", password),
                ("new_password_confirm", confirm),
            ],
        )
        .await
}

/// The confirm form of the link with `token`, sent with the sign-up's `PASSWORD`.
async fn confirm(browser: &Browser, token: &str) -> Response {
    confirm_with(browser, token, PASSWORD).await
}

/// The confirm form of the link with `token`, sent with `password`.
async fn confirm_with(browser: &Browser, token: &str, password: &str) -> Response {
    browser
        .submit(
            &format!("/sign-up/confirm?token={token}"),
            "/sign-up/confirm",
            &[("token", token), ("password", password)],
        )
        .await
}

/// Signs `email` up with `password` and returns the token of the `nth` mail to it.
async fn sign_up_link(
    app: &TestApp,
    browser: &Browser,
    email: &str,
    password: &str,
    nth: usize,
) -> String {
    let response = sign_up(browser, email, password, password).await;
    assert_status(&response, StatusCode::OK);
    let mails = app.mails_to(email, nth).await;
    assert_eq!(mails.len(), nth, "mails to {email}");
    let link = mails[nth - 1].first_link().expect("a link in the mail");
    let prefix = format!("{}/sign-up/confirm?token=", app.base);
    assert!(link.starts_with(&prefix), "{link}");
    link[prefix.len()..].to_owned()
}

/// The mails `email` got once the mail has settled (`TestApp::settled_mail`).
async fn settled_mail(app: &TestApp, email: &str) -> usize {
    app.settled_mail(&[email]).await[0]
}

async fn accounts_for(app: &TestApp, email: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as("select count(*) from users where email_key = lower($1)")
        .bind(email)
        .fetch_one(&app.pool)
        .await
        .expect("count");
    n
}

fn spread(
    bases: [&str; 2],
    n: usize,
    sources: usize,
    make: impl Fn(&str) -> Vec<u8>,
) -> Vec<RawRequest> {
    (0..n)
        .map(|i| {
            let base = bases[i % 2];
            RawRequest {
                source: burst::source(i, sources),
                target: burst::target(base),
                bytes: make(base),
            }
        })
        .collect()
}

fn with_status(answers: &[RawResponse], status: u16) -> usize {
    answers.iter().filter(|a| a.status == status).count()
}

#[tokio::test]
async fn a_new_address_signs_up_through_the_emailed_link_and_nothing_signs_in_before_it() {
    let app = open_app().await;
    let browser = app.browser();
    let sign_in_page = browser.get("/sign-in").await.text().await.unwrap();
    assert!(
        sign_in_page.contains("href=\"/sign-up\"") && sign_in_page.contains("Create an account")
    );
    let form = browser.get("/sign-up").await;
    assert_status(&form, StatusCode::OK);
    let form = form.text().await.unwrap();
    for field in [
        "name=\"email\"",
        "name=\"new_password\"",
        "name=\"new_password_confirm\"",
        "name=\"csrf_token\"",
    ] {
        assert!(form.contains(field), "{field}");
    }
    assert!(
        form.contains("autocomplete=\"new-password\"")
            && form.contains("autocomplete=\"username\"")
    );

    let answer = sign_up(&browser, "alice@example.com", PASSWORD, PASSWORD).await;
    assert_status(&answer, StatusCode::OK);
    let answer = answer.text().await.unwrap();
    assert!(answer.contains("Check your email") && answer.contains("alice@example.com"));
    // Before the link is confirmed there is no account: the chosen password opens nothing.
    assert_status(
        &app.browser().sign_in("alice@example.com", PASSWORD).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    );
    let mails = app.mails_to("alice@example.com", 1).await;
    assert_eq!(
        mails[0].subject().as_deref(),
        Some("Confirm your latchkey account")
    );
    assert!(
        mails[0]
            .text_body()
            .unwrap()
            .contains("expires in 30 minutes")
    );
    assert!(!mails[0].text_body().unwrap().contains(PASSWORD));
    let link = mails[0].first_link().unwrap();
    let token = link.split("token=").nth(1).unwrap().to_owned();

    // Opening the link (as a mail scanner does, twice) shows a button and uses nothing up.
    for _ in 0..2 {
        let page = browser
            .get(&format!("/sign-up/confirm?token={token}"))
            .await;
        assert_status(&page, StatusCode::OK);
        let page = page.text().await.unwrap();
        assert!(page.contains("Create account") && page.contains("alice@example.com"));
        assert!(page.contains("name=\"token\""));
    }
    assert_eq!(accounts_for(&app, "alice@example.com").await, 0);
    assert_status(
        &app.browser().sign_in("alice@example.com", PASSWORD).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    );

    let done = confirm(&browser, &token).await;
    assert_status(&done, StatusCode::SEE_OTHER);
    assert_eq!(location(&done), "/sign-in?notice=account-ready");
    // Confirming never signs anyone in by itself.
    assert_status(&browser.get("/").await, StatusCode::SEE_OTHER);
    let notice = browser.get(&location(&done)).await.text().await.unwrap();
    assert!(notice.contains("Your account is ready"));
    assert_eq!(accounts_for(&app, "alice@example.com").await, 1);
    assert_status(
        &browser.sign_in("alice@example.com", PASSWORD).await,
        StatusCode::SEE_OTHER,
    );
    let home = browser.get("/").await;
    assert_status(&home, StatusCode::OK);
    assert!(home.text().await.unwrap().contains("alice@example.com"));
    assert_eq!(
        app.count("select count(*) from audit_events where kind = 'account_created'")
            .await,
        1
    );
    let activity = browser
        .get("/settings/security")
        .await
        .text()
        .await
        .unwrap();
    assert!(activity.contains("Account created"));
}

#[tokio::test]
async fn sign_up_is_closed_by_default_and_every_route_answers_404() {
    let app = TestApp::spawn().await;
    let browser = app.browser();
    let sign_in_page = browser.get("/sign-in").await.text().await.unwrap();
    assert!(!sign_in_page.contains("/sign-up") && !sign_in_page.contains("Create an account"));
    assert_status(&browser.get("/sign-up").await, StatusCode::NOT_FOUND);
    assert_status(
        &browser.get("/sign-up/confirm?token=x").await,
        StatusCode::NOT_FOUND,
    );
    let token = ResetToken::generate();
    let posted = browser
        .submit(
            "/sign-in",
            "/sign-up",
            &[
                ("email", "alice@example.com"),
                ("new_password", PASSWORD),
                ("new_password_confirm", PASSWORD),
            ],
        )
        .await;
    assert_status(&posted, StatusCode::NOT_FOUND);
    let posted = browser
        .submit("/sign-in", "/sign-up/confirm", &[("token", token.expose())])
        .await;
    assert_status(&posted, StatusCode::NOT_FOUND);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.count("select count(*) from sign_ups").await, 0);
    assert_eq!(app.count("select count(*) from outbox").await, 0);
}

#[tokio::test]
async fn known_and_unknown_addresses_get_the_same_answer_and_the_known_one_a_note_without_a_link() {
    let app = open_app().await;
    app.create_user("alice@example.com", PASSWORD).await;
    let browser = app.browser();
    let known = sign_up(&browser, "alice@example.com", NEW_PASSWORD, NEW_PASSWORD).await;
    let unknown = sign_up(&browser, "bob@example.com", NEW_PASSWORD, NEW_PASSWORD).await;
    assert_status(&known, StatusCode::OK);
    assert_status(&unknown, StatusCode::OK);
    let known_headers: Vec<String> = known.headers().keys().map(|k| k.to_string()).collect();
    let unknown_headers: Vec<String> = unknown.headers().keys().map(|k| k.to_string()).collect();
    assert_eq!(known_headers, unknown_headers);
    let known = known.text().await.unwrap();
    let unknown = unknown.text().await.unwrap();
    assert_eq!(
        without_tokens(&known).replace("alice@example.com", "X"),
        without_tokens(&unknown).replace("bob@example.com", "X")
    );

    let note = &app.mails_to("alice@example.com", 1).await[0];
    assert_eq!(
        note.subject().as_deref(),
        Some("You already have a latchkey account")
    );
    let text = note.text_body().unwrap();
    assert!(text.contains(&format!("{}/sign-in", app.base)));
    assert!(text.contains(&format!("{}/forgot-password", app.base)));
    assert!(!text.contains("token=") && !note.html_body().unwrap().contains("token="));
    let link = &app.mails_to("bob@example.com", 1).await[0];
    assert_eq!(
        link.subject().as_deref(),
        Some("Confirm your latchkey account")
    );

    // Nothing changed on the existing account, and no second one is pending for it.
    assert_eq!(accounts_for(&app, "alice@example.com").await, 1);
    assert_eq!(
        app.count("select count(*) from sign_ups where email_key = 'alice@example.com' and token_hash is not null").await,
        0
    );
    assert_status(
        &app.browser().sign_in("alice@example.com", PASSWORD).await,
        StatusCode::SEE_OTHER,
    );
    assert_status(
        &app.browser()
            .sign_in("alice@example.com", NEW_PASSWORD)
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    );
}

#[tokio::test]
async fn malformed_addresses_policy_failures_and_mismatches_are_refused_with_422_beside_the_field()
{
    let app = open_app().await;
    let browser = app.browser();
    let cases: [(&str, &str, &str, &str, &str); 7] = [
        ("", PASSWORD, PASSWORD, "email", "Enter your email address"),
        (
            "not-an-address",
            PASSWORD,
            PASSWORD,
            "email",
            "correct format",
        ),
        (
            "a@b.com\r\nBcc: victim@example.com",
            PASSWORD,
            PASSWORD,
            "email",
            "correct format",
        ),
        (
            "carol@example.com",
            "short",
            "short",
            "new_password",
            "15 characters or more",
        ),
        (
            "carol@example.com",
            "password1234567890",
            "password1234567890",
            "new_password",
            "common",
        ),
        (
            "carol@example.com",
            "carol carol carol carol",
            "carol carol carol carol",
            "new_password",
            "email",
        ),
        (
            "carol@example.com",
            PASSWORD,
            NEW_PASSWORD,
            "new_password_confirm",
            "Enter the same password in both fields",
        ),
    ];
    for (email, password, again, field, message) in cases {
        let response = sign_up(&browser, email, password, again).await;
        assert_status(&response, StatusCode::UNPROCESSABLE_ENTITY);
        let page = response.text().await.unwrap();
        assert!(
            page.contains("There is a problem"),
            "{email:?}/{password:?}"
        );
        assert!(
            page.contains(&format!("id=\"{field}-error\"")),
            "{field} for {email:?}/{password:?}"
        );
        assert!(
            page.contains(&format!("href=\"#{field}\"")),
            "summary links to {field}"
        );
        assert!(page.contains("aria-invalid=\"true\""));
        assert!(
            page.to_lowercase().contains(&message.to_lowercase()),
            "{message:?} in the page for {email:?}/{password:?}"
        );
        assert!(
            !page.contains(password) || password.len() < 6,
            "the password is never echoed"
        );
    }
    // Both fields wrong at once: both explained.
    let both = sign_up(&browser, "nope", "short", "short").await;
    assert_status(&both, StatusCode::UNPROCESSABLE_ENTITY);
    let both = both.text().await.unwrap();
    assert!(both.contains("id=\"email-error\"") && both.contains("id=\"new_password-error\""));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.count("select count(*) from sign_ups").await, 0);
    assert_eq!(app.count("select count(*) from outbox").await, 0);
}

#[tokio::test]
async fn only_the_configured_domains_may_sign_up_matched_exactly_and_case_insensitively() {
    let app = open_app_with(|c| {
        c.sign_up_domains = DomainList::parse("example.com, Example.org").unwrap();
    })
    .await;
    let browser = app.browser();
    let form = browser.get("/sign-up").await.text().await.unwrap();
    assert!(form.contains("example.com, example.org"));
    for allowed in ["alice@example.com", "bob@EXAMPLE.com", "carol@example.ORG"] {
        assert_status(
            &sign_up(&browser, allowed, PASSWORD, PASSWORD).await,
            StatusCode::OK,
        );
    }
    for refused in [
        "dave@other.com",
        "erin@sub.example.com",
        "frank@example.com.evil.net",
        "gina@xexample.com",
    ] {
        let response = sign_up(&browser, refused, PASSWORD, PASSWORD).await;
        assert_status(&response, StatusCode::UNPROCESSABLE_ENTITY);
        let page = response.text().await.unwrap();
        assert!(
            page.contains("Use an address at example.com or example.org"),
            "{refused}"
        );
        assert!(page.contains("id=\"email-error\""));
    }
    assert_eq!(settled_mail(&app, "dave@other.com").await, 0);
    assert_eq!(app.count("select count(*) from sign_ups").await, 3);
}

#[test]
fn bad_sign_up_settings_are_refused_when_the_configuration_is_read() {
    use figment::Figment;
    use figment::providers::{Format, Serialized, Toml};
    let base = || Figment::new().merge(Toml::file("config/default.toml"));
    let config: latchkey::config::Config = base().extract().expect("defaults");
    assert_eq!(config.sign_up, SignUp::Closed);
    assert!(config.sign_up_domains.is_empty());
    for bad in ["yes", "Open", "true", ""] {
        let refused = base()
            .merge(Serialized::default("sign_up", bad))
            .extract::<latchkey::config::Config>();
        assert!(refused.is_err(), "sign_up = {bad:?} was accepted");
    }
    let open: latchkey::config::Config = base()
        .merge(Serialized::default("sign_up", "open"))
        .merge(Serialized::default(
            "sign_up_domains",
            " Example.com,,example.org ",
        ))
        .extract()
        .expect("open");
    assert_eq!(open.sign_up, SignUp::Open);
    assert_eq!(
        open.sign_up_domains.as_slice(),
        ["example.com", "example.org"]
    );
    for bad in [
        "@example.com",
        "user@example.com",
        "example com",
        "localhost",
    ] {
        let refused = base()
            .merge(Serialized::default("sign_up_domains", bad))
            .extract::<latchkey::config::Config>();
        assert!(refused.is_err(), "sign_up_domains = {bad:?} was accepted");
    }
}

#[tokio::test]
async fn a_link_works_once_and_dead_or_tampered_links_get_their_page() {
    let app = open_app().await;
    let browser = app.browser();
    let token = sign_up_link(&app, &browser, "alice@example.com", PASSWORD, 1).await;
    assert_status(&confirm(&browser, &token).await, StatusCode::SEE_OTHER);
    for response in [
        confirm(&browser, &token).await,
        browser
            .get(&format!("/sign-up/confirm?token={token}"))
            .await,
    ] {
        assert_status(&response, StatusCode::GONE);
        let page = response.text().await.unwrap();
        assert!(page.contains("already been used") && page.contains("href=\"/sign-up\""));
    }
    let mut tampered = token.clone().into_bytes();
    tampered[5] = if tampered[5] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for bad in [
        tampered.as_str(),
        "",
        "abc",
        "../../etc/passwd",
        &"A".repeat(5000),
    ] {
        let url = format!(
            "/sign-up/confirm?token={}",
            url::form_urlencoded::byte_serialize(bad.as_bytes()).collect::<String>()
        );
        assert_status(&browser.get(&url).await, StatusCode::BAD_REQUEST);
        assert_status(&confirm(&browser, bad).await, StatusCode::BAD_REQUEST);
    }
    assert_eq!(accounts_for(&app, "alice@example.com").await, 1);
}

#[tokio::test]
async fn an_expired_link_is_refused_with_410_and_creates_nothing() {
    let app = open_app().await;
    let browser = app.browser();
    let token = sign_up_link(&app, &browser, "alice@example.com", PASSWORD, 1).await;
    sqlx::query("update sign_ups set expires_at = now() - interval '1 second'")
        .execute(&app.pool)
        .await
        .unwrap();
    let opened = browser
        .get(&format!("/sign-up/confirm?token={token}"))
        .await;
    assert_status(&opened, StatusCode::GONE);
    assert!(opened.text().await.unwrap().contains("expired"));
    assert_status(&confirm(&browser, &token).await, StatusCode::GONE);
    assert_eq!(accounts_for(&app, "alice@example.com").await, 0);
}

#[tokio::test]
async fn the_link_lifetime_is_the_reset_link_lifetime() {
    let app = open_app_with(|c| c.reset_token_ttl_secs = 600).await;
    let browser = app.browser();
    sign_up_link(&app, &browser, "alice@example.com", PASSWORD, 1).await;
    let mail = &app.smtp.messages_to("alice@example.com")[0];
    assert!(mail.text_body().unwrap().contains("expires in 10 minutes"));
    let (secs,): (f64,) =
        sqlx::query_as("select extract(epoch from expires_at - created_at)::float8 from sign_ups")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!((secs - 600.0).abs() < 2.0, "{secs}");
}

#[tokio::test]
async fn a_newer_sign_up_leaves_the_older_link_usable_and_the_first_confirmed_wins() {
    let app = open_app().await;
    let browser = app.browser();
    let first = sign_up_link(&app, &browser, "alice@example.com", PASSWORD, 1).await;
    let second = sign_up_link(&app, &browser, "Alice@example.com", NEW_PASSWORD, 2).await;
    // Each link asks for the password chosen with it.
    assert_status(
        &browser
            .get(&format!("/sign-up/confirm?token={first}"))
            .await,
        StatusCode::OK,
    );
    assert_status(
        &confirm_with(&browser, &first, NEW_PASSWORD).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    );
    assert_status(&confirm(&browser, &first).await, StatusCode::SEE_OTHER);
    // The first confirmed link made the account and voided the other.
    assert_status(
        &confirm_with(&browser, &second, NEW_PASSWORD).await,
        StatusCode::GONE,
    );
    assert_eq!(accounts_for(&app, "alice@example.com").await, 1);
    assert_status(
        &app.browser().sign_in("alice@example.com", PASSWORD).await,
        StatusCode::SEE_OTHER,
    );
    assert_status(
        &app.browser()
            .sign_in("alice@example.com", NEW_PASSWORD)
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    );
    assert_eq!(
        app.count("select count(*) from audit_events where kind = 'account_created'")
            .await,
        1
    );
}

#[tokio::test]
async fn an_account_made_meanwhile_by_an_operator_is_never_doubled_nor_changed() {
    let app = open_app().await;
    let browser = app.browser();
    let token = sign_up_link(&app, &browser, "alice@example.com", NEW_PASSWORD, 1).await;
    app.create_user("alice@example.com", PASSWORD).await;
    let opened = confirm_with(&browser, &token, NEW_PASSWORD).await;
    assert_status(&opened, StatusCode::CONFLICT);
    assert_eq!(accounts_for(&app, "alice@example.com").await, 1);
    assert_status(
        &app.browser().sign_in("alice@example.com", PASSWORD).await,
        StatusCode::SEE_OTHER,
    );
    assert_status(
        &app.browser()
            .sign_in("alice@example.com", NEW_PASSWORD)
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    );
}

#[tokio::test]
async fn the_token_is_kept_only_as_a_digest_and_the_password_only_as_its_argon2id_hash() {
    let app = open_app().await;
    let browser = app.browser();
    let token = sign_up_link(&app, &browser, "alice@example.com", PASSWORD, 1).await;
    let (digest, hash): (Vec<u8>, String) =
        sqlx::query_as("select token_hash, password_hash from sign_ups")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(digest, ResetToken::parse(&token).unwrap().digest());
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    let (dump,): (String,) =
        sqlx::query_as("select coalesce(string_agg(s::text, ' '), '') from sign_ups s")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(!dump.contains(&token) && !dump.contains(PASSWORD));
    // Delivered mail is cleared from the outbox: no live link stays in the database.
    let (outbox,): (String,) =
        sqlx::query_as("select coalesce(string_agg(o::text, ' '), '') from outbox o")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(!outbox.contains(&token));
    assert_status(&confirm(&browser, &token).await, StatusCode::SEE_OTHER);
    assert_eq!(app.password_hash("alice@example.com").await, hash);
}

#[tokio::test]
async fn a_sign_up_without_a_csrf_token_is_refused_and_changes_nothing() {
    let app = open_app().await;
    let browser = app.browser();
    browser.get("/sign-up").await;
    let response = browser
        .client
        .post(browser.url("/sign-up"))
        .form(&[
            ("email", "alice@example.com"),
            ("new_password", PASSWORD),
            ("new_password_confirm", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_status(&response, StatusCode::FORBIDDEN);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.count("select count(*) from sign_ups").await, 0);
}

#[tokio::test]
async fn an_address_gets_at_most_three_sign_up_mails_an_hour_known_or_not() {
    let app = open_app().await;
    app.create_user("alice@example.com", PASSWORD).await;
    let browser = app.browser();
    for email in ["alice@example.com", "bob@example.com"] {
        for _ in 0..5 {
            assert_status(
                &sign_up(&browser, email, NEW_PASSWORD, NEW_PASSWORD).await,
                StatusCode::OK,
            );
        }
        assert_eq!(settled_mail(&app, email).await, 3, "{email}");
    }
}

#[tokio::test]
async fn one_ip_may_ask_to_sign_up_only_so_often() {
    let app = open_app_with(|c| c.ip_rate_limit = 2).await;
    let browser = app.browser();
    for n in 0..2 {
        let r = sign_up(&browser, &format!("u{n}@example.com"), PASSWORD, PASSWORD).await;
        assert_status(&r, StatusCode::OK);
    }
    let limited = sign_up(&browser, "u9@example.com", PASSWORD, PASSWORD).await;
    assert_status(&limited, StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.headers().contains_key("retry-after"));
    // Counted apart from forgot-password and sign-in.
    assert_status(
        &browser.forgot_password("u0@example.com").await,
        StatusCode::OK,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_confirmations_of_one_link_at_once_on_two_instances_create_one_account() {
    let app = open_app().await;
    let other = app.spawn_sibling().await;
    for round in 0..ROUNDS {
        let email = format!("alice{round}@example.com");
        let browser = app.browser();
        let token = sign_up_link(&app, &browser, &email, PASSWORD, 1).await;
        let csrf = browser.csrf_token("/sign-up").await;
        let cookie = burst::cookie_header(&browser, &app.base);
        let requests = spread([&app.base, &other.base], 20, SOURCES, |base| {
            let fields = [
                ("token", token.as_str()),
                ("password", PASSWORD),
                ("csrf_token", csrf.as_str()),
            ];
            burst::form_post(base, "/sign-up/confirm", &cookie, &fields)
        });
        let answers = burst::burst(requests).await;
        let tally = burst::tally(&answers);
        eprintln!("round {round}: {tally:?}");
        assert_eq!(with_status(&answers, 303), 1, "round {round}: {tally:?}");
        assert_eq!(with_status(&answers, 410), 19, "round {round}: {tally:?}");
        assert_eq!(accounts_for(&app, &email).await, 1, "round {round}");
    }
    assert_eq!(
        app.count("select count(*) from audit_events where kind = 'account_created'")
            .await,
        ROUNDS as i64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_sign_ups_at_once_on_two_instances_send_at_most_three_mails_each_link_live() {
    let app = TestApp::spawn_with(|c| {
        c.sign_up = SignUp::Open;
        c.argon2.queue = 64;
    })
    .await;
    let other = app.spawn_sibling().await;
    for round in 0..ROUNDS {
        let email = format!("alice{round}@example.com");
        let browser = app.browser();
        let csrf = browser.csrf_token("/sign-up").await;
        let cookie = burst::cookie_header(&browser, &app.base);
        let requests = spread([&app.base, &other.base], 20, SOURCES, |base| {
            let fields = [
                ("email", email.as_str()),
                ("new_password", PASSWORD),
                ("new_password_confirm", PASSWORD),
                ("csrf_token", csrf.as_str()),
            ];
            burst::form_post(base, "/sign-up", &cookie, &fields)
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
            "select count(*) from sign_ups
             where email_key = $1 and used_at is null and expires_at > now()",
        )
        .bind(&email)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        eprintln!("round {round}: {mails} mails, {live} live links");
        assert!((1..=3).contains(&mails), "round {round}: {mails} mails");
        // A later request voids nothing: every mailed link stays usable until one is
        // confirmed.
        assert_eq!(live, mails as i64, "round {round}");
        let opened: Vec<StatusCode> = futures_statuses(&app, &browser, &email).await;
        assert!(
            opened.iter().all(|s| *s == StatusCode::OK),
            "every link opens: {opened:?}"
        );
    }
}

/// The status of opening each mailed sign-up link to `email`, in the order received.
async fn futures_statuses(app: &TestApp, browser: &Browser, email: &str) -> Vec<StatusCode> {
    let mut out = Vec::new();
    let mut mails = app.smtp.messages_to(email);
    // The sink keeps arrival order; the newest link is the one inserted last.
    let (newest,): (Vec<u8>,) = sqlx::query_as(
        "select token_hash from sign_ups where email_key = $1 order by id desc limit 1",
    )
    .bind(email)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    mails.sort_by_key(|m| {
        let token = m
            .first_link()
            .unwrap_or_default()
            .split("token=")
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        ResetToken::parse(&token).is_some_and(|t| t.digest() == newest)
    });
    for mail in mails {
        let link = mail.first_link().expect("a link");
        let token = link.split("token=").nth(1).expect("token");
        out.push(
            browser
                .get(&format!("/sign-up/confirm?token={token}"))
                .await
                .status(),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_sign_ups_at_once_from_one_ip_on_two_instances_get_at_most_the_ip_limit() {
    let app = TestApp::spawn_with(|c| {
        c.sign_up = SignUp::Open;
        c.ip_rate_limit = 5;
        c.argon2.queue = 64;
    })
    .await;
    let other = app.spawn_sibling().await;
    for round in 0..2 {
        let browser = app.browser();
        let csrf = browser.csrf_token("/sign-up").await;
        let cookie = burst::cookie_header(&browser, &app.base);
        let requests: Vec<RawRequest> = (0..30)
            .map(|i| {
                let base = if i % 2 == 0 { &app.base } else { &other.base };
                let email = format!("r{round}u{i}@example.com");
                let fields = [
                    ("email", email.as_str()),
                    ("new_password", PASSWORD),
                    ("new_password_confirm", PASSWORD),
                    ("csrf_token", csrf.as_str()),
                ];
                RawRequest {
                    source: burst::source(round, 8),
                    target: burst::target(base),
                    bytes: burst::form_post(base, "/sign-up", &cookie, &fields),
                }
            })
            .collect();
        let answers = burst::burst(requests).await;
        let tally = burst::tally(&answers);
        eprintln!("round {round}: {tally:?}");
        assert_eq!(with_status(&answers, 200), 5, "round {round}: {tally:?}");
        assert_eq!(with_status(&answers, 429), 25, "round {round}: {tally:?}");
    }
    settled_mail(&app, "nobody@example.com").await;
    assert_eq!(app.count("select count(*) from sign_ups").await, 10);
}

// ---- the development mailbox ----

/// A service that writes mail to files under a fresh directory, reached on loopback.
async fn files_app(public_host: Option<&str>) -> (TestApp, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("latchkey-mailbox-{}", uuid::Uuid::new_v4()));
    let for_config = dir.clone();
    let host = public_host.map(str::to_owned);
    let app = TestApp::spawn_with(move |c| {
        c.smtp_url = None;
        c.mail_dir = for_config;
        c.sign_up = SignUp::Open;
        if let Some(host) = host {
            c.public_url = format!("http://{host}:{}", c.listen.port())
                .parse()
                .unwrap();
        }
    })
    .await;
    (app, dir)
}

async fn mailbox_rows(browser: &Browser, n: usize) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let page = browser.get("/dev/mailbox").await;
        assert_status(&page, StatusCode::OK);
        let page = page.text().await.unwrap();
        if page.matches("href=\"/dev/mailbox/").count() >= n
            || tokio::time::Instant::now() > deadline
        {
            return page;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_dev_mailbox_lists_mail_written_to_files_newest_first_and_its_links_work() {
    let (app, dir) = files_app(None).await;
    let browser = app.browser();
    assert!(mailbox_rows(&browser, 0).await.contains("No mail yet"));
    assert_status(
        &sign_up(&browser, "first@example.com", PASSWORD, PASSWORD).await,
        StatusCode::OK,
    );
    mailbox_rows(&browser, 1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_status(
        &sign_up(&browser, "second@example.com", PASSWORD, PASSWORD).await,
        StatusCode::OK,
    );
    // Not a message: never listed.
    std::fs::write(dir.join("notes.txt"), "not mail").unwrap();
    let list = mailbox_rows(&browser, 2).await;
    assert_eq!(list.matches("href=\"/dev/mailbox/").count(), 2, "{list}");
    let second_at = list.find("second@example.com").expect("second listed");
    let first_at = list.find("first@example.com").expect("first listed");
    assert!(second_at < first_at, "newest first");
    assert!(list.contains("Confirm your latchkey account"));

    let start = list.find("href=\"/dev/mailbox/").unwrap() + "href=\"".len();
    let path = &list[start..start + list[start..].find('"').unwrap()];
    let message = browser.get(path).await;
    assert_status(&message, StatusCode::OK);
    let message = message.text().await.unwrap();
    assert!(message.contains("second@example.com"));
    let link_start = message
        .find(&format!("<a href=\"{}/sign-up/confirm?token=", app.base))
        .expect("a clickable link")
        + "<a href=\"".len();
    let link = &message[link_start..link_start + message[link_start..].find('"').unwrap()];
    assert!(message.contains("View the HTML part"));
    let html = browser.get(&format!("{path}/html")).await;
    assert_status(&html, StatusCode::OK);
    let csp = html.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.starts_with("sandbox"), "{csp}");
    assert!(html.text().await.unwrap().contains("Create your account"));

    // The link from the mailbox confirms the account.
    let token = link.split("token=").nth(1).unwrap().replace("&amp;", "&");
    assert_status(
        &browser
            .get(&format!("/sign-up/confirm?token={token}"))
            .await,
        StatusCode::OK,
    );
    assert_status(&confirm(&browser, &token).await, StatusCode::SEE_OTHER);
    assert_eq!(accounts_for(&app, "second@example.com").await, 1);
}

#[tokio::test]
async fn the_dev_mailbox_shows_only_the_messages_it_listed() {
    let (app, dir) = files_app(None).await;
    let browser = app.browser();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("notes.txt"), "not mail").unwrap();
    std::fs::write(
        dir.parent().unwrap().join("outside.eml"),
        "Subject: outside\r\n\r\nx",
    )
    .unwrap();
    for path in [
        "/dev/mailbox/notes.txt",
        "/dev/mailbox/..%2Foutside.eml",
        "/dev/mailbox/%2E%2E%2Foutside.eml",
        "/dev/mailbox/../outside.eml",
        "/dev/mailbox/..%2F..%2Fetc%2Fpasswd",
        &format!("/dev/mailbox/{}.eml", uuid::Uuid::new_v4()),
        &format!("/dev/mailbox/{}.eml/html", uuid::Uuid::new_v4()),
    ] {
        let response = browser.get(path).await;
        assert_status(&response, StatusCode::NOT_FOUND);
        let body = response.text().await.unwrap();
        assert!(
            !body.contains("not mail") && !body.contains("outside"),
            "{path}"
        );
    }
}

#[tokio::test]
async fn the_dev_mailbox_does_not_exist_with_smtp_or_off_loopback() {
    let with_smtp = open_app().await;
    assert_status(
        &with_smtp.browser().get("/dev/mailbox").await,
        StatusCode::NOT_FOUND,
    );
    let (off_loopback, _dir) = files_app(Some("lk.example.test")).await;
    let browser = off_loopback.browser();
    assert_status(&browser.get("/dev/mailbox").await, StatusCode::NOT_FOUND);
    assert_status(
        &browser
            .get(&format!("/dev/mailbox/{}.eml", uuid::Uuid::new_v4()))
            .await,
        StatusCode::NOT_FOUND,
    );
    // And with files on loopback it does: the same check, the other way.
    let (on_loopback, _dir) = files_app(None).await;
    assert_status(
        &on_loopback.browser().get("/dev/mailbox").await,
        StatusCode::OK,
    );
}

const STRANGERS_PASSWORD: &str = "a stranger's own long passphrase";

/// The tokens of every sign-up link mailed to `email`.
fn mailed_tokens(app: &TestApp, email: &str) -> Vec<String> {
    app.smtp
        .messages_to(email)
        .iter()
        .filter_map(|m| m.first_link())
        .filter_map(|link| link.split("token=").nth(1).map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_asking_for_your_address_with_their_own_password_never_gets_the_account() {
    let app = TestApp::spawn_with(|c| {
        c.sign_up = SignUp::Open;
        c.argon2.queue = 64;
    })
    .await;
    let other = app.spawn_sibling().await;
    for round in 0..ROUNDS {
        let email = format!("alice{round}@example.com");
        // The person asks once from one address on one instance; at the same moment the
        // stranger asks twice from another address on the other instance, using up the
        // hourly mail limit.
        let browser = app.browser();
        let csrf = browser.csrf_token("/sign-up").await;
        let cookie = burst::cookie_header(&browser, &app.base);
        let ask = |base: &str, password: &str, source: usize| RawRequest {
            source: burst::source(source, 2),
            target: burst::target(base),
            bytes: burst::form_post(
                base,
                "/sign-up",
                &cookie,
                &[
                    ("email", email.as_str()),
                    ("new_password", password),
                    ("new_password_confirm", password),
                    ("csrf_token", csrf.as_str()),
                ],
            ),
        };
        let answers = burst::burst(vec![
            ask(&app.base, PASSWORD, 0),
            ask(&other.base, STRANGERS_PASSWORD, 1),
            ask(&other.base, STRANGERS_PASSWORD, 1),
        ])
        .await;
        assert_eq!(
            with_status(&answers, 200),
            3,
            "{:?}",
            burst::tally(&answers)
        );
        assert_eq!(settled_mail(&app, &email).await, 3, "round {round}");

        // Every link in the inbox opens, and each asks for its own password: the
        // stranger's links refuse the person's password, the person's own link works.
        let person = app.browser();
        let tokens = mailed_tokens(&app, &email);
        for token in &tokens {
            assert_status(
                &person.get(&format!("/sign-up/confirm?token={token}")).await,
                StatusCode::OK,
            );
        }
        let mut statuses = Vec::new();
        for token in &tokens {
            statuses.push(confirm_with(&person, token, PASSWORD).await.status());
        }
        eprintln!("round {round}: {statuses:?}");
        assert_eq!(
            statuses
                .iter()
                .filter(|s| **s == StatusCode::SEE_OTHER)
                .count(),
            1,
            "round {round}: {statuses:?}"
        );
        assert!(
            statuses.iter().all(|s| [
                StatusCode::SEE_OTHER,
                StatusCode::UNPROCESSABLE_ENTITY,
                StatusCode::GONE
            ]
            .contains(s)),
            "{statuses:?}"
        );
        assert_eq!(accounts_for(&app, &email).await, 1);
        assert_status(
            &app.browser().sign_in(&email, STRANGERS_PASSWORD).await,
            StatusCode::UNPROCESSABLE_ENTITY,
        );
        assert_status(
            &app.browser().sign_in(&email, PASSWORD).await,
            StatusCode::SEE_OTHER,
        );
    }
}

#[tokio::test]
async fn a_wrong_password_keeps_the_link_usable_until_the_fifth() {
    let app = open_app().await;
    let browser = app.browser();
    let token = sign_up_link(&app, &browser, "alice@example.com", PASSWORD, 1).await;
    for _ in 0..4 {
        let wrong = confirm_with(&browser, &token, STRANGERS_PASSWORD).await;
        assert_status(&wrong, StatusCode::UNPROCESSABLE_ENTITY);
        let page = wrong.text().await.unwrap();
        assert!(page.contains("<title>Error: "), "an error title");
        assert!(page.contains("name=\"password\"") && page.contains(&token));
        assert_status(
            &browser
                .get(&format!("/sign-up/confirm?token={token}"))
                .await,
            StatusCode::OK,
        );
    }
    assert_eq!(accounts_for(&app, "alice@example.com").await, 0);
    assert_status(
        &confirm_with(&browser, &token, STRANGERS_PASSWORD).await,
        StatusCode::GONE,
    );
    // Void now, even for the right password.
    assert_status(&confirm(&browser, &token).await, StatusCode::GONE);
    assert_eq!(accounts_for(&app, "alice@example.com").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_wrong_passwords_at_once_on_two_instances_are_checked_at_most_five_times() {
    let app = open_app().await;
    let other = app.spawn_sibling().await;
    for round in 0..ROUNDS {
        let email = format!("alice{round}@example.com");
        let browser = app.browser();
        let token = sign_up_link(&app, &browser, &email, PASSWORD, 1).await;
        let csrf = browser.csrf_token("/sign-up").await;
        let cookie = burst::cookie_header(&browser, &app.base);
        let requests = spread([&app.base, &other.base], 20, SOURCES, |base| {
            let fields = [
                ("token", token.as_str()),
                ("password", STRANGERS_PASSWORD),
                ("csrf_token", csrf.as_str()),
            ];
            burst::form_post(base, "/sign-up/confirm", &cookie, &fields)
        });
        let answers = burst::burst(requests).await;
        let tally = burst::tally(&answers);
        eprintln!("round {round}: {tally:?}");
        assert_eq!(with_status(&answers, 422), 4, "round {round}: {tally:?}");
        assert_eq!(with_status(&answers, 410), 16, "round {round}: {tally:?}");
        let (failures,): (i32,) =
            sqlx::query_as("select failed_attempts from sign_ups where email_key = $1")
                .bind(&email)
                .fetch_one(&app.pool)
                .await
                .unwrap();
        assert_eq!(failures, 5, "round {round}");
        assert_status(&confirm(&browser, &token).await, StatusCode::GONE);
        assert_eq!(accounts_for(&app, &email).await, 0, "round {round}");
    }
}

#[tokio::test]
async fn a_sign_up_for_a_disabled_accounts_address_says_to_contact_the_operator() {
    let app = open_app().await;
    app.create_user("alice@example.com", PASSWORD).await;
    sqlx::query("update users set disabled_at = now()")
        .execute(&app.pool)
        .await
        .unwrap();
    let answer = sign_up(
        &app.browser(),
        "alice@example.com",
        NEW_PASSWORD,
        NEW_PASSWORD,
    )
    .await;
    assert_status(&answer, StatusCode::OK);
    let mails = app.mails_to("alice@example.com", 1).await;
    assert_eq!(mails.len(), 1);
    let text = mails[0].text_body().unwrap();
    assert!(text.contains("That account is disabled"), "{text}");
    assert!(
        text.contains("contact the person who runs latchkey"),
        "{text}"
    );
    assert!(
        !text.contains("/forgot-password"),
        "no reset offered: {text}"
    );
    let html = mails[0].html_body().unwrap();
    assert!(!html.contains("/forgot-password"), "{html}");
}
