//! The command line: `serve` (default), `migrate`, `user create|list|disable|enable|sign-out|
//! reset-link`, `mail test --to A`. The `user` commands call `auth::operator` over an
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
use crate::private_postgres;
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
    let mut config = Config::load()?;
    telemetry::init(&config.log, config.log_format);
    let command = cli.command.unwrap_or(Command::Serve);
    // `mail test` needs no database; every other command may use the private cluster.
    let cluster = match command {
        Command::Mail { .. } => None,
        _ => private_postgres::prepare(&mut config).await?,
    };
    let result = run_command(config, command).await;
    if let Some(cluster) = cluster
        && let Err(err) = cluster.stop().await
    {
        tracing::error!("{err:#}");
    }
    result
}

async fn run_command(config: Config, command: Command) -> anyhow::Result<()> {
    match command {
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
    }
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
