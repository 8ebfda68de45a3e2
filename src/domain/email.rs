//! An email address as an account identifier: trimmed, domain lowercased, safe for a mail header.

use std::fmt;

use unicode_normalization::UnicodeNormalization;

/// Longest address accepted (RFC 5321 path limit).
const MAX_LEN: usize = 254;

#[derive(Clone, PartialEq, Eq)]
pub struct EmailAddress(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EmailError {
    #[error("Enter your email address")]
    Empty,
    #[error("Enter an email address in the correct format, like name@example.com")]
    Malformed,
}

impl EmailAddress {
    /// Trims surrounding space and lowercases the domain; the local part keeps its case
    /// (accounts still compare case-insensitively in the database).
    pub fn parse(input: &str) -> Result<EmailAddress, EmailError> {
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(EmailError::Empty);
        }
        if trimmed.len() > MAX_LEN {
            return Err(EmailError::Malformed);
        }
        let (local, domain) = trimmed.rsplit_once('@').ok_or(EmailError::Malformed)?;
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && !local.starts_with('.')
            && !local.ends_with('.')
            && !local.contains("..")
            && local.chars().all(|c| {
                c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c) || !c.is_ascii()
            });
        let domain_ok = domain.contains('.')
            && domain.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii())
            });
        let no_controls = !trimmed.chars().any(|c| c.is_control() || c.is_whitespace());
        if !(local_ok && domain_ok && no_controls) {
            return Err(EmailError::Malformed);
        }
        Ok(EmailAddress(format!("{local}@{}", domain.to_lowercase())))
    }

    /// An address read back from an account row, taken as stored: it was parsed when the
    /// account was made, and its exact text is what mail goes to. Only the store calls
    /// this (it logs a stored address that no longer parses).
    pub fn from_stored(stored: String) -> EmailAddress {
        EmailAddress(stored)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part before `@`, which a password must not contain.
    pub fn local_part(&self) -> &str {
        self.0.rsplit_once('@').map_or(&self.0, |(local, _)| local)
    }

    /// The key that finds the account (`users.email_key`, unique) and throttles sign-in:
    /// the whole address NFKC-normalised, then lowercased with Unicode's default,
    /// locale-free mapping (`str::to_lowercase`), then NFKC again so the key is a fixed
    /// point. No case folding: `ß` stays `ß` (`Straße` and `STRASSE` are two addresses)
    /// and Turkish `İ` becomes `i` + U+0307, not `i`.
    pub fn key(&self) -> String {
        key_of(&self.0)
    }
}

fn key_of(address: &str) -> String {
    address
        .nfkc()
        .collect::<String>()
        .to_lowercase()
        .nfkc()
        .collect()
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EmailAddress({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_is_lowercased_and_space_trimmed() {
        let email = EmailAddress::parse("  Alice@Example.COM ").expect("valid");
        assert_eq!(email.as_str(), "Alice@example.com");
        assert_eq!(email.key(), "alice@example.com");
        assert_eq!(email.local_part(), "Alice");
    }

    #[test]
    fn header_injection_and_garbage_are_refused() {
        for bad in [
            "a@b.com\r\nBcc: x@y.com",
            "a@b.com\nx",
            "no-at-sign",
            "@example.com",
            "a@",
            "a@localhost",
            "a b@example.com",
            "a..b@example.com",
            "a@-x.com",
            "<a@b.com>",
            "a@b.com,c@d.com",
        ] {
            assert_eq!(
                EmailAddress::parse(bad),
                Err(EmailError::Malformed),
                "{bad:?}"
            );
        }
        assert_eq!(EmailAddress::parse("  "), Err(EmailError::Empty));
    }

    fn key(input: &str) -> String {
        EmailAddress::parse(input).expect("valid").key()
    }

    #[test]
    fn sharp_s_is_lowercased_not_case_folded() {
        assert_eq!(key("Straße@example.com"), "straße@example.com");
        assert_eq!(key("STRASSE@example.com"), "strasse@example.com");
        assert_ne!(key("Straße@example.com"), key("STRASSE@example.com"));
        // Capital sharp s lowercases to ß: one account with the lowercase spelling.
        assert_eq!(key("STRAẞE@example.com"), key("straße@example.com"));
    }

    #[test]
    fn turkish_dotted_capital_i_keeps_its_dot() {
        // Unicode's default mapping, the same in every locale: İ → i + combining dot.
        assert_eq!(key("İlker@example.com"), "i\u{307}lker@example.com");
        assert_eq!(key("İlker@example.com"), key("i\u{307}lker@example.com"));
        assert_ne!(key("İlker@example.com"), key("ilker@example.com"));
        assert_eq!(key("ILKER@example.com"), key("ilker@example.com"));
        assert_ne!(
            key("ılker@example.com"),
            key("ilker@example.com"),
            "dotless ı"
        );
    }

    #[test]
    fn compatibility_and_composed_forms_share_a_key() {
        assert_eq!(key("ａｌｉｃｅ@example.com"), "alice@example.com");
        assert_eq!(key("Ｅmile@example.com"), key("emile@example.com"));
        assert_eq!(key("E\u{301}mile@example.com"), key("Émile@example.com"));
        assert_eq!(key("Émile@example.com"), "\u{e9}mile@example.com");
    }

    proptest::proptest! {
        #[test]
        fn the_key_is_a_fixed_point(s in "\\PC{0,40}") {
            let once = key_of(&s);
            proptest::prop_assert_eq!(key_of(&once), once);
        }

        #[test]
        fn an_ascii_key_is_what_postgres_lower_gives(s in "[ -~]{0,40}") {
            // What the 0003 upgrade relies on when it backfills with lower(email).
            proptest::prop_assert_eq!(key_of(&s), s.to_ascii_lowercase());
        }
    }

    #[test]
    fn over_long_addresses_are_refused() {
        let long = format!("{}@example.com", "a".repeat(250));
        assert_eq!(EmailAddress::parse(&long), Err(EmailError::Malformed));
    }
}
