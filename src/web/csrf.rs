//! CSRF defence for every POST: a signed double-submit token (no session row needed for
//! anonymous pages), plus refusal of requests that say they come from another site.

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use rand::rngs::OsRng;
use sha2::Sha256;

use crate::app::AppState;
use crate::error::AppError;

/// Largest request body read; larger ones answer 413.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// The token to put in this page's forms (`csrf_token`).
#[derive(Debug, Clone)]
pub struct CsrfToken(pub String);

fn sign(key: &[u8; 32], nonce: &[u8]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(nonce);
    mac
}

fn token_for(key: &[u8; 32], nonce: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(sign(key, nonce).finalize().into_bytes())
}

fn token_matches(key: &[u8; 32], nonce: &[u8], token: &str) -> bool {
    match URL_SAFE_NO_PAD.decode(token.as_bytes()) {
        Ok(bytes) => sign(key, nonce).verify_slice(&bytes).is_ok(),
        Err(_) => false,
    }
}

/// The origin a browser would send for this service, e.g. `https://id.example.com`.
fn origin_allowed(state: &AppState, origin: &str, host: Option<&str>) -> bool {
    // `Origin: null` (sent with Referrer-Policy: no-referrer) names no site: the token
    // and Sec-Fetch-Site decide.
    if origin == "null" {
        return true;
    }
    let public = state.config.public_url.origin().ascii_serialization();
    if origin == public {
        return true;
    }
    let Ok(url) = url::Url::parse(origin) else {
        return false;
    };
    let origin_host = match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        _ => return false,
    };
    host.is_some_and(|h| h.eq_ignore_ascii_case(&origin_host))
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
    req.extensions_mut()
        .insert(CsrfToken(token_for(&key, &nonce)));
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
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let allowed = origin
            .to_str()
            .is_ok_and(|o| origin_allowed(state, o, host));
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
    if !token.is_some_and(|t| token_matches(key, nonce, &t)) {
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
        let token = token_for(&key, b"nonce-a");
        assert!(token_matches(&key, b"nonce-a", &token));
        assert!(!token_matches(&key, b"nonce-b", &token));
        assert!(!token_matches(&[8u8; 32], b"nonce-a", &token));
        assert!(!token_matches(&key, b"nonce-a", "not base64 !"));
        assert!(!token_matches(&key, b"nonce-a", ""));
    }
}
