//! The command line: `serve` (default), `migrate`, `user create|list|disable|enable|sign-out|
//! reset-link`, `mail test --to A`, `oidc client add|list|remove|rotate-secret`,
//! `oidc keys rotate`. The `user` commands call `auth::operator` over an
//! [`Accounts`] built as the server builds it.

use std::io::BufRead;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpListener;

use std::sync::Arc;

use crate::app::Server;
use crate::auth::Accounts;
use crate::auth::operator::{self, OperatorError};
use crate::config::Config;
use crate::keys::Keys;
use crate::mail::relay::message_for_test;
use crate::mail::transport::{Transport, mail_from};
use crate::store::users::AccountSummary;
use crate::{db, telemetry};

#[derive(Debug, Parser)]
#[command(name = "latchkey", version, about = "Account authentication service")]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve HTTP (the default).
    Serve,
    /// Create the database if missing and apply migrations, then exit.
    Migrate,
    /// Manage accounts.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Check the mail transport.
    Mail {
        #[command(subcommand)]
        command: MailCommand,
    },
    /// Sign in with latchkey: OpenID Connect clients and signing keys.
    Oidc {
        #[command(subcommand)]
        command: OidcCommand,
    },
}

#[derive(Debug, Subcommand)]
enum OidcCommand {
    /// Manage the applications that sign people in with latchkey.
    Client {
        #[command(subcommand)]
        command: OidcClientCommand,
    },
    /// Manage the ID token signing keys.
    Keys {
        #[command(subcommand)]
        command: OidcKeysCommand,
    },
}

#[derive(Debug, Subcommand)]
enum OidcClientCommand {
    /// Register a client; a confidential client's secret is printed once (standard output).
    Add {
        #[arg(long)]
        id: String,
        #[arg(long)]
        name: String,
        /// Where the client receives codes; exactly as it will send it. Repeat for more.
        #[arg(long = "redirect-uri", required = true)]
        redirect_uris: Vec<String>,
        /// Where the client may send people after logout. Repeat for more.
        #[arg(long = "post-logout-redirect-uri")]
        post_logout_redirect_uris: Vec<String>,
        /// Where latchkey posts logout tokens when a session ends.
        #[arg(long)]
        backchannel_logout_uri: Option<String>,
        /// A public client (a single-page or native app): no secret, PKCE required.
        #[arg(long)]
        public: bool,
        /// Do not ask people to allow this client (the operator's own application).
        #[arg(long)]
        skip_consent: bool,
        /// ID token signing algorithm: RS256 (default), ES256 or EdDSA.
        #[arg(long)]
        signing_alg: Option<String>,
    },
    /// List the clients.
    List {
        /// A JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a client: its codes and tokens stop working at once.
    Remove {
        #[arg(long)]
        id: String,
    },
    /// Give a confidential client a new secret (printed once); the old one stops working.
    RotateSecret {
        #[arg(long)]
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum OidcKeysCommand {
    /// A new signing key per algorithm signs from now on; the old public keys stay in the
    /// JWKS until the tokens they signed have expired.
    Rotate,
}

#[derive(Debug, Subcommand)]
enum MailCommand {
    /// Send one test message through the configured transport; exit 0 when the relay
    /// accepted it, otherwise non-zero with what failed.
    Test {
        #[arg(long)]
        to: String,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create an account; the password is read from standard input (one line).
    Create {
        #[arg(long)]
        email: String,
    },
    /// List every account: id, email, created, last sign-in, two-factor, disabled.
    List {
        /// A JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Disable an account: it cannot sign in, and every session of it ends now.
    Disable {
        #[arg(long)]
        email: String,
    },
    /// Enable a disabled account again (sessions are not restored).
    Enable {
        #[arg(long)]
        email: String,
    },
    /// End every session of an account.
    SignOut {
        #[arg(long)]
        email: String,
    },
    /// Print a single-use password reset link for an account.
    ResetLink {
        #[arg(long)]
        email: String,
    },
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load()?;
    telemetry::init(&config.log, config.log_format);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let listener = TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("binding {}", config.listen))?;
            Server::start(config, listener)
                .await?
                .run_until_signal()
                .await
        }
        Command::Migrate => {
            let pool = db::connect(&config).await?;
            db::migrate(&pool).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::User { command } => user_command(&config, command).await,
        Command::Mail {
            command: MailCommand::Test { to },
        } => mail_test(&config, &to).await,
        Command::Oidc { command } => oidc_command(&config, command).await,
    }
}

async fn oidc_command(config: &Config, command: OidcCommand) -> anyhow::Result<()> {
    use crate::oidc::clients::{self, ClientError, ClientSpec};
    let provider = crate::oidc::Provider::new(config, accounts(config).await?);
    let failed = |err: ClientError| match err {
        ClientError::Unexpected(e) => e,
        other => anyhow::anyhow!("{other}"),
    };
    match command {
        OidcCommand::Client {
            command:
                OidcClientCommand::Add {
                    id,
                    name,
                    redirect_uris,
                    post_logout_redirect_uris,
                    backchannel_logout_uri,
                    public,
                    skip_consent,
                    signing_alg,
                },
        } => {
            let spec = ClientSpec {
                id,
                name,
                redirect_uris,
                post_logout_redirect_uris,
                backchannel_logout_uri,
                public,
                skip_consent,
                signing_alg,
            };
            match clients::add(&provider, &spec).await.map_err(failed)? {
                Some(secret) => {
                    eprintln!(
                        "added the confidential client {}; its secret follows, shown this once:",
                        spec.id
                    );
                    println!("{}", secret.expose_secret());
                }
                None => eprintln!(
                    "added the public client {} (no secret; PKCE required)",
                    spec.id
                ),
            }
        }
        OidcCommand::Client {
            command: OidcClientCommand::List { json },
        } => {
            let list = clients::list(&provider).await.map_err(failed)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&clients_json(&list)?)?);
            } else {
                print!("{}", clients_table(&list));
            }
        }
        OidcCommand::Client {
            command: OidcClientCommand::Remove { id },
        } => {
            clients::remove(&provider, &id).await.map_err(failed)?;
            println!("removed the client {id}; its codes and tokens no longer work");
        }
        OidcCommand::Client {
            command: OidcClientCommand::RotateSecret { id },
        } => {
            let secret = clients::rotate_secret(&provider, &id)
                .await
                .map_err(failed)?;
            eprintln!("new secret for {id}, shown this once; the old one no longer works:");
            println!("{}", secret.expose_secret());
        }
        OidcCommand::Keys {
            command: OidcKeysCommand::Rotate,
        } => {
            let kids = provider.signer.rotate().await?;
            println!("new signing keys: {}", kids.join(", "));
        }
    }
    Ok(())
}

/// `oidc client list --json`: one object per client, with these keys always present.
fn clients_json(list: &[crate::store::oidc_clients::Client]) -> anyhow::Result<serde_json::Value> {
    let mut rows = Vec::with_capacity(list.len());
    for client in list {
        rows.push(serde_json::json!({
            "id": client.id,
            "name": client.name,
            "public": client.is_public(),
            "redirect_uris": client.redirect_uris,
            "post_logout_redirect_uris": client.post_logout_redirect_uris,
            "backchannel_logout_uri": client.backchannel_logout_uri,
            "skip_consent": client.skip_consent,
            "signing_alg": client.signing_alg,
            "created_at": timestamp(client.created_at)?,
        }));
    }
    Ok(serde_json::Value::Array(rows))
}

/// `oidc client list`: one line per client.
fn clients_table(list: &[crate::store::oidc_clients::Client]) -> String {
    let mut out = String::new();
    for client in list {
        out.push_str(&format!(
            "{}  {}  {}  {}{}  {}\n",
            client.id,
            client.name,
            if client.is_public() {
                "public"
            } else {
                "confidential"
            },
            client.signing_alg,
            if client.skip_consent {
                "  skip-consent"
            } else {
                ""
            },
            client.redirect_uris.join(" "),
        ));
    }
    if list.is_empty() {
        out.push_str("(no clients)\n");
    }
    out
}

async fn mail_test(config: &Config, to: &str) -> anyhow::Result<()> {
    let from = mail_from(Some(&config.mail_from))?;
    let transport = Transport::from_config(config)?;
    let Some(relay) = transport.relay() else {
        let mail = crate::mail::OutgoingMail {
            to: to.to_owned(),
            subject: "latchkey mail test".to_owned(),
            text: "This is a test message from `latchkey mail test`.\n".to_owned(),
            html: None,
        };
        transport.send(&from, &mail).await?;
        println!(
            "mail test: written under {} (LATCHKEY_SMTP_URL is unset)",
            config.mail_dir.display()
        );
        return Ok(());
    };
    let message = message_for_test(&from, to)?;
    match relay.send_one(&message).await {
        Ok(summary) => {
            println!("mail test: the relay accepted the message for {to}: {summary}");
            Ok(())
        }
        Err(err) => bail!("mail test failed ({}): {err}", err.class()),
    }
}

/// The account rules as the server has them, over a migrated database.
async fn accounts(config: &Config) -> anyhow::Result<Accounts> {
    let keys = Arc::new(Keys::load(config.secret_key.as_ref(), config.is_https())?);
    let pool = db::connect(config).await?;
    db::migrate(&pool).await?;
    Accounts::start(config, pool, keys)
}

async fn user_command(config: &Config, command: UserCommand) -> anyhow::Result<()> {
    let origin = operator::command_line();
    match command {
        UserCommand::Create { email } => {
            let password = read_password()?;
            let accounts = accounts(config).await?;
            let (email, id) = operator::create_account(&accounts, &email, password.expose_secret())
                .await
                .map_err(failed)?;
            println!("created {email} ({id})");
        }
        UserCommand::List { json } => {
            let accounts = accounts(config).await?;
            let list = operator::list_accounts(&accounts).await.map_err(failed)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list_json(&list)?)?);
            } else {
                print!("{}", list_table(&list)?);
            }
        }
        UserCommand::Disable { email } => {
            let accounts = accounts(config).await?;
            let (user, ended) = operator::disable(&accounts, &email, &origin)
                .await
                .map_err(failed)?;
            println!(
                "disabled {} ({}); {ended} {} ended",
                user.email,
                user.id,
                sessions_word(ended)
            );
        }
        UserCommand::Enable { email } => {
            let accounts = accounts(config).await?;
            let user = operator::enable(&accounts, &email, &origin)
                .await
                .map_err(failed)?;
            println!("enabled {} ({}); it can sign in again", user.email, user.id);
        }
        UserCommand::SignOut { email } => {
            let accounts = accounts(config).await?;
            let (user, ended) = operator::sign_out_everywhere(&accounts, &email, &origin)
                .await
                .map_err(failed)?;
            println!(
                "signed out {} ({}); {ended} {} ended",
                user.email,
                user.id,
                sessions_word(ended)
            );
        }
        UserCommand::ResetLink { email } => {
            let accounts = accounts(config).await?;
            let (user, link) = operator::reset_link(&accounts, &email, &origin)
                .await
                .map_err(failed)?;
            let minutes = accounts.settings.reset_token_ttl_secs.div_ceil(60);
            eprintln!(
                "reset link for {} ({}), usable once within {minutes} minutes; \
                 older links of the account no longer work:",
                user.email, user.id
            );
            println!("{link}");
        }
    }
    Ok(())
}

fn sessions_word(n: u64) -> &'static str {
    if n == 1 { "session" } else { "sessions" }
}

/// An operator command's failure as the message the command exits with.
fn failed(err: OperatorError) -> anyhow::Error {
    match err {
        OperatorError::Service(crate::auth::ServiceError::Unexpected(e)) => e,
        other => anyhow::anyhow!("{other}"),
    }
}

fn timestamp(at: time::OffsetDateTime) -> anyhow::Result<String> {
    Ok(at
        .to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)?
        .format(&time::format_description::well_known::Rfc3339)?)
}

fn optional_timestamp(at: Option<time::OffsetDateTime>) -> anyhow::Result<Option<String>> {
    at.map(timestamp).transpose()
}

/// `user list --json`: one object per account, with these keys always present.
fn list_json(list: &[AccountSummary]) -> anyhow::Result<serde_json::Value> {
    let mut rows = Vec::with_capacity(list.len());
    for account in list {
        rows.push(serde_json::json!({
            "id": account.id.to_string(),
            "email": account.email,
            "created_at": timestamp(account.created_at)?,
            "last_sign_in_at": optional_timestamp(account.last_sign_in_at)?,
            "two_factor": account.totp_enabled_at.is_some(),
            "disabled": account.disabled_at.is_some(),
            "disabled_at": optional_timestamp(account.disabled_at)?,
        }));
    }
    Ok(serde_json::Value::Array(rows))
}

/// `user list`: a table with a header line, columns padded to their widest cell.
fn list_table(list: &[AccountSummary]) -> anyhow::Result<String> {
    let mut rows = vec![[
        "ID".to_owned(),
        "EMAIL".to_owned(),
        "CREATED".to_owned(),
        "LAST SIGN-IN".to_owned(),
        "TWO-FACTOR".to_owned(),
        "DISABLED".to_owned(),
    ]];
    for account in list {
        rows.push([
            account.id.to_string(),
            account.email.clone(),
            timestamp(account.created_at)?,
            optional_timestamp(account.last_sign_in_at)?.unwrap_or_else(|| "never".to_owned()),
            if account.totp_enabled_at.is_some() {
                "on"
            } else {
                "off"
            }
            .to_owned(),
            optional_timestamp(account.disabled_at)?.unwrap_or_else(|| "no".to_owned()),
        ]);
    }
    let mut widths = [0usize; 6];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if list.is_empty() {
        out.push_str("(no accounts)\n");
    }
    Ok(out)
}

/// One line of standard input, without its line ending.
fn read_password() -> anyhow::Result<SecretString> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    Ok(SecretString::from(password.to_owned()))
}
