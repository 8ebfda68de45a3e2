//! The OpenID provider's clients, registered by the operator.

use anyhow::Context as _;
use sqlx::PgPool;
use time::OffsetDateTime;

/// A registered client. The secret is only ever held as its digest.
#[derive(Debug, Clone)]
pub struct Client {
    pub id: String,
    pub name: String,
    pub secret_hash: Option<Vec<u8>>,
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
    pub backchannel_logout_uri: Option<String>,
    pub skip_consent: bool,
    pub signing_alg: String,
    pub created_at: OffsetDateTime,
}

impl Client {
    pub fn is_public(&self) -> bool {
        self.secret_hash.is_none()
    }
}

/// What `oidc client add` stores.
#[derive(Debug)]
pub struct NewClient<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub secret_hash: Option<&'a [u8]>,
    pub redirect_uris: &'a [String],
    pub post_logout_redirect_uris: &'a [String],
    pub backchannel_logout_uri: Option<&'a str>,
    pub skip_consent: bool,
    pub signing_alg: &'a str,
}

/// Whether it was stored (`false`: the id is taken).
#[tracing::instrument(skip_all, fields(client_id = client.id))]
pub async fn insert(pool: &PgPool, client: &NewClient<'_>) -> anyhow::Result<bool> {
    let done = sqlx::query!(
        "insert into oidc_clients (id, name, secret_hash, redirect_uris,
             post_logout_redirect_uris, backchannel_logout_uri, skip_consent, signing_alg)
         values ($1, $2, $3, $4, $5, $6, $7, $8)
         on conflict (id) do nothing",
        client.id,
        client.name,
        client.secret_hash,
        client.redirect_uris,
        client.post_logout_redirect_uris,
        client.backchannel_logout_uri,
        client.skip_consent,
        client.signing_alg,
    )
    .execute(pool)
    .await
    .context("inserting an OpenID client")?;
    Ok(done.rows_affected() == 1)
}

#[tracing::instrument(skip(pool))]
pub async fn find(pool: &PgPool, id: &str) -> anyhow::Result<Option<Client>> {
    sqlx::query_as!(
        Client,
        "select id, name, secret_hash, redirect_uris, post_logout_redirect_uris,
                backchannel_logout_uri, skip_consent, signing_alg, created_at
         from oidc_clients where id = $1",
        id,
    )
    .fetch_optional(pool)
    .await
    .context("looking up an OpenID client")
}

/// A client presenting its credentials: the client, and until when its failed
/// authentications hold it off (the sign-in throttle's row under `throttle_key`), in one
/// statement, since every token request asks both.
#[tracing::instrument(skip(pool))]
pub async fn find_for_authentication(
    pool: &PgPool,
    id: &str,
    throttle_key: &str,
) -> anyhow::Result<Option<(Client, Option<OffsetDateTime>)>> {
    let row = sqlx::query!(
        r#"select id, name, secret_hash, redirect_uris, post_logout_redirect_uris,
                backchannel_logout_uri, skip_consent, signing_alg, created_at,
                (select blocked_until from login_throttle
                 where email_key = $2 and blocked_until > now()) as blocked_until
         from oidc_clients where id = $1"#,
        id,
        throttle_key,
    )
    .fetch_optional(pool)
    .await
    .context("looking up an OpenID client")?;
    Ok(row.map(|row| {
        (
            Client {
                id: row.id,
                name: row.name,
                secret_hash: row.secret_hash,
                redirect_uris: row.redirect_uris,
                post_logout_redirect_uris: row.post_logout_redirect_uris,
                backchannel_logout_uri: row.backchannel_logout_uri,
                skip_consent: row.skip_consent,
                signing_alg: row.signing_alg,
                created_at: row.created_at,
            },
            row.blocked_until,
        )
    }))
}

#[tracing::instrument(skip(pool))]
pub async fn list(pool: &PgPool) -> anyhow::Result<Vec<Client>> {
    sqlx::query_as!(
        Client,
        "select id, name, secret_hash, redirect_uris, post_logout_redirect_uris,
                backchannel_logout_uri, skip_consent, signing_alg, created_at
         from oidc_clients order by id",
    )
    .fetch_all(pool)
    .await
    .context("listing OpenID clients")
}

/// Removes the client; its grants, codes and tokens go with it (cascade).
#[tracing::instrument(skip(pool))]
pub async fn delete(pool: &PgPool, id: &str) -> anyhow::Result<bool> {
    let done = sqlx::query!("delete from oidc_clients where id = $1", id)
        .execute(pool)
        .await
        .context("deleting an OpenID client")?;
    Ok(done.rows_affected() == 1)
}

/// Replaces a confidential client's secret digest; `false` when there is no such
/// confidential client.
#[tracing::instrument(skip(pool, secret_hash))]
pub async fn set_secret(pool: &PgPool, id: &str, secret_hash: &[u8]) -> anyhow::Result<bool> {
    let done = sqlx::query!(
        "update oidc_clients set secret_hash = $2, secret_rotated_at = now()
         where id = $1 and secret_hash is not null",
        id,
        secret_hash,
    )
    .execute(pool)
    .await
    .context("replacing an OpenID client's secret")?;
    Ok(done.rows_affected() == 1)
}
