//! Recovery codes: ten codes of 60 bits each from the OS generator, in letters and digits
//! that cannot be mistaken for one another, stored only as HMAC-SHA256 under a key derived
//! from `LATCHKEY_SECRET_KEY` and bound to their account.

use hmac::{Hmac, Mac};
use rand::RngCore;
use rand::rngs::OsRng;
use sha2::Sha256;
use uuid::Uuid;

const RECOVERY_CODES: usize = 10;
/// Letters and digits that cannot be mistaken for one another when copied by hand.
const RECOVERY_ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";

/// A recovery code as typed: spaces, dashes and case do not matter.
pub(super) fn normalize_code(code: &str) -> String {
    code.chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

pub(super) fn recovery_hash(key: &[u8; 32], user_id: Uuid, code: &str) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(user_id.as_bytes());
    mac.update(normalize_code(code).as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// Ten new codes like `k7m2-x9qp-4hzt` (60 bits each).
pub(super) fn generate_recovery_codes() -> Vec<String> {
    (0..RECOVERY_CODES)
        .map(|_| {
            let mut bytes = [0u8; 12];
            OsRng.fill_bytes(&mut bytes);
            let chars: Vec<char> = bytes
                .iter()
                .map(|b| char::from(RECOVERY_ALPHABET[usize::from(*b) % RECOVERY_ALPHABET.len()]))
                .collect();
            chars
                .chunks(4)
                .map(|c| c.iter().collect::<String>())
                .collect::<Vec<_>>()
                .join("-")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_codes_are_ten_distinct_readable_codes() {
        let codes = generate_recovery_codes();
        assert_eq!(codes.len(), 10);
        let mut unique = codes.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 10);
        assert!(
            codes
                .iter()
                .all(|c| c.len() == 14 && c.matches('-').count() == 2)
        );
        let key = [5u8; 32];
        let user = Uuid::new_v4();
        assert_eq!(
            recovery_hash(&key, user, &codes[0]),
            recovery_hash(&key, user, &codes[0].to_uppercase().replace('-', " "))
        );
    }
}
