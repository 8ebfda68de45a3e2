//! OpenID grants and what hangs off them: authorization codes, access tokens and refresh
//! tokens, each stored only as a SHA-256 digest. A grant is revoked as a whole; every
//! token lookup joins its grant, so a revoked grant ends all of its tokens at once.

use anyhow::Context as _;
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

/// A grant as the token endpoint and userinfo need it.
#[derive(Clone)]
pub struct Grant {
    pub id: Uuid,
    pub client_id: String,
    pub user_id: Uuid,
    pub session_hash: Vec<u8>,
    pub sid: String,
    pub scopes: Vec<String>,
    pub nonce: Option<String>,
    pub auth_time: OffsetDateTime,
    pub amr: Vec<String>,
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant")
            .field("id", &self.id)
            .field("client_id", &self.client_id)
            .field("user_id", &self.user_id)
            .finish_non_exhaustive()
    }
}

/// What an authorization records.
pub struct NewGrant<'a> {
    pub client_id: &'a str,
    pub user_id: Uuid,
    pub session_hash: &'a [u8],
    pub sid: &'a str,
    pub scopes: &'a [String],
    pub nonce: Option<&'a str>,
    pub auth_time: OffsetDateTime,
    pub amr: &'a [String],
}

/// Records a grant and its authorization code in one statement.
#[tracing::instrument(skip_all, fields(client_id = grant.client_id))]
pub async fn insert_with_code(
    pool: &PgPool,
    grant: &NewGrant<'_>,
    code_hash: &[u8],
    redirect_uri: &str,
    code_challenge: Option<&str>,
    code_ttl_secs: f64,
) -> anyhow::Result<Uuid> {
    sqlx::query_scalar!(
        r#"with g as (
             insert into oidc_grants (client_id, user_id, session_hash, sid, scopes, nonce,
                                      auth_time, amr)
             values ($1, $2, $3, $4, $5, $6, $7, $8)
             returning id
           )
           insert into oidc_codes (code_hash, grant_id, redirect_uri, code_challenge, expires_at)
           select $9, g.id, $10, $11, now() + make_interval(secs => $12) from g
           returning grant_id"#,
        grant.client_id,
        grant.user_id,
        grant.session_hash,
        grant.sid,
        grant.scopes,
        grant.nonce,
        grant.auth_time,
        grant.amr,
        code_hash,
        redirect_uri,
        code_challenge,
        code_ttl_secs,
    )
    .fetch_one(pool)
    .await
    .context("recording an authorization")
}

/// Uses a code once: it must be unused, unexpired, the client's, for this `redirect_uri`,
/// with this PKCE challenge (or none, both ways), and its grant live. One statement, so of
/// any number of concurrent redemptions exactly one gets the grant.
#[tracing::instrument(skip_all, fields(client_id))]
pub async fn redeem_code(
    pool: &PgPool,
    code_hash: &[u8],
    client_id: &str,
    redirect_uri: &str,
    challenge: Option<&str>,
) -> anyhow::Result<Option<Grant>> {
    sqlx::query_as!(
        Grant,
        "update oidc_codes c set used_at = now()
         from oidc_grants g
         where c.code_hash = $1 and c.used_at is null and c.expires_at > now()
           and g.id = c.grant_id and g.revoked_at is null and g.client_id = $2
           and c.redirect_uri = $3 and c.code_challenge is not distinct from $4
         returning g.id, g.client_id, g.user_id, g.session_hash, g.sid, g.scopes, g.nonce,
                   g.auth_time, g.amr",
        code_hash,
        client_id,
        redirect_uri,
        challenge,
    )
    .fetch_optional(pool)
    .await
    .context("redeeming an authorization code")
}

/// A code presented after it was used: the grant it made is revoked, with every token.
/// Whether there was such a used code.
#[tracing::instrument(skip_all)]
pub async fn revoke_for_replayed_code(pool: &PgPool, code_hash: &[u8]) -> anyhow::Result<bool> {
    let done = sqlx::query!(
        "update oidc_grants set revoked_at = coalesce(revoked_at, now())
         where id = (select grant_id from oidc_codes where code_hash = $1 and used_at is not null)",
        code_hash,
    )
    .execute(pool)
    .await
    .context("revoking the grant of a replayed code")?;
    Ok(done.rows_affected() > 0)
}

/// Issues the first access and refresh tokens of a redeemed grant, in one statement.
#[tracing::instrument(skip_all, fields(%grant_id))]
pub async fn issue_first_tokens(
    pool: &PgPool,
    grant_id: Uuid,
    access_hash: &[u8],
    access_ttl_secs: f64,
    refresh_hash: &[u8],
    refresh_ttl_secs: f64,
) -> anyhow::Result<()> {
    sqlx::query!(
        "with g as (
           update oidc_grants set redeemed_at = now() where id = $1 returning id
         ), a as (
           insert into oidc_access_tokens (token_hash, grant_id, expires_at)
           select $2, g.id, now() + make_interval(secs => $3) from g
         )
         insert into oidc_refresh_tokens (token_hash, grant_id, expires_at)
         select $4, g.id, now() + make_interval(secs => $5) from g",
        grant_id,
        access_hash,
        access_ttl_secs,
        refresh_hash,
        refresh_ttl_secs,
    )
    .execute(pool)
    .await
    .context("issuing tokens")?;
    Ok(())
}

/// A live access token's grant and when the token expires.
#[tracing::instrument(skip_all)]
pub async fn find_by_access_token(
    pool: &PgPool,
    access_hash: &[u8],
) -> anyhow::Result<Option<(Grant, OffsetDateTime)>> {
    let row = sqlx::query!(
        "select g.id, g.client_id, g.user_id, g.session_hash, g.sid, g.scopes, g.nonce,
                g.auth_time, g.amr, a.expires_at
         from oidc_access_tokens a join oidc_grants g on g.id = a.grant_id
         where a.token_hash = $1 and a.expires_at > now() and a.revoked_at is null
           and g.revoked_at is null",
        access_hash,
    )
    .fetch_optional(pool)
    .await
    .context("looking up an access token")?;
    Ok(row.map(|r| {
        (
            Grant {
                id: r.id,
                client_id: r.client_id,
                user_id: r.user_id,
                session_hash: r.session_hash,
                sid: r.sid,
                scopes: r.scopes,
                nonce: r.nonce,
                auth_time: r.auth_time,
                amr: r.amr,
            },
            r.expires_at,
        )
    }))
}

/// A live refresh token's grant and when the token expires (unused, or used within the
/// grace window: what introspection calls active).
#[tracing::instrument(skip_all)]
pub async fn find_by_refresh_token(
    pool: &PgPool,
    refresh_hash: &[u8],
) -> anyhow::Result<Option<(Grant, OffsetDateTime)>> {
    let row = sqlx::query!(
        "select g.id, g.client_id, g.user_id, g.session_hash, g.sid, g.scopes, g.nonce,
                g.auth_time, g.amr, r.expires_at
         from oidc_refresh_tokens r join oidc_grants g on g.id = r.grant_id
         where r.token_hash = $1 and r.expires_at > now() and r.revoked_at is null
           and r.used_at is null and g.revoked_at is null",
        refresh_hash,
    )
    .fetch_optional(pool)
    .await
    .context("looking up a refresh token")?;
    Ok(row.map(|r| {
        (
            Grant {
                id: r.id,
                client_id: r.client_id,
                user_id: r.user_id,
                session_hash: r.session_hash,
                sid: r.sid,
                scopes: r.scopes,
                nonce: r.nonce,
                auth_time: r.auth_time,
                amr: r.amr,
            },
            r.expires_at,
        )
    }))
}

/// Revokes one access token of the client; whether it was one.
#[tracing::instrument(skip_all)]
pub async fn revoke_access_token(
    pool: &PgPool,
    access_hash: &[u8],
    client_id: &str,
) -> anyhow::Result<bool> {
    let done = sqlx::query!(
        "update oidc_access_tokens a set revoked_at = coalesce(a.revoked_at, now())
         from oidc_grants g
         where a.token_hash = $1 and g.id = a.grant_id and g.client_id = $2",
        access_hash,
        client_id,
    )
    .execute(pool)
    .await
    .context("revoking an access token")?;
    Ok(done.rows_affected() > 0)
}

/// Revokes the whole grant a refresh token of the client belongs to; whether it was one.
#[tracing::instrument(skip_all)]
pub async fn revoke_by_refresh_token(
    pool: &PgPool,
    refresh_hash: &[u8],
    client_id: &str,
) -> anyhow::Result<bool> {
    let done = sqlx::query!(
        "update oidc_grants g set revoked_at = coalesce(g.revoked_at, now())
         from oidc_refresh_tokens r
         where r.token_hash = $1 and g.id = r.grant_id and g.client_id = $2",
        refresh_hash,
        client_id,
    )
    .execute(pool)
    .await
    .context("revoking a grant by its refresh token")?;
    Ok(done.rows_affected() > 0)
}

/// Revokes one grant (its session ended, or theft was detected).
#[tracing::instrument(skip(pool))]
pub async fn revoke(pool: &PgPool, grant_id: Uuid) -> anyhow::Result<()> {
    sqlx::query!(
        "update oidc_grants set revoked_at = now() where id = $1 and revoked_at is null",
        grant_id,
    )
    .execute(pool)
    .await
    .context("revoking a grant")?;
    Ok(())
}

/// Revokes every grant of the account for the client ("Remove" under Connected
/// applications); how many live ones there were.
#[tracing::instrument(skip(conn))]
pub async fn revoke_for_user_and_client(
    conn: &mut sqlx::PgConnection,
    user_id: Uuid,
    client_id: &str,
) -> anyhow::Result<u64> {
    let done = sqlx::query!(
        "update oidc_grants set revoked_at = now()
         where user_id = $1 and client_id = $2 and revoked_at is null",
        user_id,
        client_id,
    )
    .execute(conn)
    .await
    .context("revoking an account's grants for a client")?;
    Ok(done.rows_affected())
}

/// What a refresh did.
#[derive(Debug)]
pub enum Refreshed {
    /// New tokens were stored for this grant.
    Issued(Grant),
    /// Unknown, expired, revoked, another client's, or a sibling that lost the race.
    Refused,
    /// Presented again after its successor was used, or after the grace window: the whole
    /// grant is now revoked.
    Theft,
}

/// Rotates a refresh token. The grant's row is locked for the decision, so refreshes of
/// one grant run one after another:
/// - an unused token is marked used, its unused siblings end, and it gets a child;
/// - a token used less than `grace_secs` ago whose children are all unused gets another
///   child (a sibling of the first): racing workers of one application stay signed in;
///   the first sibling used ends the others, so one lineage continues;
/// - a token used longer ago, or one whose child was used, is theft: the grant dies.
#[tracing::instrument(skip_all, fields(client_id))]
#[allow(clippy::too_many_arguments)]
pub async fn refresh(
    pool: &PgPool,
    refresh_hash: &[u8],
    client_id: &str,
    new_refresh_hash: &[u8],
    refresh_ttl_secs: f64,
    access_hash: &[u8],
    access_ttl_secs: f64,
    grace_secs: f64,
) -> anyhow::Result<Refreshed> {
    let mut tx = pool.begin().await.context("starting a refresh")?;
    let Some(grant_id) = sqlx::query_scalar!(
        "select grant_id from oidc_refresh_tokens where token_hash = $1",
        refresh_hash,
    )
    .fetch_optional(&mut *tx)
    .await
    .context("looking up a refresh token")?
    else {
        return Ok(Refreshed::Refused);
    };
    let Some(grant) = sqlx::query_as!(
        Grant,
        "select id, client_id, user_id, session_hash, sid, scopes, nonce, auth_time, amr
         from oidc_grants where id = $1 and revoked_at is null
         for update",
        grant_id,
    )
    .fetch_optional(&mut *tx)
    .await
    .context("locking a grant")?
    else {
        return Ok(Refreshed::Refused);
    };
    if grant.client_id != client_id {
        return Ok(Refreshed::Refused);
    }
    let token = sqlx::query!(
        r#"select t.used_at is not null as "used!",
                  t.revoked_at is not null as "revoked!",
                  t.expires_at <= now() as "expired!",
                  coalesce(t.used_at > now() - make_interval(secs => $2), false) as "in_grace!",
                  exists (select 1 from oidc_refresh_tokens c
                          where c.parent_hash = t.token_hash and c.used_at is not null) as "child_used!",
                  t.parent_hash is not null and exists (
                      select 1 from oidc_refresh_tokens s
                      where s.parent_hash = t.parent_hash and s.token_hash <> t.token_hash
                        and s.used_at is not null) as "sibling_used!"
           from oidc_refresh_tokens t where t.token_hash = $1"#,
        refresh_hash,
        grace_secs,
    )
    .fetch_one(&mut *tx)
    .await
    .context("reading a refresh token")?;
    if token.expired || token.revoked {
        return Ok(Refreshed::Refused);
    }
    if token.used {
        if token.child_used || !token.in_grace {
            sqlx::query!(
                "update oidc_grants set revoked_at = now() where id = $1",
                grant.id
            )
            .execute(&mut *tx)
            .await
            .context("revoking a grant after a replayed refresh token")?;
            tx.commit().await.context("committing a revocation")?;
            return Ok(Refreshed::Theft);
        }
    } else {
        if token.sibling_used {
            sqlx::query!(
                "update oidc_refresh_tokens set revoked_at = now() where token_hash = $1",
                refresh_hash,
            )
            .execute(&mut *tx)
            .await
            .context("ending a discarded refresh token")?;
            tx.commit().await.context("committing a refresh")?;
            return Ok(Refreshed::Refused);
        }
        sqlx::query!(
            "with used as (
               update oidc_refresh_tokens set used_at = now() where token_hash = $1
               returning parent_hash
             )
             update oidc_refresh_tokens s set revoked_at = now()
             from used
             where s.parent_hash = used.parent_hash and s.token_hash <> $1
               and s.used_at is null and s.revoked_at is null",
            refresh_hash,
        )
        .execute(&mut *tx)
        .await
        .context("using a refresh token")?;
    }
    sqlx::query!(
        "with r as (
           insert into oidc_refresh_tokens (token_hash, grant_id, parent_hash, expires_at)
           values ($1, $2, $3, now() + make_interval(secs => $4))
         )
         insert into oidc_access_tokens (token_hash, grant_id, expires_at)
         values ($5, $2, now() + make_interval(secs => $6))",
        new_refresh_hash,
        grant.id,
        refresh_hash,
        refresh_ttl_secs,
        access_hash,
        access_ttl_secs,
    )
    .execute(&mut *tx)
    .await
    .context("issuing refreshed tokens")?;
    tx.commit().await.context("committing a refresh")?;
    Ok(Refreshed::Issued(grant))
}

/// A connected application as Settings → Security lists it.
#[derive(Debug)]
pub struct Connected {
    pub client_id: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub since: OffsetDateTime,
}

/// The clients the account consented to, or holds a live grant of, by name.
#[tracing::instrument(skip(pool))]
pub async fn connected_for_user(pool: &PgPool, user_id: Uuid) -> anyhow::Result<Vec<Connected>> {
    sqlx::query_as!(
        Connected,
        r#"select c.id as "client_id!", c.name as "name!", k.scopes as "scopes!",
                  k.created_at as "since!"
           from oidc_consents k join oidc_clients c on c.id = k.client_id
           where k.user_id = $1
           union
           select c.id, c.name, g.scopes, min(g.created_at)
           from oidc_grants g join oidc_clients c on c.id = g.client_id
           where g.user_id = $1 and g.revoked_at is null and g.redeemed_at is not null
             and not exists (select 1 from oidc_consents k
                             where k.user_id = $1 and k.client_id = g.client_id)
           group by c.id, c.name, g.scopes
           order by 2"#,
        user_id,
    )
    .fetch_all(pool)
    .await
    .context("listing connected applications")
}

/// Deletes what no request can use any more: grants revoked a day ago (with their codes
/// and tokens), codes and access tokens expired a day ago, refresh tokens expired a day
/// ago, unanswered authorization requests, and logout deliveries settled a week ago.
/// Used refresh tokens stay while they live: a replay of one must still be recognised.
#[tracing::instrument(skip_all)]
pub async fn sweep(pool: &PgPool) -> anyhow::Result<u64> {
    // One statement: housekeeping stays one short burst beside the requests.
    let swept = sqlx::query_scalar!(
        r#"with grants as (
             delete from oidc_grants where revoked_at < now() - interval '1 day' returning 1
           ), codes as (
             delete from oidc_codes where expires_at < now() - interval '1 day' returning 1
           ), access as (
             delete from oidc_access_tokens where expires_at < now() - interval '1 day'
             returning 1
           ), refresh as (
             delete from oidc_refresh_tokens where expires_at < now() - interval '1 day'
             returning 1
           ), requests as (
             delete from oidc_requests where expires_at < now() returning 1
           ), deliveries as (
             delete from oidc_logout_outbox
             where status in ('sent', 'failed') and created_at < now() - interval '7 days'
             returning 1
           )
           select (select count(*) from grants) + (select count(*) from codes)
                + (select count(*) from access) + (select count(*) from refresh)
                + (select count(*) from requests) + (select count(*) from deliveries)
                as "swept!""#
    )
    .fetch_one(pool)
    .await
    .context("deleting dead OpenID grants, codes, tokens, requests and deliveries")?;
    Ok(u64::try_from(swept).unwrap_or(0))
}
