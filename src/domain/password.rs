//! The password policy: the one place that decides whether a new password is acceptable
//! (sign-up, reset, change) and what the strength meter says about it.
//!
//! It follows NIST SP 800-63B-4 (§3.1.1.2): a minimum length counted in characters after
//! NFKC normalisation, at least 128 characters accepted, spaces and any Unicode allowed,
//! the password checked exactly as typed (no trimming, truncation or case folding), no
//! composition rules, and a blocklist of common and breached passwords.
//!
//! # Where the blocklist comes from
//!
//! `common_passwords.txt` is every entry of 8 characters or more, most common first, of
//! the "passwords" frequency list shipped in the `zxcvbn` crate 3.1.1
//! (`src/frequency_lists.rs`, constant `PASSWORDS`; MIT licence, © 2016 Joshua Holmer),
//! which carries over Dropbox zxcvbn's 30,000 most frequent passwords of Mark Burnett's
//! 10-million-password leak corpus (xato.net). Shorter entries are left out because no
//! NIST minimum (8 characters even with two-factor) lets them through; OWASP ASVS asks for
//! the most common passwords *that meet the length policy*.
//!
//! That list alone holds only a few dozen entries of 15 characters or more, and Dropbox
//! removed from it most passwords its own pattern matchers already find ("aaaaaaaa",
//! "abcdefgh"). So a password also counts as common when zxcvbn expects to guess it
//! within 30,000 attempts — no more than walking that whole list —
//! which is what "password1234567" and "passwordpassword" cost.
//!
//! # Cost
//!
//! [`NewPassword::parse`] and [`strength`] run zxcvbn, which takes from about a
//! millisecond to tens of milliseconds (release build) on hostile input: call them off
//! the async runtime's worker threads, like hashing. Callers cap request bodies (16 KiB),
//! which bounds the normalisation work.

use std::collections::HashSet;
use std::fmt;
use std::sync::LazyLock;

use secrecy::{ExposeSecret, SecretString};
use unicode_normalization::UnicodeNormalization;
use zxcvbn::Entropy;

/// The longest password, in bytes of UTF-8 after normalisation. It guards argon2 against
/// huge inputs and is far above the 128 characters NIST asks us to accept (128 characters
/// take at most 512 bytes). Sign-in uses it to refuse oversized input before hashing.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// NIST: at least 128 characters must be accepted, whatever the configured minimum.
const ALWAYS_LONG_ENOUGH: usize = 128;

/// zxcvbn's own cut-off: it looks at no more than this many characters.
const ZXCVBN_WINDOW: usize = 100;

/// The size of zxcvbn's breached-password list: a password zxcvbn expects to find within
/// this many guesses is no harder to find than one that is on the list.
const COMMON_PASSWORD_GUESSES: u64 = 30_000;

/// Shorter local parts ("al", "jo") are common substrings of ordinary words.
const MIN_LOCAL_PART_CHARS: usize = 3;

static COMMON_PASSWORDS: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    include_str!("common_passwords.txt")
        .lines()
        .filter(|line| !line.is_empty())
        .collect()
});

/// Rules that depend on configuration and on the account.
#[derive(Debug, Clone)]
pub struct PasswordPolicy {
    pub min_len_single_factor: usize,
    pub min_len_two_factor: usize,
    pub service_name: &'static str,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self {
            min_len_single_factor: 15,
            min_len_two_factor: 8,
            service_name: "latchkey",
        }
    }
}

impl PasswordPolicy {
    fn min_len(&self, ctx: &PolicyContext) -> usize {
        let configured = if ctx.two_factor {
            self.min_len_two_factor
        } else {
            self.min_len_single_factor
        };
        configured.min(ALWAYS_LONG_ENOUGH)
    }
}

/// What the policy needs to know about the account.
#[derive(Debug, Clone, Copy)]
pub struct PolicyContext<'a> {
    pub email: &'a str,
    pub two_factor: bool,
}

/// Why a new password was refused; `Display` is the message shown under the field.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum PolicyViolation {
    #[error("Password must be {min} characters or more")]
    TooShort { min: usize },
    #[error("Password must be {max_bytes} bytes or fewer")]
    TooLong { max_bytes: usize },
    #[error("This password is too common. Choose a less common one")]
    Common,
    #[error("Password must not contain your email address")]
    ContainsEmail,
    #[error("Password must not contain the word latchkey")]
    ContainsServiceName,
    #[error("Enter the same password in both fields")]
    Mismatch,
    #[error("Enter a new password")]
    Empty,
}

/// A password that passed the policy; NFKC-normalised; `Debug` prints `NewPassword([redacted])`.
pub struct NewPassword(SecretString);

impl NewPassword {
    /// Checks, in order: Empty, Mismatch, TooLong, TooShort, ContainsServiceName,
    /// ContainsEmail, Common.
    pub fn parse(
        policy: &PasswordPolicy,
        ctx: &PolicyContext,
        password: &str,
        confirm: &str,
    ) -> Result<NewPassword, PolicyViolation> {
        if password.is_empty() {
            return Err(PolicyViolation::Empty);
        }
        let password = normalize(password);
        // Compared after normalisation: the same password typed on two keyboards (or
        // pasted once, typed once) may differ only in compatibility forms.
        if password != normalize(confirm) {
            return Err(PolicyViolation::Mismatch);
        }
        match first_violation(policy, ctx, &password, None) {
            Some(violation) => Err(violation),
            None => Ok(NewPassword(SecretString::from(password))),
        }
    }

    /// The normalised password, for hashing only.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for NewPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NewPassword([redacted])")
    }
}

/// NFKC-normalise a password as typed, for verification (sign-in / current password).
/// Never trims, never case-folds.
pub fn normalize(password: &str) -> String {
    password.nfkc().collect()
}

/// Guidance for the strength meter: zxcvbn score 0..=4, a word and at most one tip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Strength {
    pub score: u8,
    pub label: &'static str,
    pub tip: Option<String>,
}

/// Rates a password for the meter. A password the policy would refuse scores 0 and its
/// tip is the reason, so the meter never calls a refused password "Strong".
/// Only the first 100 characters go through zxcvbn, which is slow on long inputs.
pub fn strength(policy: &PasswordPolicy, ctx: &PolicyContext, password: &str) -> Strength {
    let password = normalize(password);
    let window: String = password.chars().take(ZXCVBN_WINDOW).collect();
    let entropy = estimate(policy, ctx, &window);
    let violation = if password.is_empty() {
        Some(PolicyViolation::Empty)
    } else {
        first_violation(policy, ctx, &password, Some(&entropy))
    };
    let score = match violation {
        Some(_) => 0,
        None => u8::from(entropy.score()),
    };
    let tip = match violation {
        Some(violation) => Some(violation.to_string()),
        None => zxcvbn_tip(&entropy),
    };
    Strength {
        score,
        label: label(score),
        tip,
    }
}

/// The checks after Empty and Mismatch, in their documented order. `entropy`, when given,
/// must be zxcvbn's estimate of the first [`ZXCVBN_WINDOW`] characters of `password`.
fn first_violation(
    policy: &PasswordPolicy,
    ctx: &PolicyContext,
    password: &str,
    entropy: Option<&Entropy>,
) -> Option<PolicyViolation> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Some(PolicyViolation::TooLong {
            max_bytes: MAX_PASSWORD_BYTES,
        });
    }
    let min = policy.min_len(ctx);
    if password.chars().count() < min {
        return Some(PolicyViolation::TooShort { min });
    }
    let lowercase = password.to_lowercase();
    if contains_service_name(&lowercase, policy.service_name) {
        return Some(PolicyViolation::ContainsServiceName);
    }
    if contains_local_part(&lowercase, ctx.email) {
        return Some(PolicyViolation::ContainsEmail);
    }
    if COMMON_PASSWORDS.contains(lowercase.as_str())
        || is_as_guessable_as_a_common_password(policy, ctx, password, entropy)
    {
        return Some(PolicyViolation::Common);
    }
    None
}

fn contains_service_name(lowercase_password: &str, service_name: &str) -> bool {
    let service_name = service_name.to_lowercase();
    !service_name.is_empty() && lowercase_password.contains(&service_name)
}

fn contains_local_part(lowercase_password: &str, email: &str) -> bool {
    let local_part = normalize(local_part(email)).to_lowercase();
    local_part.chars().count() >= MIN_LOCAL_PART_CHARS && lowercase_password.contains(&local_part)
}

/// The part before the last `@` (a quoted local part may itself contain `@`).
fn local_part(email: &str) -> &str {
    email
        .rsplit_once('@')
        .map_or(email, |(local, _domain)| local)
}

fn is_as_guessable_as_a_common_password(
    policy: &PasswordPolicy,
    ctx: &PolicyContext,
    password: &str,
    entropy: Option<&Entropy>,
) -> bool {
    let chars = password.chars().count();
    let head_guesses = match entropy {
        Some(entropy) => entropy.guesses(),
        None => {
            let head: String = password.chars().take(ZXCVBN_WINDOW).collect();
            estimate(policy, ctx, &head).guesses()
        }
    };
    if head_guesses > COMMON_PASSWORD_GUESSES || chars <= ZXCVBN_WINDOW {
        return head_guesses <= COMMON_PASSWORD_GUESSES;
    }
    // zxcvbn looks at no more than its window. A longer password whose first window is
    // guessable is as guessable as a common one when it only repeats that beginning
    // ("a" × 500, "password" × 20), or when its last window is guessable too; a phrase
    // whose strength lies past the first window is not.
    let typed: Vec<char> = password.chars().collect();
    if repeats_a_short_unit(&typed) {
        return true;
    }
    let tail: String = typed[chars - ZXCVBN_WINDOW..].iter().collect();
    estimate(policy, ctx, &tail).guesses() <= COMMON_PASSWORD_GUESSES
}

/// Whether `typed` is one unit of at most half the zxcvbn window written again and again
/// (the last copy may be cut short).
fn repeats_a_short_unit(typed: &[char]) -> bool {
    (1..=ZXCVBN_WINDOW / 2).any(|period| {
        typed
            .iter()
            .skip(period)
            .zip(typed)
            .all(|(later, earlier)| later == earlier)
    })
}

/// zxcvbn also penalises the account's own words (email, service name) as guessable.
fn estimate(policy: &PasswordPolicy, ctx: &PolicyContext, password: &str) -> Entropy {
    zxcvbn::zxcvbn(
        password,
        &[ctx.email, local_part(ctx.email), policy.service_name],
    )
}

fn zxcvbn_tip(entropy: &Entropy) -> Option<String> {
    let feedback = entropy.feedback()?;
    match feedback.warning() {
        Some(warning) => Some(warning.to_string()),
        None => feedback.suggestions().first().map(ToString::to_string),
    }
}

fn label(score: u8) -> &'static str {
    match score {
        0 => "Very weak",
        1 => "Weak",
        2 => "Fair",
        3 => "Good",
        _ => "Strong",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMAIL: &str = "alice@example.com";

    fn single_factor() -> PolicyContext<'static> {
        PolicyContext {
            email: EMAIL,
            two_factor: false,
        }
    }

    fn two_factor() -> PolicyContext<'static> {
        PolicyContext {
            email: EMAIL,
            two_factor: true,
        }
    }

    fn parse(ctx: PolicyContext, password: &str) -> Result<NewPassword, PolicyViolation> {
        NewPassword::parse(&PasswordPolicy::default(), &ctx, password, password)
    }

    /// Deterministic, pattern-free text of `len` characters, for the long-password cases.
    fn random_ish(len: usize) -> String {
        const ALPHABET: &[u8] = b"bcdfghjkmnpqrstvwxz23456789#%+=?!";
        let mut state: u32 = 0x2545_f491;
        (0..len)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let index = (state >> 16) as usize % ALPHABET.len();
                char::from(ALPHABET[index])
            })
            .collect()
    }

    #[test]
    fn a_fifteen_character_random_password_is_accepted() {
        let password = parse(single_factor(), "k8#Tq2!vLm9@wZr").expect("accepted");
        assert_eq!(password.expose(), "k8#Tq2!vLm9@wZr");
    }

    #[test]
    fn fourteen_characters_are_too_short_without_two_factor() {
        assert_eq!(
            parse(single_factor(), "k8#Tq2!vLm9@wZ").unwrap_err(),
            PolicyViolation::TooShort { min: 15 }
        );
    }

    #[test]
    fn eight_characters_are_enough_with_two_factor() {
        assert!(parse(two_factor(), "k8#Tq2!v").is_ok());
        assert_eq!(
            parse(two_factor(), "k8#Tq2!").unwrap_err(),
            PolicyViolation::TooShort { min: 8 }
        );
    }

    #[test]
    fn characters_are_counted_after_normalisation() {
        // 14 letters, each followed by a combining accent: 28 code points as typed,
        // 14 precomposed characters after NFKC.
        let decomposed: String = "ckgmnprswzyuol"
            .chars()
            .flat_map(|c| [c, '\u{301}'])
            .collect();
        assert_eq!(decomposed.chars().count(), 28);
        assert_eq!(
            parse(single_factor(), &decomposed).unwrap_err(),
            PolicyViolation::TooShort { min: 15 }
        );
    }

    #[test]
    fn a_128_character_password_is_accepted_and_kept_whole() {
        let typed = random_ish(128);
        let password = parse(single_factor(), &typed).expect("accepted");
        assert_eq!(password.expose(), typed);
        assert_eq!(password.expose().chars().count(), 128);
    }

    #[test]
    fn a_200_character_password_is_accepted_and_kept_whole() {
        let typed = random_ish(200);
        let password = parse(single_factor(), &typed).expect("accepted");
        assert_eq!(password.expose(), typed);
    }

    #[test]
    fn a_128_character_password_of_four_byte_characters_is_accepted() {
        let typed: String = "🔐🦀🌊🎻🧭🪁🍉🛶".repeat(16);
        assert_eq!(typed.chars().count(), 128);
        assert!(parse(single_factor(), &typed).is_ok());
    }

    #[test]
    fn a_configured_minimum_above_128_still_accepts_128_characters() {
        let policy = PasswordPolicy {
            min_len_single_factor: 500,
            ..PasswordPolicy::default()
        };
        let typed = random_ish(128);
        assert!(NewPassword::parse(&policy, &single_factor(), &typed, &typed).is_ok());
    }

    #[test]
    fn a_long_run_of_one_character_is_as_common_as_it_looks() {
        for len in [101, 500, 1024] {
            assert_eq!(
                parse(single_factor(), &"a".repeat(len)).unwrap_err(),
                PolicyViolation::Common,
                "{len} characters"
            );
        }
        let typed = "password".repeat(20);
        assert_eq!(
            parse(single_factor(), &typed).unwrap_err(),
            PolicyViolation::Common
        );
    }

    #[test]
    fn a_long_password_whose_strength_lies_past_the_first_hundred_characters_is_accepted() {
        let typed = format!("{}{}", "a".repeat(100), random_ish(20));
        assert!(parse(single_factor(), &typed).is_ok());
    }

    #[test]
    fn a_1024_byte_password_is_accepted() {
        assert!(parse(single_factor(), &random_ish(1024)).is_ok());
    }

    #[test]
    fn a_1025_byte_password_is_too_long() {
        assert_eq!(
            parse(single_factor(), &random_ish(1025)).unwrap_err(),
            PolicyViolation::TooLong { max_bytes: 1024 }
        );
    }

    #[test]
    fn the_byte_limit_applies_after_normalisation() {
        // U+FDFA is 3 bytes as typed and 33 bytes after NFKC.
        let typed = "\u{FDFA}".repeat(40);
        assert_eq!(typed.len(), 120);
        assert_eq!(
            parse(single_factor(), &typed).unwrap_err(),
            PolicyViolation::TooLong { max_bytes: 1024 }
        );
    }

    #[test]
    fn a_listed_breached_password_is_refused_whatever_its_case() {
        assert_eq!(
            parse(single_factor(), "1qaz2wsx3edc4rfv").unwrap_err(),
            PolicyViolation::Common
        );
        assert_eq!(
            parse(two_factor(), "BaseBall").unwrap_err(),
            PolicyViolation::Common
        );
        assert_eq!(
            parse(two_factor(), "iloveyou").unwrap_err(),
            PolicyViolation::Common
        );
    }

    #[test]
    fn common_passwords_padded_to_length_are_refused() {
        for typed in [
            "password1234567",
            "Password1234567",
            "passwordpassword",
            "football1234567",
            "qwertyuiop12345",
            "aaaaaaaaaaaaaaa",
            "abcdefghijklmnop",
        ] {
            assert_eq!(
                parse(single_factor(), typed).unwrap_err(),
                PolicyViolation::Common,
                "{typed}"
            );
        }
    }

    #[test]
    fn a_common_password_typed_in_fullwidth_is_refused() {
        assert_eq!(
            parse(single_factor(), "ｐａｓｓｗｏｒｄ１２３４５６７").unwrap_err(),
            PolicyViolation::Common
        );
    }

    #[test]
    fn a_password_containing_the_email_local_part_is_refused() {
        assert_eq!(
            parse(single_factor(), "my friend ALICE rides 9 bikes").unwrap_err(),
            PolicyViolation::ContainsEmail
        );
    }

    #[test]
    fn a_local_part_shorter_than_three_characters_is_not_checked() {
        let ctx = PolicyContext {
            email: "al@example.com",
            two_factor: false,
        };
        assert!(parse(ctx, "totally normal quartz").is_ok());
    }

    #[test]
    fn a_password_containing_the_service_name_is_refused() {
        assert_eq!(
            parse(single_factor(), "my LatchKey vault 2024").unwrap_err(),
            PolicyViolation::ContainsServiceName
        );
    }

    #[test]
    fn different_confirmation_is_a_mismatch() {
        assert_eq!(
            NewPassword::parse(
                &PasswordPolicy::default(),
                &single_factor(),
                "k8#Tq2!vLm9@wZr",
                "k8#Tq2!vLm9@wZR",
            )
            .unwrap_err(),
            PolicyViolation::Mismatch
        );
    }

    #[test]
    fn an_empty_password_asks_for_one() {
        assert_eq!(
            NewPassword::parse(&PasswordPolicy::default(), &single_factor(), "", "x").unwrap_err(),
            PolicyViolation::Empty
        );
    }

    #[test]
    fn violations_are_reported_in_the_documented_order() {
        let policy = PasswordPolicy::default();
        let ctx = single_factor();
        let check = |password: &str, confirm: &str| {
            NewPassword::parse(&policy, &ctx, password, confirm).unwrap_err()
        };
        assert_eq!(check("", ""), PolicyViolation::Empty);
        assert_eq!(check(&"a".repeat(2000), "b"), PolicyViolation::Mismatch);
        assert_eq!(
            check(&"a".repeat(2000), &"a".repeat(2000)),
            PolicyViolation::TooLong { max_bytes: 1024 }
        );
        assert_eq!(
            check("latchkey", "latchkey"),
            PolicyViolation::TooShort { min: 15 }
        );
        assert_eq!(
            check("alice latchkey password", "alice latchkey password"),
            PolicyViolation::ContainsServiceName
        );
        assert_eq!(
            check("alicepassword123", "alicepassword123"),
            PolicyViolation::ContainsEmail
        );
    }

    #[test]
    fn fullwidth_letters_normalise_to_their_ascii_form() {
        assert_eq!(normalize("ｐａｓｓｗｏｒｄ"), "password");
        let password = NewPassword::parse(
            &PasswordPolicy::default(),
            &single_factor(),
            "ｋ８＃Ｔｑ２！ｖＬｍ９＠ｗＺｒ",
            "k8#Tq2!vLm9@wZr",
        )
        .expect("accepted");
        assert_eq!(password.expose(), "k8#Tq2!vLm9@wZr");
    }

    #[test]
    fn normalisation_never_trims_or_changes_case() {
        assert_eq!(normalize("  Mixed Case\t"), "  Mixed Case\t");
    }

    #[test]
    fn spaces_are_allowed_and_kept() {
        let password = parse(single_factor(), " tangerine glacier mosaic ").expect("accepted");
        assert_eq!(password.expose(), " tangerine glacier mosaic ");
    }

    #[test]
    fn emoji_are_allowed() {
        let typed = "🔐🦀🌊🎻🧭🪁🍉🛶🌵🎲🧩🦉🚲🌋🗝";
        assert_eq!(typed.chars().count(), 15);
        let password = parse(single_factor(), typed).expect("accepted");
        assert_eq!(password.expose(), typed);
    }

    #[test]
    fn debug_output_never_shows_the_password() {
        let password = parse(single_factor(), "k8#Tq2!vLm9@wZr").expect("accepted");
        assert_eq!(format!("{password:?}"), "NewPassword([redacted])");
    }

    #[test]
    fn violation_messages_say_how_to_fix_the_password() {
        let messages = [
            (
                PolicyViolation::TooShort { min: 15 },
                "Password must be 15 characters or more",
            ),
            (
                PolicyViolation::TooLong { max_bytes: 1024 },
                "Password must be 1024 bytes or fewer",
            ),
            (
                PolicyViolation::Common,
                "This password is too common. Choose a less common one",
            ),
            (
                PolicyViolation::ContainsEmail,
                "Password must not contain your email address",
            ),
            (
                PolicyViolation::ContainsServiceName,
                "Password must not contain the word latchkey",
            ),
            (
                PolicyViolation::Mismatch,
                "Enter the same password in both fields",
            ),
            (PolicyViolation::Empty, "Enter a new password"),
        ];
        for (violation, message) in messages {
            assert_eq!(violation.to_string(), message);
        }
    }

    #[test]
    fn strength_of_password_is_zero() {
        let meter = strength(&PasswordPolicy::default(), &two_factor(), "password");
        assert_eq!(meter.score, 0);
        assert_eq!(meter.label, "Very weak");
        assert!(meter.tip.is_some());
    }

    #[test]
    fn strength_of_a_long_random_passphrase_is_four_with_no_tip() {
        let meter = strength(
            &PasswordPolicy::default(),
            &single_factor(),
            "tangerine glacier mosaic drumbeat orbit",
        );
        assert_eq!(
            meter,
            Strength {
                score: 4,
                label: "Strong",
                tip: None
            }
        );
    }

    #[test]
    fn strength_tip_names_the_policy_violation_first() {
        let meter = strength(
            &PasswordPolicy::default(),
            &single_factor(),
            "my latchkey vault is 9 bikes",
        );
        assert_eq!(meter.score, 0);
        assert_eq!(
            meter.tip.as_deref(),
            Some("Password must not contain the word latchkey")
        );
    }

    #[test]
    fn strength_tip_comes_from_zxcvbn_when_the_policy_is_met() {
        let meter = strength(&PasswordPolicy::default(), &two_factor(), "Tr0ub4dor&3");
        assert!(meter.score >= 3, "{meter:?}");
        let meter = strength(&PasswordPolicy::default(), &two_factor(), "Password123456!");
        assert_eq!(meter.score, 2);
        assert_eq!(
            meter.tip.as_deref(),
            Some("This is similar to a commonly used password.")
        );
    }

    #[test]
    fn strength_copes_with_very_long_input() {
        let meter = strength(
            &PasswordPolicy::default(),
            &single_factor(),
            &random_ish(5000),
        );
        assert_eq!(
            meter.tip.as_deref(),
            Some("Password must be 1024 bytes or fewer")
        );
    }
}
