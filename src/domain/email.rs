//! An email address as an account identifier: trimmed, domain lowercased, safe for a mail header.

use std::fmt;

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

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part before `@`, which a password must not contain.
    pub fn local_part(&self) -> &str {
        self.0.rsplit_once('@').map_or(&self.0, |(local, _)| local)
    }

    /// The key that throttles and looks up the account: the whole address lowercased.
    pub fn key(&self) -> String {
        self.0.to_lowercase()
    }
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

    #[test]
    fn over_long_addresses_are_refused() {
        let long = format!("{}@example.com", "a".repeat(250));
        assert_eq!(EmailAddress::parse(&long), Err(EmailError::Malformed));
    }
}
