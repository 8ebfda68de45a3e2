//! The Postgres pool for `app` and `cli`: the database created if missing, embedded migrations applied.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

use crate::config::Config;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connects, creating the database first when it does not exist yet.
/// A pooled connection idle at most this long is handed out without a ping.
const RECENTLY_USED: Duration = Duration::from_secs(1);

pub async fn connect(config: &Config) -> anyhow::Result<PgPool> {
    let options = connect_options(config)?;
    create_database_if_missing(&options).await?;
    PgPoolOptions::new()
        .max_connections(config.db_max_connections)
        .min_connections(1)
        // sqlx pings every connection it hands out by default: one extra round trip per
        // statement. A connection back in use within a second was just working; one idle
        // longer (the ones a database restart or failover leaves dead) is still checked,
        // so recovery stays transparent.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > RECENTLY_USED {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
        .acquire_timeout(Duration::from_millis(config.db_acquire_timeout_ms))
        .connect_with(options)
        .await
        .context("connecting to Postgres")
}

fn connect_options(config: &Config) -> anyhow::Result<PgConnectOptions> {
    Ok(
        PgConnectOptions::from_str(config.database_url.expose_secret())
            .context("DATABASE_URL is not a Postgres URL")?
            .log_statements(tracing::log::LevelFilter::Debug),
    )
}

/// What stands between latchkey and Postgres, as far as named statements go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Each connection keeps its server connection (Postgres itself, or a pooler in
    /// session mode).
    None,
    /// A pooler that hands server connections to other clients between transactions
    /// (PgBouncer in transaction mode) and keeps each client's named statements
    /// (PgBouncer 1.21 or later with `max_prepared_statements`).
    Transaction,
}

/// Connections that may occupy the prober's server connection before the probe
/// concludes that nobody shares it.
const PROBE_HOLDERS: usize = 6;
/// How long one probe step may wait (a pooler with no server connection free).
const PROBE_WAIT: Duration = Duration::from_secs(5);

const LOSES_STATEMENTS: &str = "the database connection goes through a pooler in \
    transaction mode that loses named prepared statements (a statement prepared on one \
    server connection was missing, or another one ran, once the pooler moved this client \
    to another server connection); latchkey's queries would fail, or run another \
    client's statement. Use PgBouncer >= 1.21 with max_prepared_statements set (e.g. \
    200; deploy/pgbouncer/pgbouncer.ini), or session pooling";

/// Finds out whether the database is reached through a transaction pooler, and refuses
/// one that loses named statements (PgBouncer before 1.21, or without
/// `max_prepared_statements`): sqlx names every statement it prepares (`sqlx_s_1`, …)
/// and binds to it by name later, so such a pooler makes queries fail or, worse, run
/// another client's statement of the same name.
///
/// The prober prepares a statement that returns its server's process id and a random
/// value, inside a transaction (so both happen on one server connection). Then, one at
/// a time, other connections open a transaction and keep it open, occupying a server
/// connection each (a pooler lends the one just released first), and after each the
/// prober runs its statement again, by name. Without a transaction pooler it keeps its
/// server (same process id) every time. Behind one, it is moved to another server
/// connection, where the statement must still run and echo the random value: an error
/// or another answer means the pooler lost it.
pub async fn probe_pooling(config: &Config) -> anyhow::Result<Pooling> {
    use rand::RngCore;
    use sqlx::PgConnection;

    /// The probe's one named statement: its server's process id and `token`.
    async fn ask(conn: &mut PgConnection, token: i64) -> Result<(i64, i64), sqlx::Error> {
        sqlx::query_as("select pg_backend_pid()::int8, $1::int8")
            .bind(token)
            .fetch_one(&mut *conn)
            .await
    }
    /// A statement in the simple protocol (no named statement). Not `raw_sql`: its
    /// executor bound makes every caller's future fail the higher-ranked `Send` check
    /// when it is spawned.
    async fn simple(conn: &mut PgConnection, sql: &'static str) -> Result<(), sqlx::Error> {
        // A bare string has no arguments, so sqlx sends it as a simple query.
        sqlx::Executor::execute(&mut *conn, sql).await.map(|_| ())
    }

    let options = connect_options(config)?;
    let mut prober = PgConnection::connect_with(&options)
        .await
        .context("probing the pooler: connecting")?;
    let token = i64::from(rand::rngs::OsRng.next_u32());
    // Prepared and run inside a transaction, so on one server connection.
    simple(&mut prober, "begin")
        .await
        .context("probing the pooler")?;
    let (server, echoed) = ask(&mut prober, token)
        .await
        .context("probing the pooler")?;
    simple(&mut prober, "commit")
        .await
        .context("probing the pooler")?;
    anyhow::ensure!(echoed == token, "probing the pooler: a wrong answer");

    let mut holders = Vec::new();
    let mut outcome = Pooling::None;
    for _ in 0..PROBE_HOLDERS {
        let mut holder = PgConnection::connect_with(&options)
            .await
            .context("probing the pooler: connecting")?;
        match tokio::time::timeout(PROBE_WAIT, simple(&mut holder, "begin; select 1")).await {
            Ok(result) => result.context("probing the pooler")?,
            // No server connection free for another client: nothing more to learn.
            Err(_) => break,
        }
        holders.push(holder);
        let (now_on, echoed) = match tokio::time::timeout(PROBE_WAIT, ask(&mut prober, token)).await
        {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "the pooler lost a prepared statement");
                anyhow::bail!(LOSES_STATEMENTS);
            }
            Err(_) => {
                tracing::warn!(
                    "probing the pooler: no server connection was free for a second \
                     client within {PROBE_WAIT:?}; named statements could not be checked"
                );
                break;
            }
        };
        if echoed != token {
            anyhow::bail!(LOSES_STATEMENTS);
        }
        if now_on != server {
            outcome = Pooling::Transaction;
            break;
        }
    }
    for mut holder in holders {
        let _ = tokio::time::timeout(PROBE_WAIT, simple(&mut holder, "rollback")).await;
        let _ = holder.close().await;
    }
    let _ = prober.close().await;
    Ok(outcome)
}

/// Brings the schema up to date at start-up: migrates on a direct connection; behind a
/// transaction pooler (where the migrator's session-level advisory lock means nothing)
/// only checks that `latchkey migrate` was run against Postgres itself.
pub async fn prepare_schema(config: &Config, pool: &PgPool) -> anyhow::Result<()> {
    match probe_pooling(config).await? {
        Pooling::None => migrate(pool).await,
        Pooling::Transaction => {
            tracing::info!("behind a transaction pooler: migrations are not applied here");
            let applied: Vec<(i64,)> =
                sqlx::query_as("select version from _sqlx_migrations where success")
                    .fetch_all(pool)
                    .await
                    .unwrap_or_default();
            let missing = MIGRATOR
                .iter()
                .filter(|m| !m.migration_type.is_down_migration())
                .filter(|m| !applied.iter().any(|(v,)| *v == m.version))
                .count();
            anyhow::ensure!(
                missing == 0,
                "{missing} migrations are not applied, and the database is reached through \
                 a transaction pooler, where the migrator's lock does not hold: run \
                 `latchkey migrate` with DATABASE_URL pointing at Postgres itself \
                 (not at the pooler) first"
            );
            Ok(())
        }
    }
}

/// Applies the migrations, then gives non-ASCII addresses the key the service computes
/// (a migration can only use Postgres `lower()`).
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await.context("applying migrations")?;
    crate::store::users::rekey_non_ascii(pool).await
}

async fn create_database_if_missing(options: &PgConnectOptions) -> anyhow::Result<()> {
    let Some(name) = options.get_database().map(str::to_owned) else {
        return Ok(());
    };
    match sqlx::PgConnection::connect_with(options).await {
        Ok(conn) => {
            conn.close().await.ok();
            return Ok(());
        }
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("3D000") => {}
        Err(e) => return Err(e).context("connecting to Postgres"),
    }
    let mut admin = sqlx::PgConnection::connect_with(&options.clone().database("postgres"))
        .await
        .context("connecting to the postgres database to create ours")?;
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    match sqlx::query(&format!("create database {quoted}"))
        .execute(&mut admin)
        .await
    {
        Ok(_) => tracing::info!(database = %name, "created the database"),
        // Another instance created it at the same moment.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
        Err(e) => return Err(e).context("creating the database"),
    }
    Ok(())
}
