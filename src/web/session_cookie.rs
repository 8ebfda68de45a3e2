//! The session cookie's value: the session id and a MAC over it, `<id>.<mac>`. This is
//! the one place a cookie becomes a session id ([`open`]): the pages (through
//! [`translate`], in front of the session layer), the CSRF check and forward auth all
//! ask it, so a forged, altered or truncated cookie, one signed under another key, or an
//! unsigned one from before signing, is refused here, before any database read.
//!
//! The MAC is HMAC-SHA256 under the session-cookie key derived from
//! `LATCHKEY_SECRET_KEY` (`Keys::session`), compared in constant time.

use axum::extract::{Request, State};
use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use axum_extra::extract::cookie::CookieJar;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tower_sessions::session::Id;

use super::AppState;

/// Characters of an id as tower-sessions writes it: 16 bytes, base64url without padding.
const ID_CHARS: usize = 22;
/// Characters of the MAC: 32 bytes, base64url without padding.
const MAC_CHARS: usize = 43;
/// `<id>.<mac>`.
const VALUE_CHARS: usize = ID_CHARS + 1 + MAC_CHARS;

fn mac(key: &[u8; 32], id: &str) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(id.as_bytes());
    mac
}

/// The cookie value for session `id`.
pub fn seal(key: &[u8; 32], id: &Id) -> String {
    let id = id.to_string();
    let tag = mac(key, &id).finalize().into_bytes();
    format!("{id}.{}", URL_SAFE_NO_PAD.encode(tag))
}

/// The session id a cookie value carries, when its MAC is ours; `None` for anything
/// else. Costs one HMAC at most, never a database read.
pub fn open(key: &[u8; 32], value: &str) -> Option<Id> {
    if value.len() != VALUE_CHARS {
        return None;
    }
    let (id, tag) = value.split_at_checked(ID_CHARS)?;
    let tag = tag.strip_prefix('.')?;
    let mut decoded = [0u8; 32];
    match URL_SAFE_NO_PAD.decode_slice(tag, &mut decoded) {
        Ok(32) => {}
        _ => return None,
    }
    // Constant time (`hmac` compares through `subtle`).
    mac(key, id).verify_slice(&decoded).ok()?;
    // Only ids this service issued carry a MAC, and they always parse; the id is read
    // after the check so an unsigned value costs the same as a badly signed one.
    id.parse::<Id>().ok()
}

/// The session id a request's session cookie carries, when its MAC is ours (for what
/// reads the cookie outside the session layer: forward auth, the CSRF check).
pub fn id_in(state: &AppState, headers: &HeaderMap) -> Option<Id> {
    CookieJar::from_headers(headers)
        .get(state.cookie_names.session)
        .and_then(|cookie| open(&state.keys.session, cookie.value()))
}

/// Rewrites the request's `Cookie` headers so the session layer behind sees a bare id
/// for a cookie whose MAC is ours and no session cookie at all otherwise; and signs the
/// session id in the answer's `Set-Cookie` (a removal, with its empty value, passes as
/// it is). Nothing else about the cookies changes.
pub async fn translate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let name = state.cookie_names.session;
    let key = &state.keys.session;
    open_request_cookies(req.headers_mut(), name, key);
    let mut response = next.run(req).await;
    seal_response_cookies(response.headers_mut(), name, key);
    response
}

fn open_request_cookies(headers: &mut HeaderMap, name: &str, key: &[u8; 32]) {
    let rewritten: Vec<HeaderValue> = headers
        .get_all(COOKIE)
        .iter()
        // A header that is not text is skipped by the cookie parser anyway.
        .filter_map(|value| value.to_str().ok())
        .filter_map(|value| {
            let pairs: Vec<String> = value
                .split(';')
                .map(str::trim)
                .filter(|pair| !pair.is_empty())
                .filter_map(|pair| match pair.split_once('=') {
                    Some((n, v)) if n.trim() == name => {
                        open(key, v.trim()).map(|id| format!("{name}={id}"))
                    }
                    _ => Some(pair.to_owned()),
                })
                .collect();
            if pairs.is_empty() {
                return None;
            }
            HeaderValue::from_str(&pairs.join("; ")).ok()
        })
        .collect();
    headers.remove(COOKIE);
    for value in rewritten {
        headers.append(COOKIE, value);
    }
}

fn seal_response_cookies(headers: &mut HeaderMap, name: &str, key: &[u8; 32]) {
    let prefix = format!("{name}=");
    let mut sealed = Vec::new();
    let mut touched = false;
    for value in headers.get_all(SET_COOKIE) {
        let Some(rest) = value.to_str().ok().and_then(|v| v.strip_prefix(&prefix)) else {
            sealed.push(value.clone());
            continue;
        };
        touched = true;
        let (id, attributes) = rest.split_at(rest.find(';').unwrap_or(rest.len()));
        if id.is_empty() {
            // The removal cookie.
            sealed.push(value.clone());
            continue;
        }
        // The session layer writes nothing but ids here; anything else is dropped rather
        // than sent unsigned.
        let Ok(id) = id.parse::<Id>() else {
            tracing::error!("the session layer set a session cookie that is not an id");
            continue;
        };
        match HeaderValue::from_str(&format!("{prefix}{}{attributes}", seal(key, &id))) {
            Ok(value) => sealed.push(value),
            Err(_) => tracing::error!("a signed session cookie is not a header value"),
        }
    }
    if touched {
        headers.remove(SET_COOKIE);
        for value in sealed {
            headers.append(SET_COOKIE, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7u8; 32];

    #[test]
    fn a_sealed_id_opens_to_itself_and_only_under_its_key() {
        let id = Id::default();
        let value = seal(&KEY, &id);
        assert_eq!(value.len(), VALUE_CHARS);
        assert_eq!(open(&KEY, &value), Some(id));
        assert_eq!(open(&[8u8; 32], &value), None, "another key");
    }

    #[test]
    fn anything_but_a_sealed_id_is_refused() {
        let id = Id::default();
        let value = seal(&KEY, &id);
        let mut flipped_id = value.clone().into_bytes();
        flipped_id[3] = if flipped_id[3] == b'A' { b'B' } else { b'A' };
        let mut flipped_mac = value.clone().into_bytes();
        let last = flipped_mac.len() - 5;
        flipped_mac[last] = if flipped_mac[last] == b'A' {
            b'B'
        } else {
            b'A'
        };
        let other = seal(&KEY, &Id::default());
        let spliced = format!("{}{}", &value[..ID_CHARS], &other[ID_CHARS..]);
        for refused in [
            String::new(),
            id.to_string(),                                // unsigned (before signing)
            value[..value.len() - 1].to_owned(),           // truncated
            format!("{value}A"),                           // extended
            String::from_utf8(flipped_id).expect("ascii"), // altered id
            String::from_utf8(flipped_mac).expect("ascii"), // altered MAC
            spliced,                                       // another session's MAC
            value.replace('.', ":"),
            format!("{}.{}", id, "=".repeat(MAC_CHARS)),
            "é".repeat(VALUE_CHARS / 2),
        ] {
            assert_eq!(open(&KEY, &refused), None, "{refused:?}");
        }
    }

    #[test]
    fn the_request_keeps_other_cookies_and_only_a_valid_session_cookie() {
        let id = Id::default();
        let good = seal(&KEY, &id);
        let mut headers = HeaderMap::new();
        headers.append(
            COOKIE,
            HeaderValue::from_str(&format!("a=1; s={good}; b=2")).expect("header"),
        );
        headers.append(COOKIE, HeaderValue::from_static("s=AAAAAAAAAAAAAAAAAAAAAA"));
        open_request_cookies(&mut headers, "s", &KEY);
        let values: Vec<&str> = headers
            .get_all(COOKIE)
            .iter()
            .map(|v| v.to_str().expect("text"))
            .collect();
        assert_eq!(values, [format!("a=1; s={id}; b=2")]);
    }

    #[test]
    fn the_answer_signs_the_id_and_leaves_the_rest() {
        let id = Id::default();
        let mut headers = HeaderMap::new();
        headers.append(
            SET_COOKIE,
            HeaderValue::from_str(&format!("s={id}; HttpOnly; SameSite=Lax; Path=/"))
                .expect("header"),
        );
        headers.append(SET_COOKIE, HeaderValue::from_static("csrf=xyz; Path=/"));
        headers.append(
            SET_COOKIE,
            HeaderValue::from_static("s=; Max-Age=0; Path=/"),
        );
        seal_response_cookies(&mut headers, "s", &KEY);
        let values: Vec<&str> = headers
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().expect("text"))
            .collect();
        assert_eq!(
            values,
            [
                format!("s={}; HttpOnly; SameSite=Lax; Path=/", seal(&KEY, &id)).as_str(),
                "csrf=xyz; Path=/",
                "s=; Max-Age=0; Path=/",
            ]
        );
    }
}
