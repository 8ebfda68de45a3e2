//! The SMTP relay: `LATCHKEY_SMTP_URL` parsed once, TLS trust (system store plus
//! `LATCHKEY_SMTP_CA_FILE`), AUTH, and a step-by-step check that says what failed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use lettre::address::Envelope;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{
    AsyncSmtpConnection, Certificate, CertificateStore, Tls, TlsParameters,
};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::{AsyncSmtpTransport, PoolConfig};
use lettre::{Message, Tokio1Executor};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use secrecy::{ExposeSecret, SecretString};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

/// Connecting to the SMTP server gives up after this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on a whole check (connect, TLS, AUTH, QUIT).
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle SMTP connections kept open between sends; one worker per instance needs few.
const SMTP_POOL_SIZE: u32 = 4;
const SMTP_POOL_IDLE: Duration = Duration::from_secs(30);
const MECHANISMS: [Mechanism; 2] = [Mechanism::Plain, Mechanism::Login];

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

/// Why a connection to the relay, or a message through it, failed: each case is a sentence
/// an operator can act on. Never holds a password or a message body.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("connection to {addr} failed: {detail}")]
    Connect { addr: String, detail: String },
    #[error(
        "certificate not trusted: {addr} presented subject \"{subject}\" issued by \"{issuer}\" ({reason}); \
         add the issuing CA to the system trust store or to LATCHKEY_SMTP_CA_FILE"
    )]
    CertificateNotTrusted {
        addr: String,
        subject: String,
        issuer: String,
        reason: String,
    },
    #[error("TLS with {addr} failed: {detail}")]
    Tls { addr: String, detail: String },
    #[error("TLS required but not offered: {addr} does not announce STARTTLS")]
    StartTlsNotOffered { addr: String },
    #[error("AUTH refused by {addr}: {detail}")]
    AuthRefused { addr: String, detail: String },
    #[error("AUTH not possible: {addr} offers neither AUTH PLAIN nor LOGIN")]
    AuthNotOffered { addr: String },
    #[error("the relay refused the message: {detail}")]
    Rejected { detail: String, permanent: bool },
    #[error("the relay did not answer within {0:?}")]
    Timeout(Duration),
}

impl RelayError {
    /// A short, stable name for metrics and `/readyz`.
    pub fn class(&self) -> &'static str {
        match self {
            RelayError::Connect { .. } => "connection_failed",
            RelayError::CertificateNotTrusted { .. } => "certificate_not_trusted",
            RelayError::Tls { .. } => "tls_failed",
            RelayError::StartTlsNotOffered { .. } => "tls_not_offered",
            RelayError::AuthRefused { .. } => "auth_refused",
            RelayError::AuthNotOffered { .. } => "auth_not_offered",
            RelayError::Rejected {
                permanent: true, ..
            } => "rejected",
            RelayError::Rejected { .. } => "deferred",
            RelayError::Timeout(_) => "timeout",
        }
    }

    /// Retrying cannot help until someone changes something: credentials refused, or the
    /// relay answered 5xx to the message. Network, TLS and 4xx failures are retried.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            RelayError::AuthRefused { .. }
                | RelayError::Rejected {
                    permanent: true,
                    ..
                }
        )
    }
}

/// `LATCHKEY_SMTP_URL` and its companions, parsed and ready to connect.
#[derive(Clone)]
pub struct Relay {
    host: String,
    port: u16,
    security: Security,
    tls: Option<TlsParameters>,
    credentials: Option<Credentials>,
    username: Option<String>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("addr", &self.addr())
            .field("security", &self.security)
            .field("auth", &self.credentials.is_some())
            .finish()
    }
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

    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    pub fn security(&self) -> Security {
        self.security
    }

    /// Plaintext SMTP (or STARTTLS only if offered) with AUTH: the password may cross the
    /// network in clear.
    pub fn may_send_credentials_in_clear(&self) -> bool {
        self.credentials.is_some()
            && matches!(self.security, Security::Plain | Security::Opportunistic)
    }

    /// lettre's pooled transport with these settings. Call inside the Tokio runtime.
    pub fn transport(&self) -> AsyncSmtpTransport<Tokio1Executor> {
        let tls = match (&self.security, &self.tls) {
            (Security::StartTls, Some(params)) => Tls::Required(params.clone()),
            (Security::Opportunistic, Some(params)) => Tls::Opportunistic(params.clone()),
            (Security::Implicit, Some(params)) => Tls::Wrapper(params.clone()),
            _ => Tls::None,
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&self.host)
            .port(self.port)
            .tls(tls)
            .timeout(Some(CONNECT_TIMEOUT))
            .authentication(MECHANISMS.to_vec())
            .pool_config(
                PoolConfig::new()
                    .max_size(SMTP_POOL_SIZE)
                    .idle_timeout(SMTP_POOL_IDLE),
            );
        if let Some(credentials) = &self.credentials {
            builder = builder.credentials(credentials.clone());
        }
        builder.build()
    }

    /// One connection: EHLO, STARTTLS or TLS, AUTH, QUIT. `Ok` holds the verdict line.
    pub async fn check(&self) -> Result<String, RelayError> {
        let mut conn = self.bounded(self.open()).await?;
        let _ = conn.quit().await;
        Ok(self.summary(&conn))
    }

    /// Sends `message` over a fresh connection, stage by stage (`latchkey mail test`).
    pub async fn send_one(&self, message: &Message) -> Result<String, RelayError> {
        self.bounded(async {
            let mut conn = self.open().await?;
            let summary = self.summary(&conn);
            let envelope: &Envelope = message.envelope();
            conn.send(envelope, &message.formatted())
                .await
                .map_err(|err| rejected(&err))?;
            let _ = conn.quit().await;
            Ok(summary)
        })
        .await
    }

    async fn bounded<T>(
        &self,
        work: impl Future<Output = Result<T, RelayError>>,
    ) -> Result<T, RelayError> {
        tokio::time::timeout(CHECK_TIMEOUT, work)
            .await
            .map_err(|_| RelayError::Timeout(CHECK_TIMEOUT))?
    }

    fn summary(&self, conn: &AsyncSmtpConnection) -> String {
        let tls = match (conn.is_encrypted(), self.security) {
            (true, Security::Implicit) => "implicit TLS",
            (true, _) => "STARTTLS",
            (false, _) => "no TLS",
        };
        let auth = match &self.username {
            Some(user) => format!("AUTH as {user}"),
            None => "no AUTH".to_owned(),
        };
        format!("{} ({tls}, {auth})", self.addr())
    }

    async fn open(&self) -> Result<AsyncSmtpConnection, RelayError> {
        let addr = self.addr();
        let hello = ClientId::default();
        let wrapper = match self.security {
            Security::Implicit => self.tls.clone(),
            _ => None,
        };
        let connected = AsyncSmtpConnection::connect_tokio1(
            (self.host.as_str(), self.port),
            Some(CONNECT_TIMEOUT),
            &hello,
            wrapper,
            None,
        )
        .await;
        let mut conn = match connected {
            Ok(conn) => conn,
            Err(err) => return Err(self.tls_or(err, true).await),
        };
        if let (Security::StartTls | Security::Opportunistic, Some(params)) =
            (self.security, &self.tls)
        {
            if conn.can_starttls() {
                if let Err(err) = conn.starttls(params.clone(), &hello).await {
                    return Err(self.tls_or(err, false).await);
                }
            } else if self.security == Security::StartTls {
                conn.abort().await;
                return Err(RelayError::StartTlsNotOffered { addr });
            }
        }
        if let Some(credentials) = &self.credentials {
            if let Err(err) = conn.auth(&MECHANISMS, credentials).await {
                conn.abort().await;
                return Err(if err.is_client() {
                    RelayError::AuthNotOffered { addr }
                } else {
                    RelayError::AuthRefused {
                        addr,
                        detail: err.to_string(),
                    }
                });
            }
        }
        Ok(conn)
    }

    /// A failed connect or STARTTLS: a certificate problem (named by subject and issuer),
    /// another TLS problem, or the network.
    async fn tls_or(&self, err: lettre::transport::smtp::Error, connecting: bool) -> RelayError {
        let addr = self.addr();
        if let Some(reason) = certificate_problem(&err) {
            let (subject, issuer) = match self.peer_certificate_names().await {
                Some(names) => names,
                None => ("?".to_owned(), "?".to_owned()),
            };
            return RelayError::CertificateNotTrusted {
                addr,
                subject,
                issuer,
                reason,
            };
        }
        if rustls_error(&err).is_some() || err.is_tls() {
            return RelayError::Tls {
                addr,
                detail: format!("{err}"),
            };
        }
        if connecting {
            RelayError::Connect {
                addr,
                detail: chain(&err),
            }
        } else {
            RelayError::Tls {
                addr,
                detail: chain(&err),
            }
        }
    }

    /// Connects again, this time only to read the certificate the relay presents.
    async fn peer_certificate_names(&self) -> Option<(String, String)> {
        let seen = Arc::new(Mutex::new(None));
        let probe = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .ok()?;
            let mut tcp = BufReader::new(tcp);
            if self.security != Security::Implicit {
                read_reply(&mut tcp).await?;
                tcp.get_mut().write_all(b"EHLO latchkey\r\n").await.ok()?;
                read_reply(&mut tcp).await?;
                tcp.get_mut().write_all(b"STARTTLS\r\n").await.ok()?;
                read_reply(&mut tcp).await?;
            }
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .ok()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(RecordCertificate(Arc::clone(&seen))))
            .with_no_client_auth();
            let name = ServerName::try_from(self.host.clone()).ok()?;
            let _ = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp.into_inner())
                .await;
            Some(())
        };
        let _ = tokio::time::timeout(CONNECT_TIMEOUT, probe).await;
        let der = seen.lock().ok()?.take()?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
        Some((cert.subject().to_string(), cert.issuer().to_string()))
    }
}

/// Reads one SMTP reply (its last line has a space after the code); `None` on 4xx/5xx.
async fn read_reply(stream: &mut BufReader<TcpStream>) -> Option<()> {
    loop {
        let mut line = String::new();
        if stream.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return matches!(line.as_bytes().first(), Some(b'2' | b'3')).then_some(());
        }
    }
}

/// Records the relay's certificate and refuses it: used only to name a certificate that
/// the real verifier has already refused. No data is ever sent over this connection.
#[derive(Debug)]
struct RecordCertificate(Arc<Mutex<Option<Vec<u8>>>>);

impl rustls::client::danger::ServerCertVerifier for RecordCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if let Ok(mut seen) = self.0.lock() {
            *seen = Some(end_entity.to_vec());
        }
        Err(rustls::Error::General("certificate recorded".into()))
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("probe only".into()))
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("probe only".into()))
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
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

/// The rustls error inside a lettre error, if the TLS layer failed.
fn rustls_error(err: &lettre::transport::smtp::Error) -> Option<&rustls::Error> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(current) = cause {
        if let Some(found) = current.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            if let Some(found) = io.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
                return Some(found);
            }
        }
        cause = current.source();
    }
    None
}

/// Why the relay's certificate was refused, in words, when that is what failed.
fn certificate_problem(err: &lettre::transport::smtp::Error) -> Option<String> {
    use rustls::CertificateError as C;
    let rustls::Error::InvalidCertificate(problem) = rustls_error(err)? else {
        return None;
    };
    Some(match problem {
        C::UnknownIssuer => "unknown issuer: that CA is not trusted here".to_owned(),
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            "not valid for the relay's host name".to_owned()
        }
        C::Expired | C::ExpiredContext { .. } => "expired".to_owned(),
        C::BadSignature => "bad signature".to_owned(),
        other => format!("{other:?}"),
    })
}

/// The relay refused MAIL FROM, RCPT TO or the data: 5xx is permanent, the rest is not.
fn rejected(err: &lettre::transport::smtp::Error) -> RelayError {
    RelayError::Rejected {
        detail: err.to_string(),
        permanent: err.is_permanent(),
    }
}

fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(current) = cause {
        let more = current.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = current.source();
    }
    text
}

/// Classifies an error from the pooled transport the way [`Relay::check`] would.
pub fn classify_delivery_error(err: &lettre::transport::smtp::Error) -> (&'static str, bool) {
    if certificate_problem(err).is_some() {
        return ("certificate_not_trusted", false);
    }
    if rustls_error(err).is_some() || err.is_tls() {
        return ("tls_failed", false);
    }
    let text = err.to_string();
    if text.contains("STARTTLS is not supported") {
        return ("tls_not_offered", false);
    }
    if text.contains("authentication mechanism") {
        return ("auth_not_offered", false);
    }
    if err.is_timeout() {
        return ("timeout", false);
    }
    match err.status() {
        Some(code) if err.is_permanent() => {
            if code.to_string().starts_with("53") {
                ("auth_refused", true)
            } else {
                ("rejected", true)
            }
        }
        Some(_) => ("deferred", false),
        None => ("connection_failed", false),
    }
}

/// Reads the sender once more for `mail test` and the worker.
pub fn message_for_test(from: &Mailbox, to: &str) -> anyhow::Result<Message> {
    let to: lettre::Address = to
        .parse()
        .with_context(|| format!("{to:?} is not an email address"))?;
    Message::builder()
        .from(from.clone())
        .to(Mailbox::new(None, to))
        .subject("latchkey mail test")
        .body(
            "This is a test message from `latchkey mail test`. The relay accepted it.\n".to_owned(),
        )
        .context("building the test message")
}

#[cfg(test)]
mod tests {
    use super::*;

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
