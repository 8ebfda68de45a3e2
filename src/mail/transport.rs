//! How a message leaves the process: SMTP in production, `.eml` files in development.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret as _;
use tokio::io::AsyncWriteExt as _;

use super::relay::{Relay, RelaySettingsError, classify_delivery_error};
use crate::config::Config;

/// Sender used when `LATCHKEY_MAIL_FROM` is not set.
pub const DEFAULT_MAIL_FROM: &str = "latchkey <no-reply@localhost>";

/// lettre's async client only times out the TCP connect, not the TLS handshake or the
/// commands, so a server that accepts and then stalls would hold the outbox row (and its
/// lock) forever without this bound on the whole send.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// One email as the application composes it, before it becomes MIME.
#[derive(Clone, PartialEq, Eq)]
pub struct OutgoingMail {
    /// A bare address (`alice@example.com`), no display name.
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: Option<String>,
}

/// Bodies hold single-use links: keep them out of `{:?}` output and logs.
impl std::fmt::Debug for OutgoingMail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutgoingMail")
            .field("to", &self.to)
            .field("subject", &self.subject)
            .field("text", &"[redacted]")
            .field("html", &self.html.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

/// The message can never be sent as it stands (bad recipient, unbuildable MIME):
/// retrying will not help. The outbox marks such a message failed at once.
#[derive(Debug, thiserror::Error)]
pub enum InvalidMail {
    #[error("invalid recipient address: {0}")]
    Recipient(#[source] lettre::address::AddressError),
    #[error("message could not be built: {0}")]
    Build(#[source] lettre::error::Error),
}

/// A delivery the relay did not take, classified for the outbox, metrics and `/readyz`.
#[derive(Debug, thiserror::Error)]
#[error("SMTP delivery failed ({class}): {detail}")]
pub struct DeliveryError {
    /// A stable name: `certificate_not_trusted`, `auth_refused`, `connection_failed`, …
    pub class: &'static str,
    /// 5xx (bad recipient, AUTH rejected): retrying cannot help.
    pub permanent: bool,
    detail: String,
}

#[derive(Clone)]
pub enum Transport {
    /// `LATCHKEY_SMTP_URL` is set.
    Smtp {
        relay: Relay,
        pool: AsyncSmtpTransport<Tokio1Executor>,
    },
    /// Development: one `.eml` file per message under `dir` (default `var/mail/`).
    Files { dir: PathBuf },
}

impl std::fmt::Debug for Transport {
    // Short and log-friendly: lettre's own Debug dumps the whole connection pool.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Smtp { relay, .. } => f.debug_tuple("Transport::Smtp").field(relay).finish(),
            Transport::Files { dir } => f
                .debug_struct("Transport::Files")
                .field("dir", dir)
                .finish(),
        }
    }
}

/// The transport the configuration asks for cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TransportConfigError {
    #[error(
        "public_url is https but LATCHKEY_SMTP_URL is not set: the development file transport \
         writes live reset links to var/mail/ and the log, so it is refused under https"
    )]
    FilesUnderHttps,
    #[error(transparent)]
    Relay(#[from] RelaySettingsError),
}

impl Transport {
    /// SMTP when `LATCHKEY_SMTP_URL` is set (see [`Relay::parse`] for its forms), otherwise
    /// files under `mail_dir`, which is created here (0700) — refused when `public_url` is
    /// https, because the file transport logs live links.
    ///
    /// Call it inside the Tokio runtime: lettre's SMTP pool spawns its reaper task on build.
    pub fn from_config(config: &Config) -> anyhow::Result<Transport> {
        let url = config
            .smtp_url
            .as_ref()
            .map(|url| url.expose_secret().trim())
            .filter(|url| !url.is_empty());
        let Some(url) = url else {
            if config.is_https() {
                return Err(TransportConfigError::FilesUnderHttps.into());
            }
            create_private_dir(&config.mail_dir)?;
            return Ok(Transport::Files {
                dir: config.mail_dir.clone(),
            });
        };
        // The error never quotes the URL: it may hold a password.
        let relay = Relay::parse(
            url,
            config.smtp_ca_file.as_deref(),
            config.smtp_username.as_deref(),
            config.smtp_password.as_ref(),
        )
        .map_err(TransportConfigError::from)?;
        if relay.may_send_credentials_in_clear() {
            tracing::warn!(
                "LATCHKEY_SMTP_URL sends AUTH credentials without required TLS: use smtps:// or ?tls=required"
            );
        }
        // Without this check lettre panics when the pool spawns its task.
        tokio::runtime::Handle::try_current()
            .context("the SMTP transport must be created inside the Tokio runtime")?;
        let pool = relay.transport();
        Ok(Transport::Smtp { relay, pool })
    }

    /// The relay, when mail goes over SMTP.
    pub fn relay(&self) -> Option<&Relay> {
        match self {
            Transport::Smtp { relay, .. } => Some(relay),
            Transport::Files { .. } => None,
        }
    }

    /// Sends one message. An error whose chain holds [`InvalidMail`] is permanent.
    pub async fn send(&self, from: &Mailbox, mail: &OutgoingMail) -> anyhow::Result<()> {
        let message = build_message(from, mail)?;
        match self {
            Transport::Smtp { pool, .. } => {
                tokio::time::timeout(SEND_TIMEOUT, pool.send(message))
                    .await
                    .map_err(|_| DeliveryError {
                        class: "timeout",
                        permanent: false,
                        detail: format!("the relay did not finish within {SEND_TIMEOUT:?}"),
                    })?
                    .map_err(|err| {
                        let (class, permanent) = classify_delivery_error(&err);
                        DeliveryError {
                            class,
                            permanent,
                            detail: err.to_string(),
                        }
                    })?;
            }
            Transport::Files { dir } => {
                let file = write_eml(dir, &message).await?;
                // Development only (refused under https): the link is what a developer
                // needs from the mail. The SMTP arm never logs a body.
                tracing::info!(
                    to = %mail.to,
                    link = first_link(&mail.text).unwrap_or("-"),
                    "mail written to {}",
                    file.display()
                );
            }
        }
        Ok(())
    }
}

/// At start-up: one connection to the relay (EHLO, STARTTLS/TLS, AUTH, QUIT) and a clear
/// verdict in the log. It never stops the service: mail is queued and retried.
pub async fn startup_check(transport: Transport) {
    let Some(relay) = transport.relay() else {
        tracing::info!(
            "mail goes to .eml files (development transport; LATCHKEY_SMTP_URL is unset)"
        );
        return;
    };
    match relay.check().await {
        Ok(summary) => tracing::info!("SMTP relay ok: {summary}"),
        Err(err) => {
            let then = if err.is_permanent() {
                "mail will be marked failed until this is fixed"
            } else {
                "mail stays queued and is retried"
            };
            tracing::error!(
                class = err.class(),
                "SMTP relay check failed: {err}; {then}"
            );
        }
    }
}

/// Creates `dir` (and missing parents) readable by the service's user alone.
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("creating mail directory {}", dir.display()))
}

/// Writes `<uuid>.eml`, created 0600: the file holds a live link.
async fn write_eml(dir: &Path, message: &Message) -> anyhow::Result<PathBuf> {
    create_private_dir(dir)?;
    let file = dir.join(format!("{}.eml", uuid::Uuid::new_v4()));
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut out = options
        .open(&file)
        .await
        .with_context(|| format!("creating {}", file.display()))?;
    out.write_all(&message.formatted())
        .await
        .with_context(|| format!("writing {}", file.display()))?;
    out.flush()
        .await
        .with_context(|| format!("writing {}", file.display()))?;
    Ok(file)
}

/// Parses `LATCHKEY_MAIL_FROM` (`Name <addr>` or a bare address); unset gives
/// [`DEFAULT_MAIL_FROM`].
pub fn mail_from(configured: Option<&str>) -> anyhow::Result<Mailbox> {
    let raw = configured
        .map(str::trim)
        .filter(|value| !value.is_empty())
        .unwrap_or(DEFAULT_MAIL_FROM);
    raw.parse::<Mailbox>()
        .with_context(|| format!("LATCHKEY_MAIL_FROM {raw:?} is not a valid mailbox"))
}

/// text/plain alone, or multipart/alternative (text first, html preferred) when there is html.
pub fn build_message(from: &Mailbox, mail: &OutgoingMail) -> anyhow::Result<Message> {
    // A bare address: lettre's parser refuses CR/LF, spaces and display names, so the
    // recipient cannot smuggle in headers or extra recipients.
    let to = mail.to.parse::<Address>().map_err(InvalidMail::Recipient)?;
    let builder = Message::builder()
        .from(from.clone())
        .to(Mailbox::new(None, to))
        .subject(mail.subject.as_str())
        .message_id(Some(message_id(from)));
    let message = match &mail.html {
        Some(html) => builder.multipart(MultiPart::alternative_plain_html(
            mail.text.clone(),
            html.clone(),
        )),
        None => builder.singlepart(SinglePart::plain(mail.text.clone())),
    };
    Ok(message.map_err(InvalidMail::Build)?)
}

/// `<random@sender-domain>`: the sender's domain rather than the host name, which in a
/// container is a meaningless id.
fn message_id(from: &Mailbox) -> String {
    format!("<{:032x}@{}>", rand::random::<u128>(), from.email.domain())
}

/// The first line of the text body that starts with `http`, trimmed.
fn first_link(text: &str) -> Option<&str> {
    text.lines()
        .map(str::trim)
        .find(|line| line.starts_with("http"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from() -> Mailbox {
        mail_from(None).expect("default sender parses")
    }

    fn mail(to: &str, html: Option<&str>) -> OutgoingMail {
        OutgoingMail {
            to: to.to_owned(),
            subject: "Reset your password".to_owned(),
            text: "Hello,\n\n  https://example.test/reset-password?token=abc  \n\nBye".to_owned(),
            html: html.map(str::to_owned),
        }
    }

    fn rendered(message: &Message) -> String {
        String::from_utf8_lossy(&message.formatted()).into_owned()
    }

    #[test]
    fn default_sender_is_latchkey_at_localhost() {
        let from = from();
        assert_eq!(from.name.as_deref(), Some("latchkey"));
        assert_eq!(from.email.to_string(), "no-reply@localhost");
        assert_eq!(mail_from(Some("  ")).expect("blank means default"), from);
    }

    #[test]
    fn configured_sender_is_parsed_and_garbage_refused() {
        let from = mail_from(Some("Acme Accounts <accounts@acme.test>")).expect("valid");
        assert_eq!(from.email.to_string(), "accounts@acme.test");
        assert!(mail_from(Some("not an address")).is_err());
    }

    #[test]
    fn recipient_with_cr_or_lf_is_rejected() {
        for to in [
            "victim@example.test\r\nBcc: attacker@evil.test",
            "victim@example.test\nBcc: attacker@evil.test",
            "victim@example.test\rX: y",
            "Name <victim@example.test>",
            "victim@exa\r\nmple.test",
        ] {
            let err = build_message(&from(), &mail(to, None)).expect_err(to);
            assert!(
                err.chain().any(|cause| cause.is::<InvalidMail>()),
                "{to:?} should be an InvalidMail, got {err:#}"
            );
        }
    }

    #[test]
    fn text_only_mail_is_text_plain() {
        let message = build_message(&from(), &mail("alice@example.test", None)).expect("builds");
        let raw = rendered(&message);
        assert!(
            raw.contains("Content-Type: text/plain; charset=utf-8"),
            "{raw}"
        );
        assert!(!raw.contains("multipart"), "{raw}");
        assert!(raw.contains("To: alice@example.test"), "{raw}");
        assert!(raw.contains("From: latchkey <no-reply@localhost>"), "{raw}");
        assert!(raw.contains("Message-ID: <"), "{raw}");
        assert!(raw.contains("@localhost>"), "{raw}");
    }

    #[test]
    fn mail_with_html_is_multipart_alternative() {
        let message = build_message(&from(), &mail("alice@example.test", Some("<p>Hello</p>")))
            .expect("builds");
        let raw = rendered(&message);
        assert!(raw.contains("Content-Type: multipart/alternative"), "{raw}");
        assert!(raw.contains("text/plain"), "{raw}");
        assert!(raw.contains("text/html"), "{raw}");
    }

    #[test]
    fn first_link_is_the_first_line_starting_with_http() {
        assert_eq!(
            first_link("Hi\n  https://x.test/a?token=1\nhttp://later"),
            Some("https://x.test/a?token=1")
        );
        assert_eq!(first_link("no link here"), None);
    }

    #[test]
    fn debug_hides_bodies() {
        let shown = format!(
            "{:?}",
            mail("alice@example.test", Some("<a href=x>secret</a>"))
        );
        assert!(!shown.contains("token"), "{shown}");
        assert!(!shown.contains("secret"), "{shown}");
    }

    fn config(smtp_url: Option<&str>, dir: &Path) -> Config {
        let mut config = Config::defaults().expect("defaults");
        config.smtp_url = smtp_url.map(|url| secrecy::SecretString::from(url.to_owned()));
        config.mail_dir = dir.to_path_buf();
        config
    }

    #[test]
    fn smtp_transport_outside_the_runtime_is_an_error_not_a_panic() {
        let err = Transport::from_config(&config(
            Some("smtp://127.0.0.1:2525"),
            &std::env::temp_dir(),
        ))
        .expect_err("no runtime");
        assert!(format!("{err:#}").contains("Tokio runtime"), "{err:#}");
    }

    #[tokio::test]
    async fn smtp_urls_are_accepted_and_other_schemes_refused() {
        let dir = std::env::temp_dir();
        assert!(matches!(
            Transport::from_config(&config(Some("smtp://127.0.0.1:2525"), &dir)),
            Ok(Transport::Smtp { .. })
        ));
        assert!(matches!(
            Transport::from_config(&config(
                Some("smtps://user:pa%40ss@mail.example.test"),
                &dir
            )),
            Ok(Transport::Smtp { .. })
        ));
        let err =
            Transport::from_config(&config(Some("http://user:hunter2@mail.example.test"), &dir))
                .expect_err("not smtp");
        assert!(!format!("{err:#}").contains("hunter2"), "{err:#}");
    }

    #[test]
    fn files_are_refused_under_https() {
        let mut config = config(None, &std::env::temp_dir());
        config.public_url = "https://auth.example.test".parse().expect("url");
        let err = Transport::from_config(&config).expect_err("refused");
        assert!(format!("{err:#}").contains("LATCHKEY_SMTP_URL"), "{err:#}");
    }

    #[tokio::test]
    async fn file_transport_writes_an_eml_file() {
        let dir =
            std::env::temp_dir().join(format!("latchkey-mail-{:016x}", rand::random::<u64>()));
        let transport = Transport::from_config(&config(None, &dir)).expect("file transport");
        assert!(dir.is_dir(), "from_config creates the directory");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&dir).expect("dir").permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "mail dir mode {mode:o}");
        }

        transport
            .send(&from(), &mail("alice@example.test", Some("<p>hi</p>")))
            .await
            .expect("written");

        let files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .expect("dir readable")
            .map(|entry| entry.expect("entry").path())
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!(files[0].extension().and_then(|e| e.to_str()), Some("eml"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&files[0])
                .expect("eml")
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600, "eml mode {mode:o}");
        }
        let raw = std::fs::read_to_string(&files[0]).expect("eml readable");
        assert!(raw.contains("To: alice@example.test"), "{raw}");
        assert!(raw.contains("Subject: Reset your password"), "{raw}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
