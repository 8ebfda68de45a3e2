//! A first run that needs no database set-up: when no database is configured and nothing
//! answers at the default address, but Postgres's server programs are installed, latchkey
//! runs a private cluster under `var/postgres`, reachable only through a Unix socket in a
//! directory nobody else may enter, and stops it again when the command ends.

use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::config::Config;

/// Where the cluster lives, relative to the working directory (beside the development key
/// and mail).
const CLUSTER_DIR: &str = "var/postgres";
/// The port in the socket's name (`.s.PGSQL.5432`); nothing listens on TCP.
const PORT: u16 = 5432;

/// What to say when no Postgres can be found at all.
const INSTALL_HINT: &str = "no database is configured, nothing answers at the default \
address, and no Postgres server programs were found to start a private one. Either:
  - install Postgres: Debian/Ubuntu `sudo apt-get install postgresql`; macOS `brew install postgresql@16`;
    then run latchkey again (it starts a private cluster under var/postgres by itself,
    or uses the server the package started on 127.0.0.1:5432);
  - or run one in a container: `docker run -d -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust postgres:16`;
  - or point DATABASE_URL at an existing server (postgres://user:password@host:5432/latchkey).
LATCHKEY_POSTGRES_BINDIR names the directory of initdb, pg_ctl and postgres when they are
installed somewhere latchkey does not look.";

/// A private cluster this process uses; [`PrivateCluster::stop`] stops it when this process
/// started it.
#[derive(Debug)]
pub struct PrivateCluster {
    bindir: PathBuf,
    data: PathBuf,
    /// The user the server runs as, when latchkey runs as root (Postgres refuses root).
    owner: Option<Owner>,
    /// `false` when another latchkey command had it running already: it stops it.
    started_here: bool,
}

#[derive(Debug, Clone, Copy)]
struct Owner {
    uid: u32,
    gid: u32,
}

/// When nothing is configured and nothing answers at the default address: starts (or
/// joins) the private cluster and points `config.database_url` at it. `None` when a
/// configured or answering database is used, as before.
pub async fn prepare(config: &mut Config) -> anyhow::Result<Option<PrivateCluster>> {
    if config.database_url_configured {
        return Ok(None);
    }
    let default = config.default_database_address();
    if answers(&default).await {
        return Ok(None);
    }
    let Some(bindir) = find_bindir(config.postgres_bindir.as_deref()) else {
        bail!("{INSTALL_HINT}");
    };
    let root = std::env::current_dir()
        .context("reading the working directory")?
        .join(CLUSTER_DIR);
    let cluster = tokio::task::spawn_blocking(move || PrivateCluster::start(bindir, root))
        .await
        .context("starting the private Postgres cluster")??;
    config.database_url = format!(
        "postgres://postgres@localhost:{PORT}/latchkey?host={}",
        cluster.socket_dir().display()
    )
    .into();
    tracing::info!(
        "no DATABASE_URL and nothing answers at {default}: using a private Postgres under \
         {CLUSTER_DIR} (Unix socket only, stopped with latchkey); to use a real server, set \
         DATABASE_URL=postgres://USER@HOST:5432/latchkey"
    );
    Ok(Some(cluster))
}

/// Whether something accepts connections at `address` (`host:port`) within a second.
async fn answers(address: &str) -> bool {
    let Ok(addrs) = address.to_socket_addrs() else {
        return false;
    };
    let addrs: Vec<SocketAddr> = addrs.collect();
    for addr in addrs {
        let connect = tokio::net::TcpStream::connect(addr);
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), connect).await {
            return true;
        }
    }
    false
}

/// The directory holding `initdb`, `pg_ctl` and `postgres`: the configured one alone, or
/// `pg_config --bindir`, Debian's `/usr/lib/postgresql/<newest>/bin`, Homebrew's.
fn find_bindir(configured: Option<&Path>) -> Option<PathBuf> {
    if let Some(dir) = configured {
        return has_server_programs(dir).then(|| dir.to_owned());
    }
    let mut candidates = Vec::new();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        candidates.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    for parent in ["/usr/lib/postgresql", "/opt/homebrew/opt", "/usr/local/opt"] {
        let Ok(entries) = std::fs::read_dir(parent) else {
            continue;
        };
        let mut versions: Vec<(u32, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                let version = name.strip_prefix("postgresql@").unwrap_or(&name);
                let major = version.split('.').next()?.parse::<u32>().ok();
                let is_postgres = parent == "/usr/lib/postgresql" || name.starts_with("postgresql");
                is_postgres.then(|| (major.unwrap_or(0), entry.path().join("bin")))
            })
            .collect();
        versions.sort();
        candidates.extend(versions.into_iter().rev().map(|(_, dir)| dir));
    }
    candidates.into_iter().find(|dir| has_server_programs(dir))
}

fn has_server_programs(dir: &Path) -> bool {
    ["initdb", "pg_ctl", "postgres"]
        .iter()
        .all(|program| dir.join(program).is_file())
}

impl PrivateCluster {
    /// Creates the cluster on first use, then starts it unless it already runs.
    fn start(bindir: PathBuf, root: PathBuf) -> anyhow::Result<PrivateCluster> {
        let owner = server_owner()?;
        let cluster = PrivateCluster {
            bindir,
            data: root.join("data"),
            owner,
            started_here: false,
        };
        cluster.make_directories(&root)?;
        if !cluster.data.join("PG_VERSION").is_file() {
            cluster
                .run(
                    "initdb",
                    &[
                        "-D".as_ref(),
                        cluster.data.as_os_str(),
                        "-U".as_ref(),
                        "postgres".as_ref(),
                        "--auth=trust".as_ref(),
                        "--encoding=UTF8".as_ref(),
                        "--no-instructions".as_ref(),
                    ],
                )
                .context("creating the private cluster (initdb)")?;
        }
        if cluster.is_running() {
            return Ok(cluster);
        }
        let options = format!(
            "-c listen_addresses='' -k {} -p {PORT}",
            cluster.socket_dir().display()
        );
        let log = root.join("postgres.log");
        let started = cluster.run(
            "pg_ctl",
            &[
                "start".as_ref(),
                "-w".as_ref(),
                "-t".as_ref(),
                "60".as_ref(),
                "-D".as_ref(),
                cluster.data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-o".as_ref(),
                options.as_ref(),
            ],
        );
        if let Err(err) = started {
            let tail = std::fs::read_to_string(&log)
                .map(|text| {
                    let lines: Vec<&str> = text.lines().collect();
                    lines[lines.len().saturating_sub(5)..].join("\n")
                })
                .unwrap_or_default();
            return Err(err.context(format!(
                "starting the private cluster under {} failed; its log ends:\n{tail}",
                root.display()
            )));
        }
        Ok(PrivateCluster {
            started_here: true,
            ..cluster
        })
    }

    /// The directory of the server's Unix socket.
    pub fn socket_dir(&self) -> PathBuf {
        self.data.with_file_name("run")
    }

    /// Stops the server if this process started it (another command's server is left).
    pub async fn stop(self) -> anyhow::Result<()> {
        if !self.started_here {
            return Ok(());
        }
        tokio::task::spawn_blocking(move || {
            self.run(
                "pg_ctl",
                &[
                    "stop".as_ref(),
                    "-w".as_ref(),
                    "-m".as_ref(),
                    "fast".as_ref(),
                    "-D".as_ref(),
                    self.data.as_os_str(),
                ],
            )
            .context("stopping the private Postgres cluster")
        })
        .await
        .context("stopping the private Postgres cluster")?
    }

    fn is_running(&self) -> bool {
        self.command("pg_ctl")
            .args(["status", "-D"])
            .arg(&self.data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    /// `var/postgres` and its socket directory, 0700 and the server's. Under root, `var/`
    /// lets others pass through (0711, never list), so the server's user reaches its own
    /// directory; the development key inside stays 0600.
    fn make_directories(&self, root: &Path) -> anyhow::Result<()> {
        let var = root.parent().context("var/postgres has a parent")?;
        if !var.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(var)
                .with_context(|| format!("creating {}", var.display()))?;
        }
        if self.owner.is_some() {
            std::fs::set_permissions(var, std::fs::Permissions::from_mode(0o711))
                .with_context(|| format!("opening {} to the postgres user", var.display()))?;
        }
        for dir in [root.to_owned(), self.socket_dir()] {
            if !dir.exists() {
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            if let Some(owner) = self.owner {
                std::os::unix::fs::chown(&dir, Some(owner.uid), Some(owner.gid))
                    .with_context(|| format!("handing {} to the postgres user", dir.display()))?;
            }
        }
        Ok(())
    }

    /// One of the cluster's programs, as the server's user, in its own directory.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bindir.join(program));
        command
            .current_dir(self.data.parent().unwrap_or(Path::new("/")))
            .stdin(Stdio::null())
            .env_remove("PGHOST")
            .env_remove("PGPORT")
            .env_remove("PGDATA");
        if let Some(owner) = self.owner {
            // Dropping from root also drops root's supplementary groups (std does that
            // when only the uid and gid are set).
            command.uid(owner.uid).gid(owner.gid);
        }
        command
    }

    fn run(&self, program: &str, args: &[&std::ffi::OsStr]) -> anyhow::Result<()> {
        let output = self
            .command(program)
            .args(args)
            .output()
            .with_context(|| format!("running {program}"))?;
        if !output.status.success() {
            bail!(
                "{program} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }
}

/// Postgres refuses to run as root: under root the server runs as the `postgres` user (the
/// one a Postgres package makes); otherwise as whoever runs latchkey.
fn server_owner() -> anyhow::Result<Option<Owner>> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let Some(owner) = user_named("postgres") else {
        bail!(
            "latchkey runs as root and Postgres refuses to: create a `postgres` user for the \
             private cluster, run latchkey as another user, or set DATABASE_URL"
        );
    };
    Ok(Some(owner))
}

/// The uid and gid of `name`, from the system's user database.
fn user_named(name: &str) -> Option<Owner> {
    let output = Command::new("id").arg("-u").arg(name).output().ok()?;
    let uid = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .ok()?;
    let output = Command::new("id").arg("-g").arg(name).output().ok()?;
    let gid = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .ok()?;
    Some(Owner { uid, gid })
}
