//! `/sign-up` (only when `LATCHKEY_SIGN_UP=open`): ask for an account with an address and a
//! password, then confirm it through the emailed link. The answer never tells whether
//! the address has an account; opening the link never uses it up.

use askama::Template;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use serde::Deserialize;

use super::AppState;
use super::csrf::CsrfToken;
use super::device::PresentedDevice;
use super::pages::{self, Errors, Layout};
use super::reset_password::policy_errors;
use super::{AppError, ClientOrigin, WebForm};
use crate::auth::sign_up::{
    ConfirmError, EmailProblem, LinkProblem, SignUpError, check_link, confirm_sign_up,
    request_sign_up,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/sign-up", get(show).post(submit))
        .route("/sign-up/confirm", get(show_confirm).post(submit_confirm))
}

#[derive(Template)]
#[template(path = "sign_up.html")]
struct SignUpPage {
    layout: Layout,
    email: String,
    min_length: usize,
    domains: Vec<String>,
}

impl SignUpPage {
    fn new(state: &AppState, csrf: &str, email: String, errors: Errors) -> SignUpPage {
        SignUpPage {
            layout: Layout::new("Create an account", csrf).with_errors(errors),
            email,
            min_length: state.accounts.policy.min_len_single_factor,
            domains: state.config.sign_up_domains.as_slice().to_vec(),
        }
    }
}

#[derive(Template)]
#[template(path = "sign_up_check_email.html")]
struct CheckEmailPage {
    layout: Layout,
    email: String,
    minutes: u64,
}

#[derive(Template)]
#[template(path = "sign_up_confirm.html")]
struct ConfirmPage {
    layout: Layout,
    email: String,
    token: String,
}

#[derive(Template)]
#[template(path = "sign_up_problem.html")]
struct ProblemPage {
    layout: Layout,
    message: String,
    existing: bool,
}

async fn show(State(state): State<AppState>, csrf: CsrfToken) -> Response {
    pages::render(
        StatusCode::OK,
        &SignUpPage::new(&state, &csrf.0, String::new(), Errors::default()),
    )
}

#[derive(Deserialize)]
struct SignUpForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    new_password: String,
    #[serde(default)]
    new_password_confirm: String,
}

/// "Use an address at example.com" (or "… at a.com or b.com").
fn domain_message(domains: &[String]) -> String {
    match domains {
        [] => "Use another email address".to_owned(),
        [one] => format!("Use an address at {one}"),
        [init @ .., last] => format!("Use an address at {} or {last}", init.join(", ")),
    }
}

async fn submit(
    State(state): State<AppState>,
    csrf: CsrfToken,
    ClientOrigin(origin): ClientOrigin,
    WebForm(form): WebForm<SignUpForm>,
) -> Result<Response, AppError> {
    match request_sign_up(
        &state.accounts,
        &form.email,
        &form.new_password,
        &form.new_password_confirm,
        &origin,
    )
    .await
    {
        Ok(email) => Ok(pages::render(
            StatusCode::OK,
            &CheckEmailPage {
                layout: Layout::new("Check your email", &csrf.0),
                email: email.to_string(),
                minutes: state.config.reset_token_ttl_secs.div_ceil(60),
            },
        )),
        Err(SignUpError::Refused(refusal)) => {
            let mut errors = Errors::default();
            match refusal.email {
                Some(EmailProblem::Invalid(why)) => errors.add("email", why),
                Some(EmailProblem::DomainNotAllowed(domains)) => {
                    errors.add("email", domain_message(&domains));
                }
                None => {}
            }
            if let Some(violation) = refusal.password {
                for (field, message) in policy_errors(&violation).iter() {
                    errors.add(field, message.clone());
                }
            }
            let email = form.email.chars().take(254).collect();
            Ok(pages::render(
                StatusCode::UNPROCESSABLE_ENTITY,
                &SignUpPage::new(&state, &csrf.0, email, errors),
            ))
        }
        Err(SignUpError::Service(failure)) => Err(failure.into()),
    }
}

/// Used or expired links are gone (410); links that never were are a bad request (400).
fn link_problem(problem: LinkProblem) -> Response {
    let (status, title, message) = match problem {
        LinkProblem::Invalid => (
            StatusCode::BAD_REQUEST,
            "This link doesn't work",
            "The link may be incomplete: check that you copied all of it, or sign up again for a new one.",
        ),
        LinkProblem::Expired => (
            StatusCode::GONE,
            "This link has expired",
            "Sign-up links work for a limited time. Sign up again for a new one.",
        ),
        LinkProblem::Used => (
            StatusCode::GONE,
            "This link has already been used",
            "Each link works once, and only the newest one. If your account was created, sign in; otherwise sign up again.",
        ),
    };
    pages::render(
        status,
        &ProblemPage {
            layout: Layout::new(title, ""),
            message: message.to_owned(),
            existing: false,
        },
    )
}

/// The address got an account since the link was sent: 409, nothing created.
fn already_has_account() -> Response {
    pages::render(
        StatusCode::CONFLICT,
        &ProblemPage {
            layout: Layout::new("This address already has an account", ""),
            message: "Nothing was created. Sign in with that account, or reset its password if you don't know it.".to_owned(),
            existing: true,
        },
    )
}

#[derive(Deserialize)]
struct LinkQuery {
    #[serde(default)]
    token: String,
}

async fn show_confirm(
    State(state): State<AppState>,
    csrf: CsrfToken,
    Query(query): Query<LinkQuery>,
) -> Result<Response, AppError> {
    match check_link(&state.accounts, &query.token).await {
        Ok(email) => Ok(pages::render(
            StatusCode::OK,
            &ConfirmPage {
                layout: Layout::new("Create your account", &csrf.0),
                email,
                token: query.token,
            },
        )),
        Err(ConfirmError::Link(problem)) => Ok(link_problem(problem)),
        Err(ConfirmError::AlreadyHasAccount) => Ok(already_has_account()),
        Err(ConfirmError::WrongPassword) => Ok(link_problem(LinkProblem::Invalid)),
        Err(ConfirmError::Service(failure)) => Err(failure.into()),
    }
}

#[derive(Deserialize)]
struct ConfirmForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    password: String,
}

async fn submit_confirm(
    State(state): State<AppState>,
    csrf: CsrfToken,
    ClientOrigin(origin): ClientOrigin,
    device: PresentedDevice,
    WebForm(form): WebForm<ConfirmForm>,
) -> Result<Response, AppError> {
    match confirm_sign_up(&state.accounts, &form.token, &form.password, &origin).await {
        Ok(user_id) => {
            // This browser just proved the mailbox: its first sign-in is no news.
            let to = Redirect::to("/sign-in?notice=account-ready").into_response();
            Ok(super::device::proved_mailbox(&state, device, user_id, to).await)
        }
        Err(ConfirmError::WrongPassword) => {
            // The link stays usable: show the form again, for the same link.
            let email = check_link(&state.accounts, &form.token).await;
            let Ok(email) = email else {
                return Ok(link_problem(LinkProblem::Used));
            };
            let mut errors = Errors::default();
            errors.add(
                "password",
                "That is not the password chosen when this link was asked for. If you did not ask for it, someone else did: use the link from your own sign-up instead.".to_owned(),
            );
            Ok(pages::render(
                StatusCode::UNPROCESSABLE_ENTITY,
                &ConfirmPage {
                    layout: Layout::new("Create your account", &csrf.0).with_errors(errors),
                    email,
                    token: form.token,
                },
            ))
        }
        Err(ConfirmError::Link(problem)) => Ok(link_problem(problem)),
        Err(ConfirmError::AlreadyHasAccount) => Ok(already_has_account()),
        Err(ConfirmError::Service(failure)) => Err(failure.into()),
    }
}
