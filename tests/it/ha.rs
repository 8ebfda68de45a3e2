//! latchkey at scale: two instances behind PgBouncer in transaction pooling mode, and
//! (ignored in the quick run, `.ci/run` runs it by name) a Patroni cluster whose primary
//! is killed under load. Both run Debian's packages under the files in `deploy/`, with
//! only ports and paths replaced, on loopback ports 15400–15499; `.ci/install-ha`
//! installs the packages. Without them these tests fail under `CI` and skip otherwise.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::burst::{self, RawRequest};
use crate::helpers::*;
use crate::process::{self, ServiceProcess};
use crate::smtp_sink::SmtpSink;

/// PgBouncer's port in the PgBouncer test.
const PGBOUNCER_PORT: u16 = 15401;
/// The password PgBouncer asks its clients for (SCRAM); Postgres behind it trusts loopback.
const POOLER_PASSWORD: &str = "pooler-test-password";

/// Whether every program in `programs` is installed. Missing ones fail the test under
/// `CI` (so CI cannot pass by skipping) and skip it with a printed reason otherwise.
fn installed(test: &str, programs: &[&str]) -> bool {
    let missing: Vec<&str> = programs
        .iter()
        .copied()
        .filter(|program| !Path::new(program).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: {missing:?} not installed (run .ci/install-ha)"
    );
    println!("{test}: skipped, {missing:?} not installed (run .ci/install-ha)");
    false
}

/// A scratch directory owned by the `postgres` user (Postgres and PgBouncer refuse to run
/// as root), removed when dropped.
struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    fn new(name: &str) -> ScratchDir {
        let path =
            std::env::temp_dir().join(format!("latchkey-{name}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path).expect("scratch dir");
        let scratch = ScratchDir { path };
        scratch.give_to_postgres();
        scratch
    }

    fn give_to_postgres(&self) {
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&self.path)
            .status()
            .expect("chown");
        assert!(status.success(), "chown {}", self.path.display());
    }

    fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("config dir");
        }
        std::fs::write(&path, text).expect("write config");
        self.give_to_postgres();
        path
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.join(name)).unwrap_or_default()
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A daemon run in the foreground as the `postgres` user (`setpriv` execs it, so the pid
/// is the daemon's own), killed with SIGKILL when dropped.
struct Daemon {
    name: String,
    child: Child,
}

impl Daemon {
    fn start(name: &str, program: &str, args: &[&str], log: &Path, env: &[(&str, &str)]) -> Daemon {
        let log = std::fs::File::create(log).expect("daemon log");
        let mut command = Command::new("setpriv");
        command
            .args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("daemon log"))
            .stderr(log)
            .env("HOME", "/var/lib/postgresql");
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Daemon {
            name: name.to_owned(),
            child,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited with {status}", self.name);
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`.
async fn wait_for_port(port: u16, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "{what} not listening on {port}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// PgBouncer under deploy/pgbouncer/pgbouncer.ini, in front of 127.0.0.1:`upstream_port`.
struct Pgbouncer {
    daemon: Daemon,
    dir: ScratchDir,
    port: u16,
}

impl Pgbouncer {
    /// `adjust` may change the shipped file (only the trap test does).
    async fn start(
        port: u16,
        upstream_port: u16,
        adjust: impl FnOnce(String) -> String,
    ) -> Pgbouncer {
        let dir = ScratchDir::new("pgbouncer");
        let ini = adjust(include_str!("../../deploy/pgbouncer/pgbouncer.ini").to_owned())
            .replace("@LISTEN_PORT@", &port.to_string())
            .replace("@UPSTREAM_PORT@", &upstream_port.to_string())
            .replace("@DIR@", &dir.path.display().to_string());
        let ini = dir.write("pgbouncer.ini", &ini);
        dir.write(
            "userlist.txt",
            &format!("\"postgres\" \"{POOLER_PASSWORD}\"\n"),
        );
        let ini = ini.display().to_string();
        let mut daemon = Daemon::start(
            "pgbouncer",
            "/usr/sbin/pgbouncer",
            &[&ini],
            &dir.join("stdout.log"),
            &[],
        );
        wait_for_port(port, Duration::from_secs(10), "pgbouncer").await;
        daemon.assert_running();
        Pgbouncer { daemon, dir, port }
    }

    /// The URL of `database` through PgBouncer.
    fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres:{POOLER_PASSWORD}@127.0.0.1:{}/{database}",
            self.port
        )
    }

    fn log(&self) -> String {
        self.dir.read("pgbouncer.log")
    }
}

/// The port of the Postgres the other tests use (LATCHKEY_TEST_PG, default 5432).
fn test_postgres_port() -> u16 {
    postgres_base()
        .rsplit(':')
        .next()
        .and_then(|port| port.trim_end_matches('/').parse().ok())
        .unwrap_or(5432)
}

/// Creates a fresh `latchkey_test_<uuid>` database on the Postgres at `base` and returns
/// its name. Through PgBouncer latchkey cannot create it itself (README).
async fn create_database(base: &str) -> String {
    let name = format!("latchkey_test_{}", uuid::Uuid::new_v4().simple());
    let admin = process::connect(&format!("{base}/postgres")).await;
    sqlx::query(&format!("create database {name}"))
        .execute(&admin)
        .await
        .expect("create database");
    admin.close().await;
    name
}

/// PgBouncer's version as (major, minor), from `pgbouncer --version`.
fn pgbouncer_version() -> (u32, u32) {
    let out = Command::new("/usr/sbin/pgbouncer")
        .arg("--version")
        .output()
        .expect("pgbouncer --version");
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split_whitespace().nth(1).expect("PgBouncer <version>");
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_through_pgbouncer_share_sessions_links_throttling_and_the_outbox() {
    if !installed("pgbouncer", &["/usr/sbin/pgbouncer"]) {
        return;
    }
    let pgbouncer = Pgbouncer::start(PGBOUNCER_PORT, test_postgres_port(), |ini| ini).await;
    let name = create_database(&postgres_base()).await;
    // Sessions across instances, a link made on one and used on the other, the shared
    // throttle, and 62 mails from two outbox workers exactly once each.
    crate::instances::two_instances_share_everything(
        &pgbouncer.url(&name),
        &format!("{}/{name}", postgres_base()),
        &[],
    )
    .await;
    let log = pgbouncer.log();
    assert!(
        log.contains(&format!("{name}/postgres@")),
        "the instances went through PgBouncer:\n{log}"
    );
}

/// The trap the deploy file's comment describes: PgBouncer before 1.21 in transaction mode
/// gives a server connection to another client between sqlx's Parse and Bind, and sqlx
/// names its statements per connection even with the statement cache off, so a second
/// client collides with the first one's statement. With 1.21 or later and
/// `max_prepared_statements`, the same queries must work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbouncer_transaction_mode_needs_1_21_for_sqlx_prepared_statements() {
    if !installed("pgbouncer", &["/usr/sbin/pgbouncer"]) {
        return;
    }
    let version = pgbouncer_version();
    let supports_prepared = version >= (1, 21);
    let pgbouncer = Pgbouncer::start(PGBOUNCER_PORT + 1, test_postgres_port(), |ini| {
        let ini = ini.replace("pool_mode = session", "pool_mode = transaction");
        if supports_prepared {
            ini.replace(
                "pool_mode = transaction",
                "pool_mode = transaction\nmax_prepared_statements = 200",
            )
        } else {
            ini
        }
    })
    .await;
    let name = create_database(&postgres_base()).await;
    let url = format!("{}?statement-cache-capacity=0", pgbouncer.url(&name));
    let mut errors = Vec::new();
    // Two clients in turn: the second is handed the server connection the first left.
    for client in 0..2 {
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
            .await
            .expect("connect through pgbouncer");
        for i in 0..3 {
            let got: Result<i32, _> = sqlx::query_scalar("select $1::int + 1")
                .bind(i)
                .fetch_one(&mut conn)
                .await;
            match got {
                Ok(n) => assert_eq!(n, i + 1),
                Err(e) => errors.push(format!("client {client}, query {i}: {e}")),
            }
        }
    }
    println!("PgBouncer {version:?} in transaction mode, statement cache off: {errors:#?}");
    if supports_prepared {
        assert!(errors.is_empty(), "{errors:#?}");
    } else {
        assert!(
            errors.iter().any(|e| e.contains("sqlx_s_1")),
            "expected sqlx's named statements to collide: {errors:#?}"
        );
    }
}
