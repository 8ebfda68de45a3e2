//! The tower-sessions store over `store::sessions`: the cookie's id becomes its digest
//! here, and nothing below the web ever sees the id itself.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::PgPool;
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::{self, SessionStore};

use crate::domain::SessionDigest;
use crate::store::sessions;

#[derive(Clone)]
pub struct PgSessionStore {
    pool: PgPool,
    idle: Duration,
    absolute: Duration,
}

impl std::fmt::Debug for PgSessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSessionStore").finish_non_exhaustive()
    }
}

/// A database leak must not hand out live sessions, so only the digest is stored.
pub fn digest(id: &Id) -> SessionDigest {
    SessionDigest::of_id(id.0)
}

/// The stored `id_hash` of a session id, as bytes.
pub fn id_hash(id: &Id) -> Vec<u8> {
    digest(id).as_bytes().to_vec()
}

/// How a store error caused by an unreachable database starts: the store's errors are
/// strings, and this lets [`is_unavailable`] tell an outage (503) from a bug (500).
const UNAVAILABLE: &str = "database unavailable: ";

fn backend(err: anyhow::Error) -> session_store::Error {
    let outage = err
        .chain()
        .filter_map(|cause| cause.downcast_ref::<sqlx::Error>())
        .any(crate::store::reachability::is_outage);
    if outage {
        session_store::Error::Backend(format!("{UNAVAILABLE}{err}"))
    } else {
        session_store::Error::Backend(err.to_string())
    }
}

/// Whether a session store error means the database is out of reach.
pub fn is_unavailable(err: &session_store::Error) -> bool {
    matches!(err, session_store::Error::Backend(message) if message.starts_with(UNAVAILABLE))
}

impl PgSessionStore {
    pub fn new(pool: PgPool, idle: Duration, absolute: Duration) -> PgSessionStore {
        PgSessionStore {
            pool,
            idle,
            absolute,
        }
    }
}

#[async_trait]
impl SessionStore for PgSessionStore {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        let data = serde_json::to_value(&record.data)
            .map_err(|e| session_store::Error::Encode(e.to_string()))?;
        // 128 random bits collide essentially never, but a collision must not join two sessions.
        loop {
            let inserted = sessions::create(
                &self.pool,
                &digest(&record.id),
                &data,
                self.idle,
                self.absolute,
            )
            .await
            .map_err(backend)?;
            if inserted {
                return Ok(());
            }
            record.id = Id::default();
        }
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        let data = serde_json::to_value(&record.data)
            .map_err(|e| session_store::Error::Encode(e.to_string()))?;
        sessions::save(
            &self.pool,
            &digest(&record.id),
            &data,
            self.idle,
            self.absolute,
        )
        .await
        .map_err(backend)
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        let row = sessions::load(&self.pool, &digest(id))
            .await
            .map_err(backend)?;
        row.map(|(data, expiry_date)| {
            let data = serde_json::from_value(data)
                .map_err(|e| session_store::Error::Decode(e.to_string()))?;
            Ok(Record {
                id: *id,
                data,
                expiry_date,
            })
        })
        .transpose()
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        sessions::delete(&self.pool, &digest(id))
            .await
            .map_err(backend)
    }
}
