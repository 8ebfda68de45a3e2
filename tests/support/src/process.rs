//! The real `latchkey serve` binary as a child process: for the tests that kill it with
//! SIGKILL, run two instances on one database, or watch its memory under load.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use latchkey::auth::passwords::Hasher;
use latchkey::config::Config;
use latchkey::domain::EmailAddress;
use latchkey::store::users;
use secrecy::SecretString;
use sqlx::PgPool;

pub use crate::database::TestDatabase;

/// A fresh database (`latchkey_test_<uuid>`), not yet created: `serve` creates it at
/// start. Dropped when the returned value drops, so declare it before the processes.
pub fn fresh_database() -> TestDatabase {
    TestDatabase::named()
}

/// The secret every instance of one test shares (cookies made by one verify on another).
fn secret_key() -> String {
    base64::engine::general_purpose::STANDARD.encode([42u8; 32])
}

pub struct ServiceProcess {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    child: Child,
    dir: PathBuf,
}

impl ServiceProcess {
    /// Starts `latchkey serve` on a free port with `database_url` and mail to `smtp_url`,
    /// plus `extra` environment variables, and waits until `/readyz` answers 200.
    pub async fn start(database_url: &str, smtp_url: &str, extra: &[(&str, &str)]) -> Self {
        Self::start_keyed(database_url, smtp_url, extra, true).await
    }

    /// As `start`, without `LATCHKEY_SECRET_KEY`: the process makes its development key.
    pub async fn start_without_secret_key(
        database_url: &str,
        smtp_url: &str,
        extra: &[(&str, &str)],
    ) -> Self {
        Self::start_keyed(database_url, smtp_url, extra, false).await
    }

    async fn start_keyed(
        database_url: &str,
        smtp_url: &str,
        extra: &[(&str, &str)],
        secret_key: bool,
    ) -> Self {
        // The free port is found by binding and letting go; on a busy machine another
        // process may take it first, so a failed bind gets another port.
        for _ in 0..3 {
            if let Some(process) = Self::try_start(database_url, smtp_url, extra, secret_key).await
            {
                return process;
            }
        }
        panic!("latchkey serve could not bind a free port three times");
    }

    async fn try_start(
        database_url: &str,
        smtp_url: &str,
        extra: &[(&str, &str)],
        with_secret_key: bool,
    ) -> Option<Self> {
        // Its own working directory, so no config/local.toml or var/ of the checkout leaks in.
        let dir =
            std::env::temp_dir().join(format!("latchkey-proc-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("process dir");
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        let log = std::fs::File::create(dir.join("log")).expect("log file");
        let mut command = Command::new(latchkey_binary());
        command
            .arg("serve")
            .current_dir(&dir)
            .env("DATABASE_URL", database_url)
            .env("LATCHKEY_LISTEN", format!("127.0.0.1:{port}"))
            .env("LATCHKEY_PUBLIC_URL", &base)
            .env("LATCHKEY_SMTP_URL", smtp_url)
            .env("LATCHKEY_IP_RATE_LIMIT", "0")
            // As in TestApp: on only where a test sets it.
            .env("LATCHKEY_NEW_DEVICE_MAIL", "off")
            .env(
                "LATCHKEY_LOG",
                std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log);
        if with_secret_key {
            command.env("LATCHKEY_SECRET_KEY", secret_key());
        } else {
            command.env_remove("LATCHKEY_SECRET_KEY");
        }
        for (name, value) in extra {
            command.env(name, value);
        }
        let child = command.spawn().expect("start latchkey serve");
        let mut process = ServiceProcess { base, child, dir };
        process.wait_ready().await.then_some(process)
    }

    /// Its working directory (where `var/` goes).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `false` when the process exited because its port was taken.
    async fn wait_ready(&mut self) -> bool {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client");
        let deadline = Instant::now() + Duration::from_secs(90);
        // A failed bind exits at once, well before a real start-up (connect, migrate) ends.
        tokio::time::sleep(Duration::from_millis(200)).await;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = self.log();
                if log.contains("binding 127.0.0.1:") {
                    return false;
                }
                panic!("latchkey serve exited with {status}:\n{log}");
            }
            if let Ok(response) = client.get(format!("{}/readyz", self.base)).send().await {
                // Another server that took the port would answer too: ours must still run.
                if response.status() == 200 && matches!(self.child.try_wait(), Ok(None)) {
                    return true;
                }
            }
            assert!(
                Instant::now() < deadline,
                "latchkey serve was not ready in 90 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What the process wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// SIGKILL: no shutdown, no cleanup, in-flight requests cut wherever they are.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Still running (not exited or killed)?
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `latchkey` binary cargo built for this test run. `CARGO_BIN_EXE_latchkey` is only
/// set while cargo compiles an integration test of the latchkey package itself, not
/// this library, so it is found next to the test binary (`target/<profile>/deps/it-…`
/// sits beside `target/<profile>/latchkey`); `LATCHKEY_BIN` overrides it.
pub fn latchkey_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("LATCHKEY_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary is in target/<profile>/deps/");
    let binary = profile_dir.join(format!("latchkey{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.is_file(),
        "no latchkey binary at {} (set LATCHKEY_BIN)",
        binary.display()
    );
    binary
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// A pool straight to the test database (not through any instance).
pub async fn connect(database_url: &str) -> PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(database_url)
        .await
        .expect("connect to the test database")
}

/// Accounts with `password`, made as `latchkey user create` would; hashed once, since
/// every account gets the same password (each row still has a valid argon2id PHC string).
pub async fn create_users(pool: &PgPool, emails: &[String], password: &str) {
    let config = Config::defaults().expect("defaults");
    let hasher = Hasher::start(&config.argon2).expect("hasher");
    let hash = hasher
        .hash(SecretString::from(password.to_owned()))
        .await
        .expect("hash");
    for email in emails {
        users::insert(pool, &EmailAddress::parse(email).expect("email"), &hash)
            .await
            .expect("insert user");
    }
}

/// Resident memory of process `pid` in KiB, from /proc/<pid>/status.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}
