//! Forgot-password and sign-up requests between the answer and their mail: one row per
//! request, written the same way for every address, taken by exactly one instance in the
//! transaction that turns it into a token and an outbox row (and deletes it).

use anyhow::Context as _;
use sqlx::{PgConnection, PgPool};

use super::audit::Origin;

/// What a request asks for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Reset,
    SignUp,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Reset => "reset",
            Kind::SignUp => "sign_up",
        }
    }
}

/// A request taken for processing: its row stays locked until the transaction ends.
pub struct Taken {
    pub id: i64,
    pub kind: Kind,
    /// As typed and parsed at request time.
    pub email: String,
    /// Sign-up only: the argon2id hash of the chosen password.
    pub password_hash: Option<String>,
    pub origin: Origin,
}

impl std::fmt::Debug for Taken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Taken")
            .field("id", &self.id)
            .field("kind", &self.kind.as_str())
            .finish_non_exhaustive()
    }
}

/// Records a request (committed when this returns). Returns its id.
#[tracing::instrument(skip_all)]
pub async fn insert(
    pool: &PgPool,
    kind: Kind,
    email: &str,
    password_hash: Option<&str>,
    origin: &Origin,
) -> anyhow::Result<i64> {
    sqlx::query_scalar!(
        "insert into mail_requests (kind, email, password_hash, requested_ip, requested_user_agent)
         values ($1, $2, $3, $4, $5) returning id",
        kind.as_str(),
        email,
        password_hash,
        origin.ip.as_deref(),
        origin.user_agent.as_deref(),
    )
    .fetch_one(pool)
    .await
    .context("recording a mail request")
}

/// Takes request `id`, or with `None` the oldest request that is due, unless another
/// transaction holds it (it is being processed) or it is gone (processed).
#[tracing::instrument(skip(conn))]
pub async fn take(conn: &mut PgConnection, id: Option<i64>) -> anyhow::Result<Option<Taken>> {
    let row = sqlx::query!(
        "select id, kind, email, password_hash, requested_ip, requested_user_agent
         from mail_requests
         where id = $1 or ($1::bigint is null and not_before <= now())
         order by id
         limit 1
         for update skip locked",
        id,
    )
    .fetch_optional(conn)
    .await
    .context("taking a mail request")?;
    Ok(row.and_then(|row| {
        let kind = match row.kind.as_str() {
            "reset" => Kind::Reset,
            "sign_up" => Kind::SignUp,
            _ => return None,
        };
        Some(Taken {
            id: row.id,
            kind,
            email: row.email,
            password_hash: row.password_hash,
            origin: Origin {
                ip: row.requested_ip,
                user_agent: row.requested_user_agent,
            },
        })
    }))
}

/// Whether any request is due: one cheap statement, so an instance with nothing waiting
/// opens no transaction.
pub async fn any_due(pool: &PgPool) -> anyhow::Result<bool> {
    sqlx::query_scalar!(
        r#"select exists (select 1 from mail_requests where not_before <= now()) as "due!""#
    )
    .fetch_one(pool)
    .await
    .context("looking for due mail requests")
}

/// Deletes a taken request, in the transaction that did its work.
pub async fn delete(conn: &mut PgConnection, id: i64) -> anyhow::Result<()> {
    sqlx::query!("delete from mail_requests where id = $1", id)
        .execute(conn)
        .await
        .context("deleting a mail request")?;
    Ok(())
}

/// A request whose work failed waits before it is taken again: 2, 4, 8, ... seconds, at
/// most ten minutes.
pub async fn postpone(pool: &PgPool, id: i64) -> anyhow::Result<()> {
    sqlx::query!(
        "update mail_requests
         set attempts = attempts + 1,
             not_before = now() + make_interval(secs => least(600, power(2, least(attempts + 1, 10))))
         where id = $1",
        id
    )
    .execute(pool)
    .await
    .context("postponing a mail request")?;
    Ok(())
}

/// Drops requests a day old that never went through (each failure was logged): the
/// person asked again long since, or gave up.
pub async fn sweep(pool: &PgPool) -> anyhow::Result<u64> {
    let dropped =
        sqlx::query!("delete from mail_requests where created_at < now() - interval '1 day'")
            .execute(pool)
            .await
            .context("dropping day-old mail requests")?
            .rows_affected();
    if dropped > 0 {
        tracing::error!(dropped, "mail requests a day old were dropped unsent");
    }
    Ok(dropped)
}
