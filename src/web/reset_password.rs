//! `/reset-password`: choose a new password through an emailed link. Opening the link
//! never uses it up; only the submitted form does.

use askama::Template;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Extension, Router};
use serde::Deserialize;

use super::csrf::CsrfToken;
use super::pages::{self, Errors, Layout};
use super::{ClientOrigin, WebForm};
use crate::app::AppState;
use crate::auth::reset::{ResetError, TokenProblem, check_link, complete_reset};
use crate::domain::password::PolicyViolation;
use crate::error::AppError;

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
    Extension(csrf): Extension<CsrfToken>,
    Query(query): Query<LinkQuery>,
) -> Result<Response, AppError> {
    match check_link(&state, &query.token).await {
        Ok(user) => Ok(pages::render(
            StatusCode::OK,
            &ResetPage {
                layout: Layout::new("Choose a new password", &csrf.0),
                email: user.email,
                token: query.token,
                min_length: state.policy.min_len_single_factor,
            },
        )),
        Err(ResetError::Token(problem)) => Ok(link_problem(problem)),
        Err(ResetError::Policy(_)) => Err(AppError::BadRequest("policy on GET".into())),
        Err(ResetError::Failure(failure)) => Err(failure.into()),
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
    Extension(csrf): Extension<CsrfToken>,
    ClientOrigin(origin): ClientOrigin,
    WebForm(form): WebForm<ResetForm>,
) -> Result<Response, AppError> {
    match complete_reset(
        &state,
        &form.token,
        &form.new_password,
        &form.new_password_confirm,
        &origin,
    )
    .await
    {
        Ok(()) => Ok(Redirect::to("/sign-in?notice=password-reset").into_response()),
        Err(ResetError::Token(problem)) => Ok(link_problem(problem)),
        Err(ResetError::Policy(violation)) => {
            let email = check_link(&state, &form.token)
                .await
                .map(|u| u.email)
                .unwrap_or_default();
            Ok(pages::render(
                StatusCode::UNPROCESSABLE_ENTITY,
                &ResetPage {
                    layout: Layout::new("Choose a new password", &csrf.0)
                        .with_errors(policy_errors(&violation)),
                    email,
                    token: form.token,
                    min_length: state.policy.min_len_single_factor,
                },
            ))
        }
        Err(ResetError::Failure(failure)) => Err(failure.into()),
    }
}
