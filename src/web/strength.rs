//! `POST /password-strength`: the strength meter's rating of a password being typed,
//! from the same policy the form submit applies. Guidance only: it changes nothing,
//! stores nothing and logs nothing about the password. Like every POST it needs the
//! page's `csrf_token`, so other sites cannot use it.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use super::WebForm;
use crate::app::AppState;
use crate::domain::password::{PolicyContext, strength};
use crate::error::AppError;

pub fn router() -> Router<AppState> {
    Router::new().route("/password-strength", post(rate))
}

#[derive(Deserialize)]
struct StrengthForm {
    #[serde(default)]
    password: String,
    /// The account's address, as the page shows it (the policy refuses passwords
    /// containing it); it is only compared with the password.
    #[serde(default)]
    email: String,
    /// "true" when the account has two-factor authentication (a shorter minimum).
    #[serde(default)]
    two_factor: Option<String>,
}

#[derive(Serialize)]
struct Rating {
    score: u8,
    label: &'static str,
    tip: Option<String>,
}

/// Ratings run at once at most this many at a time; beyond that the meter gets a 503
/// and stays quiet, so a flood of ratings cannot take the hashing threads' cores.
static RATINGS: Semaphore = Semaphore::const_new(4);

async fn rate(
    State(state): State<AppState>,
    WebForm(form): WebForm<StrengthForm>,
) -> Result<Response, AppError> {
    let Ok(_permit) = RATINGS.try_acquire() else {
        return Ok(StatusCode::SERVICE_UNAVAILABLE.into_response());
    };
    let policy = state.policy.clone();
    let two_factor = form.two_factor.as_deref() == Some("true");
    // zxcvbn is CPU work: keep it off the async workers.
    let rating = tokio::task::spawn_blocking(move || {
        let ctx = PolicyContext {
            email: &form.email,
            two_factor,
        };
        let s = strength(&policy, &ctx, &form.password);
        Rating {
            score: s.score,
            label: s.label,
            tip: s.tip,
        }
    })
    .await
    .map_err(|e| anyhow::anyhow!("rating a password failed: {e}"))?;
    Ok(Json(rating).into_response())
}
