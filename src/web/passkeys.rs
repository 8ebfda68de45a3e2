//! Passkey pages and endpoints: sign in with a passkey (autofill or the button), add,
//! rename and remove passkeys under Settings → Security, and the options a reset form
//! asks for. The browser's half lives in `static/app.js`; every endpoint here answers
//! 404 while passkeys are off.

use std::sync::Arc;

use askama::Template;
use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::post;
use axum_extra::extract::cookie::CookieJar;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::AppState;
use super::csrf::CsrfToken;
use super::device::{self, PresentedDevice};
use super::pages::{self, Errors, Layout};
use super::{AppError, AuthSession, ClientOrigin, CurrentUser, WebForm};
use crate::auth::ServiceError;
use crate::auth::reset::{ResetError, check_link};
use crate::auth::session::SignInMethod;
use crate::domain::{SafeNext, describe_user_agent};
use crate::passkeys::{self, PasskeyError, Passkeys};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/sign-in/passkey/options", post(sign_in_options))
        .route("/sign-in/passkey", post(sign_in))
        .route("/settings/security/passkeys/add", post(add_begin))
        .route("/settings/security/passkeys", post(add_finish))
        .route("/settings/security/passkeys/{id}/rename", post(rename))
        .route("/settings/security/passkeys/{id}/remove", post(remove))
        .route("/reset-password/passkey/options", post(reset_options))
}

fn enabled(state: &AppState) -> Result<&Arc<Passkeys>, AppError> {
    state.passkeys.as_ref().ok_or(AppError::NotFound)
}

/// What ties a ceremony to the browser that began it: the digest of its CSRF cookie
/// (every form post carries that cookie; another browser has another).
pub fn binding(state: &AppState, jar: &CookieJar) -> Vec<u8> {
    let value = jar
        .get(state.cookie_names.csrf)
        .map(|c| c.value().to_owned())
        .unwrap_or_default();
    Sha256::digest(value.as_bytes()).to_vec()
}

/// Whether this session was signed in with a passkey in the last five minutes: then
/// adding or removing a passkey needs no password.
pub async fn recent_passkey_sign_in(session: &AuthSession) -> anyhow::Result<bool> {
    if session.sign_in_method().await? != SignInMethod::Passkey {
        return Ok(false);
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    Ok(session
        .signed_in_at()
        .await?
        .is_some_and(|at| now - at <= passkeys::RECENT_SIGN_IN_SECS && at <= now + 5))
}

/// A JSON answer that no cache keeps.
fn json(status: StatusCode, value: serde_json::Value) -> Response {
    let mut response = (status, Json(value)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn json_error(status: StatusCode, message: &str) -> Response {
    json(status, serde_json::json!({ "error": message }))
}

/// A failure of an options endpoint, as JSON the script can show.
fn options_failure(err: PasskeyError) -> Result<Response, AppError> {
    match err {
        PasskeyError::Service(ServiceError::Throttled { retry_after }) => Ok(json_error(
            StatusCode::TOO_MANY_REQUESTS,
            &format!(
                "Too many attempts. Wait {} and try again.",
                pages::describe_wait(retry_after)
            ),
        )),
        PasskeyError::Service(failure) => Err(failure.into()),
        other => Ok(json_error(StatusCode::BAD_REQUEST, &other.to_string())),
    }
}

/// Options for a passkey sign-in (autofill, or the button).
async fn sign_in_options(
    State(state): State<AppState>,
    jar: CookieJar,
) -> Result<Response, AppError> {
    let relying = enabled(&state)?;
    match passkeys::start_sign_in(&state.accounts, relying, &binding(&state, &jar)).await {
        Ok(started) => Ok(json(
            StatusCode::OK,
            serde_json::json!({ "ceremony": started.ceremony, "options": started.options }),
        )),
        Err(err) => options_failure(err),
    }
}

#[derive(Deserialize)]
struct SignInForm {
    #[serde(default)]
    ceremony: String,
    #[serde(default)]
    credential: String,
    #[serde(default)]
    next: String,
}

/// The message a refused passkey sign-in shows on the sign-in page.
fn sign_in_message(err: &PasskeyError) -> &'static str {
    match err {
        PasskeyError::UnknownCredential => {
            "That passkey isn't registered with latchkey: it may have been removed. Sign in with your email address and password."
        }
        PasskeyError::Ceremony => {
            "The passkey request expired or was already used. Try again: select Sign in with a passkey."
        }
        _ => {
            "The passkey could not be verified. Try again, or sign in with your email address and password."
        }
    }
}

/// The browser's answer to the sign-in options: a complete sign-in on its own.
async fn sign_in(
    State(state): State<AppState>,
    csrf: CsrfToken,
    jar: CookieJar,
    ClientOrigin(origin): ClientOrigin,
    session: AuthSession,
    device: PresentedDevice,
    WebForm(form): WebForm<SignInForm>,
) -> Result<Response, AppError> {
    let relying = enabled(&state)?;
    let next = SafeNext::parse_within(&form.next, &state.destinations);
    let outcome = match Uuid::parse_str(form.ceremony.trim()) {
        Ok(ceremony) => {
            passkeys::finish_sign_in(
                &state.accounts,
                relying,
                ceremony,
                &binding(&state, &jar),
                &form.credential,
                &origin,
            )
            .await
        }
        Err(_) => Err(PasskeyError::Ceremony),
    };
    match outcome {
        Ok(user) => {
            // The password stamp of the account as read now: a reset ends this session
            // like every other.
            session
                .sign_in(
                    user.id,
                    user.password_changed_at,
                    SignInMethod::Passkey,
                    &origin,
                )
                .await?;
            // A browser this account has not used before: its owner is told, as for a
            // password sign-in.
            let to = Redirect::to(next.as_ref().map_or("/", |n| n.as_str())).into_response();
            Ok(device::signed_in(&state, device, user.id, user.email.as_str(), &origin, to).await)
        }
        Err(PasskeyError::AccountDisabled) => Ok(super::sign_in::account_disabled()),
        Err(PasskeyError::Service(ServiceError::Throttled { retry_after })) => {
            Ok(super::sign_in::throttled(
                super::sign_in::page_with_errors(
                    &state,
                    &csrf.0,
                    next.as_ref(),
                    Errors::one("email", super::sign_in::wait_message(retry_after)),
                    StatusCode::TOO_MANY_REQUESTS,
                ),
                retry_after,
            ))
        }
        Err(PasskeyError::Service(failure)) => Err(failure.into()),
        Err(err) => Ok(super::sign_in::page_with_errors(
            &state,
            &csrf.0,
            next.as_ref(),
            Errors::one("email", sign_in_message(&err)),
            StatusCode::UNPROCESSABLE_ENTITY,
        )),
    }
}

#[derive(Template)]
#[template(path = "passkey_add.html")]
struct AddPage {
    layout: Layout,
    ceremony: String,
    options_json: String,
    name: String,
}

#[derive(Deserialize)]
struct AddBeginForm {
    #[serde(default)]
    current_password: String,
}

/// The field the settings page shows an "Add a passkey" error beside.
const ADD_PASSWORD_FIELD: &str = "passkey_current_password";
const ADD_BUTTON: &str = "add-passkey";

fn wrong_password_errors(field: &'static str, err: PasskeyError) -> Result<Errors, AppError> {
    match err {
        PasskeyError::WrongPassword => Ok(Errors::one(field, "Your current password is incorrect")),
        PasskeyError::Service(ServiceError::Throttled { retry_after }) => Ok(Errors::one(
            field,
            format!(
                "Too many attempts. Wait {} and try again.",
                pages::describe_wait(retry_after)
            ),
        )),
        PasskeyError::TooMany => Ok(Errors::one(
            ADD_BUTTON,
            format!(
                "You have {} passkeys, the most an account may have. Remove one first.",
                passkeys::MAX_PER_ACCOUNT
            ),
        )),
        PasskeyError::Service(failure) => Err(failure.into()),
        other => Err(anyhow::anyhow!("unexpected passkey outcome: {other}").into()),
    }
}

/// "Add a passkey": the owner confirmed, then the page that asks the browser to create
/// the passkey (it needs JavaScript; without it the page says so).
async fn add_begin(
    State(state): State<AppState>,
    csrf: CsrfToken,
    jar: CookieJar,
    ClientOrigin(origin): ClientOrigin,
    current: CurrentUser,
    WebForm(form): WebForm<AddBeginForm>,
) -> Result<Response, AppError> {
    let relying = enabled(&state)?;
    let accounts = &state.accounts;
    let recent = recent_passkey_sign_in(&current.session).await?;
    let confirmed = passkeys::confirm_owner(
        accounts,
        &current.user,
        recent,
        &form.current_password,
        &origin,
    )
    .await;
    let started = match confirmed {
        Ok(()) => {
            passkeys::start_registration(accounts, relying, &current.user, &binding(&state, &jar))
                .await
        }
        Err(err) => Err(err),
    };
    match started {
        Ok(started) => {
            let options_json = serde_json::to_string(&started.options)
                .map_err(|e| anyhow::anyhow!("serialising passkey options: {e}"))?;
            let name = match describe_user_agent(origin.user_agent.as_deref()) {
                known if !known.starts_with("an unknown") => known,
                _ => "Passkey".to_owned(),
            };
            Ok(pages::render(
                StatusCode::OK,
                &AddPage {
                    layout: Layout::new("Add a passkey", &csrf.0)
                        .signed_in(current.user.email.as_str()),
                    ceremony: started.ceremony.to_string(),
                    options_json,
                    name,
                },
            ))
        }
        Err(err) => {
            let errors = wrong_password_errors(ADD_PASSWORD_FIELD, err)?;
            super::settings_security::render_page(
                &state,
                &csrf.0,
                &current,
                errors,
                None,
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await
        }
    }
}

#[derive(Deserialize)]
struct AddFinishForm {
    #[serde(default)]
    ceremony: String,
    #[serde(default)]
    credential: String,
    #[serde(default)]
    name: String,
}

/// The browser's new passkey: stored, then the recovery codes once (the account's first
/// passkey without codes) or back to Settings.
async fn add_finish(
    State(state): State<AppState>,
    csrf: CsrfToken,
    jar: CookieJar,
    ClientOrigin(origin): ClientOrigin,
    current: CurrentUser,
    WebForm(form): WebForm<AddFinishForm>,
) -> Result<Response, AppError> {
    let relying = enabled(&state)?;
    let outcome = match Uuid::parse_str(form.ceremony.trim()) {
        Ok(ceremony) => {
            passkeys::finish_registration(
                &state.accounts,
                relying,
                &current.user,
                ceremony,
                &binding(&state, &jar),
                &form.credential,
                &form.name,
                &origin,
            )
            .await
        }
        Err(_) => Err(PasskeyError::Ceremony),
    };
    let message = match outcome {
        Ok(added) => {
            return Ok(match added.recovery_codes {
                Some(codes) => super::two_factor::codes_page(
                    &csrf.0,
                    &current,
                    "Your passkey is added",
                    "You can now sign in with it. If you ever lose it, a recovery code lets you reset your password.",
                    codes,
                ),
                None => Redirect::to("/settings/security?notice=passkey-added").into_response(),
            });
        }
        Err(PasskeyError::BadName) => format!(
            "Give the passkey a name of 1 to {} characters, then add it again",
            passkeys::MAX_NAME_CHARS
        ),
        Err(PasskeyError::AlreadyRegistered) => {
            "This passkey is already registered. Use another device or password manager.".to_owned()
        }
        Err(PasskeyError::Ceremony) => {
            "The passkey request expired or was already used. Select Add a passkey to try again."
                .to_owned()
        }
        Err(PasskeyError::Service(failure)) => return Err(failure.into()),
        Err(_) => {
            "The passkey could not be verified. Select Add a passkey to try again.".to_owned()
        }
    };
    super::settings_security::render_page(
        &state,
        &csrf.0,
        &current,
        Errors::one(ADD_BUTTON, message),
        None,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await
}

#[derive(Deserialize)]
struct RenameForm {
    #[serde(default)]
    name: String,
}

async fn rename(
    State(state): State<AppState>,
    csrf: CsrfToken,
    current: CurrentUser,
    Path(id): Path<String>,
    WebForm(form): WebForm<RenameForm>,
) -> Result<Response, AppError> {
    enabled(&state)?;
    let Ok(id) = Uuid::parse_str(&id) else {
        return Err(AppError::NotFound);
    };
    match passkeys::rename(&state.accounts, &current.user, id, &form.name).await {
        Ok(true) => Ok(Redirect::to("/settings/security?notice=passkey-renamed").into_response()),
        Ok(false) => Err(AppError::NotFound),
        Err(PasskeyError::BadName) => {
            super::settings_security::render_page(
                &state,
                &csrf.0,
                &current,
                Errors::one(
                    "passkeys",
                    format!(
                        "Give the passkey a name of 1 to {} characters",
                        passkeys::MAX_NAME_CHARS
                    ),
                ),
                None,
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await
        }
        Err(PasskeyError::Service(failure)) => Err(failure.into()),
        Err(other) => Err(anyhow::anyhow!("renaming a passkey: {other}").into()),
    }
}

#[derive(Template)]
#[template(path = "passkey_remove.html")]
struct RemovePage {
    layout: Layout,
    id: Uuid,
    name: String,
}

#[derive(Deserialize)]
struct RemoveForm {
    #[serde(default)]
    current_password: Option<String>,
}

/// Removes a passkey: at once after a recent passkey sign-in, else after the current
/// password (asked on a page of its own when the form came without it).
async fn remove(
    State(state): State<AppState>,
    csrf: CsrfToken,
    ClientOrigin(origin): ClientOrigin,
    current: CurrentUser,
    Path(id): Path<String>,
    WebForm(form): WebForm<RemoveForm>,
) -> Result<Response, AppError> {
    enabled(&state)?;
    let Ok(id) = Uuid::parse_str(&id) else {
        return Err(AppError::NotFound);
    };
    let accounts = &state.accounts;
    let Some(passkey) = passkeys::list(accounts, &current.user)
        .await?
        .into_iter()
        .find(|p| p.id == id)
    else {
        return Err(AppError::NotFound);
    };
    let recent = recent_passkey_sign_in(&current.session).await?;
    let page = |errors: Errors, status: StatusCode| {
        pages::render(
            status,
            &RemovePage {
                layout: Layout::new("Remove this passkey?", &csrf.0)
                    .signed_in(current.user.email.as_str())
                    .with_errors(errors),
                id,
                name: passkey.name.clone(),
            },
        )
    };
    let password = match (&form.current_password, recent) {
        (_, true) => "",
        (Some(password), false) => password.as_str(),
        (None, false) => return Ok(page(Errors::default(), StatusCode::OK)),
    };
    match passkeys::confirm_owner(accounts, &current.user, recent, password, &origin).await {
        Ok(()) => {}
        Err(err) => {
            let errors = wrong_password_errors("current_password", err)?;
            return Ok(page(errors, StatusCode::UNPROCESSABLE_ENTITY));
        }
    }
    match passkeys::remove(accounts, &current.user, id, &origin).await {
        Ok(_) => Ok(Redirect::to("/settings/security?notice=passkey-removed").into_response()),
        Err(PasskeyError::Service(failure)) => Err(failure.into()),
        Err(other) => Err(anyhow::anyhow!("removing a passkey: {other}").into()),
    }
}

#[derive(Deserialize)]
struct ResetOptionsForm {
    #[serde(default)]
    token: String,
}

/// Options for proving a passkey on the reset form of a usable link.
async fn reset_options(
    State(state): State<AppState>,
    jar: CookieJar,
    WebForm(form): WebForm<ResetOptionsForm>,
) -> Result<Response, AppError> {
    let relying = enabled(&state)?;
    let user = match check_link(&state.accounts, &form.token).await {
        Ok(user) => user,
        Err(ResetError::Service(failure)) => return Err(failure.into()),
        Err(_) => {
            return Ok(json_error(
                StatusCode::GONE,
                "This reset link can no longer be used. Ask for a new one.",
            ));
        }
    };
    match passkeys::start_reset(&state.accounts, relying, &user, &binding(&state, &jar)).await {
        Ok(started) => Ok(json(
            StatusCode::OK,
            serde_json::json!({ "ceremony": started.ceremony, "options": started.options }),
        )),
        Err(err) => options_failure(err),
    }
}
