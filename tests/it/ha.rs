//! latchkey at scale: two instances behind PgBouncer in transaction pooling mode, the
//! start-up check that refuses a pooler losing named statements, and (ignored in the
//! quick run, `.ci/run` runs it by name) a Patroni cluster whose primary is killed under
//! load, reached through PgBouncer in transaction mode. They run Debian's packages and
//! a PgBouncer >= 1.21 built from Debian's source package under the files in `deploy/`,
//! with only ports, paths and pool sizes replaced, on loopback ports 15400–15499;
//! `.ci/install-ha` installs and builds them. Without them these tests fail under `CI`
//! and skip otherwise.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::helpers::*;
use crate::process::{self, ServiceProcess};
use crate::smtp_sink::SmtpSink;

/// PgBouncer's port in the PgBouncer test.
const PGBOUNCER_PORT: u16 = 15401;
/// Debian's PgBouncer (1.18 on Debian 12): no `max_prepared_statements`.
const DEBIAN_PGBOUNCER: &str = "/usr/sbin/pgbouncer";
/// Fewer server connections than the two instances' pools hold (10 each).
const SERVER_CONNECTIONS: &str = "default_pool_size = 4";

/// PgBouncer 1.21 or later, as `.ci/install-ha` builds (or links) it;
/// `LATCHKEY_TEST_PGBOUNCER` overrides the path.
fn current_pgbouncer() -> String {
    std::env::var("LATCHKEY_TEST_PGBOUNCER")
        .unwrap_or_else(|_| "/var/cache/latchkey-ci/pgbouncer/pgbouncer".to_owned())
}

/// The shipped file with fewer server connections than the instances' pools.
fn fewer_server_connections(ini: String) -> String {
    assert!(
        ini.contains("pool_mode = transaction"),
        "the shipped file pools transactions"
    );
    let replaced = ini
        .lines()
        .map(|line| {
            if line.starts_with("default_pool_size") {
                SERVER_CONNECTIONS
            } else {
                line
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(replaced.contains(SERVER_CONNECTIONS));
    replaced
}

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
    /// Runs until dropped.
    _daemon: Daemon,
    dir: ScratchDir,
    port: u16,
}

impl Pgbouncer {
    /// `adjust` may change the shipped file; `program` is the PgBouncer binary.
    async fn start(
        program: &str,
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
        let mut daemon = Daemon::start("pgbouncer", program, &[&ini], &dir.join("stdout.log"), &[]);
        wait_for_port(port, Duration::from_secs(10), "pgbouncer").await;
        daemon.assert_running();
        Pgbouncer {
            _daemon: daemon,
            dir,
            port,
        }
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
/// its name. Through PgBouncer latchkey cannot create it itself (docs/deploy.md).
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
fn pgbouncer_version(program: &str) -> (u32, u32) {
    let out = Command::new(program)
        .arg("--version")
        .output()
        .expect("pgbouncer --version");
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split_whitespace().nth(1).expect("PgBouncer <version>");
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// Whether `program` is a PgBouncer 1.21 or later (fails under `CI` otherwise).
fn current_installed(test: &str, program: &str) -> bool {
    if !installed(test, &[program]) {
        return false;
    }
    let version = pgbouncer_version(program);
    assert!(
        version >= (1, 21),
        "{test}: {program} is PgBouncer {version:?}, not 1.21 or later (run .ci/install-ha)"
    );
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_through_pgbouncer_in_transaction_mode_share_sessions_links_throttling_and_the_outbox()
 {
    let program = current_pgbouncer();
    if !current_installed("pgbouncer", &program) {
        return;
    }
    let pgbouncer = Pgbouncer::start(
        &program,
        PGBOUNCER_PORT,
        test_postgres_port(),
        fewer_server_connections,
    )
    .await;
    let name = create_database(&postgres_base()).await;
    // Concurrent sign-ins each in their own account, sessions across instances, a link
    // made on one and used on the other, the shared throttle, and 62 mails from two
    // outbox workers exactly once each; migrations applied straight to Postgres.
    let logs = crate::instances::two_instances_share_everything(
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
    for instance in logs {
        assert!(
            instance.contains("behind a transaction pooler"),
            "the start-up check saw transaction pooling:\n{instance}"
        );
    }
}

/// Starts the real binary on `database_url` and expects it to refuse: its output.
async fn refused_start(database_url: &str) -> String {
    let smtp = SmtpSink::start().await;
    let mut command = Command::new(process::latchkey_binary());
    command
        .arg("serve")
        .env("DATABASE_URL", database_url)
        .env("LATCHKEY_LISTEN", "127.0.0.1:0")
        .env("LATCHKEY_PUBLIC_URL", "http://127.0.0.1:1")
        .env("LATCHKEY_SMTP_URL", smtp.url())
        .env(
            "LATCHKEY_SECRET_KEY",
            "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=",
        );
    // It refuses during start-up; a latchkey that started would serve until killed.
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || command.output()),
    )
    .await
    .expect("latchkey refused within a minute (it may have started)")
    .expect("join")
    .expect("latchkey runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!output.status.success(), "latchkey started:\n{text}");
    text
}

/// The trap the deploy file's comment describes: a pooler in transaction mode that
/// does not keep named statements hands a server connection to another client between
/// sqlx's Parse and Bind, so one client's statement is missing or another's runs. The
/// start-up check refuses such a pooler: Debian's PgBouncer 1.18, and a current one with
/// `max_prepared_statements = 0`; the same current one with the shipped setting passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_refuses_a_transaction_pooler_that_loses_prepared_statements() {
    let current = current_pgbouncer();
    if !installed("pgbouncer", &[DEBIAN_PGBOUNCER]) || !current_installed("pgbouncer", &current) {
        return;
    }
    let name = create_database(&postgres_base()).await;
    {
        let db = process::connect(&format!("{}/{name}", postgres_base())).await;
        latchkey::db::migrate(&db).await.expect("migrate directly");
        db.close().await;
    }
    let debian_is_old = pgbouncer_version(DEBIAN_PGBOUNCER) < (1, 21);
    let mut losing = vec![(
        format!(
            "PgBouncer {:?} without max_prepared_statements",
            pgbouncer_version(&current)
        ),
        current.clone(),
        "max_prepared_statements = 0",
    )];
    if debian_is_old {
        losing.push((
            format!(
                "Debian's PgBouncer {:?}",
                pgbouncer_version(DEBIAN_PGBOUNCER)
            ),
            DEBIAN_PGBOUNCER.to_owned(),
            "",
        ));
    } else {
        println!("Debian's PgBouncer is 1.21 or later here: checked with the setting off only");
    }
    for (port, (what, program, setting)) in (PGBOUNCER_PORT + 1..).zip(losing) {
        let pgbouncer = Pgbouncer::start(&program, port, test_postgres_port(), |ini| {
            let ini = fewer_server_connections(ini)
                .lines()
                .filter(|line| !line.starts_with("max_prepared_statements"))
                .collect::<Vec<_>>()
                .join("\n");
            format!("{ini}\n{setting}\n")
        })
        .await;
        let text = refused_start(&pgbouncer.url(&name)).await;
        println!("{what}: {}", text.lines().last().unwrap_or_default());
        assert!(
            text.contains("PgBouncer >= 1.21") && text.contains("max_prepared_statements"),
            "{what}: refused, naming the fix:\n{text}"
        );
    }

    // The same check passes the shipped configuration.
    let pgbouncer = Pgbouncer::start(
        &current,
        PGBOUNCER_PORT + 3,
        test_postgres_port(),
        fewer_server_connections,
    )
    .await;
    let smtp = SmtpSink::start().await;
    let instance = ServiceProcess::start(
        &pgbouncer.url(&name),
        &smtp.url(),
        &[("LATCHKEY_LOG", "info")],
    )
    .await;
    assert!(
        instance.log().contains("behind a transaction pooler"),
        "{}",
        instance.log()
    );

    // And Debian's PgBouncer in session mode, where each client keeps its server
    // connection: nothing to refuse, nothing seen as transaction pooling.
    let session_mode = Pgbouncer::start(
        DEBIAN_PGBOUNCER,
        PGBOUNCER_PORT + 6,
        test_postgres_port(),
        |ini| {
            ini.lines()
                .filter(|line| !line.starts_with("max_prepared_statements"))
                .map(|line| line.replace("pool_mode = transaction", "pool_mode = session"))
                .collect::<Vec<_>>()
                .join("\n")
        },
    )
    .await;
    let instance = ServiceProcess::start(
        &session_mode.url(&name),
        &smtp.url(),
        &[("LATCHKEY_LOG", "info")],
    )
    .await;
    assert!(
        !instance.log().contains("behind a transaction pooler"),
        "{}",
        instance.log()
    );
}

/// Why the check exists, shown with sqlx alone: two clients in turn through a pooler in
/// transaction mode with the statement cache off. Debian's 1.18 collides on sqlx's
/// statement names; a current one with the shipped setting runs every query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbouncer_transaction_mode_needs_1_21_for_sqlx_prepared_statements() {
    let current = current_pgbouncer();
    if !installed("pgbouncer", &[DEBIAN_PGBOUNCER]) || !current_installed("pgbouncer", &current) {
        return;
    }
    let name = create_database(&postgres_base()).await;
    for (port, program) in (PGBOUNCER_PORT + 4..).zip([DEBIAN_PGBOUNCER.to_owned(), current]) {
        let version = pgbouncer_version(&program);
        let supports_prepared = version >= (1, 21);
        let pgbouncer = Pgbouncer::start(&program, port, test_postgres_port(), |ini| {
            let ini = fewer_server_connections(ini);
            if supports_prepared {
                ini
            } else {
                ini.lines()
                    .filter(|line| !line.starts_with("max_prepared_statements"))
                    .collect::<Vec<_>>()
                    .join("\n")
            }
        })
        .await;
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
}

// ---------------------------------------------------------------------------------------
// Failover: etcd, two Patroni nodes (primary + synchronous standby), HAProxy in front.

const ETCD_CLIENT_PORT: u16 = 15410;
const ETCD_PEER_PORT: u16 = 15411;
const HAPROXY_PORT: u16 = 15440;
const FAILOVER_PGBOUNCER_PORT: u16 = 15450;
/// (name, Postgres port, Patroni REST port) of each node.
const NODES: [(&str, u16, u16); 2] = [("pg1", 15421, 15431), ("pg2", 15422, 15432)];

/// One Patroni node and the Postgres it runs. Patroni detaches Postgres from itself, so
/// killing the node kills the postmaster (found through its data directory) and its
/// backends as well, as if the machine had died.
struct Node {
    name: &'static str,
    rest_port: u16,
    data_dir: PathBuf,
    patroni: Daemon,
}

impl Node {
    fn start(dir: &ScratchDir, (name, pg_port, rest_port): (&'static str, u16, u16)) -> Node {
        let data_dir = dir.join(name);
        let yml = include_str!("../../deploy/patroni/patroni.yml")
            .replace("@NAME@", name)
            .replace("@PG_PORT@", &pg_port.to_string())
            .replace("@REST_PORT@", &rest_port.to_string())
            .replace("@ETCD_PORT@", &ETCD_CLIENT_PORT.to_string())
            .replace("@DATA_DIR@", &data_dir.display().to_string())
            .replace("@DIR@", &dir.path.display().to_string());
        let yml = dir.write(&format!("{name}.yml"), &yml);
        let patroni = Daemon::start(
            name,
            "/usr/bin/patroni",
            &[&yml.display().to_string()],
            &dir.join(&format!("{name}.log")),
            &[],
        );
        Node {
            name,
            rest_port,
            data_dir,
            patroni,
        }
    }

    /// The answer of Patroni's REST `GET path` (`/primary`, `/sync`), 0 when none.
    async fn rest(&self, path: &str) -> u16 {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("client");
        match client
            .get(format!("http://127.0.0.1:{}{path}", self.rest_port))
            .send()
            .await
        {
            Ok(response) => response.status().as_u16(),
            Err(_) => 0,
        }
    }

    async fn wait_for(&mut self, path: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while self.rest(path).await != 200 {
            self.patroni.assert_running();
            assert!(
                Instant::now() < deadline,
                "{}: GET {path} not 200 within {within:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// SIGKILL to Patroni, the postmaster and every backend.
    fn kill(&mut self) {
        self.patroni.kill();
        let pid_file = self.data_dir.join("postmaster.pid");
        let Some(postmaster) = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|text| text.lines().next()?.trim().parse::<u32>().ok())
        else {
            return;
        };
        // Only a postmaster of this data directory (the pid file may be stale).
        let cmdline = std::fs::read(format!("/proc/{postmaster}/cmdline")).unwrap_or_default();
        if !String::from_utf8_lossy(&cmdline).contains(&self.data_dir.display().to_string()) {
            return;
        }
        let mut pids = vec![postmaster];
        pids.extend(children_of(postmaster));
        let _ = Command::new("kill")
            .arg("-KILL")
            .args(pids.iter().map(u32::to_string))
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The pids whose parent is `parent`, from /proc.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    // "pid (comm) state ppid …": comm may hold spaces, so split after ')'.
                    let rest = &stat[stat.rfind(')')? + 1..];
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

/// The test cluster. Dropping it kills everything, in reverse order of start.
struct Cluster {
    _haproxy: Daemon,
    nodes: Vec<Node>,
    _etcd: Daemon,
    dir: ScratchDir,
}

impl Cluster {
    async fn start() -> Cluster {
        let dir = ScratchDir::new("cluster");
        let etcd_env: Vec<(String, String)> = include_str!("../../deploy/etcd/etcd.env")
            .lines()
            .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
            .filter_map(|line| line.split_once('='))
            .map(|(key, value)| {
                let value = value
                    .replace("@CLIENT_PORT@", &ETCD_CLIENT_PORT.to_string())
                    .replace("@PEER_PORT@", &ETCD_PEER_PORT.to_string())
                    .replace("@DIR@", &dir.path.display().to_string());
                (key.to_owned(), value)
            })
            .collect();
        let env: Vec<(&str, &str)> = etcd_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let etcd = Daemon::start("etcd", "/usr/bin/etcd", &[], &dir.join("etcd.log"), &env);
        wait_for_port(ETCD_CLIENT_PORT, Duration::from_secs(20), "etcd").await;

        let mut first = Node::start(&dir, NODES[0]);
        first.wait_for("/primary", Duration::from_secs(60)).await;
        let mut second = Node::start(&dir, NODES[1]);
        second.wait_for("/sync", Duration::from_secs(60)).await;

        let cfg = include_str!("../../deploy/haproxy/haproxy.cfg")
            .replace("@LISTEN_PORT@", &HAPROXY_PORT.to_string())
            .replace("@PG1_PORT@", &NODES[0].1.to_string())
            .replace("@REST1_PORT@", &NODES[0].2.to_string())
            .replace("@PG2_PORT@", &NODES[1].1.to_string())
            .replace("@REST2_PORT@", &NODES[1].2.to_string());
        let cfg = dir.write("haproxy.cfg", &cfg).display().to_string();
        let haproxy = Daemon::start(
            "haproxy",
            "/usr/sbin/haproxy",
            &["-db", "-f", &cfg],
            &dir.join("haproxy.log"),
            &[],
        );
        wait_for_port(HAPROXY_PORT, Duration::from_secs(10), "haproxy").await;
        let cluster = Cluster {
            _haproxy: haproxy,
            nodes: vec![first, second],
            _etcd: etcd,
            dir,
        };
        cluster.wait_until_only_the_primary_is_routed().await;
        cluster
    }

    /// HAProxy starts with every server up until its checks say otherwise, so for its
    /// first second it also routes to the standby: wait until ten connections in a row
    /// land on a writable server.
    async fn wait_until_only_the_primary_is_routed(&self) {
        let url = format!("{}/postgres", self.base_url());
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut in_a_row = 0;
        while in_a_row < 10 {
            assert!(
                Instant::now() < deadline,
                "HAProxy kept routing to the standby"
            );
            let conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await;
            let writable = match conn {
                Ok(mut conn) => sqlx::query_scalar::<_, bool>("select not pg_is_in_recovery()")
                    .fetch_one(&mut conn)
                    .await
                    .unwrap_or(false),
                Err(_) => false,
            };
            in_a_row = if writable { in_a_row + 1 } else { 0 };
            if !writable {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    /// `postgres://…` through HAProxy: always the primary.
    fn base_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{HAPROXY_PORT}")
    }

    /// The node whose Patroni answers `GET /primary` with 200.
    async fn primary(&self) -> Option<usize> {
        for (i, node) in self.nodes.iter().enumerate() {
            if node.rest("/primary").await == 200 {
                return Some(i);
            }
        }
        None
    }

    /// Logs worth printing when something failed.
    fn logs(&self) -> String {
        ["pg1.log", "pg2.log", "haproxy.log"]
            .iter()
            .map(|name| {
                let text = self.dir.read(name);
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                format!(
                    "--- {name}\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

const RESET_SUBJECT: &str = "Reset your latchkey password";

/// One HTTP answer, or `None` when there was none (connection error, timeout).
struct Reply {
    status: StatusCode,
    body: String,
}

async fn send(request: reqwest::RequestBuilder) -> Option<Reply> {
    let response = request.send().await.ok()?;
    let status = response.status();
    let body = response.text().await.ok()?;
    Some(Reply { status, body })
}

/// What became of a form post.
enum Posted {
    /// The form page did not load: nothing was posted.
    NotSent,
    /// Posted, and no answer came: the write may or may not have happened.
    NoAnswer,
    Answered(Reply),
}

impl Posted {
    fn status(&self) -> Option<StatusCode> {
        match self {
            Posted::Answered(reply) => Some(reply.status),
            _ => None,
        }
    }
}

/// Loads `page` for its CSRF token, then posts `fields` to `action`.
async fn post_form(browser: &Browser, page: &str, action: &str, fields: &[(&str, &str)]) -> Posted {
    let Some(loaded) = send(browser.client.get(browser.url(page))).await else {
        return Posted::NotSent;
    };
    let Some(token) = csrf_in(&loaded.body) else {
        return Posted::NotSent;
    };
    let mut form: Vec<(&str, &str)> = fields.to_vec();
    form.push(("csrf_token", &token));
    match send(browser.client.post(browser.url(action)).form(&form)).await {
        Some(reply) => Posted::Answered(reply),
        None => Posted::NoAnswer,
    }
}

/// A write the service acknowledged with 303, and when.
#[derive(Clone, Debug)]
enum Acked {
    /// Password changed (on the settings page or through a link) to this one.
    Password(String),
    /// This reset token was redeemed.
    ResetUsed(String),
    /// This session cookie was signed out, on this instance.
    SignedOut { base: String, cookie: String },
}

/// One account, driven by one worker only, so its history is sequential.
struct Account {
    email: String,
    /// Passwords that may be current: one when the last change was answered; more while
    /// a change got no answer (it may or may not have committed).
    candidates: Vec<String>,
    generation: u32,
    acked: Vec<(Instant, Acked)>,
    /// "Password changed" notices owed for acknowledged changes and resets.
    notices_owed: usize,
    /// Changes without an answer: each may have sent one notice.
    notices_maybe: usize,
    /// Reset links asked for and answered 200, each promising one mail.
    resets_promised: usize,
}

impl Account {
    fn next_password(&mut self) -> String {
        self.generation += 1;
        format!(
            "failover passphrase {} of violet harbour lanterns",
            self.generation
        )
    }
}

struct Load {
    bases: Vec<String>,
    smtp: std::sync::Arc<SmtpSink>,
}

impl Load {
    /// Signs in, trying every candidate password; settles the account on the one that works.
    async fn sign_in(&self, base: &str, account: &mut Account) -> Option<Browser> {
        for password in account.candidates.clone() {
            let browser = Browser::new(base);
            let status = post_form(
                &browser,
                "/sign-in",
                "/sign-in",
                &[("email", &account.email), ("password", &password)],
            )
            .await
            .status();
            if status == Some(StatusCode::SEE_OTHER) {
                account.candidates = vec![password];
                return Some(browser);
            }
            if status != Some(StatusCode::UNPROCESSABLE_ENTITY) {
                return None; // outage: try again later
            }
        }
        None
    }

    fn ack(account: &mut Account, what: Acked) {
        account.acked.push((Instant::now(), what));
    }

    async fn change(&self, base: &str, account: &mut Account) {
        let Some(browser) = self.sign_in(base, account).await else {
            return;
        };
        let current = account.candidates[0].clone();
        let new = account.next_password();
        let reply = post_form(
            &browser,
            "/settings/security",
            "/settings/security/password",
            &[
                ("current_password", &current),
                ("new_password", &new),
                ("new_password_confirm", &new),
            ],
        )
        .await;
        self.settle_password(account, &reply, new);
    }

    fn settle_password(&self, account: &mut Account, posted: &Posted, new: String) {
        match posted {
            Posted::Answered(reply) if reply.status == StatusCode::SEE_OTHER => {
                account.candidates = vec![new.clone()];
                account.notices_owed += 1;
                Self::ack(account, Acked::Password(new));
            }
            // Refused, nothing written (or never posted).
            Posted::NotSent => {}
            Posted::Answered(reply) if reply.status.is_client_error() => {}
            // A 5xx or no answer: the commit may have happened before the connection died.
            _ => {
                account.candidates.push(new);
                account.notices_maybe += 1;
            }
        }
    }

    async fn sign_in_and_out(&self, base: &str, account: &mut Account) {
        let Some(browser) = self.sign_in(base, account).await else {
            return;
        };
        let Some(cookie) = browser.session_cookie() else {
            return;
        };
        let posted = post_form(&browser, "/", "/sign-out", &[]).await;
        if posted.status() == Some(StatusCode::SEE_OTHER) {
            Self::ack(
                account,
                Acked::SignedOut {
                    base: base.to_owned(),
                    cookie,
                },
            );
        }
    }

    async fn reset(&self, base: &str, account: &mut Account) {
        let before = self.smtp.messages_to(&account.email).len();
        let asked = post_form(
            &Browser::new(base),
            "/forgot-password",
            "/forgot-password",
            &[("email", &account.email)],
        )
        .await;
        if asked.status() != Some(StatusCode::OK) {
            return;
        }
        account.resets_promised += 1;
        // The newest reset mail after `before` (the outbox may be waiting out an outage).
        let deadline = Instant::now() + Duration::from_secs(15);
        let link = loop {
            let mails = self.smtp.messages_to(&account.email);
            if let Some(link) = mails[before.min(mails.len())..]
                .iter()
                .rev()
                .find(|m| m.subject().as_deref() == Some(RESET_SUBJECT))
                .and_then(|m| m.first_link())
            {
                break link;
            }
            if Instant::now() > deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let Some(token) = link.split("token=").nth(1).map(str::to_owned) else {
            return;
        };
        let new = account.next_password();
        let reply = post_form(
            &Browser::new(base),
            &format!("/reset-password?token={token}"),
            "/reset-password",
            &[
                ("token", &token),
                ("new_password", &new),
                ("new_password_confirm", &new),
            ],
        )
        .await;
        if reply.status() == Some(StatusCode::SEE_OTHER) {
            Self::ack(account, Acked::ResetUsed(token));
        }
        self.settle_password(account, &reply, new);
    }

    async fn run(
        self: std::sync::Arc<Self>,
        mut account: Account,
        worker: usize,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> Account {
        let mut step = worker;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let base = self.bases[step % self.bases.len()].clone();
            match step % 5 {
                0 | 3 => self.change(&base, &mut account).await,
                1 => self.reset(&base, &mut account).await,
                _ => self.sign_in_and_out(&base, &mut account).await,
            }
            step += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        account
    }
}

/// The generation in a password made by [`Account::next_password`] (0: the first one).
fn generation(password: &str) -> u32 {
    password
        .strip_prefix("failover passphrase ")
        .and_then(|rest| rest.split(' ').next()?.parse().ok())
        .unwrap_or(0)
}

async fn sign_in_status(base: &str, email: &str, password: &str) -> Option<StatusCode> {
    post_form(
        &Browser::new(base),
        "/sign-in",
        "/sign-in",
        &[("email", email), ("password", password)],
    )
    .await
    .status()
}

const WORKERS: usize = 8;
const WARM_UP: Duration = Duration::from_secs(8);
const AFTER_RECOVERY: Duration = Duration::from_secs(5);
const NOTICE_SUBJECT: &str = "Your latchkey password was changed";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "builds a Patroni cluster (about a minute); .ci/run runs it by name"]
async fn failover_primary_killed_under_load_loses_no_acknowledged_write() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let programs = [
        "/usr/bin/patroni",
        "/usr/bin/etcd",
        "/usr/sbin/haproxy",
        "/usr/lib/postgresql/15/bin/postgres",
    ];
    if !installed("failover", &programs) {
        return;
    }
    let program = current_pgbouncer();
    if !current_installed("failover", &program) {
        return;
    }
    let mut cluster = Cluster::start().await;
    // The whole topology: instances → PgBouncer (transaction mode, fewer server
    // connections than the instances' pools) → HAProxy → the current primary.
    let pgbouncer = Pgbouncer::start(
        &program,
        FAILOVER_PGBOUNCER_PORT,
        HAPROXY_PORT,
        fewer_server_connections,
    )
    .await;
    let name = create_database(&cluster.base_url()).await;
    let database_url = format!("{}/{name}", cluster.base_url());
    {
        // Migrations go straight to the primary, not through the pooler.
        let db = process::connect(&database_url).await;
        latchkey::db::migrate(&db).await.expect("migrate directly");
        db.close().await;
    }
    let service_url = pgbouncer.url(&name);
    let smtp = Arc::new(SmtpSink::start().await);
    let env = [
        ("LATCHKEY_THROTTLE__RESET_MAILS_PER_HOUR", "100000"),
        ("LATCHKEY_THROTTLE__FREE_FAILURES", "100000"),
    ];
    let a = ServiceProcess::start(&service_url, &smtp.url(), &env).await;
    let b = ServiceProcess::start(&service_url, &smtp.url(), &env).await;
    let bases = vec![a.base.clone(), b.base.clone()];
    let probe = "probe@example.com".to_owned();
    let mut emails: Vec<String> = (0..WORKERS)
        .map(|i| format!("worker{i}@example.com"))
        .collect();
    emails.push(probe.clone());
    {
        let db = process::connect(&database_url).await;
        process::create_users(&db, &emails, PASSWORD).await;
        db.close().await;
    }

    let load = Arc::new(Load {
        bases: bases.clone(),
        smtp: Arc::clone(&smtp),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = emails[..WORKERS]
        .iter()
        .enumerate()
        .map(|(i, email)| {
            let account = Account {
                email: email.clone(),
                candidates: vec![PASSWORD.to_owned()],
                generation: 0,
                acked: Vec::new(),
                notices_owed: 0,
                notices_maybe: 0,
                resets_promised: 0,
            };
            tokio::spawn(Arc::clone(&load).run(account, i, Arc::clone(&stop)))
        })
        .collect();

    tokio::time::sleep(WARM_UP).await;
    let old_primary = cluster.primary().await.expect("a primary before the kill");
    let killed_at = Instant::now();
    cluster.nodes[old_primary].kill();

    // Kill → first successful sign-in, alternating instances, every 100 ms.
    let mut recovered = None;
    for attempt in 0usize.. {
        let base = &bases[attempt % 2];
        if sign_in_status(base, &probe, PASSWORD).await == Some(StatusCode::SEE_OTHER) {
            recovered = Some(killed_at.elapsed());
            break;
        }
        if killed_at.elapsed() > Duration::from_secs(90) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Some(recovery) = recovered else {
        panic!(
            "no sign-in succeeded within 90 s of the kill\n{}\n--- A\n{}\n--- PgBouncer\n{}",
            cluster.logs(),
            a.log(),
            pgbouncer.log()
        );
    };
    let new_primary = cluster.primary().await;
    assert!(
        new_primary.is_some_and(|p| p != old_primary),
        "the standby was promoted: {new_primary:?}"
    );
    tokio::time::sleep(AFTER_RECOVERY).await;
    stop.store(true, Ordering::Relaxed);
    let mut accounts = Vec::new();
    for worker in workers {
        accounts.push(worker.await.expect("worker"));
    }

    // Every acknowledged write is in effect on the promoted primary.
    let mut acked_before = 0;
    let mut found_after = 0;
    let mut acked_total = 0;
    let mut lost = Vec::new();
    for account in &accounts {
        let mut current = None;
        for password in &account.candidates {
            match sign_in_status(&bases[0], &account.email, password).await {
                Some(StatusCode::SEE_OTHER) => current = Some(password.clone()),
                Some(StatusCode::UNPROCESSABLE_ENTITY) => {}
                other => panic!("{}: sign-in answered {other:?}", account.email),
            }
        }
        let Some(current) = current else {
            lost.push(format!(
                "{}: none of {:?} signs in",
                account.email, account.candidates
            ));
            continue;
        };
        let mut previous_password = PASSWORD.to_owned();
        for (at, acked) in &account.acked {
            acked_total += 1;
            let before_kill = *at < killed_at;
            acked_before += usize::from(before_kill);
            let in_effect = match acked {
                // Later changes may have replaced it, never an older password.
                Acked::Password(password) => {
                    let ok = generation(&current) >= generation(password);
                    let old = sign_in_status(&bases[1], &account.email, &previous_password).await;
                    previous_password = password.clone();
                    ok && old == Some(StatusCode::UNPROCESSABLE_ENTITY)
                }
                Acked::ResetUsed(token) => {
                    let again = post_form(
                        &Browser::new(&bases[1]),
                        "/sign-in",
                        "/reset-password",
                        &[
                            ("token", token),
                            ("new_password", "a password nobody may ever set"),
                            ("new_password_confirm", "a password nobody may ever set"),
                        ],
                    )
                    .await
                    .status();
                    again.is_some_and(|s| s.is_client_error())
                }
                Acked::SignedOut { base, cookie } => {
                    let browser = Browser::new(base);
                    browser.jar.add_cookie_str(
                        &format!("latchkey_session={cookie}; Path=/"),
                        &base.parse().expect("url"),
                    );
                    let home = send(browser.client.get(browser.url("/"))).await;
                    home.is_some_and(|r| r.status == StatusCode::SEE_OTHER)
                }
            };
            if in_effect {
                found_after += usize::from(before_kill);
            } else {
                lost.push(format!(
                    "{}: {acked:?} (acknowledged {}) not in effect",
                    account.email,
                    if before_kill {
                        "before the kill"
                    } else {
                        "after"
                    }
                ));
            }
        }
    }

    // Mail: wait for the reset requests to become mail and the outbox to drain, then
    // compare with what was owed.
    let db = process::connect(&database_url).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (pending,): (i64,) = sqlx::query_as(
            "select (select count(*) from outbox where status = 'pending')
                  + (select count(*) from mail_requests)",
        )
        .fetch_one(&db)
        .await
        .expect("outbox");
        if pending == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{pending} mails still pending");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rows_sent,): (i64,) = sqlx::query_as("select count(*) from outbox where status = 'sent'")
        .fetch_one(&db)
        .await
        .expect("outbox");
    let (rows_failed,): (i64,) =
        sqlx::query_as("select count(*) from outbox where status <> 'sent'")
            .fetch_one(&db)
            .await
            .expect("outbox");
    let delivered = smtp.count();
    let duplicates = delivered.saturating_sub(usize::try_from(rows_sent).unwrap_or(0));
    let mut notices = (0, 0, 0); // owed, maybe, delivered
    let mut resets = (0, 0); // promised, delivered
    // "Check your email" is answered once the request is committed (the token and mail
    // follow it, so known and unknown addresses take the same time): every answer, even
    // one just before the kill, gets its mail.
    let mut short = Vec::new();
    for account in &accounts {
        let mails = smtp.messages_to(&account.email);
        let got_notices = mails
            .iter()
            .filter(|m| m.subject().as_deref() == Some(NOTICE_SUBJECT))
            .count();
        let got_resets = mails
            .iter()
            .filter(|m| m.subject().as_deref() == Some(RESET_SUBJECT))
            .count();
        notices.0 += account.notices_owed;
        notices.1 += account.notices_maybe;
        notices.2 += got_notices;
        let promised = account.resets_promised;
        resets.0 += promised;
        resets.1 += got_resets;
        if got_notices < account.notices_owed {
            short.push(format!(
                "{}: {got_notices} notices, {} owed",
                account.email, account.notices_owed
            ));
        }
        if got_resets < promised {
            short.push(format!(
                "{}: {got_resets} reset mails, {promised} promised",
                account.email
            ));
        }
    }

    println!(
        "failover: recovery {recovery:.1?} (kill → first sign-in); writes acknowledged \
         before the kill {acked_before}, found after {found_after} (all acknowledged \
         {acked_total}, lost {}); password-changed notices owed {} (+{} unanswered), \
         delivered {}; reset mails promised {}, delivered {}; outbox rows sent {rows_sent}, \
         not sent {rows_failed}; SMTP messages {delivered}, duplicates {duplicates}",
        lost.len(),
        notices.0,
        notices.1,
        notices.2,
        resets.0,
        resets.1,
    );
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:#?}");
    assert_eq!(found_after, acked_before);
    assert!(
        notices.0 > 0 && resets.0 > 0,
        "the load changed and reset passwords"
    );
    assert!(short.is_empty(), "mail lost: {short:#?}");
    assert!(
        notices.2 <= notices.0 + notices.1 + duplicates,
        "more notices than changes"
    );
    assert_eq!(rows_failed, 0, "outbox rows left unsent");
    // At-least-once: only a message being sent when its commit failed goes out again,
    // at most one per outbox worker (one per instance).
    assert!(duplicates <= 2, "{duplicates} mails sent twice");
    assert!(
        recovery < Duration::from_secs(60),
        "recovery took {recovery:?}"
    );
    assert!(!a.log().contains("panicked"), "{}", a.log());
    assert!(!b.log().contains("panicked"), "{}", b.log());
}
