//! `ResetToken::parse` on any text: never panics, accepts exactly 43 URL-safe base64
//! characters that decode to 32 bytes, and never shows the token in `Debug`.
#![no_main]

use latchkey::domain::token::ResetToken;
use libfuzzer_sys::fuzz_target;

fn url_safe(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fuzz_target!(|input: &str| {
    match ResetToken::parse(input) {
        Some(token) => {
            assert_eq!(token.expose(), input);
            assert_eq!(input.len(), 43, "{input:?}");
            assert!(input.bytes().all(url_safe), "{input:?}");
            assert_eq!(token.digest().len(), 32);
            assert!(!format!("{token:?}").contains(input));
        }
        // 43 URL-safe characters whose last one carries no stray bits are a token.
        None => assert!(
            input.len() != 43
                || !input.bytes().all(url_safe)
                || !"AEIMQUYcgkosw048".contains(&input[42..])
        ),
    }
});
