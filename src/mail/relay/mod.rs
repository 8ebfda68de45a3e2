//! The SMTP relay: `LATCHKEY_SMTP_URL` parsed once ([`settings`]), lettre's pooled
//! transport, and a step-by-step check that says what failed ([`errors`] names each
//! failure; [`probe`] reads a refused certificate so the message can name it).

mod errors;
mod probe;
mod settings;

use std::time::Duration;

use anyhow::Context as _;
use lettre::address::Envelope;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::{AsyncSmtpTransport, PoolConfig};
use lettre::{Message, Tokio1Executor};

pub use errors::{FailureClass, RelayError, classify_delivery_error};
use errors::{Stage, certificate_problem, chain, classify};
pub use settings::{RelaySettingsError, Security};

/// Connecting to the SMTP server gives up after this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on a whole check (connect, TLS, AUTH, QUIT).
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle SMTP connections kept open between sends; one worker per instance needs few.
const SMTP_POOL_SIZE: u32 = 4;
const SMTP_POOL_IDLE: Duration = Duration::from_secs(30);
const MECHANISMS: [Mechanism; 2] = [Mechanism::Plain, Mechanism::Login];

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
                // Whatever the reply, the message was refused; only a 5xx is final.
                .map_err(|err| RelayError::Rejected {
                    detail: err.to_string(),
                    permanent: err.is_permanent(),
                })?;
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
            Err(err) => return Err(self.failed(&err, Stage::Connect).await),
        };
        if let (Security::StartTls | Security::Opportunistic, Some(params)) =
            (self.security, &self.tls)
        {
            if conn.can_starttls() {
                if let Err(err) = conn.starttls(params.clone(), &hello).await {
                    return Err(self.failed(&err, Stage::StartTls).await);
                }
            } else if self.security == Security::StartTls {
                conn.abort().await;
                return Err(RelayError::StartTlsNotOffered { addr });
            }
        }
        if let Some(credentials) = &self.credentials {
            if let Err(err) = conn.auth(&MECHANISMS, credentials).await {
                conn.abort().await;
                return Err(self.failed(&err, Stage::Auth).await);
            }
        }
        Ok(conn)
    }

    /// The sentence for a failed step, from the one classifier; a refused certificate is
    /// named by subject and issuer.
    async fn failed(&self, err: &lettre::transport::smtp::Error, stage: Stage) -> RelayError {
        let addr = self.addr();
        match classify(err, stage) {
            FailureClass::CertificateNotTrusted => {
                let (subject, issuer) = match self.peer_certificate_names().await {
                    Some(names) => names,
                    None => ("?".to_owned(), "?".to_owned()),
                };
                RelayError::CertificateNotTrusted {
                    addr,
                    subject,
                    issuer,
                    reason: certificate_problem(err).unwrap_or_default(),
                }
            }
            FailureClass::TlsFailed => RelayError::Tls {
                addr,
                detail: chain(err),
            },
            FailureClass::TlsNotOffered => RelayError::StartTlsNotOffered { addr },
            FailureClass::AuthRefused => RelayError::AuthRefused {
                addr,
                detail: err.to_string(),
            },
            FailureClass::AuthNotOffered => RelayError::AuthNotOffered { addr },
            class @ (FailureClass::Rejected | FailureClass::Deferred) => RelayError::Rejected {
                detail: err.to_string(),
                permanent: class == FailureClass::Rejected,
            },
            FailureClass::Timeout => RelayError::Timeout(CONNECT_TIMEOUT),
            FailureClass::ConnectionFailed => RelayError::Connect {
                addr,
                detail: chain(err),
            },
        }
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
