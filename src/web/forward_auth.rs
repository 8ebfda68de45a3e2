//! Forward auth: the reverse proxy's question "may this request through, and as whom?"
//! (`/api/authz/auth-request` for nginx, `/api/authz/forward-auth` for Traefik and
//! Caddy), and `/api/whoami` for applications. Names follow Authelia's. These routes sit
//! outside the session layer: they read the session cookie themselves, never create or
//! save a session, and so never set a cookie.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

use super::AppError;
use super::AppState;
use super::{session_cookie, session_store};
use crate::auth::session::{Identity, authenticate};
use crate::domain::next::UrlRefused;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/authz/auth-request", get(auth_request))
        .route("/api/authz/forward-auth", get(forward_auth))
        .route("/api/whoami", get(whoami))
}

const REMOTE_USER: HeaderName = HeaderName::from_static("remote-user");
const REMOTE_EMAIL: HeaderName = HeaderName::from_static("remote-email");
const REMOTE_NAME: HeaderName = HeaderName::from_static("remote-name");
const REMOTE_GROUPS: HeaderName = HeaderName::from_static("remote-groups");

/// Why a check gets no answer about the session.
enum Refusal {
    /// The peer is not a trusted proxy (403).
    UntrustedPeer,
    /// No usable original URL (400).
    Malformed,
    /// The original URL's host is not protected by latchkey (403).
    HostNotAllowed,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, why) = match self {
            Refusal::UntrustedPeer => (
                StatusCode::FORBIDDEN,
                "forward-auth requests are answered only for trusted proxies",
            ),
            Refusal::Malformed => (StatusCode::BAD_REQUEST, "missing or malformed original URL"),
            Refusal::HostNotAllowed => (StatusCode::FORBIDDEN, "host not allowed"),
        };
        tracing::info!(
            status = status.as_u16(),
            reason = why,
            "forward-auth refused"
        );
        no_store((status, why).into_response())
    }
}

fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Only a trusted proxy may tell latchkey what the original request was.
fn require_trusted_peer(state: &AppState, peer: SocketAddr) -> Result<(), Refusal> {
    if state.trusted_proxies.contains(peer.ip()) {
        Ok(())
    } else {
        Err(Refusal::UntrustedPeer)
    }
}

/// The header's value as text, when present once and readable.
fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A header that carries (part of) a URL, with bytes beyond ASCII percent-encoded: a
/// proxy passes a request target's raw UTF-8 on, and it is still the same URL. Control
/// characters stay, for the URL check to refuse.
fn header_url(headers: &HeaderMap, name: &str) -> Option<String> {
    let bytes = headers.get(name)?.as_bytes();
    let mut url = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii() {
            url.push(char::from(b));
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    Some(url)
}

/// The original URL, checked: malformed → 400, a host latchkey does not protect → 403.
fn checked_original(state: &AppState, url: Option<String>) -> Result<String, Refusal> {
    let url = url.ok_or(Refusal::Malformed)?;
    match state.destinations.original_url(&url) {
        Ok(allowed) => Ok(allowed.serialized),
        Err(UrlRefused::Malformed) => Err(Refusal::Malformed),
        Err(UrlRefused::HostNotAllowed) => Err(Refusal::HostNotAllowed),
    }
}

/// The fully signed-in person the request's session cookie names, if any.
async fn identity(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<Arc<Identity>>, AppError> {
    // A cookie that is not one of ours is refused here, before any read.
    let Some(id) = session_cookie::id_in(state, headers) else {
        return Ok(None);
    };
    let digest = session_store::digest(&id);
    Ok(authenticate(&state.accounts, &digest).await?)
}

/// 200 with who is signed in, for the proxy to pass on.
fn signed_in(identity: &Identity) -> Response {
    let mut response = StatusCode::OK.into_response();
    let headers = response.headers_mut();
    if let Ok(user) = HeaderValue::from_str(&identity.user_id.to_string()) {
        headers.insert(REMOTE_USER, user);
    }
    // Addresses may hold UTF-8 (obs-text in a header value); never a control character.
    if let Ok(email) = HeaderValue::from_bytes(identity.email.as_str().as_bytes()) {
        // Accounts have no display name yet: the name is the address.
        headers.insert(REMOTE_NAME, email.clone());
        headers.insert(REMOTE_EMAIL, email);
    }
    // Empty until accounts have groups; always sent, so a proxy that copies it replaces
    // whatever a client put there.
    headers.insert(REMOTE_GROUPS, HeaderValue::from_static(""));
    no_store(response)
}

/// `{public_url}/sign-in?next=<original URL, percent-encoded>`.
fn sign_in_location(state: &AppState, original: &str) -> Option<HeaderValue> {
    let next: String = url::form_urlencoded::byte_serialize(original.as_bytes()).collect();
    HeaderValue::from_str(&format!(
        "{}/sign-in?next={next}",
        state.config.public_base()
    ))
    .ok()
}

/// nginx `auth_request`: `X-Original-URL`, the cookie. Not signed in: 401 with the
/// sign-in `Location` (nginx redirects with `auth_request_set` + `error_page 401`).
async fn auth_request(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    if let Err(refusal) = require_trusted_peer(&state, peer) {
        return Ok(refusal.into_response());
    }
    let original = header_url(&headers, "x-original-url");
    let original = match checked_original(&state, original) {
        Ok(original) => original,
        Err(refusal) => return Ok(refusal.into_response()),
    };
    if let Some(identity) = identity(&state, &headers).await? {
        return Ok(signed_in(&identity));
    }
    let mut response = StatusCode::UNAUTHORIZED.into_response();
    if let Some(location) = sign_in_location(&state, &original) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(no_store(response))
}

/// Traefik `forwardAuth`, Caddy `forward_auth`: `X-Forwarded-Proto`, `-Host`, `-Uri`,
/// `-Method`, the cookie. Not signed in: a page view (GET/HEAD accepting HTML) gets a
/// 302 to sign in; anything else (an API call, a form post) a 401.
async fn forward_auth(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    if let Err(refusal) = require_trusted_peer(&state, peer) {
        return Ok(refusal.into_response());
    }
    let uri = header_url(&headers, "x-forwarded-uri");
    let original = match (
        header_str(&headers, "x-forwarded-proto"),
        header_str(&headers, "x-forwarded-host"),
        uri.as_deref(),
    ) {
        (Some(proto), Some(host), Some(uri)) if uri.starts_with('/') => {
            Some(format!("{proto}://{host}{uri}"))
        }
        (Some(proto), Some(host), None) => Some(format!("{proto}://{host}/")),
        _ => None,
    };
    let original = match checked_original(&state, original) {
        Ok(original) => original,
        Err(refusal) => return Ok(refusal.into_response()),
    };
    if let Some(identity) = identity(&state, &headers).await? {
        return Ok(signed_in(&identity));
    }
    let method = header_str(&headers, "x-forwarded-method").unwrap_or("GET");
    let page_view = (method.eq_ignore_ascii_case("GET") || method.eq_ignore_ascii_case("HEAD"))
        && headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|accept| accept.to_ascii_lowercase().contains("text/html"));
    let response = match sign_in_location(&state, &original) {
        Some(location) if page_view => {
            let mut response = StatusCode::FOUND.into_response();
            response.headers_mut().insert(header::LOCATION, location);
            response
        }
        _ => StatusCode::UNAUTHORIZED.into_response(),
    };
    Ok(no_store(response))
}

#[derive(Serialize)]
struct WhoAmI {
    id: String,
    email: String,
    two_factor: bool,
    signed_in_at: Option<String>,
}

/// `GET /api/whoami`: who the cookie's session belongs to, as JSON; reads nothing but
/// the cookie (any forwarding header is ignored).
async fn whoami(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, AppError> {
    let response = match identity(&state, &headers).await? {
        Some(identity) => axum::Json(WhoAmI {
            id: identity.user_id.to_string(),
            email: identity.email.as_str().to_owned(),
            two_factor: identity.two_factor,
            signed_in_at: identity.signed_in_at.and_then(|at| {
                at.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            }),
        })
        .into_response(),
        None => (
            StatusCode::UNAUTHORIZED,
            axum::Json(serde_json::json!({ "error": "not signed in" })),
        )
            .into_response(),
    };
    Ok(no_store(response))
}
