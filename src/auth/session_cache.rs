//! A per-instance, sub-second memory of forward-auth answers: the proxy asks about every
//! request of every protected application, and most come in bursts for one session (a
//! page and its assets). An answer is reused for at most the TTL, so a revocation on any
//! instance is seen by every instance within it, with no invalidation messages.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::session::Identity;
use crate::domain::SessionDigest;

/// Entries kept at most; past it, expired ones go, and if that is not enough, all of
/// them (a flood of random cookies costs reads, never unbounded memory).
const MAX_ENTRIES: usize = 50_000;

type Answer = Option<Arc<Identity>>;

pub struct SessionCache {
    ttl: Duration,
    entries: Mutex<HashMap<Vec<u8>, (Instant, Answer)>>,
}

impl SessionCache {
    /// A zero TTL keeps nothing.
    pub fn new(ttl: Duration) -> SessionCache {
        SessionCache {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// A still-fresh answer for this session: `Some(None)` is "known not signed in".
    pub fn get(&self, digest: &SessionDigest) -> Option<Answer> {
        if self.ttl.is_zero() {
            return None;
        }
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let (expires, answer) = entries.get(digest.as_bytes())?;
        (Instant::now() < *expires).then(|| answer.clone())
    }

    /// Remembers the answer of a read that began at `asked_at`.
    pub fn put(&self, digest: &SessionDigest, answer: Answer, asked_at: Instant) {
        if self.ttl.is_zero() {
            return;
        }
        let expires = asked_at + self.ttl;
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_ENTRIES {
            let now = Instant::now();
            entries.retain(|_, (until, _)| *until > now);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(digest.as_bytes().to_vec(), (expires, answer));
    }
}

impl SessionCache {
    /// Drops this instance's answer for a session it just ended (the others drop theirs
    /// within the TTL).
    pub fn forget(&self, digest: &SessionDigest) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.remove(digest.as_bytes());
    }
}

impl std::fmt::Debug for SessionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionCache")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}
