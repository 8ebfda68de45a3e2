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
use crate::auth::reset::{ResetError, ResetProof, TokenProblem, check_link, complete_reset};
use crate::domain::password::PolicyViolation;
use crate::passkeys::PasskeyError;
use uuid::Uuid;

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
    /// The account has passkeys: one may stand in for a code.
    has_passkeys: bool,
    /// And passkeys are on here, so the page offers them (to browsers that run its script).
    offer_passkeys: bool,
}

impl ResetPage {
    async fn new(
        state: &AppState,
        csrf: &str,
        user: &User,
        token: String,
        errors: Errors,
    ) -> anyhow::Result<ResetPage> {
        let has_passkeys = crate::passkeys::has_passkeys(&state.accounts, user.id).await?;
        Ok(ResetPage {
            has_passkeys,
            offer_passkeys: has_passkeys && state.passkeys.is_some(),
            layout: Layout::new("Choose a new password", csrf).with_errors(errors),
            email: user.email.to_string(),
            token,
            min_length: if user.has_two_factor() {
                state.accounts.policy.min_len_two_factor
            } else {
                state.accounts.policy.min_len_single_factor
            },
            two_factor: user.has_two_factor(),
        })
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
            &ResetPage::new(&state, &csrf.0, &user, query.token, Errors::default()).await?,
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
    #[serde(default)]
    passkey_ceremony: String,
    #[serde(default)]
    passkey_credential: String,
}

const WRONG_CODE: &str = "Enter the 6-digit code from your authenticator app, or a recovery code";
const WRONG_PASSKEY_OR_CODE: &str = "Confirm with one of your passkeys, or enter a code from your authenticator app or a recovery code";
const WRONG_PASSKEY_OR_RECOVERY_CODE: &str =
    "Confirm with one of your passkeys, or enter one of your recovery codes";
const PASSKEY_FAILED: &str =
    "That passkey could not be checked. Try again with Confirm with a passkey, or enter a code";

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
    jar: axum_extra::extract::cookie::CookieJar,
    ClientOrigin(origin): ClientOrigin,
    device: PresentedDevice,
    WebForm(form): WebForm<ResetForm>,
) -> Result<Response, AppError> {
    // A passkey answer on the form: verified first (its ceremony is used up whatever the
    // new password's fate), then it stands in for the code.
    let mut proof = ResetProof::Code(&form.totp_code);
    if !form.passkey_credential.is_empty() {
        let Some(relying) = state.passkeys.as_ref() else {
            return Err(AppError::NotFound);
        };
        let user = match check_link(&state.accounts, &form.token).await {
            Ok(user) => user,
            Err(ResetError::Token(problem)) => return Ok(link_problem(problem)),
            Err(ResetError::Service(failure)) => return Err(failure.into()),
            Err(other) => return Err(anyhow::anyhow!("checking a reset link: {other}").into()),
        };
        let verified = match Uuid::parse_str(form.passkey_ceremony.trim()) {
            Ok(ceremony) => {
                crate::passkeys::verify_for_reset(
                    &state.accounts,
                    relying,
                    &user,
                    ceremony,
                    &super::passkeys::binding(&state, &jar),
                    &form.passkey_credential,
                )
                .await
            }
            Err(_) => Err(PasskeyError::Ceremony),
        };
        match verified {
            Ok(verified) => proof = ResetProof::Passkey(verified),
            Err(PasskeyError::Service(failure)) => return Err(failure.into()),
            Err(_) => {
                let errors = Errors::one("totp_code", PASSKEY_FAILED);
                return form_with_errors(&state, &csrf.0, form.token, errors).await;
            }
        }
    }
    match complete_reset(
        &state.accounts,
        &form.token,
        &form.new_password,
        &form.new_password_confirm,
        proof,
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
            let (has_passkeys, two_factor) = match check_link(&state.accounts, &form.token).await {
                Ok(user) => (
                    crate::passkeys::has_passkeys(&state.accounts, user.id).await?,
                    user.has_two_factor(),
                ),
                Err(_) => (false, true),
            };
            let message = match (has_passkeys, two_factor) {
                (true, true) => WRONG_PASSKEY_OR_CODE,
                (true, false) => WRONG_PASSKEY_OR_RECOVERY_CODE,
                (false, _) => WRONG_CODE,
            };
            let errors = Errors::one("totp_code", message);
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
            &ResetPage::new(state, csrf, &user, token, errors).await?,
        )),
        Err(ResetError::Token(problem)) => Ok(link_problem(problem)),
        Err(ResetError::Service(failure)) => Err(failure.into()),
        Err(other) => Err(anyhow::anyhow!("re-checking a reset link: {other}").into()),
    }
}
