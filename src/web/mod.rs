//! HTTP: one module per page, each with its `router()`, handlers and template; plus the
//! extractors and layers every page shares.

pub mod csrf;
pub mod dev_mailbox;
pub mod error;
pub mod forgot_password;
pub mod forward_auth;
pub mod headers;
pub mod health;
pub mod home;
pub mod oidc;
pub mod pages;
pub mod password_strength;
pub mod reset_password;
pub mod session;
pub mod session_store;
pub mod settings_security;
pub mod sign_in;
pub mod sign_up;
pub mod two_factor;

use std::net::SocketAddr;

use axum::extract::{
    ConnectInfo, FromRequest, FromRequestParts, OptionalFromRequestParts, Request, State,
};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use serde::de::DeserializeOwned;
use tower_sessions::Session;

pub use error::AppError;
pub use session::AuthSession;

use crate::app::AppState;
use crate::auth::Origin;
use crate::auth::session::{SessionHolder, current_user};
use crate::db;
use crate::store::users;

/// The client's IP and user agent, for audit events and the sessions list.
pub struct ClientOrigin(pub Origin);

impl FromRequestParts<AppState> for ClientOrigin {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip());
        // The trusted proxy appends the address it saw to the last line; a client may
        // send lines of its own before it, so only the very last hop across all lines
        // counts (the header may arrive as several lines, equivalent to one joined by commas).
        // Believed only when the peer itself is a trusted proxy, as forward auth's headers.
        let from_proxy = peer.is_some_and(|ip| state.trusted_proxies.contains(ip));
        let forwarded = if state.config.trust_forwarded_for && from_proxy {
            parts
                .headers
                .get_all("x-forwarded-for")
                .iter()
                .next_back()
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit(',').next())
                .map(|ip| ip.trim().to_owned())
                .filter(|ip| ip.parse::<std::net::IpAddr>().is_ok())
        } else {
            None
        };
        let ip = forwarded.or_else(|| peer.map(|ip| ip.to_string()));
        let user_agent = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.chars().take(300).collect());
        Ok(ClientOrigin(Origin { ip, user_agent }))
    }
}

/// The typed session of this request.
impl FromRequestParts<AppState> for AuthSession {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let session = Session::from_request_parts(parts, state)
            .await
            .map_err(|_| anyhow::anyhow!("session layer missing"))?;
        Ok(AuthSession::new(session))
    }
}

/// A signed-in person. Pages that take it send everyone else to sign in, and back after.
pub struct CurrentUser {
    pub user: users::User,
    pub session: AuthSession,
}

/// Not signed in: 303 to `/sign-in?next=<this page>`.
pub enum NotSignedIn {
    Redirect(String),
    Error(AppError),
}

impl IntoResponse for NotSignedIn {
    fn into_response(self) -> Response {
        match self {
            NotSignedIn::Redirect(to) => Redirect::to(&to).into_response(),
            NotSignedIn::Error(e) => e.into_response(),
        }
    }
}

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = NotSignedIn;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        match <CurrentUser as OptionalFromRequestParts<AppState>>::from_request_parts(parts, state)
            .await
        {
            Ok(Some(user)) => Ok(user),
            Ok(None) => {
                let here = parts
                    .uri
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_owned();
                let to = if here == "/" {
                    "/sign-in".to_owned()
                } else {
                    let next: String =
                        url::form_urlencoded::byte_serialize(here.as_bytes()).collect();
                    format!("/sign-in?next={next}")
                };
                Err(NotSignedIn::Redirect(to))
            }
            Err(e) => Err(NotSignedIn::Error(e)),
        }
    }
}

impl OptionalFromRequestParts<AppState> for CurrentUser {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Option<Self>, Self::Rejection> {
        let session =
            <AuthSession as FromRequestParts<AppState>>::from_request_parts(parts, state).await?;
        let signed_in = session.signed_in().await?;
        let digest = session.digest();
        let user = match current_user(&state.accounts, signed_in, digest.as_ref()).await? {
            SessionHolder::SignedIn(user) => user,
            SessionHolder::Nobody => return Ok(None),
            SessionHolder::Ended => {
                session.sign_out().await?;
                return Ok(None);
            }
        };
        Ok(Some(CurrentUser { user, session }))
    }
}

/// A urlencoded form; an unreadable body is a 400 page, never a 500. It needs no state, so
/// the property tests and fuzz targets decode with it exactly as the pages do.
pub struct WebForm<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequest<S> for WebForm<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Form::<T>::from_request(req, state).await {
            Ok(axum::Form(value)) => Ok(WebForm(value)),
            Err(rejection) => Err(AppError::BadRequest(rejection.body_text())),
        }
    }
}

/// Wraps the session layer. When it cannot save the session after the handler has run,
/// tower-sessions answers a bare 500 (no body, no Content-Type; every page of ours has
/// one). The usual cause is the database going away mid-request, so answer the outage
/// page (503) when the database does not answer now, and the error page otherwise.
pub async fn session_save_failed(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let response = next.run(req).await;
    if response.status() != StatusCode::INTERNAL_SERVER_ERROR
        || response.headers().contains_key(header::CONTENT_TYPE)
    {
        return response;
    }
    let err = if db::ping(&state.pool, std::time::Duration::from_secs(2)).await {
        anyhow::anyhow!("the session could not be saved")
    } else {
        anyhow::Error::new(db::Unavailable).context("saving the session")
    };
    AppError::Unexpected(err).into_response()
}
