//! `/sign-in`, `/sign-out`: password sign-in with a generic failure message.

use askama::Template;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::AppState;
use super::csrf::CsrfToken;
use super::device::{self, PresentedDevice};
use super::pages::{self, ErrorPage, Errors, Layout};
use super::{AppError, AuthSession, ClientOrigin, CurrentUser, WebForm};
use std::time::Duration;

use crate::auth::session::SignInMethod;
use crate::auth::sign_in::{SignInError, SignInOutcome, sign_in};
use crate::auth::two_factor::{self, SecondStepError};
use crate::auth::{Accounts, ServiceError, session as sessions};
use crate::domain::SafeNext;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/sign-in", get(show).post(submit))
        .route(
            "/sign-in/two-factor",
            get(show_second_step).post(submit_second_step),
        )
        .route("/sign-out", post(sign_out))
}

#[derive(Template)]
#[template(path = "sign_in.html")]
struct SignInPage {
    layout: Layout,
    email: String,
    next: Option<String>,
    reset_minutes: u64,
    sign_up_open: bool,
    /// Passkeys are on: the page offers them (to browsers that run its script).
    passkeys: bool,
}

impl SignInPage {
    fn new(state: &AppState, csrf: &str, email: String, next: Option<&SafeNext>) -> SignInPage {
        SignInPage {
            layout: Layout::new("Sign in", csrf),
            email,
            next: next.map(|n| n.as_str().to_owned()),
            reset_minutes: state.config.reset_token_ttl_secs.div_ceil(60),
            sign_up_open: state.config.sign_up == crate::config::SignUp::Open,
            passkeys: state.passkeys.is_some(),
        }
    }
}

/// The sign-in form again with `errors` (a refused passkey sign-in, say).
pub(super) fn page_with_errors(
    state: &AppState,
    csrf: &str,
    next: Option<&SafeNext>,
    errors: Errors,
    status: StatusCode,
) -> Response {
    let mut page = SignInPage::new(state, csrf, String::new(), next);
    page.layout = page.layout.with_errors(errors);
    pages::render(status, &page)
}

#[derive(Deserialize)]
struct SignInQuery {
    next: Option<String>,
    notice: Option<String>,
}

/// Banners another flow may ask this page to show; anything else is ignored.
fn notice_text(key: Option<&str>) -> Option<String> {
    match key? {
        "password-reset" => {
            Some("Your password was changed. Sign in with your new password.".into())
        }
        "signed-out" => Some("You're signed out.".into()),
        "account-ready" => {
            Some("Your account is ready. Sign in with your email and password.".into())
        }
        _ => None,
    }
}

async fn show(
    State(state): State<AppState>,
    // Before the token: a session that is no longer good (its password changed) ends
    // here, and the form's token must be the one for no session.
    user: Option<CurrentUser>,
    csrf: CsrfToken,
    Query(query): Query<SignInQuery>,
) -> Response {
    let next = query
        .next
        .as_deref()
        .and_then(|n| SafeNext::parse_within(n, &state.destinations));
    if user.is_some() {
        return Redirect::to(next.as_ref().map_or("/", |n| n.as_str())).into_response();
    }
    let mut page = SignInPage::new(&state, &csrf.0, String::new(), next.as_ref());
    page.layout = page
        .layout
        .with_notice(notice_text(query.notice.as_deref()));
    pages::render(StatusCode::OK, &page)
}

#[derive(Deserialize)]
struct SignInForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    next: String,
}

async fn submit(
    State(state): State<AppState>,
    csrf: CsrfToken,
    ClientOrigin(origin): ClientOrigin,
    device: PresentedDevice,
    session: AuthSession,
    WebForm(form): WebForm<SignInForm>,
) -> Result<Response, AppError> {
    let next = SafeNext::parse_within(&form.next, &state.destinations);
    let form_with_errors = |errors: Errors, status: StatusCode| {
        let mut page =
            SignInPage::new(&state, &csrf.0, form.email.trim().to_owned(), next.as_ref());
        page.layout = page.layout.with_errors(errors);
        pages::render(status, &page)
    };
    let presented = device.value();
    match sign_in(
        &state.accounts,
        &form.email,
        &form.password,
        &origin,
        presented,
    )
    .await
    {
        Ok(SignInOutcome::NeedsSecondFactor(user)) => {
            session
                .begin_second_step(&user, next.as_ref().map(|n| n.as_str()))
                .await?;
            Ok(Redirect::to("/sign-in/two-factor").into_response())
        }
        Ok(SignInOutcome::Complete(user, device_cookie)) => {
            // The value from the row whose hash was just verified, not a fresh read: a
            // reset that committed meanwhile must leave this session worthless.
            session
                .sign_in(
                    user.id,
                    user.password_changed_at,
                    SignInMethod::Password,
                    &origin,
                )
                .await?;
            let to = Redirect::to(next.as_ref().map_or("/", |n| n.as_str())).into_response();
            Ok(device::with_cookie(&state, to, device_cookie.as_deref()))
        }
        Err(SignInError::AccountDisabled) => Ok(account_disabled()),
        Err(SignInError::InvalidCredentials) => Ok(form_with_errors(
            Errors::one("email", "Incorrect email or password."),
            StatusCode::UNPROCESSABLE_ENTITY,
        )),
        Err(SignInError::Service(ServiceError::Throttled { retry_after })) => Ok(throttled(
            form_with_errors(
                Errors::one("email", wait_message(retry_after)),
                StatusCode::TOO_MANY_REQUESTS,
            ),
            retry_after,
        )),
        Err(SignInError::Service(failure)) => Err(failure.into()),
    }
}

#[derive(Deserialize, Default)]
struct SignOutForm {
    #[serde(default)]
    next: Option<String>,
}

/// Ends the session; then back to sign-in, or to `next` (a form field or the query) when
/// it is a place latchkey may send people (an application it protects, say).
async fn sign_out(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    session: AuthSession,
    Query(query): Query<SignOutForm>,
    WebForm(form): WebForm<SignOutForm>,
) -> Result<Response, AppError> {
    let accounts = &state.accounts;
    if let Some(digest) = session.digest() {
        accounts.session_cache.forget(&digest);
    }
    sessions::record_sign_out(accounts, session.user_id().await?, &origin).await?;
    session.sign_out().await?;
    let next = form
        .next
        .or(query.next)
        .and_then(|n| SafeNext::parse_within(&n, &state.destinations));
    Ok(match next {
        Some(next) => Redirect::to(next.as_str()).into_response(),
        None => Redirect::to("/sign-in?notice=signed-out").into_response(),
    })
}

/// The right password for a disabled account: 403, and whom to ask.
pub(super) fn account_disabled() -> Response {
    pages::render(
        StatusCode::FORBIDDEN,
        &ErrorPage::new(
            "This account is disabled",
            "An administrator has disabled this account, so you can't sign in. \
             To use it again, ask the administrator who runs this service to enable it.",
        ),
    )
}

pub(super) fn wait_message(retry_after: Duration) -> String {
    format!(
        "Too many attempts. Wait {} and try again.",
        pages::describe_wait(retry_after)
    )
}

pub(super) fn throttled(mut response: Response, retry_after: Duration) -> Response {
    if let Ok(v) = HeaderValue::from_str(&retry_after.as_secs().to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}

#[derive(Template)]
#[template(path = "sign_in_two_factor.html")]
struct SecondStepPage {
    layout: Layout,
}

fn second_step_page(csrf: &str, errors: Errors, status: StatusCode) -> Response {
    pages::render(
        status,
        &SecondStepPage {
            layout: Layout::new("Enter your authentication code", csrf).with_errors(errors),
        },
    )
}

async fn show_second_step(csrf: CsrfToken, session: AuthSession) -> Result<Response, AppError> {
    if session.pending_second_step().await?.is_none() {
        return Ok(Redirect::to("/sign-in").into_response());
    }
    Ok(second_step_page(&csrf.0, Errors::default(), StatusCode::OK))
}

#[derive(Deserialize)]
struct SecondStepForm {
    #[serde(default)]
    totp_code: String,
}

async fn submit_second_step(
    State(state): State<AppState>,
    State(accounts): State<Accounts>,
    csrf: CsrfToken,
    ClientOrigin(origin): ClientOrigin,
    device: PresentedDevice,
    session: AuthSession,
    WebForm(form): WebForm<SecondStepForm>,
) -> Result<Response, AppError> {
    let Some(pending) = session.pending_second_step().await? else {
        // Five minutes passed, or there was no correct password first.
        return Ok(Redirect::to("/sign-in").into_response());
    };
    match two_factor::complete_sign_in(&accounts, &pending, &form.totp_code, &origin).await {
        Ok(user) => {
            // The password the first step verified (complete_sign_in checked it is still
            // the account's).
            session
                .sign_in(
                    user.id,
                    pending.password_set_at,
                    SignInMethod::PasswordAndCode,
                    &origin,
                )
                .await?;
            let next = pending
                .next
                .as_deref()
                .and_then(|n| SafeNext::parse_within(n, &state.destinations));
            let to = Redirect::to(next.as_ref().map_or("/", |n| n.as_str())).into_response();
            Ok(device::signed_in(&state, device, user.id, user.email.as_str(), &origin, to).await)
        }
        Err(SecondStepError::Service(ServiceError::Throttled { retry_after })) => Ok(throttled(
            second_step_page(
                &csrf.0,
                Errors::one("totp_code", wait_message(retry_after)),
                StatusCode::TOO_MANY_REQUESTS,
            ),
            retry_after,
        )),
        Err(SecondStepError::Service(failure)) => Err(failure.into()),
        Err(SecondStepError::SignInOver) => Ok(Redirect::to("/sign-in").into_response()),
        Err(SecondStepError::AccountDisabled) => {
            session.sign_out().await?;
            Ok(account_disabled())
        }
        Err(SecondStepError::WrongCode) => Ok(second_step_page(
            &csrf.0,
            Errors::one(
                "totp_code",
                "Enter the 6-digit code from your authenticator app, or a recovery code",
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
        )),
    }
}
