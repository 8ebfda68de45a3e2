//! A test's own Postgres database, `latchkey_test_<uuid>`, dropped when it drops.

use std::fmt;
use std::ops::Deref;
use std::time::Duration;

use sqlx::{Connection, PgConnection};

/// Where test databases are created; override with LATCHKEY_TEST_PG.
pub fn postgres_base() -> String {
    std::env::var("LATCHKEY_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A database URL of its own for one test. The database is dropped (`with (force)`,
/// from a short-lived connection to `postgres`) when this value drops, so keep it alive
/// as long as anything uses the database: declare it before the app or processes on it.
/// It dereferences to the URL, so `&database` goes wherever a `&str` URL does.
#[must_use = "the database is dropped when this value drops"]
pub struct TestDatabase {
    name: String,
    url: String,
}

impl TestDatabase {
    /// A fresh name on the test server; nothing is created yet (`latchkey serve`,
    /// `latchkey migrate` and `Server::start` create a missing database).
    pub fn named() -> TestDatabase {
        let name = format!("latchkey_test_{}", uuid::Uuid::new_v4().simple());
        let url = format!("{}/{name}", postgres_base());
        TestDatabase { name, url }
    }

    /// A fresh database, created empty.
    pub async fn create() -> TestDatabase {
        let database = TestDatabase::named();
        let mut admin = PgConnection::connect(&format!("{}/postgres", postgres_base()))
            .await
            .expect("connect to postgres");
        sqlx::query(&format!("create database {}", database.name))
            .execute(&mut admin)
            .await
            .expect("create database");
        let _ = admin.close().await;
        database
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Deref for TestDatabase {
    type Target = str;

    fn deref(&self) -> &str {
        &self.url
    }
}

impl fmt::Display for TestDatabase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

impl fmt::Debug for TestDatabase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TestDatabase").field(&self.name).finish()
    }
}

impl Drop for TestDatabase {
    /// Drop can't await, and the test's runtime may be the current-thread one this drop
    /// runs on: the statement runs on a thread of its own with its own runtime, and a
    /// failure is reported on stderr, never a panic (which would abort a panicking test).
    fn drop(&mut self) {
        let name = self.name.clone();
        let admin_url = format!("{}/postgres", postgres_base());
        let dropping = std::thread::Builder::new()
            .name("drop-test-database".into())
            .spawn(move || drop_database(&admin_url, &name));
        let outcome = match dropping {
            Ok(thread) => thread
                .join()
                .unwrap_or_else(|_| Err("the dropping thread panicked".into())),
            Err(e) => Err(format!("no thread to drop it on: {e}")),
        };
        if let Err(why) = outcome {
            eprintln!("test database {} was not dropped: {why}", self.name);
        }
    }
}

fn drop_database(admin_url: &str, name: &str) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    runtime.block_on(async {
        let work = async {
            let mut admin = PgConnection::connect(admin_url).await?;
            // `with (force)` ends the sessions still on it (a killed process's pool,
            // a background task that outlived its server).
            sqlx::query(&format!("drop database if exists {name} with (force)"))
                .execute(&mut admin)
                .await?;
            admin.close().await
        };
        match tokio::time::timeout(Duration::from_secs(30), work).await {
            Ok(done) => done.map_err(|e| e.to_string()),
            Err(_) => Err("timed out after 30 s".into()),
        }
    })
}
