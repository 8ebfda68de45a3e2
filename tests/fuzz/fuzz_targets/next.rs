//! `SafeNext::parse` on any text: never panics, and whatever it keeps stays on the site
//! when a browser resolves it as a `Location`.
#![no_main]

use latchkey::domain::SafeNext;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &str| {
    let Some(next) = SafeNext::parse(input) else {
        return;
    };
    let kept = next.as_str();
    assert_eq!(kept, input);
    assert!(kept.starts_with('/') && !kept.starts_with("//"), "{kept:?}");
    assert!(!kept.contains('\\'), "{kept:?}");
    assert!(
        !kept.chars().any(|c| c.is_control() || c.is_whitespace()),
        "{kept:?}"
    );
    assert!(kept.len() <= 512);
    let base = url::Url::parse("https://id.example.com/sign-in").expect("base");
    let resolved = base.join(kept).expect("a path resolves against the site");
    assert_eq!(resolved.origin(), base.origin(), "{kept:?} left the site");
});
