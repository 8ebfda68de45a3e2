//! What Settings → Security shows: the account's live sessions and its recent activity.

use super::Accounts;
use crate::domain::SessionDigest;
use crate::store::audit::{self, Event};
use crate::store::sessions::{self, SessionInfo};
use crate::store::users::User;

/// How many events the activity list shows.
const RECENT_EVENTS: i64 = 20;

/// One live session, and whether it is the one asking.
#[derive(Debug)]
pub struct SessionEntry {
    pub info: SessionInfo,
    pub current: bool,
}

#[derive(Debug)]
pub struct SecurityOverview {
    /// The asking session first, so the unfamiliar ones stand out below it; then by
    /// last activity.
    pub sessions: Vec<SessionEntry>,
    pub activity: Vec<Event>,
}

impl SecurityOverview {
    /// Whether any session but the asking one is signed in.
    pub fn has_others(&self) -> bool {
        self.sessions.iter().any(|s| !s.current)
    }
}

/// The account's sessions (marking `current`, the asking one) and recent activity.
pub async fn security_overview(
    accounts: &Accounts,
    user: &User,
    current: Option<&SessionDigest>,
) -> anyhow::Result<SecurityOverview> {
    let mut sessions: Vec<SessionEntry> = sessions::list_for_user(&accounts.pool, user.id)
        .await?
        .into_iter()
        .map(|info| SessionEntry {
            current: current.is_some_and(|d| d.as_bytes() == info.id_hash.as_slice()),
            info,
        })
        .collect();
    sessions.sort_by_key(|s| !s.current);
    let activity = audit::recent_for_user(&accounts.pool, user.id, RECENT_EVENTS).await?;
    Ok(SecurityOverview { sessions, activity })
}
