//! How a message leaves the process: SMTP in production, `.eml` files in development.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::PoolConfig;
use lettre::{
    Address, AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
};

/// Sender used when `LATCHKEY_MAIL_FROM` is not set.
pub const DEFAULT_MAIL_FROM: &str = "latchkey <no-reply@localhost>";

/// Connecting to the SMTP server gives up after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// lettre's async client only times out the TCP connect, not the TLS handshake or the
/// commands, so a server that accepts and then stalls would hold the outbox row (and its
/// lock) forever without this bound on the whole send.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Idle SMTP connections kept open between sends; one worker per instance needs few.
const SMTP_POOL_SIZE: u32 = 4;
const SMTP_POOL_IDLE: Duration = Duration::from_secs(30);

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

#[derive(Clone)]
pub enum Transport {
    /// `LATCHKEY_SMTP_URL` is set.
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    /// Development: one `.eml` file per message under `dir` (default `var/mail/`).
    Files { dir: PathBuf },
}

impl std::fmt::Debug for Transport {
    // Short and log-friendly: lettre's own Debug dumps the whole connection pool.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Smtp(_) => f.write_str("Transport::Smtp"),
            Transport::Files { dir } => f
                .debug_struct("Transport::Files")
                .field("dir", dir)
                .finish(),
        }
    }
}

impl Transport {
    /// `smtp_url` is `LATCHKEY_SMTP_URL`: `smtp://host:port` (plaintext, no STARTTLS),
    /// `smtp://…?tls=required` (STARTTLS), `smtps://user:pass@host[:port]` (TLS from the
    /// first byte). Unset: files under `mail_dir`, which is created here.
    ///
    /// Call it inside the Tokio runtime: lettre's SMTP pool spawns its reaper task on build.
    pub fn from_config(smtp_url: Option<&str>, mail_dir: &Path) -> anyhow::Result<Transport> {
        let Some(url) = smtp_url.map(str::trim).filter(|url| !url.is_empty()) else {
            std::fs::create_dir_all(mail_dir)
                .with_context(|| format!("creating mail directory {}", mail_dir.display()))?;
            return Ok(Transport::Files {
                dir: mail_dir.to_path_buf(),
            });
        };
        if sends_credentials_in_clear(url) {
            tracing::warn!(
                "LATCHKEY_SMTP_URL is plaintext smtp:// with credentials: use smtps:// or ?tls=required"
            );
        }
        // Without this check lettre panics when the pool spawns its task.
        tokio::runtime::Handle::try_current()
            .context("the SMTP transport must be created inside the Tokio runtime")?;
        // The error never quotes the URL: it may hold a password.
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .context("LATCHKEY_SMTP_URL is not a valid smtp:// or smtps:// URL")?
            .timeout(Some(CONNECT_TIMEOUT))
            .pool_config(
                PoolConfig::new()
                    .max_size(SMTP_POOL_SIZE)
                    .idle_timeout(SMTP_POOL_IDLE),
            )
            .build();
        Ok(Transport::Smtp(transport))
    }

    /// Sends one message. An error whose chain holds [`InvalidMail`] is permanent.
    pub async fn send(&self, from: &Mailbox, mail: &OutgoingMail) -> anyhow::Result<()> {
        let message = build_message(from, mail)?;
        match self {
            Transport::Smtp(smtp) => {
                tokio::time::timeout(SEND_TIMEOUT, smtp.send(message))
                    .await
                    .map_err(|_| {
                        anyhow::anyhow!("SMTP server did not finish within {SEND_TIMEOUT:?}")
                    })?
                    .context("SMTP delivery failed")?;
            }
            Transport::Files { dir } => {
                tokio::fs::create_dir_all(dir)
                    .await
                    .with_context(|| format!("creating mail directory {}", dir.display()))?;
                let id = AsyncFileTransport::<Tokio1Executor>::new(dir)
                    .send(message)
                    .await
                    .with_context(|| format!("writing mail under {}", dir.display()))?;
                let file = dir.join(format!("{id}.eml"));
                // Development only: the link is what a developer needs from the mail.
                // The SMTP arm never logs a body.
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

fn sends_credentials_in_clear(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("smtp://") else {
        return false;
    };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    authority.contains('@') && !url.contains("tls=required")
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

    #[test]
    fn plaintext_credentials_are_detected() {
        assert!(sends_credentials_in_clear("smtp://u:p@mail.test:25"));
        assert!(!sends_credentials_in_clear(
            "smtp://u:p@mail.test:587?tls=required"
        ));
        assert!(!sends_credentials_in_clear("smtp://127.0.0.1:2525"));
        assert!(!sends_credentials_in_clear("smtps://u:p@mail.test"));
    }

    #[test]
    fn smtp_transport_outside_the_runtime_is_an_error_not_a_panic() {
        let err = Transport::from_config(Some("smtp://127.0.0.1:2525"), &std::env::temp_dir())
            .expect_err("no runtime");
        assert!(format!("{err:#}").contains("Tokio runtime"), "{err:#}");
    }

    #[tokio::test]
    async fn smtp_urls_are_accepted_and_other_schemes_refused() {
        let dir = std::env::temp_dir();
        assert!(matches!(
            Transport::from_config(Some("smtp://127.0.0.1:2525"), &dir),
            Ok(Transport::Smtp(_))
        ));
        assert!(matches!(
            Transport::from_config(Some("smtps://user:pa%40ss@mail.example.test"), &dir),
            Ok(Transport::Smtp(_))
        ));
        let err = Transport::from_config(Some("http://user:hunter2@mail.example.test"), &dir)
            .expect_err("not smtp");
        assert!(!format!("{err:#}").contains("hunter2"), "{err:#}");
    }

    #[tokio::test]
    async fn file_transport_writes_an_eml_file() {
        let dir =
            std::env::temp_dir().join(format!("latchkey-mail-{:016x}", rand::random::<u64>()));
        let transport = Transport::from_config(None, &dir).expect("file transport");
        assert!(dir.is_dir(), "from_config creates the directory");

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
        let raw = std::fs::read_to_string(&files[0]).expect("eml readable");
        assert!(raw.contains("To: alice@example.test"), "{raw}");
        assert!(raw.contains("Subject: Reset your password"), "{raw}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
