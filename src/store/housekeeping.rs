//! Periodic clean-up of rows that have served their purpose.

use anyhow::Context as _;
use sqlx::PgPool;

/// How many rows each table lost.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub sessions: u64,
    pub reset_tokens: u64,
    pub throttles: u64,
    pub outbox: u64,
    pub sign_ups: u64,
    /// Forgot-password and sign-up requests a day old that never went through.
    pub mail_requests: u64,
    /// OpenID grants, codes, tokens, requests and logout deliveries.
    pub oidc: u64,
}

/// Deletes expired sessions, tokens dead for a day, idle throttle rows, and mail that was
/// delivered (or given up on) more than a week ago, dead sign-ups, and mail requests a
/// day old.
#[tracing::instrument(skip_all)]
pub async fn sweep(pool: &PgPool) -> anyhow::Result<Swept> {
    let sessions = sqlx::query!("delete from sessions where expires_at <= now()")
        .execute(pool)
        .await
        .context("deleting expired sessions")?
        .rows_affected();
    let reset_tokens = sqlx::query!(
        "delete from reset_tokens
         where coalesce(used_at, expires_at) < now() - interval '1 day'"
    )
    .execute(pool)
    .await
    .context("deleting dead reset tokens")?
    .rows_affected();
    let throttles = sqlx::query!(
        "delete from login_throttle
         where updated_at < now() - interval '1 day'
           and (blocked_until is null or blocked_until < now())"
    )
    .execute(pool)
    .await
    .context("deleting idle address throttles")?
    .rows_affected()
        + sqlx::query!(
            "delete from ip_throttle where window_start < now() - interval '10 minutes'"
        )
        .execute(pool)
        .await
        .context("deleting old ip throttle windows")?
        .rows_affected();
    let outbox = sqlx::query!(
        "delete from outbox
         where status in ('sent', 'failed') and created_at < now() - interval '7 days'"
    )
    .execute(pool)
    .await
    .context("deleting delivered mail")?
    .rows_affected();
    let sign_ups = super::sign_ups::sweep(pool).await?;
    let mail_requests = super::mail_requests::sweep(pool).await?;
    let oidc = super::oidc_grants::sweep(pool).await?;
    Ok(Swept {
        oidc,
        sign_ups,
        mail_requests,
        sessions,
        reset_tokens,
        throttles,
        outbox,
    })
}
