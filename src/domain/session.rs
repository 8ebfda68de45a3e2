//! A session as the rules below the web see it: never its id, only the id's digest.

use sha2::{Digest, Sha256};

/// The SHA-256 digest of a session id: what the sessions table is keyed by, so a database
/// leak hands out no live sessions. Made from the id's 128 bits by whoever holds the id.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionDigest(Vec<u8>);

impl SessionDigest {
    /// The digest of the session id `id` (its 128 bits, little-endian).
    pub fn of_id(id: i128) -> SessionDigest {
        SessionDigest(Sha256::digest(id.to_le_bytes()).to_vec())
    }

    /// A digest as stored (an OpenID grant keeps the digest of the session it came from).
    pub fn from_stored(bytes: Vec<u8>) -> SessionDigest {
        SessionDigest(bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for SessionDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionDigest([redacted])")
    }
}
