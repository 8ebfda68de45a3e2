//! CSRF defence for every POST: a signed double-submit token (no session row needed for
//! anonymous pages), bound to the session when there is one, plus refusal of requests that
//! say they come from another site.

use axum::body::{Body, to_bytes};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use rand::rngs::OsRng;
use sha2::Sha256;
use tower_sessions::session::Id;

use super::AppState;
use super::{AppError, AuthSession};
use super::{session_cookie, session_store};

/// Largest request body read; larger ones answer 413.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// The token to put in this page's forms (`csrf_token`): for this browser's CSRF cookie
/// and the session this request leaves it with. Extract it after anything that may end
/// the session (an `Option<CurrentUser>` flushes a dead one), so the page's forms carry a
/// token for the cookies the browser will send with them.
#[derive(Debug, Clone)]
pub struct CsrfToken(pub String);

/// What [`protect`] hands the pages: the key and this browser's CSRF nonce.
#[derive(Clone)]
struct CsrfNonce {
    key: [u8; 32],
    nonce: Vec<u8>,
}

/// HMAC over the nonce (always 32 bytes) and, when the browser holds a session cookie,
/// the digest the session store keys that session by: a token leaked from one session, or
/// loaded before signing in, is worth nothing with another session.
fn sign(key: &[u8; 32], nonce: &[u8], session: Option<&Id>) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(nonce);
    if let Some(id) = session {
        mac.update(&session_store::id_hash(id));
    }
    mac
}

fn token_for(key: &[u8; 32], nonce: &[u8], session: Option<&Id>) -> String {
    URL_SAFE_NO_PAD.encode(sign(key, nonce, session).finalize().into_bytes())
}

fn token_matches(key: &[u8; 32], nonce: &[u8], session: Option<&Id>, token: &str) -> bool {
    match URL_SAFE_NO_PAD.decode(token.as_bytes()) {
        Ok(bytes) => sign(key, nonce, session).verify_slice(&bytes).is_ok(),
        Err(_) => false,
    }
}

/// The session id the request's session cookie names, read from the headers because this
/// check runs outside the session layer. A cookie that is not a session id names none
/// (the session layer ignores it too).
fn session_in(state: &AppState, headers: &HeaderMap) -> Option<Id> {
    session_cookie::id_in(state, headers)
}

impl FromRequestParts<AppState> for CsrfToken {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Some(CsrfNonce { key, nonce }) = parts.extensions.get::<CsrfNonce>().cloned() else {
            return Err(anyhow::anyhow!("csrf layer missing").into());
        };
        let session =
            <AuthSession as FromRequestParts<AppState>>::from_request_parts(parts, state).await?;
        // A cookie naming a session that no longer exists is removed by this answer, so
        // the next POST comes without it: the token must not be bound to it.
        let id = session.cookie_id().await;
        Ok(CsrfToken(token_for(&key, &nonce, id.as_ref())))
    }
}

/// The origin a browser sends for a page of this service is `public_url`'s scheme, host
/// and port; the request's own `Host` header proves nothing (anyone can set it).
fn origin_allowed(state: &AppState, origin: &str) -> bool {
    // `Origin: null` (sent with Referrer-Policy: no-referrer) names no site: the token
    // and Sec-Fetch-Site decide.
    if origin == "null" {
        return true;
    }
    url::Url::parse(origin).is_ok_and(|url| url.origin() == state.config.public_url.origin())
}

pub async fn protect(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let cookie_name = state.cookie_names.csrf;
    let jar = CookieJar::from_headers(req.headers());
    let existing = jar
        .get(cookie_name)
        .and_then(|c| URL_SAFE_NO_PAD.decode(c.value()).ok())
        .filter(|n| n.len() == 32);
    let (nonce, fresh) = match existing {
        Some(nonce) => (nonce, false),
        None => {
            let mut nonce = vec![0u8; 32];
            OsRng.fill_bytes(&mut nonce);
            (nonce, true)
        }
    };
    let key = state.keys.csrf;

    let req = if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        req
    } else {
        match check_post(&state, req, &key, (!fresh).then_some(&nonce[..])).await {
            Ok(req) => req,
            Err(response) => return response,
        }
    };

    let mut req = req;
    req.extensions_mut().insert(CsrfNonce {
        key,
        nonce: nonce.clone(),
    });
    let mut response = next.run(req).await;
    if fresh {
        let cookie = Cookie::build((cookie_name, URL_SAFE_NO_PAD.encode(&nonce)))
            .path("/")
            .http_only(true)
            .secure(state.config.is_https())
            .same_site(SameSite::Lax)
            .build();
        if let Ok(value) = cookie.encoded().to_string().parse() {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}

/// Reads the form body once, checks where the request comes from and its token, and
/// hands the body back for the handler.
async fn check_post(
    state: &AppState,
    req: Request,
    key: &[u8; 32],
    nonce: Option<&[u8]>,
) -> Result<Request, Response> {
    let headers = req.headers();
    if let Some(origin) = headers.get(header::ORIGIN) {
        let allowed = origin.to_str().is_ok_and(|o| origin_allowed(state, o));
        if !allowed {
            return Err(AppError::Forbidden("cross-origin request").into_response());
        }
    }
    if headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"))
    {
        return Err(AppError::Forbidden("cross-site request").into_response());
    }
    let session = session_in(state, headers);
    let (parts, body) = req.into_parts();
    let bytes = match to_bytes(body, MAX_BODY_BYTES).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return Err((StatusCode::PAYLOAD_TOO_LARGE, "Request body too large").into_response());
        }
    };
    let Some(nonce) = nonce else {
        return Err(AppError::Forbidden("no CSRF cookie").into_response());
    };
    let token = url::form_urlencoded::parse(&bytes)
        .find(|(name, _)| name == "csrf_token")
        .map(|(_, value)| value.into_owned());
    if !token.is_some_and(|t| token_matches(key, nonce, session.as_ref(), &t)) {
        return Err(AppError::Forbidden("missing or wrong CSRF token").into_response());
    }
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_verifies_only_for_its_nonce_and_key() {
        let key = [7u8; 32];
        let token = token_for(&key, b"nonce-a", None);
        assert!(token_matches(&key, b"nonce-a", None, &token));
        assert!(!token_matches(&key, b"nonce-b", None, &token));
        assert!(!token_matches(&[8u8; 32], b"nonce-a", None, &token));
        assert!(!token_matches(&key, b"nonce-a", None, "not base64 !"));
        assert!(!token_matches(&key, b"nonce-a", None, ""));
    }

    #[test]
    fn a_token_verifies_only_with_the_session_it_was_made_for() {
        let key = [7u8; 32];
        let (one, two) = (Id(1), Id(2));
        let token = token_for(&key, b"nonce-a", Some(&one));
        assert!(token_matches(&key, b"nonce-a", Some(&one), &token));
        assert!(!token_matches(&key, b"nonce-a", Some(&two), &token));
        assert!(!token_matches(&key, b"nonce-a", None, &token));
        let anonymous = token_for(&key, b"nonce-a", None);
        assert!(!token_matches(&key, b"nonce-a", Some(&one), &anonymous));
    }
}
