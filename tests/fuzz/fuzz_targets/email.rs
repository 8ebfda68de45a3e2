//! `EmailAddress::parse` on any text: never panics; what it accepts is header-safe,
//! trimmed with only the domain lowercased, and parses again to itself; its key is
//! stable, and for ASCII the lowercased address.
#![no_main]

use latchkey::domain::EmailAddress;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &str| {
    let Ok(email) = EmailAddress::parse(input) else {
        return;
    };
    let s = email.as_str();
    assert!(s.len() <= 254, "{s:?}");
    assert!(
        !s.chars()
            .any(|c| c.is_control() || c.is_whitespace() || ",;<>\"\\()[]:".contains(c)),
        "{s:?}"
    );
    let (local, domain) = s.rsplit_once('@').expect("an @");
    let (typed_local, typed_domain) = input.trim().rsplit_once('@').expect("an @ as typed");
    assert_eq!(local, typed_local);
    assert_eq!(domain, typed_domain.to_lowercase());
    assert!(!local.is_empty() && !local.contains('@') && domain.contains('.'));
    let again = EmailAddress::parse(s).expect("its own output parses");
    assert_eq!(again.as_str(), s);
    let key = email.key();
    assert_eq!(EmailAddress::parse(s).expect("parses").key(), key);
    if s.is_ascii() {
        assert_eq!(key, s.to_ascii_lowercase());
    }
    assert_eq!(email.local_part(), local);
});
