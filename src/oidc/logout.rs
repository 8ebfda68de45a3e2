//! Logout: RP-initiated logout's rules (`end_session_endpoint`), and the back-channel
//! logout worker, which posts a signed `logout_token` to each client that held tokens
//! from a session that ended. Deliveries are queued in Postgres by the trigger that ends
//! the session's grants (whatever ended the session), so none is lost; each is retried
//! with growing delays until the client answers 2xx.

use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Opaque, Provider, SigningAlg, clients, sid_of, unix};
use crate::store::oidc_clients;
use crate::store::oidc_logout::{self, DueLogout};

/// Where a logout goes after latchkey's session is signed out.
#[derive(Debug, Clone)]
pub struct LogoutTarget {
    pub client_id: String,
    pub client_name: String,
    /// The registered `post_logout_redirect_uri` with `state`, when one was asked for.
    pub redirect: Option<String>,
}

/// What the end-session endpoint does.
#[derive(Debug)]
pub enum EndSession {
    /// The hint names this browser's session (or no one is signed in): sign out, go on.
    SignOut(Option<LogoutTarget>),
    /// Ask the person first: the hint is missing or names another session.
    Confirm(Option<LogoutTarget>),
    /// Refused with a page (400): a bad hint or an unregistered redirect.
    Page(&'static str),
}

/// The parameters of an end-session request.
#[derive(Debug, Default)]
pub struct EndSessionRequest<'a> {
    pub id_token_hint: Option<&'a str>,
    pub client_id: Option<&'a str>,
    pub post_logout_redirect_uri: Option<&'a str>,
    pub state: Option<&'a str>,
}

/// The registered post-logout redirect for `client_id`, with `state`.
pub async fn target(
    provider: &Provider,
    client_id: &str,
    redirect: Option<&str>,
    state: Option<&str>,
) -> anyhow::Result<Result<LogoutTarget, &'static str>> {
    let client = if clients::valid_id(client_id) {
        oidc_clients::find(&provider.accounts.pool, client_id).await?
    } else {
        None
    };
    let Some(client) = client else {
        return Ok(Err("The application is not registered with latchkey."));
    };
    let redirect = match redirect {
        None => None,
        Some(given) => match clients::registered(&client.post_logout_redirect_uris, given) {
            None => {
                return Ok(Err(
                    "The application asked to return to an address that is not registered for it.",
                ));
            }
            Some(uri) => Some(match (url::Url::parse(uri), state) {
                (Ok(mut url), Some(state)) => {
                    url.query_pairs_mut().append_pair("state", state);
                    url.to_string()
                }
                _ => uri.to_owned(),
            }),
        },
    };
    Ok(Ok(LogoutTarget {
        client_id: client.id,
        client_name: client.name,
        redirect,
    }))
}

/// Decides an end-session request for the browser's session (`session_hash`, when
/// signed in).
pub async fn end_session(
    provider: &Provider,
    request: &EndSessionRequest<'_>,
    session_hash: Option<&[u8]>,
) -> anyhow::Result<EndSession> {
    let hint = match request.id_token_hint {
        None => None,
        Some(token) => match provider.signer.verify_own(token).await {
            Some(claims) if claims["iss"] == provider.settings.issuer.as_str() => Some(claims),
            _ => {
                return Ok(EndSession::Page(
                    "The application's logout request is not valid.",
                ));
            }
        },
    };
    let hinted_client = hint
        .as_ref()
        .and_then(|claims| claims["aud"].as_str().map(str::to_owned));
    if let (Some(hinted), Some(given)) = (&hinted_client, request.client_id)
        && hinted != given
    {
        return Ok(EndSession::Page(
            "The application's logout request is not valid.",
        ));
    }
    let client_id = hinted_client.as_deref().or(request.client_id);
    let target = match client_id {
        Some(id) => match target(
            provider,
            id,
            request.post_logout_redirect_uri,
            request.state,
        )
        .await?
        {
            Ok(target) => Some(target),
            Err(why) => return Ok(EndSession::Page(why)),
        },
        None if request.post_logout_redirect_uri.is_some() => {
            return Ok(EndSession::Page(
                "The application's logout request does not say which application it is.",
            ));
        }
        None => None,
    };
    let Some(session_hash) = session_hash else {
        return Ok(EndSession::SignOut(target));
    };
    let matches = hint
        .as_ref()
        .is_some_and(|claims| claims["sid"].as_str() == Some(sid_of(session_hash).as_str()));
    Ok(if matches {
        EndSession::SignOut(target)
    } else {
        EndSession::Confirm(target)
    })
}

/// After this many failed attempts a delivery is given up (about a day of retrying).
const MAX_ATTEMPTS: i32 = 30;
const POLL_INTERVAL: Duration = Duration::from_secs(1);
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// 1 s, 2 s, 4 s … capped at one hour.
fn retry_delay(failed_attempts: i32) -> Duration {
    let doublings = u32::try_from(failed_attempts.saturating_sub(1))
        .unwrap_or(0)
        .min(12);
    Duration::from_secs(1 << doublings).min(Duration::from_secs(3600))
}

/// Posts one due logout token; `None` when nothing is due.
async fn deliver_next(provider: &Provider, http: &reqwest::Client) -> anyhow::Result<Option<bool>> {
    let mut tx = provider
        .accounts
        .pool
        .begin()
        .await
        .context("starting a logout delivery")?;
    let Some(due) = oidc_logout::claim_due(&mut tx).await? else {
        return Ok(None);
    };
    let attempts = due.attempts.saturating_add(1);
    let outcome = send(provider, http, &due).await;
    let sent = outcome.is_ok();
    match outcome {
        Ok(()) => oidc_logout::mark_sent(&mut tx, due.id).await?,
        Err(err) if attempts < MAX_ATTEMPTS => {
            let delay = retry_delay(attempts);
            tracing::warn!(
                delivery_id = due.id,
                client_id = %due.client_id,
                attempts,
                retry_in = ?delay,
                error = format!("{err:#}"),
                "back-channel logout failed, will retry"
            );
            oidc_logout::schedule_retry(
                &mut tx,
                due.id,
                attempts,
                &format!("{err:#}"),
                delay.as_secs_f64(),
            )
            .await?;
        }
        Err(err) => {
            tracing::error!(
                delivery_id = due.id,
                client_id = %due.client_id,
                attempts,
                error = format!("{err:#}"),
                "back-channel logout failed for good"
            );
            oidc_logout::mark_failed(&mut tx, due.id, attempts, &format!("{err:#}")).await?;
        }
    }
    tx.commit().await.context("recording a logout delivery")?;
    if sent {
        tracing::info!(delivery_id = due.id, client_id = %due.client_id, "back-channel logout delivered");
    }
    Ok(Some(sent))
}

/// The logout token (Back-Channel Logout 1.0, 2.4): no nonce, the session's `sid`.
async fn logout_token(provider: &Provider, due: &DueLogout) -> anyhow::Result<String> {
    let now = unix(time::OffsetDateTime::now_utc());
    let claims = serde_json::json!({
        "iss": provider.settings.issuer,
        "aud": due.client_id,
        "iat": now,
        "exp": now + 120,
        "jti": Opaque::generate().expose(),
        "sub": due.user_id.to_string(),
        "sid": due.sid,
        "events": { "http://schemas.openid.net/event/backchannel-logout": {} },
    });
    let alg = SigningAlg::parse(&due.signing_alg).unwrap_or(SigningAlg::Rs256);
    provider.signer.sign(alg, "logout+jwt", &claims).await
}

async fn send(provider: &Provider, http: &reqwest::Client, due: &DueLogout) -> anyhow::Result<()> {
    let Some(uri) = &due.backchannel_logout_uri else {
        // The client no longer has a back-channel URI: nothing to deliver.
        return Ok(());
    };
    let token = logout_token(provider, due).await?;
    let response = http
        .post(uri)
        .form(&[("logout_token", token.as_str())])
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("posting to the client: {}", e.without_url()))?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        anyhow::bail!("the client answered {status}")
    }
}

/// Runs the delivery loop until `shutdown` turns `true`. Any number of instances may run
/// it: a delivery being sent is locked, the others skip it.
pub fn spawn_worker(provider: Provider, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let http = match reqwest::Client::builder()
            .timeout(SEND_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
        {
            Ok(http) => http,
            Err(err) => {
                tracing::error!(error = %err, "back-channel logout worker could not start");
                return;
            }
        };
        let mut errors: u32 = 0;
        loop {
            if *shutdown.borrow_and_update() {
                break;
            }
            let wait = match deliver_next(&provider, &http).await {
                Ok(Some(_)) => {
                    errors = 0;
                    continue;
                }
                Ok(None) => {
                    errors = 0;
                    POLL_INTERVAL
                }
                Err(err) => {
                    errors = errors.saturating_add(1);
                    tracing::error!(
                        error = format!("{err:#}"),
                        "back-channel logout delivery failed"
                    );
                    POLL_INTERVAL * (1 << errors.min(5))
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_double_from_one_second_and_cap_at_an_hour() {
        assert_eq!(retry_delay(1), Duration::from_secs(1));
        assert_eq!(retry_delay(2), Duration::from_secs(2));
        assert_eq!(retry_delay(5), Duration::from_secs(16));
        assert_eq!(retry_delay(29), Duration::from_secs(3600));
        assert_eq!(retry_delay(0), Duration::from_secs(1));
    }
}
