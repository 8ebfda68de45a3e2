//! One key per address, computed by the service: NFKC, then Unicode's default lowercase.
//! Accounts are found by it and two addresses with one key cannot both have an account,
//! whatever Postgres `lower()` would make of them.

use latchkey::domain::EmailAddress;
use latchkey::store::users::{self, CreateUserError};
use reqwest::StatusCode;

use crate::helpers::*;

async fn signs_in(app: &TestApp, email: &str) -> bool {
    let response = app.browser().sign_in(email, PASSWORD).await;
    response.status() == StatusCode::SEE_OTHER
}

#[tokio::test]
async fn non_ascii_addresses_sign_in_by_one_documented_rule() {
    let app = TestApp::spawn().await;
    app.create_user("İlker@example.com", PASSWORD).await;
    app.create_user("Straße@example.com", PASSWORD).await;

    // Turkish dotted İ: as created, or typed with a combining dot, is the same account;
    // plain `ilker` is another address (no locale-specific lowercasing).
    assert!(signs_in(&app, "İlker@example.com").await, "as created");
    assert!(
        signs_in(&app, "i\u{307}lker@example.com").await,
        "i + combining dot"
    );
    assert!(!signs_in(&app, "ilker@example.com").await, "plain i");
    // ß is lowercased, not case-folded: STRASSE is another address; capital ẞ is not.
    assert!(
        signs_in(&app, "STRAẞE@EXAMPLE.COM").await,
        "capital sharp s"
    );
    assert!(!signs_in(&app, "STRASSE@example.com").await, "ss");
    // Compatibility forms (full-width letters) are the letters they stand for.
    assert!(
        signs_in(&app, "ｓｔｒａßｅ@example.com").await,
        "full-width"
    );
}

#[tokio::test]
async fn two_addresses_with_one_key_cannot_both_have_accounts() {
    let app = TestApp::spawn().await;
    let hash = app
        .state()
        .accounts
        .hasher
        .hash(secrecy::SecretString::from(PASSWORD.to_owned()))
        .await
        .expect("hash");
    for (first, second) in [
        ("Alice@example.com", "ａｌｉｃｅ@example.com"),
        ("İlker@example.com", "i\u{307}lker@example.com"),
        ("Straße@example.com", "STRAẞE@example.com"),
    ] {
        let (a, b) = (
            EmailAddress::parse(first).expect("email"),
            EmailAddress::parse(second).expect("email"),
        );
        // At the same moment, as two `user create` runs would race.
        let (one, other) = tokio::join!(
            users::insert(&app.pool, &a, &hash),
            users::insert(&app.pool, &b, &hash)
        );
        let created = [&one, &other].iter().filter(|r| r.is_ok()).count();
        let taken = [&one, &other]
            .iter()
            .filter(|r| matches!(r, Err(CreateUserError::EmailTaken)))
            .count();
        assert_eq!(
            (created, taken),
            (1, 1),
            "{first} / {second}: {one:?} {other:?}"
        );
    }
    assert_eq!(app.count("select count(*) from users").await, 3);
}

#[tokio::test]
async fn a_stored_address_that_no_longer_parses_is_kept_as_stored() {
    let app = TestApp::spawn().await;
    let id = app.create_user("alice@example.com", PASSWORD).await;
    // As if the account predated a stricter rule: no dot in the domain no longer parses.
    sqlx::query("update users set email = 'Alice@intranet' where id = $1")
        .bind(id)
        .execute(&app.pool)
        .await
        .expect("update");
    let user = users::find_by_id(&app.pool, id)
        .await
        .expect("read")
        .expect("account");
    assert_eq!(user.email.as_str(), "Alice@intranet");
    assert!(
        signs_in(&app, "alice@example.com").await,
        "found by its key"
    );
}
