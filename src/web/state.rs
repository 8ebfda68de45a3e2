//! What every handler can reach: the shared state of the web layer, and the `FromRef`
//! impls that hand parts of it to handlers. `app` builds it; nothing here starts anything.

use std::sync::Arc;

use axum::extract::FromRef;
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;

use crate::auth::Accounts;
use crate::config::Config;
use crate::domain::{Destinations, TrustedProxies};
use crate::keys::Keys;

/// Cookie names: `__Host-` prefixed (Secure, whole host, path /) when served over https;
/// a session cookie on `cookie_domain` is `__Secure-` prefixed instead (`__Host-` forbids
/// a domain). The CSRF cookie is always host-only.
#[derive(Debug, Clone, Copy)]
pub struct CookieNames {
    pub session: &'static str,
    pub csrf: &'static str,
}

impl CookieNames {
    pub fn for_config(config: &Config, on_domain: bool) -> CookieNames {
        if config.is_https() {
            CookieNames {
                session: if on_domain {
                    "__Secure-latchkey_session"
                } else {
                    "__Host-latchkey_session"
                },
                csrf: "__Host-latchkey_csrf",
            }
        } else {
            CookieNames {
                session: "latchkey_session",
                csrf: "latchkey_csrf",
            }
        }
    }
}

/// What every handler can reach. Cheap to clone. Handlers that need only the account
/// rules take `State<Accounts>` (through [`FromRef`]).
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    /// The same pool as `accounts.pool`, for what the web layer asks itself (readiness).
    pub pool: PgPool,
    /// The same keys as `accounts.keys` (the web layer signs CSRF tokens with one).
    pub keys: Arc<Keys>,
    /// The account rules and what they work with.
    pub accounts: Accounts,
    pub metrics: PrometheusHandle,
    pub cookie_names: CookieNames,
    /// The session cookie's `Domain` (checked against `public_url` at start-up).
    pub cookie_domain: Option<String>,
    /// Where `next` may lead, and the hosts forward auth answers for.
    pub destinations: Arc<Destinations>,
    /// Peers whose forwarding headers are believed.
    pub trusted_proxies: Arc<TrustedProxies>,
    /// The passkeys' relying party; `None` when passkeys are off (an IP-address host).
    pub passkeys: Option<Arc<crate::passkeys::Passkeys>>,
    /// Sign in with latchkey: the OpenID provider's rules.
    pub oidc: crate::oidc::Provider,
}

impl FromRef<AppState> for crate::oidc::Provider {
    fn from_ref(state: &AppState) -> crate::oidc::Provider {
        state.oidc.clone()
    }
}

impl FromRef<AppState> for Accounts {
    fn from_ref(state: &AppState) -> Accounts {
        state.accounts.clone()
    }
}
