//! The command line: `serve` (default), `migrate`, `user create --email E`, `mail test --to A`.

use std::io::BufRead;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use secrecy::SecretString;
use tokio::net::TcpListener;

use crate::app::Server;
use crate::auth::password_policy;
use crate::auth::passwords::Hasher;
use crate::config::Config;
use crate::domain::EmailAddress;
use crate::domain::password::{NewPassword, PolicyContext};
use crate::mail::relay::message_for_test;
use crate::mail::transport::{Transport, mail_from};
use crate::store::users::{self, CreateUserError};
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
        Command::User {
            command: UserCommand::Create { email },
        } => create_user(&config, &email).await,
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

async fn create_user(config: &Config, email: &str) -> anyhow::Result<()> {
    let email = EmailAddress::parse(email).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    let policy = password_policy(config);
    let ctx = PolicyContext {
        email: email.as_str(),
        two_factor: false,
    };
    let password = NewPassword::parse(&policy, &ctx, password, password)
        .map_err(|violation| anyhow::anyhow!("{violation}"))?;

    let pool = db::connect(config).await?;
    db::migrate(&pool).await?;
    let hasher = Hasher::start(&config.argon2)?;
    let hash = hasher
        .hash(SecretString::from(password.expose().to_owned()))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    match users::insert(&pool, &email, &hash).await {
        Ok(id) => {
            println!("created {email} ({id})");
            Ok(())
        }
        Err(CreateUserError::EmailTaken) => {
            bail!("an account with the address {email} already exists")
        }
        Err(CreateUserError::Unexpected(e)) => Err(e),
    }
}
