//! `/forgot-password`: ask for a reset link. The answer never tells whether the address
//! has an account.

use std::time::Duration;

use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use serde::Deserialize;

use super::csrf::CsrfToken;
use super::pages::{self, Errors, Layout};
use super::{ClientOrigin, WebForm};

use crate::app::AppState;
use crate::auth::reset::request_reset;
use crate::auth::throttle::{self, IpScope};
use crate::db;
use crate::domain::EmailAddress;
use crate::error::AppError;

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
    let ip = origin.ip.clone().unwrap_or_default();
    throttle::check_ip(&state, IpScope::ForgotPassword, &ip).await?;
    let email = match EmailAddress::parse(&form.email) {
        Ok(email) => email,
        Err(err) => {
            let page = ForgotPage {
                layout: Layout::new("Reset your password", &csrf.0)
                    .with_errors(Errors::one("email", err.to_string())),
                email: form.email.chars().take(254).collect(),
                reset_minutes,
            };
            return Ok(pages::render(StatusCode::UNPROCESSABLE_ENTITY, &page));
        }
    };
    // The work below happens after the answer, so make sure it can happen at all: with
    // the database out of reach, "check your email" would promise a mail that never comes.
    // The same query runs for every address, so it tells nothing about which have accounts.
    if !db::ping(
        &state.pool,
        Duration::from_millis(state.config.db_acquire_timeout_ms),
    )
    .await
    {
        return Err(AppError::Unexpected(
            anyhow::Error::new(db::Unavailable)
                .context("checking the database before a reset request"),
        ));
    }
    // The lookup, token and mail happen after the answer, so known and unknown addresses
    // take the same time; the tracker lets a graceful shutdown finish them.
    let task_state = state.clone();
    let task_email = email.clone();
    state.tasks.spawn(async move {
        if let Err(err) = request_reset(&task_state, &task_email, &origin).await {
            tracing::error!(
                error = format!("{err:#}"),
                "requesting a password reset failed"
            );
        }
    });
    let page = CheckEmailPage {
        layout: Layout::new("Check your email", &csrf.0),
        email: email.to_string(),
        reset_minutes,
    };
    Ok(pages::render(StatusCode::OK, &page))
}
