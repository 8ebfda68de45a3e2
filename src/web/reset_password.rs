//! `/reset-password`: choose a new password through an emailed link. Opening the link
//! never uses it up; only the submitted form does.

use askama::Template;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use serde::Deserialize;

use super::AppError;
use super::AppState;
use super::csrf::CsrfToken;
use super::device::PresentedDevice;
use super::pages::{self, Errors, Layout};
use super::{ClientOrigin, WebForm};
use crate::auth::User;
use crate::auth::reset::{ResetError, TokenProblem, check_link, complete_reset};
use crate::domain::password::PolicyViolation;

pub fn router() -> Router<AppState> {
    Router::new().route("/reset-password", get(show).post(submit))
}

#[derive(Template)]
#[template(path = "reset_password.html")]
struct ResetPage {
    layout: Layout,
    email: String,
    token: String,
    min_length: usize,
    two_factor: bool,
}

impl ResetPage {
    fn new(state: &AppState, csrf: &str, user: &User, token: String, errors: Errors) -> ResetPage {
        ResetPage {
            layout: Layout::new("Choose a new password", csrf).with_errors(errors),
            email: user.email.to_string(),
            token,
            min_length: if user.has_two_factor() {
                state.accounts.policy.min_len_two_factor
            } else {
                state.accounts.policy.min_len_single_factor
            },
            two_factor: user.has_two_factor(),
        }
    }
}

#[derive(Template)]
#[template(path = "reset_link_problem.html")]
struct LinkProblemPage {
    layout: Layout,
    message: String,
}

/// Used or expired links are gone (410); links that never were are a bad request (400).
fn link_problem(problem: TokenProblem) -> Response {
    let (status, title, message) = match problem {
        TokenProblem::Invalid => (
            StatusCode::BAD_REQUEST,
            "This link doesn't work",
            "The link may be incomplete: check that you copied all of it, or ask for a new one.",
        ),
        TokenProblem::Expired => (
            StatusCode::GONE,
            "This link has expired",
            "Reset links work for a limited time. Ask for a new one.",
        ),
        TokenProblem::Used => (
            StatusCode::GONE,
            "This link has already been used",
            "Each link works once, and only the newest one. Ask for a new one if you still need to reset your password.",
        ),
    };
    pages::render(
        status,
        &LinkProblemPage {
            layout: Layout::new(title, ""),
            message: message.to_owned(),
        },
    )
}

#[derive(Deserialize)]
struct LinkQuery {
    #[serde(default)]
    token: String,
}

async fn show(
    State(state): State<AppState>,
    csrf: CsrfToken,
    Query(query): Query<LinkQuery>,
) -> Result<Response, AppError> {
    match check_link(&state.accounts, &query.token).await {
        Ok(user) => Ok(pages::render(
            StatusCode::OK,
            &ResetPage::new(&state, &csrf.0, &user, query.token, Errors::default()),
        )),
        Err(ResetError::Token(problem)) => Ok(link_problem(problem)),
        Err(ResetError::Policy(_) | ResetError::WrongCode) => Err(AppError::BadRequest(
            "unexpected reset outcome on GET".into(),
        )),
        Err(ResetError::Service(failure)) => Err(failure.into()),
    }
}

#[derive(Deserialize)]
struct ResetForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    new_password: String,
    #[serde(default)]
    new_password_confirm: String,
    #[serde(default)]
    totp_code: String,
}

/// The field a policy message belongs beside.
pub fn policy_errors(violation: &PolicyViolation) -> Errors {
    let field = match violation {
        PolicyViolation::Mismatch => "new_password_confirm",
        _ => "new_password",
    };
    Errors::one(field, violation.to_string())
}

async fn submit(
    State(state): State<AppState>,
    csrf: CsrfToken,
    ClientOrigin(origin): ClientOrigin,
    device: PresentedDevice,
    WebForm(form): WebForm<ResetForm>,
) -> Result<Response, AppError> {
    match complete_reset(
        &state.accounts,
        &form.token,
        &form.new_password,
        &form.new_password_confirm,
        &form.totp_code,
        &origin,
    )
    .await
    {
        Ok(user_id) => {
            // This browser just proved the mailbox: its next sign-in is no news.
            let to = Redirect::to("/sign-in?notice=password-reset").into_response();
            Ok(super::device::proved_mailbox(&state, device, user_id, to).await)
        }
        Err(ResetError::Token(problem)) => Ok(link_problem(problem)),
        Err(ResetError::Policy(violation)) => {
            form_with_errors(&state, &csrf.0, form.token, policy_errors(&violation)).await
        }
        Err(ResetError::WrongCode) => {
            let errors = Errors::one(
                "totp_code",
                "Enter the 6-digit code from your authenticator app, or a recovery code",
            );
            form_with_errors(&state, &csrf.0, form.token, errors).await
        }
        Err(ResetError::Service(failure)) => Err(failure.into()),
    }
}

/// The form again with its errors, while the link is still usable.
async fn form_with_errors(
    state: &AppState,
    csrf: &str,
    token: String,
    errors: Errors,
) -> Result<Response, AppError> {
    match check_link(&state.accounts, &token).await {
        Ok(user) => Ok(pages::render(
            StatusCode::UNPROCESSABLE_ENTITY,
            &ResetPage::new(state, csrf, &user, token, errors),
        )),
        Err(ResetError::Token(problem)) => Ok(link_problem(problem)),
        Err(ResetError::Service(failure)) => Err(failure.into()),
        Err(other) => Err(anyhow::anyhow!("re-checking a reset link: {other}").into()),
    }
}
