//! The device cookie: a long-lived, signed, host-only cookie naming this browser, so a
//! sign-in from a browser an account has not used before can be told to its owner
//! (`auth::devices`). Its own cookie, apart from the session cookie and whatever format
//! that has.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use axum_extra::extract::cookie::CookieJar;
use uuid::Uuid;

use super::AppState;
use crate::auth::{Origin, devices};

/// 400 days, the longest lifetime browsers keep a cookie for.
const MAX_AGE_SECS: u64 = 400 * 24 * 60 * 60;

fn cookie_name(state: &AppState) -> &'static str {
    if state.config.is_https() {
        "__Host-latchkey_device"
    } else {
        "latchkey_device"
    }
}

/// The device cookie this request carried, unchecked (`auth::devices` checks it).
pub struct PresentedDevice(Option<String>);

impl FromRequestParts<AppState> for PresentedDevice {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(PresentedDevice(
            CookieJar::from_headers(&parts.headers)
                .get(cookie_name(state))
                .map(|c| c.value().to_owned()),
        ))
    }
}

impl PresentedDevice {
    /// The cookie's value as presented.
    pub fn value(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

/// `response` with the device cookie set to `value`, when there is one (a password
/// sign-in noted its device in `auth::sign_in`).
pub fn with_cookie(state: &AppState, response: Response, value: Option<&str>) -> Response {
    match value {
        Some(value) => set_cookie(state, response, value),
        None => response,
    }
}

fn set_cookie(state: &AppState, mut response: Response, value: &str) -> Response {
    let secure = if state.config.is_https() {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{}={value}; Path=/; Max-Age={MAX_AGE_SECS}; HttpOnly; SameSite=Lax{secure}",
        cookie_name(state)
    );
    if let Ok(cookie) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// Call where a sign-in completes, with the response that completes it: mails the owner
/// when this browser is new to the account, and sets the device cookie. A failure here
/// is logged and never undoes the sign-in.
pub async fn signed_in(
    state: &AppState,
    presented: PresentedDevice,
    user_id: Uuid,
    email: &str,
    origin: &Origin,
    response: Response,
) -> Response {
    match devices::note_sign_in(
        &state.accounts,
        user_id,
        email,
        presented.0.as_deref(),
        origin,
    )
    .await
    {
        Ok(value) => with_cookie(state, response, value.as_deref()),
        Err(err) => {
            tracing::error!(
                error = format!("{err:#}"),
                "noting the sign-in's device failed"
            );
            response
        }
    }
}

/// Call where a browser has just proven the account's mailbox (a completed reset, a
/// confirmed sign-up): remembers it, so the sign-in that follows mails nothing.
pub async fn proved_mailbox(
    state: &AppState,
    presented: PresentedDevice,
    user_id: Uuid,
    response: Response,
) -> Response {
    match devices::remember(&state.accounts, user_id, presented.0.as_deref()).await {
        Ok(value) => with_cookie(state, response, value.as_deref()),
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "remembering a device failed");
            response
        }
    }
}
