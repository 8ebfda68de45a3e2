//! `POST /password-strength`: the password policy's verdict for the strength meter.
//!
//! Guidance only: the forms still judge the password when they are submitted. The meter
//! asks the server rather than scoring in the browser so that it agrees with the policy
//! to the letter (the shipped blocklist, the email and service-name rules, zxcvbn).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use super::AppError;
use super::AppState;
use super::{CurrentUser, WebForm};
use crate::domain::password::{self, PolicyContext};

pub fn router() -> Router<AppState> {
    Router::new().route("/password-strength", post(rate))
}

#[derive(Deserialize)]
struct StrengthForm {
    #[serde(default)]
    password: String,
    /// The address the password is for (the reset form knows it); ignored when signed in.
    #[serde(default)]
    email: String,
    /// `true` when the account has two-factor (shorter passwords are then allowed).
    #[serde(default)]
    two_factor: String,
}

/// At most this many ratings run at once; beyond that the meter gets a 503 and stays
/// quiet, so a flood of ratings cannot take the cores the hashing threads need.
static RATINGS: Semaphore = Semaphore::const_new(4);

#[derive(Serialize)]
struct StrengthAnswer {
    score: u8,
    label: &'static str,
    tip: Option<String>,
}

async fn rate(
    State(state): State<AppState>,
    user: Option<CurrentUser>,
    WebForm(form): WebForm<StrengthForm>,
) -> Result<Response, AppError> {
    let Ok(_permit) = RATINGS.try_acquire() else {
        return Ok(StatusCode::SERVICE_UNAVAILABLE.into_response());
    };
    let (email, two_factor) = match user {
        Some(current) => (
            current.user.email.to_string(),
            current.user.has_two_factor(),
        ),
        None => (form.email, form.two_factor == "true"),
    };
    let policy = state.accounts.policy.clone();
    let typed = form.password;
    // zxcvbn can take tens of milliseconds on hostile input: keep it off the runtime.
    let strength = tokio::task::spawn_blocking(move || {
        let ctx = PolicyContext {
            email: &email,
            two_factor,
        };
        password::strength(&policy, &ctx, &typed)
    })
    .await
    .map_err(|e| anyhow::anyhow!("rating a password: {e}"))?;
    Ok(Json(StrengthAnswer {
        score: strength.score,
        label: strength.label,
        tip: strength.tip,
    })
    .into_response())
}
