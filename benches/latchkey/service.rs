//! The service process (start, wait until ready, stop) and the bench database (create,
//! seed, count rows, drop), plus `Resources`: everything a run made that must go away.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use base64::Engine as _;
use latchkey::domain::EmailAddress;
use rand::RngCore as _;
use reqwest::{Client, StatusCode};
use sqlx::{Connection as _, PgConnection, PgPool};

/// Everything the run made that must go away at the end, whatever happened.
pub struct Resources {
    home: PathBuf,
    pub tmp: PathBuf,
    pub pg_base: String,
    pub db_name: String,
    pub db_created: bool,
    pub pool: Option<PgPool>,
    /// Every service process started, stopped at the end.
    pub services: Vec<Child>,
}

impl Resources {
    /// A fresh temporary directory (with `mail/`) and a database name, nothing created yet.
    pub fn new() -> anyhow::Result<Resources> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let home = std::env::current_dir().context("reading the working directory")?;
        let tmp = std::env::temp_dir().join(format!("latchkey-bench-{id}"));
        std::fs::create_dir_all(tmp.join("mail")).context("creating the temporary directory")?;
        Ok(Resources {
            home,
            tmp,
            pg_base: std::env::var("LATCHKEY_BENCH_PG")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into()),
            db_name: format!("latchkey_bench_{id}"),
            db_created: false,
            pool: None,
            services: Vec::new(),
        })
    }

    pub async fn cleanup(&mut self) {
        for child in self.services.drain(..) {
            stop_service(child).await;
        }
        if let Some(pool) = self.pool.take() {
            pool.close().await;
        }
        if self.db_created {
            if let Err(err) = drop_database(&self.pg_base, &self.db_name).await {
                eprintln!("bench: could not drop {}: {err:#}", self.db_name);
            }
        }
        let _ = std::env::set_current_dir(&self.home);
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

// ---------------------------------------------------------------------------------------
// Database

/// `base/db`, keeping a query string of the base (`...:5432?sslmode=disable`) at the end.
pub fn pg_url(base: &str, db: &str) -> String {
    match base.split_once('?') {
        Some((base, query)) => format!("{base}/{db}?{query}"),
        None => format!("{base}/{db}"),
    }
}

async fn admin(pg_base: &str) -> anyhow::Result<PgConnection> {
    PgConnection::connect(&pg_url(pg_base, "postgres"))
        .await
        .with_context(|| format!("connecting to the postgres database on {pg_base}"))
}

pub async fn create_database(pg_base: &str, name: &str) -> anyhow::Result<()> {
    let mut conn = admin(pg_base).await?;
    sqlx::query(&format!("create database \"{name}\""))
        .execute(&mut conn)
        .await
        .with_context(|| format!("creating database {name}"))?;
    conn.close().await.ok();
    Ok(())
}

async fn drop_database(pg_base: &str, name: &str) -> anyhow::Result<()> {
    let mut conn = admin(pg_base).await?;
    sqlx::query(&format!("drop database if exists \"{name}\" with (force)"))
        .execute(&mut conn)
        .await?;
    conn.close().await.ok();
    Ok(())
}

pub async fn insert_user(pool: &PgPool, email: &str, hash: &str) -> anyhow::Result<()> {
    let email = EmailAddress::parse(email).map_err(|e| anyhow!("{email}: {e}"))?;
    latchkey::store::users::insert(pool, &email, hash)
        .await
        .map_err(|e| anyhow!("inserting {email}: {e}"))?;
    Ok(())
}

/// Every table of the database, whatever its schema (tower_sessions' own would count too).
pub async fn table_names(pool: &PgPool) -> anyhow::Result<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "select quote_ident(schemaname) || '.' || quote_ident(relname)
         from pg_stat_user_tables order by 1",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(t,)| t).collect())
}

async fn table_rows(pool: &PgPool, tables: &[String]) -> anyhow::Result<BTreeMap<String, i64>> {
    let mut counts = BTreeMap::new();
    for table in tables {
        let (n,): (i64,) = sqlx::query_as(&format!("select count(*) from {table}"))
            .fetch_one(pool)
            .await?;
        counts.insert(table.clone(), n);
    }
    Ok(counts)
}

/// The 32-bit transaction id rows written from now on will carry (at least).
async fn current_xid(pool: &PgPool) -> anyhow::Result<i64> {
    let (xid,): (i64,) =
        sqlx::query_as("select (pg_current_xact_id()::text::bigint % 4294967296)::bigint")
            .fetch_one(pool)
            .await?;
    Ok(xid)
}

/// Row counts and the transaction id at the start of a phase whose writes are counted.
pub struct WriteMark {
    rows: BTreeMap<String, i64>,
    xid: i64,
}

pub async fn mark_writes(pool: &PgPool, tables: &[String]) -> anyhow::Result<WriteMark> {
    let rows = table_rows(pool, tables).await?;
    let xid = current_xid(pool).await?;
    Ok(WriteMark { rows, xid })
}

pub struct Written {
    pub total: i64,
    pub by_table: BTreeMap<String, i64>,
}

/// Rows inserted or updated since `mark` (by their xmin), plus rows that disappeared.
pub async fn rows_written_since(
    pool: &PgPool,
    tables: &[String],
    mark: &WriteMark,
) -> anyhow::Result<Written> {
    let after = table_rows(pool, tables).await?;
    let mut by_table = BTreeMap::new();
    let mut total = 0;
    for table in tables {
        let (new,): (i64,) = sqlx::query_as(&format!(
            "select count(*) from {table} where xmin::text::bigint >= $1"
        ))
        .bind(mark.xid)
        .fetch_one(pool)
        .await?;
        let gone = (mark.rows.get(table).copied().unwrap_or(0) + new
            - after.get(table).copied().unwrap_or(0))
        .max(0);
        by_table.insert(table.clone(), new + gone);
        total += new + gone;
    }
    Ok(Written { total, by_table })
}

/// The Postgres backends serving this database (the service's pool and ours).
pub async fn postgres_pids(pool: &PgPool, db: &str) -> anyhow::Result<Vec<u32>> {
    let rows: Vec<(i32,)> = sqlx::query_as("select pid from pg_stat_activity where datname = $1")
        .bind(db)
        .fetch_all(pool)
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(p,)| u32::try_from(p).ok())
        .collect())
}

// ---------------------------------------------------------------------------------------
// The service process

pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// The file in the temporary directory with the service's `LATCHKEY_SECRET_KEY`, for the
/// operator commands the bench runs beside it (`latchkey oidc client add`).
pub const SECRET_KEY_FILE: &str = "bench_secret_key";

fn start_service(tmp: &Path, name: &str, db_url: &str, port: u16) -> anyhow::Result<Child> {
    let log = std::fs::File::create(tmp.join(format!("{name}.log")))
        .context("creating the service log")?;
    // Every instance of one run shares the key made for the first.
    let key = match std::fs::read_to_string(tmp.join(SECRET_KEY_FILE)) {
        Ok(key) => key,
        Err(_) => {
            let mut key = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut key);
            let key = base64::engine::general_purpose::STANDARD.encode(key);
            std::fs::write(tmp.join(SECRET_KEY_FILE), &key).context("writing the secret key")?;
            key
        }
    };
    Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .arg("serve")
        .current_dir(tmp)
        .env("DATABASE_URL", db_url)
        .env("LATCHKEY_LISTEN", format!("127.0.0.1:{port}"))
        .env("LATCHKEY_PUBLIC_URL", format!("http://127.0.0.1:{port}"))
        .env("LATCHKEY_IP_RATE_LIMIT", "0")
        .env("LATCHKEY_SIGN_UP", "open")
        .env("LATCHKEY_MAIL_DIR", tmp.join("mail"))
        .env("LATCHKEY_SECRET_KEY", key)
        .env_remove("LATCHKEY_SMTP_URL")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting the service")
}

/// Starts an instance `name` on a free loopback port, kept in `res` to be stopped, and
/// waits until it is ready: its base URL and process id.
pub async fn start_ready(
    res: &mut Resources,
    name: &str,
    db_url: &str,
) -> anyhow::Result<(String, u32)> {
    let port = free_port()?;
    let base = format!("http://127.0.0.1:{port}");
    let child = start_service(&res.tmp, name, db_url, port)?;
    let pid = child.id();
    res.services.push(child);
    wait_ready(&base, name, res).await?;
    Ok((base, pid))
}

/// Waits for `/readyz` of the service started last (its log is `{name}.log`).
async fn wait_ready(base: &str, name: &str, res: &mut Resources) -> anyhow::Result<()> {
    let client = Client::builder().timeout(Duration::from_secs(2)).build()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Some(child) = res.services.last_mut() {
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(res.tmp.join(format!("{name}.log")))
                    .unwrap_or_default();
                bail!("the service exited ({status}) before it was ready:\n{log}");
            }
        }
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await {
            if r.status() == StatusCode::OK {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the service did not become ready within 60 s")
}

/// SIGTERM (graceful shutdown), then SIGKILL if it takes longer than 15 s.
async fn stop_service(mut child: Child) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill only reads its arguments; the pid is our own child's.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("bench: the service did not stop on SIGTERM; killing it");
    let _ = child.kill();
    let _ = child.wait();
}
