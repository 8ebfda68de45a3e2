//! Upgrades: a database at the previous schema version (0001), holding that era's data
//! (`tests/fixtures/schema_0001_data.sql`), is upgraded by starting the service on it.
//! Every account survives with its password, and so do sessions, links, mail and history.

use std::borrow::Cow;

use latchkey::db::MIGRATOR;
use reqwest::StatusCode;
use secrecy::SecretString;
use sqlx::PgPool;
use sqlx::migrate::Migrator;

use crate::database::TestDatabase;
use crate::helpers::*;

const FIXTURE: &str = include_str!("../fixtures/schema_0001_data.sql");

const ACCOUNTS: &[(&str, &str)] = &[
    ("alice@example.com", "correct horse battery staple"),
    ("Bob.Mixed@Example.com", "an old hash with older parameters"),
    ("carol@example.com", "carol keeps her fixture passphrase"),
];
const ALICE_SESSION: &str = "782riWdFIwHvzauJZ0UjAQ";
const CAROL_TOKEN: &str = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA";

/// Migrations up to and including `version`, embedded in the binary.
fn migrations_up_to(version: i64) -> Migrator {
    Migrator {
        migrations: Cow::Owned(
            MIGRATOR
                .migrations
                .iter()
                .filter(|m| m.version <= version)
                .cloned()
                .collect(),
        ),
        ..Migrator::DEFAULT
    }
}

/// A fresh database migrated to version 0001 only, with the fixture loaded.
async fn database_at_0001() -> TestDatabase {
    database_at(1, &[FIXTURE]).await
}

/// A fresh database migrated up to `version` only, with `fixtures` loaded in order;
/// dropped when the returned value drops.
async fn database_at(version: i64, fixtures: &[&str]) -> TestDatabase {
    let url = TestDatabase::create().await;
    let pool = PgPool::connect(&url).await.expect("connect");
    let previous = migrations_up_to(version);
    assert_eq!(
        previous.migrations.len(),
        usize::try_from(version).expect("version"),
        "migrations up to {version} are embedded"
    );
    previous.run(&pool).await.expect("migrating");
    for fixture in fixtures {
        sqlx::raw_sql(fixture)
            .execute(&pool)
            .await
            .expect("loading a fixture");
    }
    pool.close().await;
    url
}

type UserRow = (uuid::Uuid, String, String);

async fn users(pool: &PgPool) -> Vec<UserRow> {
    sqlx::query_as("select id, email, password_hash from users order by id")
        .fetch_all(pool)
        .await
        .expect("users")
}

#[tokio::test]
async fn upgrading_from_0001_keeps_every_account_password_session_link_and_mail() {
    let url = database_at_0001().await;
    let before = {
        let pool = PgPool::connect(&url).await.expect("connect");
        let rows = users(&pool).await;
        let applied: Vec<(i64,)> =
            sqlx::query_as("select version from _sqlx_migrations order by version")
                .fetch_all(&pool)
                .await
                .expect("migrations table");
        assert_eq!(applied, vec![(1,)]);
        pool.close().await;
        rows
    };
    assert_eq!(before.len(), ACCOUNTS.len());

    // The upgrade: the service migrates at start-up, as an operator's deploy would.
    let app = TestApp::spawn_with(|c| c.database_url = SecretString::from(url.to_string())).await;

    let applied: Vec<(i64,)> =
        sqlx::query_as("select version from _sqlx_migrations where success order by version")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    let latest = MIGRATOR.migrations.iter().map(|m| m.version).max().unwrap();
    assert_eq!(applied.last(), Some(&(latest,)));
    assert!(latest > 1, "there is something to upgrade to");
    assert_eq!(
        users(&app.pool).await,
        before,
        "accounts unchanged by the upgrade"
    );
    assert_eq!(
        app.count("select count(*) from users where totp_enabled_at is not null or totp_secret_enc is not null")
            .await,
        0,
        "nobody gets two-factor by accident"
    );

    // Alice's cookie from before the upgrade carries no MAC, so it is refused (it cannot
    // be told from a forged one without a database read; docs/scale.md). She signs in
    // again and finds her history, and the old session listed, where she can end it.
    let alice = Browser::with_session_cookie(&app, ALICE_SESSION);
    let home = alice.get("/").await;
    assert_status(&home, StatusCode::SEE_OTHER);
    assert_eq!(location(&home), "/sign-in");
    assert_status(
        &alice.sign_in("alice@example.com", ACCOUNTS[0].1).await,
        StatusCode::SEE_OTHER,
    );
    let home = alice.get("/").await;
    assert_status(&home, StatusCode::OK);
    assert!(home.text().await.unwrap().contains("alice@example.com"));
    let security = alice.get("/settings/security").await.text().await.unwrap();
    assert!(
        security.contains("198.51.100.7"),
        "the session's IP is listed"
    );
    assert!(security.contains("Password changed"), "audit history kept");

    // Carol's reset link, mailed before the upgrade, works after it.
    let carol = app.browser();
    assert_status(
        &carol
            .get(&format!("/reset-password?token={CAROL_TOKEN}"))
            .await,
        StatusCode::OK,
    );

    // Every account signs in with the password it had.
    for (email, password) in ACCOUNTS {
        let browser = app.browser();
        let response = browser.sign_in(email, password).await;
        assert_status(&response, StatusCode::SEE_OTHER);
        assert_eq!(location(&response), "/", "{email}");
        assert_status(&browser.get("/").await, StatusCode::OK);
        let wrong = app
            .browser()
            .sign_in(email, "not the password at all")
            .await;
        assert_status(&wrong, StatusCode::UNPROCESSABLE_ENTITY);
    }
    // Bob's hash with old parameters was upgraded at that sign-in, and still verifies.
    let bob_hash = app.password_hash("bob.mixed@example.com").await;
    assert!(bob_hash.contains("m=19456,t=2,p=1"), "{bob_hash}");
    assert_status(
        &app.browser()
            .sign_in("bob.mixed@example.com", ACCOUNTS[1].1)
            .await,
        StatusCode::SEE_OTHER,
    );

    // The link is still single-use and sets a new password.
    let reset = carol
        .reset_password(CAROL_TOKEN, NEW_PASSWORD, NEW_PASSWORD)
        .await;
    assert_status(&reset, StatusCode::SEE_OTHER);
    assert_status(
        &app.browser()
            .sign_in("carol@example.com", NEW_PASSWORD)
            .await,
        StatusCode::SEE_OTHER,
    );

    // Mail queued before the upgrade goes out after it.
    let mails = app.mails_to("carol@example.com", 1).await;
    assert!(
        mails
            .iter()
            .any(|m| m.data.contains("Queued before the upgrade")),
        "the queued mail was delivered"
    );
    assert_eq!(
        app.count("select count(*) from audit_events where ip <> '127.0.0.1'")
            .await,
        5,
        "audit rows from before the upgrade (the test's own come from 127.0.0.1)"
    );
}

#[tokio::test]
async fn upgrading_to_0003_keys_every_account_in_rust_and_keeps_addresses_unique() {
    let url = database_at_0001().await;
    {
        let pool = PgPool::connect(&url).await.expect("connect");
        migrations_up_to(2)
            .run(&pool)
            .await
            .expect("migrating to 0002");
        // An address whose Rust key differs from Postgres `lower()` (here `ilker@...`),
        // with Alice's password.
        sqlx::query(
            "insert into users (email, password_hash)
             select 'İlker@Example.com', password_hash from users where email = 'alice@example.com'",
        )
        .execute(&pool)
        .await
        .expect("a non-ascii account at 0002");
        pool.close().await;
    }

    let app = TestApp::spawn_with(|c| c.database_url = SecretString::from(url.to_string())).await;

    let keys: Vec<(String, String)> =
        sqlx::query_as("select email, email_key from users order by email collate \"C\"")
            .fetch_all(&app.pool)
            .await
            .expect("keys");
    assert_eq!(
        keys,
        vec![
            (
                "Bob.Mixed@Example.com".into(),
                "bob.mixed@example.com".into()
            ),
            ("alice@example.com".into(), "alice@example.com".into()),
            ("carol@example.com".into(), "carol@example.com".into()),
            (
                "İlker@Example.com".into(),
                "i\u{307}lker@example.com".into()
            ),
        ],
        "ASCII keys backfilled with lower(), the non-ASCII one re-keyed in Rust"
    );
    let (nullable,): (String,) = sqlx::query_as(
        "select is_nullable from information_schema.columns
         where table_name = 'users' and column_name = 'email_key'",
    )
    .fetch_one(&app.pool)
    .await
    .expect("column");
    assert_eq!(nullable, "NO");
    assert_eq!(
        app.count("select count(*) from pg_indexes where indexname = 'users_email_key'")
            .await,
        0,
        "the lower(email) index is gone"
    );

    // Mixed-case Bob and the Turkish address both sign in as typed in any case.
    for (email, password) in [
        ("BOB.MIXED@example.com", ACCOUNTS[1].1),
        ("İLKER@example.com", ACCOUNTS[0].1),
    ] {
        let response = app.browser().sign_in(email, password).await;
        assert_status(&response, StatusCode::SEE_OTHER);
    }
    // The unique key still refuses a second Bob.
    let taken = latchkey::store::users::insert(
        &app.pool,
        &latchkey::domain::EmailAddress::parse("bob.mixed@EXAMPLE.com").expect("email"),
        "x",
    )
    .await;
    assert!(
        matches!(
            taken,
            Err(latchkey::store::users::CreateUserError::EmailTaken)
        ),
        "{taken:?}"
    );
}

const FIXTURE_0002: &str = include_str!("../fixtures/schema_0002_data.sql");

#[tokio::test]
async fn upgrading_from_0002_keeps_each_address_throttle_standing() {
    let url = database_at(2, &[FIXTURE, FIXTURE_0002]).await;
    let app = TestApp::spawn_with(|c| c.database_url = SecretString::from(url.to_string())).await;

    // Waiting out a delay before the upgrade: still waiting after it, right password or not.
    let waiting = app
        .browser()
        .sign_in("alice@example.com", ACCOUNTS[0].1)
        .await;
    assert_status(&waiting, StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = waiting
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!(retry_after > 60, "{retry_after}");

    // Four failures on record: one more guess is checked, the next waits.
    let guesser = app.browser();
    assert_status(
        &guesser
            .sign_in("carol@example.com", "not her passphrase")
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    );
    assert_status(
        &guesser.sign_in("carol@example.com", ACCOUNTS[2].1).await,
        StatusCode::TOO_MANY_REQUESTS,
    );

    // Bob's two failures from the 0001 fixture: his right password clears them.
    assert_status(
        &app.browser()
            .sign_in("bob.mixed@example.com", ACCOUNTS[1].1)
            .await,
        StatusCode::SEE_OTHER,
    );
    assert_eq!(
        app.count("select count(*) from login_throttle where email_key = 'bob.mixed@example.com'")
            .await,
        0
    );
}
