//! The relay's settings: `LATCHKEY_SMTP_URL` with its `tls=` mode, the credentials from the
//! URL or from `LATCHKEY_SMTP_USERNAME`/`_PASSWORD` (never both), and TLS trust (the
//! system store plus `LATCHKEY_SMTP_CA_FILE`).

use std::path::{Path, PathBuf};

use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, CertificateStore, TlsParameters};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use secrecy::{ExposeSecret, SecretString};

use super::Relay;

/// How the connection to the relay is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// `smtp://host` — plaintext, no STARTTLS (a local sink).
    Plain,
    /// `smtp://host?tls=opportunistic` — STARTTLS when offered, plaintext otherwise.
    Opportunistic,
    /// `smtp://host?tls=required` — STARTTLS or no delivery.
    StartTls,
    /// `smtps://host` — TLS from the first byte (port 465).
    Implicit,
}

/// What an operator can get wrong in the relay settings. Never quotes the URL or a password.
#[derive(Debug, thiserror::Error)]
pub enum RelaySettingsError {
    #[error("LATCHKEY_SMTP_URL is not a valid URL")]
    NotAUrl,
    #[error("LATCHKEY_SMTP_URL must start with smtp:// or smtps://, not {0}://")]
    Scheme(String),
    #[error("LATCHKEY_SMTP_URL names no host")]
    NoHost,
    #[error(
        "LATCHKEY_SMTP_URL: tls={0:?} is not one of required, opportunistic (or use smtps:// for implicit TLS)"
    )]
    TlsMode(String),
    #[error("the SMTP {0} is given both in LATCHKEY_SMTP_URL and in LATCHKEY_SMTP_{1}: keep one")]
    Twice(&'static str, &'static str),
    #[error("an SMTP password is set without a username (LATCHKEY_SMTP_USERNAME)")]
    PasswordWithoutUser,
    #[error("LATCHKEY_SMTP_CA_FILE {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
}

impl Relay {
    /// `url`: `smtp://[user:pass@]host[:port][?tls=required|opportunistic]` or
    /// `smtps://[user:pass@]host[:port]`. Credentials may come from `username`/`password`
    /// instead; `ca_file` adds a PEM bundle of CAs to the system trust store.
    pub fn parse(
        url: &str,
        ca_file: Option<&Path>,
        username: Option<&str>,
        password: Option<&SecretString>,
    ) -> Result<Relay, RelaySettingsError> {
        let parsed = url::Url::parse(url.trim()).map_err(|_| RelaySettingsError::NotAUrl)?;
        let host = match parsed.host() {
            Some(url::Host::Domain(name)) => name.to_owned(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => return Err(RelaySettingsError::NoHost),
        };
        let tls_mode = parsed
            .query_pairs()
            .find(|(key, _)| key == "tls")
            .map(|(_, value)| value.into_owned());
        let security = match (parsed.scheme(), tls_mode.as_deref()) {
            ("smtp", None) => Security::Plain,
            ("smtp", Some("required")) => Security::StartTls,
            ("smtp", Some("opportunistic")) => Security::Opportunistic,
            ("smtps", None) => Security::Implicit,
            ("smtp" | "smtps", Some(other)) => {
                return Err(RelaySettingsError::TlsMode(other.to_owned()));
            }
            (scheme, _) => return Err(RelaySettingsError::Scheme(scheme.to_owned())),
        };
        let port = parsed.port().unwrap_or(match security {
            Security::Plain => 25,
            Security::Opportunistic | Security::StartTls => 587,
            Security::Implicit => 465,
        });

        let decode = |raw: &str| percent_decode(raw).filter(|value| !value.is_empty());
        let url_user = decode(parsed.username());
        let url_password = parsed.password().and_then(decode);
        let env_user = username
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned);
        let env_password = password
            .map(|p| p.expose_secret().to_owned())
            .filter(|p| !p.is_empty());
        let user = match (url_user, env_user) {
            (Some(_), Some(_)) => return Err(RelaySettingsError::Twice("username", "USERNAME")),
            (a, b) => a.or(b),
        };
        let secret = match (url_password, env_password) {
            (Some(_), Some(_)) => return Err(RelaySettingsError::Twice("password", "PASSWORD")),
            (a, b) => a.or(b),
        };
        let credentials = match (&user, secret) {
            (Some(user), secret) => {
                Some(Credentials::new(user.clone(), secret.unwrap_or_default()))
            }
            (None, Some(_)) => return Err(RelaySettingsError::PasswordWithoutUser),
            (None, None) => None,
        };

        let tls = match security {
            Security::Plain => None,
            _ => Some(tls_parameters(&host, ca_file)?),
        };
        Ok(Relay {
            host,
            port,
            security,
            tls,
            credentials,
            username: user,
        })
    }
}

/// The system trust store, plus every certificate in `ca_file`.
fn tls_parameters(host: &str, ca_file: Option<&Path>) -> Result<TlsParameters, RelaySettingsError> {
    let mut builder =
        TlsParameters::builder(host.to_owned()).certificate_store(CertificateStore::Default);
    if let Some(path) = ca_file {
        let fail = |reason: String| RelaySettingsError::CaFile {
            path: path.to_path_buf(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|err| fail(err.to_string()))?;
        let mut count = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|err| fail(format!("not a PEM certificate bundle: {err}")))?;
            let cert = Certificate::from_der(cert.to_vec()).map_err(|err| fail(err.to_string()))?;
            builder = builder.add_root_certificate(cert);
            count += 1;
        }
        if count == 0 {
            return Err(fail("holds no certificate".to_owned()));
        }
    }
    builder
        .build_rustls()
        .map_err(|err| RelaySettingsError::CaFile {
            path: ca_file.map(Path::to_path_buf).unwrap_or_default(),
            reason: err.to_string(),
        })
}

/// `Url` keeps userinfo percent-encoded: a password with '@' arrives as `%40`.
fn percent_decode(raw: &str) -> Option<String> {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .ok()
        .map(|value| value.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mail::relay::Relay;

    fn parse(url: &str) -> Result<Relay, RelaySettingsError> {
        Relay::parse(url, None, None, None)
    }

    #[test]
    fn url_forms_choose_security_and_default_port() {
        for (url, security, port) in [
            ("smtp://127.0.0.1:2525", Security::Plain, 2525),
            ("smtp://mail.test", Security::Plain, 25),
            ("smtp://mail.test?tls=required", Security::StartTls, 587),
            (
                "smtp://mail.test:2526?tls=opportunistic",
                Security::Opportunistic,
                2526,
            ),
            ("smtps://u:p@mail.test", Security::Implicit, 465),
        ] {
            let relay = parse(url).expect(url);
            assert_eq!(relay.security(), security, "{url}");
            assert_eq!(
                relay.addr(),
                format!("mail.test:{port}").replace("mail.test:2525", "127.0.0.1:2525"),
                "{url}"
            );
        }
        assert!(matches!(
            parse("smtp://mail.test?tls=off"),
            Err(RelaySettingsError::TlsMode(_))
        ));
        assert!(matches!(
            parse("http://mail.test"),
            Err(RelaySettingsError::Scheme(_))
        ));
    }

    #[test]
    fn credentials_come_from_the_url_or_the_environment_never_both() {
        let relay = parse("smtps://lk:pa%40ss@mail.test").expect("url credentials");
        assert_eq!(relay.username.as_deref(), Some("lk"));
        let password = SecretString::from("hunter2".to_owned());
        let relay = Relay::parse("smtps://mail.test", None, Some("lk"), Some(&password))
            .expect("env credentials");
        assert_eq!(relay.username.as_deref(), Some("lk"));
        assert!(!format!("{relay:?}").contains("hunter2"));
        let err = Relay::parse("smtps://a:b@mail.test", None, Some("lk"), Some(&password))
            .expect_err("twice");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(matches!(
            Relay::parse("smtps://mail.test", None, None, Some(&password)),
            Err(RelaySettingsError::PasswordWithoutUser)
        ));
    }

    #[test]
    fn plaintext_credentials_are_detected() {
        assert!(
            parse("smtp://u:p@mail.test:25")
                .expect("ok")
                .may_send_credentials_in_clear()
        );
        assert!(
            !parse("smtp://u:p@mail.test:587?tls=required")
                .expect("ok")
                .may_send_credentials_in_clear()
        );
        assert!(
            !parse("smtp://127.0.0.1:2525")
                .expect("ok")
                .may_send_credentials_in_clear()
        );
        assert!(
            !parse("smtps://u:p@mail.test")
                .expect("ok")
                .may_send_credentials_in_clear()
        );
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let path =
            std::env::temp_dir().join(format!("latchkey-ca-{:016x}.pem", rand::random::<u64>()));
        std::fs::write(&path, "not a certificate\n").expect("write");
        let err = Relay::parse("smtps://mail.test", Some(&path), None, None).expect_err("no certs");
        assert!(matches!(err, RelaySettingsError::CaFile { .. }), "{err}");
        let _ = std::fs::remove_file(&path);
    }
}
