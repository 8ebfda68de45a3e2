//! `/forgot-password`: ask for a reset link. The answer never tells whether the address
//! has an account.

use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use serde::Deserialize;

use super::AppState;
use super::csrf::CsrfToken;
use super::pages::{self, Errors, Layout};
use super::{AppError, ClientOrigin, WebForm};
use crate::auth::reset::{RequestLinkError, request_link};

pub fn router() -> Router<AppState> {
    Router::new().route("/forgot-password", get(show).post(submit))
}

#[derive(Template)]
#[template(path = "forgot_password.html")]
struct ForgotPage {
    layout: Layout,
    email: String,
    reset_minutes: u64,
}

#[derive(Template)]
#[template(path = "check_email.html")]
struct CheckEmailPage {
    layout: Layout,
    email: String,
    reset_minutes: u64,
}

async fn show(State(state): State<AppState>, csrf: CsrfToken) -> Response {
    let page = ForgotPage {
        layout: Layout::new("Reset your password", &csrf.0),
        email: String::new(),
        reset_minutes: state.config.reset_token_ttl_secs.div_ceil(60),
    };
    pages::render(StatusCode::OK, &page)
}

#[derive(Deserialize)]
struct ForgotForm {
    #[serde(default)]
    email: String,
}

async fn submit(
    State(state): State<AppState>,
    csrf: CsrfToken,
    ClientOrigin(origin): ClientOrigin,
    WebForm(form): WebForm<ForgotForm>,
) -> Result<Response, AppError> {
    let reset_minutes = state.config.reset_token_ttl_secs.div_ceil(60);
    let email = match request_link(&state.accounts, &form.email, &origin).await {
        Ok(email) => email,
        Err(RequestLinkError::InvalidEmail(why)) => {
            let page = ForgotPage {
                layout: Layout::new("Reset your password", &csrf.0)
                    .with_errors(Errors::one("email", why)),
                email: form.email.chars().take(254).collect(),
                reset_minutes,
            };
            return Ok(pages::render(StatusCode::UNPROCESSABLE_ENTITY, &page));
        }
        Err(RequestLinkError::Service(failure)) => return Err(failure.into()),
    };
    let page = CheckEmailPage {
        layout: Layout::new("Check your email", &csrf.0),
        email: email.to_string(),
        reset_minutes,
    };
    Ok(pages::render(StatusCode::OK, &page))
}
