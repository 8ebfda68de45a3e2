//! Self-service sign-up: ask with an address and a password, confirm through the emailed
//! single-use link, and only then does the account exist.
//!
//! The answer to a request never tells whether the address has an account: both paths
//! check the same rules and hash the password on the request path, and what differs (a
//! link, or a note that the account exists) happens after the answer, as for
//! "Forgot your password?".

use secrecy::SecretString;
use sqlx::PgConnection;

use super::deferred::Request;
use super::passwords::Verified;
use super::throttle::{IpScope, check_ip};
use super::{Accounts, Origin, ServiceError};
use crate::domain::EmailAddress;
use crate::domain::password::{PolicyContext, PolicyViolation};
use crate::domain::token::ResetToken;
use crate::mail::messages;
use crate::store::audit::{self, EventKind};
use crate::store::sign_ups::{self, LinkState};
use crate::store::users;

/// What is wrong with a sign-up form, field by field; nothing was stored or sent.
#[derive(Debug, Default)]
pub struct Refusal {
    /// The address: malformed, or its domain may not sign up.
    pub email: Option<EmailProblem>,
    /// The password fails the policy, or the two entries differ.
    pub password: Option<PolicyViolation>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmailProblem {
    /// Not an email address; the message says what is wrong with it.
    Invalid(String),
    /// Its domain is not one of `sign_up_domains` (which are listed).
    DomainNotAllowed(Vec<String>),
}

#[derive(Debug, thiserror::Error)]
pub enum SignUpError {
    #[error("the sign-up form has problems")]
    Refused(Refusal),
    #[error(transparent)]
    Service(#[from] ServiceError),
}

/// A sign-up request: counted against the client's IP, then the address, its domain and
/// the password checked, the password hashed (for every address alike); the link or the
/// "you already have an account" note is recorded before the answer and queued after it by
/// [`issue_mail`]. Returns the address the answer names.
pub async fn request_sign_up(
    accounts: &Accounts,
    email_input: &str,
    new_password: &str,
    confirm: &str,
    origin: &Origin,
) -> Result<EmailAddress, SignUpError> {
    let ip = origin.ip.clone().unwrap_or_default();
    check_ip(accounts, IpScope::SignUp, &ip).await?;
    let mut refusal = Refusal::default();
    let email = match EmailAddress::parse(email_input) {
        Ok(email) => {
            let domains = &accounts.settings.sign_up_domains;
            if !domains.allows(domain_of(&email)) {
                refusal.email = Some(EmailProblem::DomainNotAllowed(domains.as_slice().to_vec()));
            }
            Some(email)
        }
        Err(err) => {
            refusal.email = Some(EmailProblem::Invalid(err.to_string()));
            None
        }
    };
    let ctx = PolicyContext {
        email: email.as_ref().map_or(email_input.trim(), |e| e.as_str()),
        two_factor: false,
    };
    let password = match super::check_new_password(accounts, &ctx, new_password, confirm).await? {
        Ok(password) => Some(password),
        Err(violation) => {
            refusal.password = Some(violation);
            None
        }
    };
    let (Some(email), Some(password), None) = (email, password, &refusal.email) else {
        return Err(SignUpError::Refused(refusal));
    };
    // The same work for an address with an account as for one without: the hash is made
    // either way, here, so the answer takes the same time and a full hashing queue gives
    // the same 503.
    let hash = accounts
        .hasher
        .hash(SecretString::from(password.expose().to_owned()))
        .await
        .map_err(ServiceError::from)?;
    let hash = SecretString::from(hash);
    super::deferred::record(accounts, Request::SignUp(hash), &email, origin).await?;
    Ok(email)
}

fn domain_of(email: &EmailAddress) -> &str {
    email
        .as_str()
        .rsplit_once('@')
        .map_or("", |(_, domain)| domain)
}

/// Queues the sign-up's mail in `conn`'s transaction unless the address has had too many
/// this hour: a new address gets a single-use link (older ones stay live: each is bound to
/// its own password), one with an account a note that it has one (a disabled one: to
/// contact the operator). With the address locked, the count, the new row and its mail
/// are one step, so however many requests race, the hourly limit holds.
#[tracing::instrument(skip_all)]
pub(super) async fn issue_mail(
    accounts: &Accounts,
    conn: &mut PgConnection,
    email: &EmailAddress,
    password_hash: &SecretString,
    origin: &Origin,
) -> anyhow::Result<()> {
    use secrecy::ExposeSecret;
    let key = email.key();
    let ttl = accounts.settings.reset_token_ttl_secs;
    sign_ups::lock_address(conn, &key).await?;
    if sign_ups::count_recent(&mut *conn, &key).await?
        >= accounts.settings.throttle.reset_mails_per_hour
    {
        tracing::info!("sign-up mail limit reached for the address; nothing sent");
        return Ok(());
    }
    // Looked up with the address locked: an account confirmed in the meantime is seen
    // (and one made by an operator in between is caught at confirmation, which never
    // makes a second one).
    let mail = match users::find_by_email(&mut *conn, email).await? {
        Some(user) => {
            sign_ups::record_existing(conn, email.as_str(), &key, ttl, origin.ip.as_deref())
                .await?;
            messages::sign_up_existing(
                user.email.as_str(),
                user.is_disabled(),
                &accounts.settings.public_base,
                origin,
            )?
        }
        None => {
            let token = ResetToken::generate();
            let link = format!(
                "{}/sign-up/confirm?token={}",
                &accounts.settings.public_base,
                token.expose()
            );
            sign_ups::insert(
                conn,
                email.as_str(),
                &key,
                &token.digest(),
                password_hash.expose_secret(),
                ttl,
                origin.ip.as_deref(),
            )
            .await?;
            messages::sign_up(email.as_str(), &link, ttl, origin)?
        }
    };
    accounts.outbox.enqueue(conn, &mail).await?;
    Ok(())
}

/// Why a sign-up link cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkProblem {
    /// Malformed, tampered with, or never issued.
    Invalid,
    Expired,
    Used,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfirmError {
    #[error("the sign-up link cannot be used")]
    Link(LinkProblem),
    /// The address got an account since the link was sent (another link, an operator):
    /// the link is used up and nothing was created.
    #[error("the address already has an account")]
    AlreadyHasAccount,
    /// Not the password chosen with the link: nothing changed, and the link stays
    /// usable (until its fifth wrong password).
    #[error("the password is not the one chosen at sign-up")]
    WrongPassword,
    #[error(transparent)]
    Service(#[from] ServiceError),
}

impl From<anyhow::Error> for ConfirmError {
    fn from(e: anyhow::Error) -> Self {
        ConfirmError::Service(ServiceError::Unexpected(e))
    }
}

impl From<sqlx::Error> for ConfirmError {
    fn from(e: sqlx::Error) -> Self {
        anyhow::Error::from(e).into()
    }
}

fn problem(state: LinkState) -> Option<LinkProblem> {
    match state {
        LinkState::Usable { .. } => None,
        LinkState::Expired => Some(LinkProblem::Expired),
        LinkState::Used => Some(LinkProblem::Used),
        LinkState::Unknown => Some(LinkProblem::Invalid),
    }
}

/// The address a sign-up link would create an account for, while it is usable. Opening
/// a link (which mail scanners do too) goes through here and never consumes it.
pub async fn check_link(accounts: &Accounts, token: &str) -> Result<String, ConfirmError> {
    let token = ResetToken::parse(token).ok_or(ConfirmError::Link(LinkProblem::Invalid))?;
    match sign_ups::peek(&accounts.pool, &token.digest()).await? {
        LinkState::Usable { email } => Ok(email),
        other => Err(ConfirmError::Link(
            problem(other).unwrap_or(LinkProblem::Invalid),
        )),
    }
}

/// Wrong passwords a sign-up link survives; the fifth voids it.
pub const MAX_CONFIRM_FAILURES: i32 = 5;

/// Confirms a sign-up with the password chosen at the request: the link consumed, every
/// other link for the address voided, the account created with that password, and
/// "account created" audited — one transaction, with the link's row locked, so
/// confirmations of one link run one after another. A wrong password is counted (the
/// fifth voids the link) and changes nothing else. Never signs anyone in. Returns the
/// new account's id.
#[tracing::instrument(skip_all, fields(user_id = tracing::field::Empty))]
pub async fn confirm_sign_up(
    accounts: &Accounts,
    token: &str,
    password: &str,
    origin: &Origin,
) -> Result<uuid::Uuid, ConfirmError> {
    let digest = ResetToken::parse(token)
        .ok_or(ConfirmError::Link(LinkProblem::Invalid))?
        .digest();
    let mut tx = accounts.pool.begin().await?;
    let Some(pending) = sign_ups::lock_live(&mut tx, &digest).await? else {
        let state = sign_ups::peek(&mut *tx, &digest).await?;
        // Usable here means it was consumed and released between the two statements,
        // which a committed consume never is: treat it as used.
        return Err(ConfirmError::Link(
            problem(state).unwrap_or(LinkProblem::Used),
        ));
    };
    let verified = accounts
        .hasher
        .verify(
            SecretString::from(password.to_owned()),
            Some(pending.password_hash.clone()),
        )
        .await
        .map_err(ServiceError::from)?;
    if !matches!(verified, Verified::Yes { .. }) {
        let failures = sign_ups::record_failure(&mut tx, pending.id, MAX_CONFIRM_FAILURES).await?;
        tx.commit().await?;
        return Err(if failures >= MAX_CONFIRM_FAILURES {
            ConfirmError::Link(LinkProblem::Used)
        } else {
            ConfirmError::WrongPassword
        });
    }
    sign_ups::consume(&mut tx, &pending).await?;
    let Some(user_id) = sign_ups::create_account(&mut tx, &pending).await? else {
        // The link is spent either way: it can never make a second account.
        tx.commit().await?;
        return Err(ConfirmError::AlreadyHasAccount);
    };
    tracing::Span::current().record("user_id", tracing::field::display(user_id));
    audit::record(
        &mut *tx,
        EventKind::AccountCreated,
        Some(user_id),
        Some(&pending.email),
        origin,
        Some("signed up"),
    )
    .await?;
    tx.commit().await?;
    Ok(user_id)
}
