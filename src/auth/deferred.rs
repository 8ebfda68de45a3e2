//! The part of "Forgot your password?" and sign-up that differs by address (a link, a
//! note, or nothing), done after the answer so that every address takes the same time,
//! from a request recorded before it so that no crash or failover in between loses the
//! mail.
//!
//! The request path writes one `mail_requests` row for every address alike and commits
//! it, then answers. A task on the tracker (which a graceful shutdown drains) takes that
//! row and, in one transaction, issues the token, queues the mail and deletes the row.
//! Rows that no task finished (the process was killed, the database dropped the
//! connection) are taken by [`resume`], which every instance runs at start-up and every
//! few seconds. `for update skip locked` lets exactly one instance do each.

use secrecy::SecretString;

use super::{Accounts, Origin, ServiceError, Unavailable};
use crate::domain::EmailAddress;
use crate::store::mail_requests::{self, Kind, Taken};

/// What the answer promised.
pub enum Request {
    Reset,
    /// With the argon2id hash of the chosen password.
    SignUp(SecretString),
}

/// Records the request (a 503 when the database cannot take it: the answer would promise
/// a mail), then starts its work. The same statement for every address.
pub(super) async fn record(
    accounts: &Accounts,
    request: Request,
    email: &EmailAddress,
    origin: &Origin,
) -> Result<(), ServiceError> {
    use secrecy::ExposeSecret;
    let (kind, hash) = match &request {
        Request::Reset => (Kind::Reset, None),
        Request::SignUp(hash) => (Kind::SignUp, Some(hash.expose_secret())),
    };
    let insert = mail_requests::insert(&accounts.pool, kind, email.as_str(), hash, origin);
    let id = match tokio::time::timeout(accounts.settings.db_acquire_timeout, insert).await {
        Ok(Ok(id)) => id,
        Ok(Err(err)) if super::is_unavailable(&err) => {
            return Err(ServiceError::Unexpected(
                err.context(Unavailable).context("recording a mail request"),
            ));
        }
        Ok(Err(err)) => return Err(ServiceError::Unexpected(err)),
        Err(_) => {
            return Err(ServiceError::Unexpected(
                anyhow::Error::new(Unavailable).context("recording a mail request"),
            ));
        }
    };
    let accounts = accounts.clone();
    accounts.tasks.clone().spawn(async move {
        if let Err(err) = process(&accounts, Some(id)).await {
            // Nothing was taken (the database is out of reach): `resume` takes it later.
            tracing::warn!(error = format!("{err:#}"), "a mail request waits");
        }
    });
    Ok(())
}

/// What [`process`] did.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Nothing to take: done already, being done elsewhere, or none due.
    Nothing,
    Done,
    /// Its work failed; it waits before it is tried again.
    Postponed,
}

/// Takes request `id` (or the oldest due one) and does its work in one transaction that
/// also deletes it. An error before anything was taken is returned; one in the work
/// postpones the request.
async fn process(accounts: &Accounts, id: Option<i64>) -> anyhow::Result<Outcome> {
    let mut tx = accounts.pool.begin().await?;
    let Some(taken) = mail_requests::take(&mut tx, id).await? else {
        return Ok(Outcome::Nothing);
    };
    let work = async {
        do_work(accounts, &mut tx, &taken).await?;
        mail_requests::delete(&mut tx, taken.id).await?;
        tx.commit().await?;
        anyhow::Ok(())
    };
    match work.await {
        Ok(()) => {
            accounts.outbox.notify();
            Ok(Outcome::Done)
        }
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), ?taken, "a mail request failed");
            if let Err(err) = mail_requests::postpone(&accounts.pool, taken.id).await {
                tracing::warn!(error = format!("{err:#}"), "postponing a mail request");
            }
            Ok(Outcome::Postponed)
        }
    }
}

async fn do_work(
    accounts: &Accounts,
    conn: &mut sqlx::PgConnection,
    taken: &Taken,
) -> anyhow::Result<()> {
    // Parsed when it was recorded; a row that no longer parses (the rules changed) is
    // dropped as an unknown address would be.
    let Ok(email) = EmailAddress::parse(&taken.email) else {
        tracing::warn!(?taken, "a mail request's address no longer parses; dropped");
        return Ok(());
    };
    match (taken.kind, &taken.password_hash) {
        (Kind::Reset, _) => super::reset::issue_link(accounts, conn, &email, &taken.origin).await,
        (Kind::SignUp, Some(hash)) => {
            let hash = SecretString::from(hash.clone());
            super::sign_up::issue_mail(accounts, conn, &email, &hash, &taken.origin).await
        }
        (Kind::SignUp, None) => Ok(()),
    }
}

/// Most requests one [`resume`] does (it runs again a few seconds later).
const RESUME_BATCH: u64 = 1000;

/// Does the requests that wait and that no instance is working on: at start-up (a crash
/// left them), and every few seconds (a task failed). Returns how many it did.
pub async fn resume(accounts: &Accounts) -> anyhow::Result<u64> {
    let mut done = 0;
    if !mail_requests::any_due(&accounts.pool).await? {
        return Ok(done);
    }
    for _ in 0..RESUME_BATCH {
        match process(accounts, None).await? {
            Outcome::Nothing => break,
            Outcome::Done => done += 1,
            Outcome::Postponed => {}
        }
    }
    Ok(done)
}
