//! The session cookie's host-only companion, when `LATCHKEY_COOKIE_DOMAIN` shares the
//! session cookie with sibling hosts. Any of those hosts can set ("toss") a cookie of the
//! same name for the parent domain, so a page on a sibling could swap a visitor's browser
//! into the attacker's account on latchkey's own pages. The companion cookie is host-only
//! (only latchkey's host can set it) and holds a MAC of the session cookie's value:
//! latchkey's pages ignore a session cookie without its companion, so a tossed one is
//! never used there. (Forward auth keeps reading the shared cookie: the protected
//! applications' hosts never see the companion.)
//!
//! Kept in its own layer, apart from the session cookie's own format: it binds whatever
//! value the session cookie has.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::AppState;

fn companion_name(state: &AppState) -> &'static str {
    if state.config.is_https() {
        "__Host-latchkey_session_bind"
    } else {
        "latchkey_session_bind"
    }
}

fn mac(state: &AppState, session_value: &str) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&state.keys.session_bind)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(session_value.as_bytes());
    mac
}

fn companion_for(state: &AppState, session_value: &str) -> String {
    URL_SAFE_NO_PAD.encode(mac(state, session_value).finalize().into_bytes())
}

fn binds(state: &AppState, session_value: &str, companion: &str) -> bool {
    URL_SAFE_NO_PAD
        .decode(companion)
        .is_ok_and(|tag| mac(state, session_value).verify_slice(&tag).is_ok())
}

/// Wraps latchkey's pages (outside the session layer). On the way in, a session cookie
/// that its companion does not bind is dropped from the request, so the session layer
/// never sees it; on the way out, every session cookie latchkey sets gets its companion.
pub async fn guard(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let session_name = state.cookie_names.session;
    let pairs: Vec<(String, String)> = request
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            Some((name.to_owned(), value.to_owned()))
        })
        .collect();
    let companion = pairs
        .iter()
        .find(|(name, _)| name == companion_name(&state))
        .map(|(_, value)| value.clone());
    let kept: Vec<&(String, String)> = pairs
        .iter()
        .filter(|(name, value)| {
            name != session_name
                || companion
                    .as_deref()
                    .is_some_and(|companion| binds(&state, value, companion))
        })
        .collect();
    if kept.len() != pairs.len() {
        tracing::info!("a session cookie without its host-only companion was ignored");
        let joined = kept
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join("; ");
        let headers = request.headers_mut();
        headers.remove(header::COOKIE);
        if let Ok(value) = HeaderValue::from_str(&joined) {
            headers.insert(header::COOKIE, value);
        }
    }

    let mut response = next.run(request).await;
    let secure = if state.config.is_https() {
        "; Secure"
    } else {
        ""
    };
    let companions: Vec<HeaderValue> = response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|set| {
            let (name, rest) = set.split_once('=')?;
            if name.trim() != session_name {
                return None;
            }
            let value = rest.split(';').next().unwrap_or_default().trim();
            let removal = value.is_empty() || set.to_ascii_lowercase().contains("max-age=0");
            let cookie = if removal {
                format!(
                    "{}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax{secure}",
                    companion_name(&state)
                )
            } else {
                format!(
                    "{}={}; Path=/; HttpOnly; SameSite=Lax{secure}",
                    companion_name(&state),
                    companion_for(&state, value)
                )
            };
            HeaderValue::from_str(&cookie).ok()
        })
        .collect();
    for companion in companions {
        response.headers_mut().append(header::SET_COOKIE, companion);
    }
    response
}
