//! The typed session: every key the app stores, and the moves that keep sessions safe.

use tower_sessions::Session;
use tower_sessions::session::Id;
use uuid::Uuid;

use super::Origin;

const USER_ID: &str = "user_id";
const IP: &str = "ip";
const USER_AGENT: &str = "user_agent";
const SIGNED_IN_AT: &str = "signed_in_at";

#[derive(Clone)]
pub struct AuthSession(Session);

fn err(e: tower_sessions::session::Error) -> anyhow::Error {
    anyhow::anyhow!("session store: {e}")
}

impl AuthSession {
    pub fn new(session: Session) -> AuthSession {
        AuthSession(session)
    }

    pub async fn user_id(&self) -> anyhow::Result<Option<Uuid>> {
        self.0.get::<Uuid>(USER_ID).await.map_err(err)
    }

    /// Opens a signed-in session under a fresh id, so an id planted before sign-in
    /// (session fixation) is worth nothing.
    pub async fn sign_in(&self, user_id: Uuid, origin: &Origin) -> anyhow::Result<()> {
        self.0.cycle_id().await.map_err(err)?;
        self.0.insert(USER_ID, user_id).await.map_err(err)?;
        self.0.insert(IP, &origin.ip).await.map_err(err)?;
        self.0
            .insert(USER_AGENT, &origin.user_agent)
            .await
            .map_err(err)?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        self.0.insert(SIGNED_IN_AT, now).await.map_err(err)?;
        Ok(())
    }

    /// Deletes the session row and clears the cookie.
    pub async fn sign_out(&self) -> anyhow::Result<()> {
        self.0.flush().await.map_err(err)
    }

    /// A new id for the same signed-in session (after a password change).
    pub async fn rotate(&self) -> anyhow::Result<()> {
        self.0.cycle_id().await.map_err(err)
    }

    pub fn id(&self) -> Option<Id> {
        self.0.id()
    }
}
