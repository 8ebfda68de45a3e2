//! The typed session: every key the app stores in the tower-sessions session, and the
//! moves that keep sessions safe. The rules about sessions are `auth::session`.

use tower_sessions::Session;
use tower_sessions::session::Id;
use uuid::Uuid;

use super::session_store::{self, is_unavailable};
use crate::auth::Origin;
use crate::auth::session::{PendingSecondStep, SignInMethod, SignedIn, password_stamp};
use crate::domain::SessionDigest;
use crate::store::users::User;

const USER_ID: &str = "user_id";
const IP: &str = "ip";
const USER_AGENT: &str = "user_agent";
const SIGNED_IN_AT: &str = "signed_in_at";
/// How the sign-in was completed ([`SignInMethod::as_recorded`]).
const SIGN_IN_METHOD: &str = "sign_in_method";
/// The account's `password_changed_at` when this session began (or last re-recorded it),
/// as microseconds since the epoch (Postgres's precision, and what migration 0004 writes
/// for older sessions): a session is worth only as much as the password it was opened with.
const PASSWORD_SET_AT: &str = "password_set_at";
const PENDING_USER_ID: &str = "pending_user_id";
const PENDING_UNTIL: &str = "pending_until";
const PENDING_NEXT: &str = "pending_next";
const PENDING_PASSWORD_SET_AT: &str = "pending_password_set_at";

/// How long a correct password waits for its second factor.
const SECOND_STEP_SECS: i64 = 300;

#[derive(Clone)]
pub struct AuthSession(Session);

/// A session error as the pages report it.
fn store_error(e: tower_sessions::session::Error) -> anyhow::Error {
    match e {
        // An outage answers 503 like every other query that cannot reach the database.
        tower_sessions::session::Error::Store(store) if is_unavailable(&store) => {
            anyhow::Error::new(crate::db::Unavailable).context(format!("session store: {store}"))
        }
        other => anyhow::anyhow!("session store: {other}"),
    }
}

impl AuthSession {
    pub fn new(session: Session) -> AuthSession {
        AuthSession(session)
    }

    pub async fn user_id(&self) -> anyhow::Result<Option<Uuid>> {
        self.0.get::<Uuid>(USER_ID).await.map_err(store_error)
    }

    /// Who is signed in here, and with which password; the caller compares it with the
    /// account's current one.
    pub async fn signed_in(&self) -> anyhow::Result<Option<SignedIn>> {
        let Some(user_id) = self.user_id().await? else {
            return Ok(None);
        };
        let password_set_at = self
            .0
            .get::<i64>(PASSWORD_SET_AT)
            .await
            .map_err(store_error)?;
        Ok(Some(SignedIn::new(user_id, password_set_at)))
    }

    /// The id this session's cookie will carry after this request, loading the session
    /// first: `None` when the cookie named no live session (the answer removes it).
    pub async fn cookie_id(&self) -> Option<Id> {
        // When the store cannot be reached the session stays unloaded and the answer
        // leaves the cookie alone, so it is the cookie's id; whatever needs the session
        // meets the outage itself.
        let _ = self.0.get_value(USER_ID).await;
        self.0.id()
    }

    /// Opens a signed-in session under a fresh id, so an id planted before sign-in
    /// (session fixation) is worth nothing. `password_set_at` is the account's
    /// `password_changed_at` from the row whose hash the password was verified against:
    /// a reset or change committed meanwhile makes this session worthless on arrival.
    pub async fn sign_in(
        &self,
        user_id: Uuid,
        password_set_at: time::OffsetDateTime,
        method: SignInMethod,
        origin: &Origin,
    ) -> anyhow::Result<()> {
        self.fresh_id().await?;
        for key in [
            PENDING_USER_ID,
            PENDING_UNTIL,
            PENDING_NEXT,
            PENDING_PASSWORD_SET_AT,
        ] {
            self.0.remove_value(key).await.map_err(store_error)?;
        }
        self.0.insert(USER_ID, user_id).await.map_err(store_error)?;
        self.0
            .insert(PASSWORD_SET_AT, password_stamp(password_set_at))
            .await
            .map_err(store_error)?;
        self.0.insert(IP, &origin.ip).await.map_err(store_error)?;
        self.0
            .insert(USER_AGENT, &origin.user_agent)
            .await
            .map_err(store_error)?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        self.0
            .insert(SIGNED_IN_AT, now)
            .await
            .map_err(store_error)?;
        self.0
            .insert(SIGN_IN_METHOD, method.as_recorded())
            .await
            .map_err(store_error)?;
        Ok(())
    }

    /// After a correct password on an account with two-factor: a half-signed-in session,
    /// under a fresh id, that reaches nothing but the second step, for five minutes.
    pub async fn begin_second_step(&self, user: &User, next: Option<&str>) -> anyhow::Result<()> {
        self.fresh_id().await?;
        self.0
            .insert(PENDING_USER_ID, user.id)
            .await
            .map_err(store_error)?;
        let until = time::OffsetDateTime::now_utc().unix_timestamp() + SECOND_STEP_SECS;
        self.0
            .insert(PENDING_UNTIL, until)
            .await
            .map_err(store_error)?;
        self.0
            .insert(PENDING_NEXT, next)
            .await
            .map_err(store_error)?;
        // The password this step was started with: a reset or change in the meantime
        // ends the half-signed-in session like every other one.
        self.0
            .insert(PENDING_PASSWORD_SET_AT, user.password_changed_at)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    /// The account waiting for its second step, and where to go after, while in time.
    pub async fn pending_second_step(&self) -> anyhow::Result<Option<PendingSecondStep>> {
        let Some(user_id) = self
            .0
            .get::<Uuid>(PENDING_USER_ID)
            .await
            .map_err(store_error)?
        else {
            return Ok(None);
        };
        let until = self
            .0
            .get::<i64>(PENDING_UNTIL)
            .await
            .map_err(store_error)?
            .unwrap_or(0);
        if time::OffsetDateTime::now_utc().unix_timestamp() > until {
            return Ok(None);
        }
        let Some(password_set_at) = self
            .0
            .get::<time::OffsetDateTime>(PENDING_PASSWORD_SET_AT)
            .await
            .map_err(store_error)?
        else {
            return Ok(None);
        };
        let next = self
            .0
            .get::<Option<String>>(PENDING_NEXT)
            .await
            .map_err(store_error)?
            .flatten();
        Ok(Some(PendingSecondStep {
            user_id,
            next,
            password_set_at,
        }))
    }

    /// Deletes the session row and clears the cookie.
    pub async fn sign_out(&self) -> anyhow::Result<()> {
        self.0.flush().await.map_err(store_error)
    }

    /// Retires the id the request came with, if any (no fixation). A request with no
    /// session cookie already gets a fresh, never-issued id when its session is first
    /// saved, so there is nothing to delete (and no round trip to spend on it).
    async fn fresh_id(&self) -> anyhow::Result<()> {
        if self.0.id().is_some() {
            self.0.cycle_id().await.map_err(store_error)?;
        }
        Ok(())
    }

    /// After this session set a new password itself (change, or turning two-factor off
    /// with a new one): a new id, and the new password recorded, so this session goes on
    /// while every one begun with the old password is refused.
    pub async fn rotate_for_password(
        &self,
        password_set_at: time::OffsetDateTime,
    ) -> anyhow::Result<()> {
        self.0.cycle_id().await.map_err(store_error)?;
        self.0
            .insert(PASSWORD_SET_AT, password_stamp(password_set_at))
            .await
            .map_err(store_error)
    }

    /// When this session was signed in (seconds since the epoch; `None` for sessions
    /// from before it was recorded).
    pub async fn signed_in_at(&self) -> anyhow::Result<Option<i64>> {
        self.0.get::<i64>(SIGNED_IN_AT).await.map_err(store_error)
    }

    /// How this session's sign-in was completed.
    pub async fn sign_in_method(&self) -> anyhow::Result<SignInMethod> {
        let recorded = self
            .0
            .get::<String>(SIGN_IN_METHOD)
            .await
            .map_err(store_error)?;
        Ok(SignInMethod::from_recorded(recorded.as_deref()))
    }

    pub fn id(&self) -> Option<Id> {
        self.0.id()
    }

    /// The digest of this session's id, as the account rules know a session.
    pub fn digest(&self) -> Option<SessionDigest> {
        self.0.id().map(|id| session_store::digest(&id))
    }
}
