//! Typed settings, layered: built-in `config/default.toml` → `config/local.toml` → environment.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use figment::Figment;
use figment::providers::{Env, Format, Toml};
use secrecy::SecretString;
use serde::Deserialize;
use url::Url;

use crate::domain::hosts::is_ascii_host;
use crate::domain::{AllowedHosts, Destinations, TrustedProxies};

/// The defaults ship inside the binary, so it serves from any working directory.
const DEFAULTS: &str = include_str!("../config/default.toml");

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub database_url: SecretString,
    pub listen: SocketAddr,
    pub public_url: Url,
    pub smtp_url: Option<SecretString>,
    /// A PEM bundle of CAs trusted for the relay on top of the system trust store.
    pub smtp_ca_file: Option<PathBuf>,
    /// SMTP AUTH, instead of credentials in `smtp_url`.
    pub smtp_username: Option<String>,
    pub smtp_password: Option<SecretString>,
    pub mail_from: String,
    pub mail_dir: PathBuf,
    pub reset_token_ttl_secs: u64,
    pub ip_rate_limit: u32,
    pub log: String,
    pub log_format: LogFormat,
    pub secret_key: Option<SecretString>,
    pub trust_forwarded_for: bool,
    /// Hosts of the applications latchkey protects (exact, or `*.example.com`).
    #[serde(deserialize_with = "comma_list")]
    pub allowed_hosts: Vec<String>,
    /// A parent domain of `public_url`'s host for the session cookie; unset: host-only.
    pub cookie_domain: Option<String>,
    /// CIDRs whose `X-Forwarded-*` / `X-Original-*` headers are believed.
    #[serde(deserialize_with = "comma_list")]
    pub trusted_proxies: Vec<String>,
    /// How long one instance may reuse a forward-auth answer (0: ask Postgres every time).
    pub forward_auth_cache_ms: u64,
    /// Lifetime of the OpenID provider's access tokens and ID tokens.
    #[serde(default = "default_oidc_access_token_ttl_secs")]
    pub oidc_access_token_ttl_secs: u64,
    pub db_max_connections: u32,
    pub db_acquire_timeout_ms: u64,
    /// How often expired sessions, dead tokens, idle throttles and old mail are deleted.
    pub housekeeping_interval_secs: u64,
    /// Seconds a connection may take to send a request head; then it is closed.
    pub header_read_timeout_secs: u64,
    /// Connections served at once per listener; further ones wait in the accept backlog.
    pub max_connections: usize,
    /// Serve `/metrics` here instead of on `listen` (where it then answers 404).
    pub metrics_listen: Option<SocketAddr>,
    /// `open` lets people create their own account (`/sign-up`); `closed` shows none.
    pub sign_up: SignUp,
    /// Domains that may sign up (exact, case-insensitive); empty: any.
    pub sign_up_domains: DomainList,
    pub argon2: Argon2Config,
    pub policy: PolicyConfig,
    pub throttle: ThrottleConfig,
    pub session: SessionConfig,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Whether people may create their own account. Anything but `open` or `closed` is refused
/// when the configuration is read.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SignUp {
    Open,
    Closed,
}

/// Email domains, lowercased, from a comma-separated list (`example.com, example.org`);
/// empty entries are skipped, and an entry that is not a bare domain is refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainList(Vec<String>);

impl DomainList {
    pub fn parse(list: &str) -> Result<DomainList, String> {
        let mut domains = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let valid = entry.len() <= 253
                && entry.contains('.')
                && !entry.starts_with('.')
                && !entry.ends_with('.')
                && entry
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '-' || c == '.');
            if !valid {
                return Err(format!(
                    "sign_up_domains: {entry:?} is not a domain (give domains such as example.com, comma-separated)"
                ));
            }
            domains.push(entry.to_lowercase());
        }
        Ok(DomainList(domains))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    /// Whether an address's domain may sign up: any when the list is empty.
    pub fn allows(&self, domain: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|d| d.eq_ignore_ascii_case(domain))
    }
}

impl<'de> Deserialize<'de> for DomainList {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        let joined = match Raw::deserialize(deserializer)? {
            Raw::One(list) => list,
            Raw::Many(list) => list.join(","),
        };
        DomainList::parse(&joined).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Argon2Config {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    pub threads: usize,
    pub queue: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PolicyConfig {
    pub min_length: usize,
    pub min_length_two_factor: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ThrottleConfig {
    pub free_failures: i32,
    pub base_delay_secs: u64,
    pub max_delay_secs: u64,
    pub reset_mails_per_hour: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SessionConfig {
    pub idle_timeout_secs: u64,
    pub absolute_timeout_secs: u64,
}

impl Config {
    /// Defaults, then `config/local.toml` if present, then `DATABASE_URL` and `LATCHKEY_*`.
    pub fn load() -> anyhow::Result<Config> {
        Self::figment()
            .merge(Toml::file("config/local.toml"))
            .merge(Env::raw().only(&["DATABASE_URL"]))
            .merge(Env::prefixed("LATCHKEY_").split("__"))
            .extract()
            .context("reading configuration")
    }

    /// The built-in defaults alone (tests start from these and override fields).
    pub fn defaults() -> anyhow::Result<Config> {
        Self::figment()
            .extract()
            .context("reading built-in configuration")
    }

    fn figment() -> Figment {
        Figment::new().merge(Toml::string(DEFAULTS))
    }

    /// Cookies get `Secure` and the `__Host-` prefix when the service is reached over https.
    pub fn is_https(&self) -> bool {
        self.public_url.scheme() == "https"
    }

    /// Where `next` may send a person back to: latchkey's own host and `allowed_hosts`.
    pub fn destinations(&self) -> anyhow::Result<Destinations> {
        let allowed = AllowedHosts::parse(&self.allowed_hosts).map_err(anyhow::Error::msg)?;
        Ok(Destinations::new(&self.public_url, allowed))
    }

    pub fn trusted_proxies(&self) -> anyhow::Result<TrustedProxies> {
        TrustedProxies::parse(&self.trusted_proxies).map_err(anyhow::Error::msg)
    }

    /// The session cookie's `Domain`, lowercase: `None` when unset. Refused unless it is
    /// `public_url`'s host or a parent of it (a browser would drop the cookie otherwise,
    /// and nobody could stay signed in).
    pub fn cookie_domain(&self) -> anyhow::Result<Option<String>> {
        let Some(raw) = self.cookie_domain.as_deref().map(str::trim) else {
            return Ok(None);
        };
        if raw.is_empty() {
            return Ok(None);
        }
        let domain = raw.trim_start_matches('.').to_ascii_lowercase();
        let host = self
            .public_url
            .host_str()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let is_ip = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok();
        let parent = host.len() > domain.len()
            && host.ends_with(&domain)
            && host.as_bytes()[host.len() - domain.len() - 1] == b'.'
            && domain.contains('.');
        if !is_ascii_host(&domain) || !(host == domain || (parent && !is_ip)) {
            anyhow::bail!(
                "cookie_domain {raw:?} is neither public_url's host ({host:?}) nor a parent \
                 domain of it: set LATCHKEY_COOKIE_DOMAIN to e.g. the domain that latchkey \
                 and the applications it protects share, or leave it unset"
            );
        }
        Ok(Some(domain))
    }

    /// The development mailbox (`/dev/mailbox`) exists only when mail goes to files and
    /// the service is reached over plain http on a loopback address: someone trying it on
    /// their own machine.
    pub fn dev_mailbox_enabled(&self) -> bool {
        if self.smtp_url.is_some() || self.public_url.scheme() != "http" {
            return false;
        }
        match self.public_url.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
            None => false,
        }
    }

    /// `public_url` without a trailing slash, for building links in mail.
    pub fn public_base(&self) -> &str {
        self.public_url.as_str().trim_end_matches('/')
    }
}

fn default_oidc_access_token_ttl_secs() -> u64 {
    600
}

/// A list from a TOML array or a comma-separated string (as environment variables give it).
fn comma_list<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum List {
        One(String),
        Many(Vec<String>),
    }
    let items = match List::deserialize(deserializer)? {
        List::One(joined) => joined.split(',').map(str::to_owned).collect::<Vec<_>>(),
        List::Many(items) => items,
    };
    Ok(items
        .into_iter()
        .map(|item| item.trim().to_owned())
        .filter(|item| !item.is_empty())
        .collect())
}

#[cfg(test)]
mod tests {
    use figment::providers::Serialized;

    use super::*;

    #[test]
    fn lists_come_comma_separated_from_the_environment_or_as_arrays() {
        let config: Config = Config::figment()
            .merge(Serialized::default(
                "allowed_hosts",
                " app.example.com, *.example.org ,",
            ))
            .merge(Serialized::default("trusted_proxies", vec!["10.0.0.0/8"]))
            .extract()
            .unwrap();
        assert_eq!(config.allowed_hosts, ["app.example.com", "*.example.org"]);
        assert_eq!(config.trusted_proxies, ["10.0.0.0/8"]);
        let defaults = Config::defaults().unwrap();
        assert!(defaults.allowed_hosts.is_empty());
        assert_eq!(defaults.trusted_proxies, ["127.0.0.1/32", "::1/128"]);
        assert_eq!(defaults.cookie_domain().unwrap(), None);
    }

    #[test]
    fn cookie_domain_must_be_the_host_or_a_parent() {
        let mut config = Config::defaults().unwrap();
        config.public_url = "https://auth.id.example.com".parse().unwrap();
        for ok in [
            "example.com",
            ".Example.com",
            "id.example.com",
            "auth.id.example.com",
        ] {
            config.cookie_domain = Some(ok.into());
            assert!(config.cookie_domain().unwrap().is_some(), "{ok}");
        }
        for bad in [
            "ample.com",
            "other.com",
            "com",
            "x.auth.id.example.com",
            "example.com:443",
        ] {
            config.cookie_domain = Some(bad.into());
            assert!(config.cookie_domain().is_err(), "{bad}");
        }
    }
}
