//! Whether Postgres can be reached: the outage error, what counts as one, and the ping
//! that readiness and the "is it down or is it a bug?" checks use.

use std::time::Duration;

use sqlx::PgPool;

/// The database could not be reached (a request answers 503, not 500). Used where the
/// original `sqlx::Error` cannot travel, e.g. through the session store's string errors.
#[derive(Debug, thiserror::Error)]
#[error("the database is unavailable")]
pub struct Unavailable;

/// Whether `err` means the database is out of reach (down, unreachable, connection cut,
/// no connection free in time) rather than a bug in a query.
pub fn is_outage(err: &sqlx::Error) -> bool {
    matches!(
        err,
        sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed
            // What a connection closed during its start-up or mid-reply reads as.
            | sqlx::Error::Protocol(_)
    )
}

/// Whether Postgres answers a trivial query within `within` (readiness, outage checks).
pub async fn ping(pool: &PgPool, within: Duration) -> bool {
    let query = sqlx::query("select 1").execute(pool);
    matches!(tokio::time::timeout(within, query).await, Ok(Ok(_)))
}
