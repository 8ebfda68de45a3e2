//! Where to go after signing in: only a path on this site, never another origin.

/// A same-site path such as `/settings/security?tab=1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafeNext(String);

impl SafeNext {
    /// `None` for anything that could leave the site: absolute URLs, scheme-relative
    /// `//host`, backslash tricks browsers read as `//`, control characters, or very long input.
    pub fn parse(input: &str) -> Option<SafeNext> {
        let ok = input.starts_with('/')
            && !input.starts_with("//")
            && !input.starts_with("/\\")
            && input.len() <= 512
            && !input.contains('\\')
            && !input.chars().any(|c| c.is_control() || c.is_whitespace());
        ok.then(|| SafeNext(input.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_site_paths_are_kept() {
        for good in ["/", "/settings/security", "/a?b=c#d"] {
            assert_eq!(SafeNext::parse(good).map(|n| n.0), Some(good.to_owned()));
        }
    }

    #[test]
    fn anything_that_leaves_the_site_is_refused() {
        for bad in [
            "//evil.example",
            "https://evil.example",
            "/\\evil.example",
            "\\\\evil.example",
            "/\t/evil.example",
            "javascript:alert(1)",
            "evil.example",
            "",
            "/x\\y",
        ] {
            assert_eq!(SafeNext::parse(bad), None, "{bad:?}");
        }
    }
}
