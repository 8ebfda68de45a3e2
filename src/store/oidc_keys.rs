//! The OpenID provider's signing keys: private halves sealed, public halves as JWKs.

use anyhow::Context as _;
use sqlx::{PgConnection, PgPool};

#[derive(Clone)]
pub struct StoredKey {
    pub kid: String,
    pub alg: String,
    pub private_enc: Vec<u8>,
    pub public_jwk: serde_json::Value,
    /// Still the one that signs for its algorithm.
    pub active: bool,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

/// Stores a key as the active one for its algorithm unless another instance stored one
/// first; whether this one was stored.
#[tracing::instrument(skip(pool, private_enc, public_jwk))]
pub async fn insert_first(
    pool: &PgPool,
    kid: &str,
    alg: &str,
    private_enc: &[u8],
    public_jwk: &serde_json::Value,
) -> anyhow::Result<bool> {
    let done = sqlx::query!(
        "insert into oidc_signing_keys (kid, alg, private_enc, public_jwk)
         values ($1, $2, $3, $4)
         on conflict (alg) where retired_at is null do nothing",
        kid,
        alg,
        private_enc,
        public_jwk,
    )
    .execute(pool)
    .await
    .context("storing a signing key")?;
    Ok(done.rows_affected() == 1)
}

/// Retires the algorithm's active key and stores `kid` as the active one, in the
/// caller's transaction.
#[tracing::instrument(skip(conn, private_enc, public_jwk))]
pub async fn replace_active(
    conn: &mut PgConnection,
    kid: &str,
    alg: &str,
    private_enc: &[u8],
    public_jwk: &serde_json::Value,
) -> anyhow::Result<()> {
    sqlx::query!(
        "update oidc_signing_keys set retired_at = now() where alg = $1 and retired_at is null",
        alg,
    )
    .execute(&mut *conn)
    .await
    .context("retiring a signing key")?;
    sqlx::query!(
        "insert into oidc_signing_keys (kid, alg, private_enc, public_jwk)
         values ($1, $2, $3, $4)",
        kid,
        alg,
        private_enc,
        public_jwk,
    )
    .execute(&mut *conn)
    .await
    .context("storing a signing key")?;
    Ok(())
}

/// The active keys and those retired less than `keep_secs` ago (tokens they signed may
/// still be checked), newest first.
#[tracing::instrument(skip(pool))]
pub async fn published(pool: &PgPool, keep_secs: f64) -> anyhow::Result<Vec<StoredKey>> {
    sqlx::query_as!(
        StoredKey,
        r#"select kid, alg, private_enc, public_jwk, retired_at is null as "active!"
           from oidc_signing_keys
           where retired_at is null or retired_at > now() - make_interval(secs => $1)
           order by created_at desc"#,
        keep_secs,
    )
    .fetch_all(pool)
    .await
    .context("reading the signing keys")
}
