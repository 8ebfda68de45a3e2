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
    let options = PgConnectOptions::from_str(config.database_url.expose_secret())
        .context("DATABASE_URL is not a Postgres URL")?
        .log_statements(tracing::log::LevelFilter::Debug);
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
