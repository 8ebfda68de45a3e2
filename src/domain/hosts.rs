//! The hosts latchkey answers for besides its own (`allowed_hosts`), and the peers whose
//! forwarding headers it believes (`trusted_proxies`).

use std::net::IpAddr;

/// One entry of `allowed_hosts`: a host exactly, or `*.example.com` (any subdomain at any
/// depth, not `example.com` itself). Lowercase ASCII.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    /// The suffix with its leading dot: `.example.com`.
    Subdomains(String),
}

/// The hosts of the applications latchkey protects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedHosts(Vec<HostPattern>);

/// Whether `host` is a plain ASCII host name (or IPv4 literal): letters, digits and
/// hyphens in non-empty dot-separated labels, no trailing dot.
pub fn is_ascii_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

impl AllowedHosts {
    /// Parses the configured entries; the message names the first one that is not a host.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<AllowedHosts, String> {
        let mut patterns = Vec::new();
        for entry in entries {
            let raw = entry.as_ref().trim();
            if raw.is_empty() {
                continue;
            }
            let lower = raw.to_ascii_lowercase();
            let pattern = match lower.strip_prefix("*.") {
                Some(parent) if is_ascii_host(parent) => {
                    HostPattern::Subdomains(format!(".{parent}"))
                }
                None if is_ascii_host(&lower) => HostPattern::Exact(lower),
                _ => {
                    return Err(format!(
                        "allowed_hosts: {raw:?} is not a host name (expected e.g. \
                         app.example.com or *.example.com, without scheme, port or path)"
                    ));
                }
            };
            patterns.push(pattern);
        }
        Ok(AllowedHosts(patterns))
    }

    /// Whether `host` (a host name without port; compared case-insensitively) is allowed.
    pub fn allows(&self, host: &str) -> bool {
        if !is_ascii_host(host) {
            return false;
        }
        let host = host.to_ascii_lowercase();
        self.0.iter().any(|pattern| match pattern {
            HostPattern::Exact(exact) => *exact == host,
            HostPattern::Subdomains(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// An IP network such as `127.0.0.1/32` or `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpCidr {
    network: IpAddr,
    prefix: u8,
}

impl IpCidr {
    /// `addr/prefix`, or a bare address (a single host).
    pub fn parse(input: &str) -> Result<IpCidr, String> {
        let input = input.trim();
        let bad = || format!("trusted_proxies: {input:?} is not a CIDR such as 10.0.0.0/8");
        let (addr, prefix) = match input.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (input, None),
        };
        let network: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(IpCidr { network, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // A v4 peer on a dual-stack socket arrives as ::ffff:a.b.c.d.
        let ip = ip.to_canonical();
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The peers whose `X-Forwarded-*` / `X-Original-*` headers are believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpCidr>);

impl TrustedProxies {
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<TrustedProxies, String> {
        entries
            .iter()
            .map(AsRef::as_ref)
            .filter(|e| !e.trim().is_empty())
            .map(IpCidr::parse)
            .collect::<Result<Vec<_>, _>>()
            .map(TrustedProxies)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_wildcard_hosts_match_as_documented() {
        let hosts = AllowedHosts::parse(&["App.Example.com", "*.apps.example.org"]).unwrap();
        assert!(hosts.allows("app.example.com"));
        assert!(hosts.allows("APP.example.COM"));
        assert!(hosts.allows("wiki.apps.example.org"));
        assert!(hosts.allows("a.b.apps.example.org"));
        for refused in [
            "apps.example.org",
            "example.com",
            "app.example.com.evil.com",
            "evilapps.example.org",
            "x.app.example.com",
            "app.example.com.",
            "",
            "app..example.com",
            "äpp.example.com",
        ] {
            assert!(!hosts.allows(refused), "{refused:?}");
        }
    }

    #[test]
    fn entries_that_are_not_hosts_are_refused() {
        for bad in [
            "https://app.example.com",
            "app.example.com:443",
            "*",
            "*.",
            "a.*.example.com",
            "app.example.com/x",
            "xn--ls8h.example.com/",
            "äpp.example.com",
        ] {
            assert!(AllowedHosts::parse(&[bad]).is_err(), "{bad:?}");
        }
        assert!(AllowedHosts::parse(&["", " "]).unwrap().is_empty());
    }

    #[test]
    fn cidrs_contain_what_they_should() {
        let proxies = TrustedProxies::parse(&["127.0.0.1/32", "::1/128", "10.0.0.0/8"]).unwrap();
        assert!(proxies.contains("127.0.0.1".parse().unwrap()));
        assert!(proxies.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(proxies.contains("::1".parse().unwrap()));
        assert!(proxies.contains("10.200.3.4".parse().unwrap()));
        assert!(!proxies.contains("127.0.0.2".parse().unwrap()));
        assert!(!proxies.contains("11.0.0.1".parse().unwrap()));
        let all = TrustedProxies::parse(&["0.0.0.0/0"]).unwrap();
        assert!(all.contains("203.0.113.9".parse().unwrap()));
        assert!(!all.contains("2001:db8::1".parse().unwrap()));
        for bad in [
            "127.0.0.1/33",
            "::1/129",
            "localhost",
            "1.2.3/8",
            "1.2.3.4/x",
        ] {
            assert!(IpCidr::parse(bad).is_err(), "{bad:?}");
        }
    }
}
