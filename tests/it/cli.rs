//! `latchkey user create` and `latchkey migrate`, run as an operator would.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::helpers::*;

fn latchkey(database_url: &str, args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .args(args)
        .env("DATABASE_URL", database_url)
        .env("LATCHKEY_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run latchkey");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[tokio::test]
async fn user_create_makes_an_account_that_can_sign_in() {
    let app = TestApp::spawn().await;
    let made = latchkey(
        &app.database_url,
        &["user", "create", "--email", "carol@example.com"],
        &format!("{PASSWORD}\n"),
    );
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    assert_eq!(
        app.browser()
            .sign_in("carol@example.com", PASSWORD)
            .await
            .status(),
        303
    );

    let again = latchkey(
        &app.database_url,
        &["user", "create", "--email", "CAROL@example.com"],
        &format!("{PASSWORD}\n"),
    );
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    let weak = latchkey(
        &app.database_url,
        &["user", "create", "--email", "dave@example.com"],
        "short\n",
    );
    assert!(!weak.status.success());
    assert!(String::from_utf8_lossy(&weak.stderr).contains("15 characters or more"));
    assert_eq!(app.count("select count(*) from users").await, 1);
}

#[tokio::test]
async fn migrate_creates_a_missing_database() {
    let url = crate::process::fresh_database();
    let out = latchkey(&url, &["migrate"], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = latchkey(&url, &["migrate"], "");
    assert!(again.status.success());
}
