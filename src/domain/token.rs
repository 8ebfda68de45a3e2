//! Single-use secrets sent by mail: 256 bits from the OS, URL-safe, stored only as SHA-256.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};

const TOKEN_BYTES: usize = 32;

/// A reset token as it travels in a link; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct ResetToken(String);

impl ResetToken {
    pub fn generate() -> ResetToken {
        let mut bytes = [0u8; TOKEN_BYTES];
        OsRng.fill_bytes(&mut bytes);
        ResetToken(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Accepts only the exact shape `generate` makes, so junk never reaches the database.
    pub fn parse(input: &str) -> Option<ResetToken> {
        let decoded = URL_SAFE_NO_PAD.decode(input.as_bytes()).ok()?;
        (decoded.len() == TOKEN_BYTES).then(|| ResetToken(input.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// What the database keeps: a leaked table gives no usable link.
    pub fn digest(&self) -> Vec<u8> {
        Sha256::digest(self.0.as_bytes()).to_vec()
    }
}

impl fmt::Debug for ResetToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResetToken([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_parse_and_differ() {
        let a = ResetToken::generate();
        let b = ResetToken::generate();
        assert_ne!(a, b);
        assert_eq!(ResetToken::parse(a.expose()), Some(a.clone()));
        assert_eq!(a.expose().len(), 43);
        assert!(!format!("{a:?}").contains(a.expose()));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for bad in ["", "abc", "!!!!", &"A".repeat(44), &"A".repeat(42)] {
            assert_eq!(ResetToken::parse(bad), None, "{bad:?}");
        }
    }
}
