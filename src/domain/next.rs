//! Where to go after signing in (or out): a path on this site, or an absolute URL on
//! latchkey's own host or a host it protects (`allowed_hosts`); never anywhere else.

use super::hosts::{AllowedHosts, is_ascii_host};

/// A same-site path such as `/settings/security?tab=1`, or an absolute URL on an allowed
/// host such as `https://wiki.example.com/page?x=1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafeNext(String);

/// Longest absolute URL kept (a path keeps the older, shorter limit): a request target
/// of 8 KiB (what the shipped proxy files let through) plus its scheme and host.
pub const MAX_URL_LEN: usize = 8 * 1024 + 512;

impl SafeNext {
    /// A same-site path only. `None` for anything that could leave the site: absolute
    /// URLs, scheme-relative `//host`, backslash tricks browsers read as `//`, control
    /// characters, or very long input.
    pub fn parse(input: &str) -> Option<SafeNext> {
        let ok = input.starts_with('/')
            && !input.starts_with("//")
            && !input.starts_with("/\\")
            && input.len() <= 512
            && !input.contains('\\')
            && !input.chars().any(|c| c.is_control() || c.is_whitespace());
        ok.then(|| SafeNext(input.to_owned()))
    }

    /// A same-site path, or an absolute URL `destinations` accepts as a way back.
    pub fn parse_within(input: &str, destinations: &Destinations) -> Option<SafeNext> {
        if let Some(path) = SafeNext::parse(input) {
            return Some(path);
        }
        let url = destinations.original_url(input).ok()?;
        if destinations.https_only && url.scheme != "https" {
            return None;
        }
        Some(SafeNext(url.serialized))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why an original URL (forward auth) or an absolute `next` was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UrlRefused {
    #[error("not an absolute http(s) URL with a plain ASCII host")]
    Malformed,
    #[error("the host is not one latchkey protects")]
    HostNotAllowed,
}

/// An absolute URL on an allowed host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedUrl {
    /// `http` or `https`.
    pub scheme: String,
    /// Lowercase, without port.
    pub host: String,
    /// The URL as `url` serialises it (ASCII, percent-encoded).
    pub serialized: String,
}

/// Latchkey's own host and the hosts it protects: where a person may be sent back to.
#[derive(Debug, Clone)]
pub struct Destinations {
    own_host: String,
    /// `public_url` is https: an absolute `next` must be too.
    https_only: bool,
    allowed: AllowedHosts,
}

impl Destinations {
    pub fn new(public_url: &url::Url, allowed: AllowedHosts) -> Destinations {
        Destinations {
            own_host: public_url
                .host_str()
                .unwrap_or_default()
                .to_ascii_lowercase(),
            https_only: public_url.scheme() == "https",
            allowed,
        }
    }

    /// Whether `host` (no port) is latchkey's own or an allowed one.
    pub fn allows_host(&self, host: &str) -> bool {
        host.eq_ignore_ascii_case(&self.own_host) || self.allowed.allows(host)
    }

    /// Checks an absolute `http(s)://host[:port]/…` URL: ASCII only, no userinfo, no
    /// backslashes or whitespace, a plain host name (ports are not compared); then that
    /// its host is allowed. The raw text is checked before any URL parser sees it, so no
    /// parser leniency (`https:evil.com`, `\`, `#@`) can move the host.
    pub fn original_url(&self, input: &str) -> Result<AllowedUrl, UrlRefused> {
        if input.len() > MAX_URL_LEN
            || !input.is_ascii()
            || input
                .bytes()
                .any(|b| b.is_ascii_control() || b == b' ' || b == b'\\')
        {
            return Err(UrlRefused::Malformed);
        }
        let (scheme, rest) = input.split_once("://").ok_or(UrlRefused::Malformed)?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return Err(UrlRefused::Malformed);
        }
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        let (host, port) = match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        let port_ok = port
            .is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
        if !port_ok || !is_ascii_host(host) {
            return Err(UrlRefused::Malformed);
        }
        let url = url::Url::parse(input).map_err(|_| UrlRefused::Malformed)?;
        let host = host.to_ascii_lowercase();
        if url.host_str() != Some(host.as_str()) || !url.username().is_empty() {
            return Err(UrlRefused::Malformed);
        }
        if !self.allows_host(&host) {
            return Err(UrlRefused::HostNotAllowed);
        }
        Ok(AllowedUrl {
            scheme,
            host,
            serialized: url.to_string(),
        })
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

    fn destinations(public_url: &str) -> Destinations {
        Destinations::new(
            &public_url.parse().unwrap(),
            AllowedHosts::parse(&["app.example.com", "*.apps.example.com"]).unwrap(),
        )
    }

    #[test]
    fn absolute_urls_on_allowed_hosts_are_kept() {
        let d = destinations("https://auth.example.com");
        for (good, kept) in [
            ("https://app.example.com/", "https://app.example.com/"),
            ("https://app.example.com", "https://app.example.com/"),
            (
                "https://APP.example.com/a?b=c",
                "https://app.example.com/a?b=c",
            ),
            (
                "https://app.example.com:8443/x",
                "https://app.example.com:8443/x",
            ),
            (
                "https://wiki.apps.example.com/p?q=1#f",
                "https://wiki.apps.example.com/p?q=1#f",
            ),
            (
                "https://auth.example.com/settings/security",
                "https://auth.example.com/settings/security",
            ),
            ("/settings/security", "/settings/security"),
        ] {
            assert_eq!(
                SafeNext::parse_within(good, &d).map(|n| n.0),
                Some(kept.to_owned()),
                "{good:?}"
            );
        }
    }

    #[test]
    fn absolute_urls_anywhere_else_are_refused() {
        let d = destinations("https://auth.example.com");
        for bad in [
            "https://evil.com/",
            "https://app.example.com.evil.com/",
            "https://evil.com#@app.example.com",
            "https://evil.com?@app.example.com",
            "https://app.example.com@evil.com/",
            "https://user:pw@app.example.com/",
            "https://user@app.example.com/",
            "https://app.example.com:443@evil.com/",
            "https://app.example.com:99999/",
            "https://app.example.com:/",
            "https://app.example.com:x/",
            "http://app.example.com/",
            "https://xn--pp-example-9db.com/",
            "https://äpp.example.com/",
            "https://app.example.com/ä",
            "https://app.exаmple.com/",
            "https:\\\\app.example.com",
            "https:/\\app.example.com/",
            "https://app.example.com\\@evil.com/",
            "https:app.example.com/",
            "https:/app.example.com/",
            "//evil.com",
            "//app.example.com/",
            "///evil.com",
            "javascript://app.example.com/%0aalert(1)",
            "ftp://app.example.com/",
            "https://app.example.com./",
            "https://apps.example.com/",
            "https://[::1]/",
            "https://127.0.0.1/",
            "https://app.example.com /",
            "https://app.example.com/\r\nx",
            " https://app.example.com/",
        ] {
            assert_eq!(SafeNext::parse_within(bad, &d), None, "{bad:?}");
        }
    }

    #[test]
    fn http_destinations_are_accepted_only_under_an_http_public_url() {
        let d = destinations("http://auth.example.com");
        assert!(SafeNext::parse_within("http://app.example.com/", &d).is_some());
        assert!(SafeNext::parse_within("https://app.example.com/", &d).is_some());
    }

    #[test]
    fn original_urls_tell_malformed_from_not_allowed() {
        let d = destinations("https://auth.example.com");
        assert_eq!(
            d.original_url("https://evil.com/").map(|_| ()),
            Err(UrlRefused::HostNotAllowed)
        );
        assert_eq!(
            d.original_url("not a url").map(|_| ()),
            Err(UrlRefused::Malformed)
        );
        assert_eq!(d.original_url("").map(|_| ()), Err(UrlRefused::Malformed));
        let ok = d.original_url("http://app.example.com:8080/x?y=1").unwrap();
        assert_eq!(
            (ok.scheme.as_str(), ok.host.as_str()),
            ("http", "app.example.com")
        );
    }
}
