//! A first run with no database set up: no `DATABASE_URL`, nothing answering at the
//! default address (moved to a free port with `PGPORT`, as libpq's variable does), and
//! Postgres's programs installed → the real binary runs a private cluster under
//! `var/postgres`, serves through it, and leaves no server behind when it stops. Without
//! any Postgres programs it says how to install one; a configured URL is never replaced.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::Browser;
use crate::process::latchkey_binary;
use latchkey_test_support::proxies::free_port;

/// Where nothing answers: port 1 on loopback. A free ephemeral port would not do: the
/// other tests running beside this one bind such ports at any moment, and then something
/// (an HTTP server) answers where the test said nothing would.
const NOTHING_AT: u16 = 1;

/// A working directory of its own that the `postgres` user may pass through (the cluster
/// runs as that user when the tests run as root, as CI does).
fn work_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "latchkey-first-run-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("work dir");
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod work dir");
    dir
}

/// `latchkey ARGS` in `dir` with no database configured and the default moved to a port
/// where nothing answers.
fn latchkey(dir: &Path, nothing_at: u16, args: &[&str]) -> Command {
    let mut command = Command::new(latchkey_binary());
    command
        .args(args)
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .env_remove("LATCHKEY_DATABASE_URL")
        .env_remove("LATCHKEY_POSTGRES_BINDIR")
        .env_remove("PGHOST")
        .env("PGPORT", nothing_at.to_string())
        .env("LATCHKEY_IP_RATE_LIMIT", "0")
        .env("LATCHKEY_LOG", "info")
        .stdin(Stdio::null());
    command
}

/// Processes whose command line names `needle` (the cluster's data directory).
fn processes_naming(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(cmdline);
        }
    }
    found
}

fn wait_for_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("latchkey did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test]
async fn a_first_run_with_no_database_set_up_serves_through_a_private_cluster_and_stops_it() {
    let dir = work_dir();
    let nothing_at = NOTHING_AT;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let log_path = dir.join("log");
    let log = std::fs::File::create(&log_path).expect("log");
    let mut serve = latchkey(&dir, nothing_at, &["serve"])
        .env("LATCHKEY_LISTEN", format!("127.0.0.1:{port}"))
        .env("LATCHKEY_PUBLIC_URL", &base)
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start latchkey serve");
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    // initdb on a busy machine takes a few seconds; a minute and a half is plenty.
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(status) = serve.try_wait().expect("try_wait") {
            panic!("latchkey serve exited with {status}:\n{}", read_log());
        }
        let ready = client.get(format!("{base}/readyz")).send().await;
        if ready.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not ready in 90 s:\n{}",
            read_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        read_log().contains("using a private Postgres under var/postgres"),
        "the log says so in one line:\n{}",
        read_log()
    );
    let data = dir.join("var/postgres/data");
    assert!(
        data.join("PG_VERSION").is_file(),
        "the cluster lives under var/postgres"
    );
    let mode = |p: &Path| {
        std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(p).expect("exists").permissions(),
        ) & 0o777
    };
    assert_eq!(mode(&dir.join("var/postgres")), 0o700);
    assert_eq!(
        mode(&dir.join("var/postgres/run")),
        0o700,
        "the socket's directory is private"
    );

    // Another command joins the running cluster (and leaves it running).
    let mut create = latchkey(
        &dir,
        nothing_at,
        &["user", "create", "--email", "ada@example.com"],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("user create");
    create
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"correct horse battery staple\n")
        .expect("password");
    let created = create.wait_with_output().expect("user create output");
    assert!(
        created.status.success(),
        "user create failed: {}",
        String::from_utf8_lossy(&created.stderr)
    );

    let browser = Browser::new(&base);
    let signed_in = browser
        .sign_in("ada@example.com", "correct horse battery staple")
        .await;
    assert_eq!(signed_in.status(), 303, "{}", read_log());
    assert_eq!(signed_in.headers()["location"], "/");
    let home = browser.get("/").await;
    assert_eq!(home.status(), 200);
    assert!(home.text().await.expect("home").contains("ada@example.com"));

    // SIGTERM: a graceful stop takes the cluster down with it.
    let pid = serve.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = wait_for_exit(&mut serve, Duration::from_secs(60));
    assert!(
        status.success(),
        "latchkey serve exited with {status}:\n{}",
        read_log()
    );
    let needle = data.to_string_lossy().into_owned();
    assert_eq!(
        processes_naming(&needle),
        Vec::<String>::new(),
        "no stray server"
    );
    assert!(
        !data.join("postmaster.pid").exists(),
        "the server was stopped cleanly"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn with_no_postgres_programs_to_be_found_it_says_how_to_install_one() {
    let dir = work_dir();
    let empty = dir.join("no-postgres-here");
    std::fs::create_dir_all(&empty).expect("empty dir");
    let output = latchkey(&dir, NOTHING_AT, &["serve"])
        .env("LATCHKEY_POSTGRES_BINDIR", &empty)
        .env("LATCHKEY_LISTEN", format!("127.0.0.1:{}", free_port()))
        .output()
        .expect("run latchkey");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "it must not pretend to run: {stderr}"
    );
    for hint in [
        "apt-get install postgresql",
        "brew install postgresql",
        "docker run",
        "DATABASE_URL",
    ] {
        assert!(
            stderr.contains(hint),
            "the message names `{hint}`:\n{stderr}"
        );
    }
    assert!(!dir.join("var/postgres").exists(), "nothing was made");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_configured_database_url_is_never_replaced_by_a_private_cluster() {
    let dir = work_dir();
    let nowhere = NOTHING_AT;
    let output = latchkey(&dir, NOTHING_AT, &["migrate"])
        .env(
            "DATABASE_URL",
            format!("postgres://postgres@127.0.0.1:{nowhere}/latchkey"),
        )
        .output()
        .expect("run latchkey");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("connecting to Postgres"), "{stderr}");
    assert!(
        !dir.join("var/postgres").exists(),
        "no private cluster was made"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
