//! Settings → Security → Two-factor authentication: set up with a QR code, turn off, and
//! make new recovery codes.

use askama::Template;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use qrcode::QrCode;
use qrcode::render::svg;
use serde::Deserialize;

use super::AppState;
use super::csrf::CsrfToken;
use super::pages::{self, Errors, Layout};
use super::reset_password::policy_errors;
use super::{AppError, ClientOrigin, CurrentUser, WebForm};
use crate::auth::ServiceError;
use crate::auth::two_factor::{self, TwoFactorError};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/settings/security/two-factor", get(show))
        .route("/settings/security/two-factor/enable", post(enable))
        .route("/settings/security/two-factor/disable", post(disable))
        .route(
            "/settings/security/two-factor/recovery-codes",
            post(regenerate),
        )
}

#[derive(Template)]
#[template(path = "two_factor.html")]
struct TwoFactorPage {
    layout: Layout,
    email: String,
    enabled: bool,
    unused_codes: i64,
    qr_svg: String,
    secret_groups: Vec<String>,
    min_length: usize,
    needs_new_password: bool,
}

#[derive(Template)]
#[template(path = "recovery_codes.html")]
struct RecoveryCodesPage {
    layout: Layout,
    intro: &'static str,
    codes: Vec<String>,
}

/// The otpauth URI as an inline SVG QR code (inline, so CSP `img-src 'self'` holds).
fn qr_svg(uri: &str) -> anyhow::Result<String> {
    let code = QrCode::new(uri.as_bytes())?;
    let image = code
        .render::<svg::Color<'_>>()
        .min_dimensions(200, 200)
        .dark_color(svg::Color("#000000"))
        .light_color(svg::Color("#ffffff"))
        .build();
    let svg_start = image.find("<svg").unwrap_or(0);
    Ok(image[svg_start..].replacen(
        "<svg",
        "<svg role=\"img\" aria-labelledby=\"qr-label\" focusable=\"false\"",
        1,
    ))
}

async fn render_page(
    state: &AppState,
    csrf: &str,
    current: &CurrentUser,
    errors: Errors,
    needs_new_password: bool,
    status: StatusCode,
) -> Result<Response, AppError> {
    let user = &current.user;
    let enabled = user.has_two_factor();
    let (qr, groups, unused_codes) = if enabled {
        (
            String::new(),
            Vec::new(),
            two_factor::unused_recovery_codes(&state.accounts, user).await?,
        )
    } else {
        let secret = two_factor::pending_secret(&state.accounts, user).await?;
        let base32 = secret.base32();
        let groups = base32
            .as_bytes()
            .chunks(4)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        (qr_svg(&secret.uri(user.email.as_str())?)?, groups, 0)
    };
    let page = TwoFactorPage {
        layout: Layout::new("Two-factor authentication", csrf)
            .signed_in(user.email.as_str())
            .with_errors(errors),
        email: user.email.to_string(),
        enabled,
        unused_codes,
        qr_svg: qr,
        secret_groups: groups,
        min_length: state.accounts.policy.min_len_single_factor,
        needs_new_password,
    };
    Ok(pages::render(status, &page))
}

async fn show(
    State(state): State<AppState>,
    csrf: CsrfToken,
    current: CurrentUser,
) -> Result<Response, AppError> {
    render_page(
        &state,
        &csrf.0,
        &current,
        Errors::default(),
        false,
        StatusCode::OK,
    )
    .await
}

#[derive(Deserialize)]
struct CodeForm {
    #[serde(default)]
    current_password: String,
    #[serde(default)]
    totp_code: String,
    #[serde(default)]
    new_password: Option<String>,
    #[serde(default)]
    new_password_confirm: Option<String>,
}

const WRONG_PASSWORD: &str = "Your current password is incorrect";
const WRONG_CODE: &str = "Enter the 6-digit code from your authenticator app, or a recovery code";

/// Which fields the errors of one form of the page belong to.
struct Fields {
    password: &'static str,
    code: &'static str,
}

/// The form's answer when it failed: 422 with the errors beside the fields.
async fn failed(
    state: &AppState,
    csrf: &str,
    current: &CurrentUser,
    fields: Fields,
    err: TwoFactorError,
) -> Result<Response, AppError> {
    let (errors, needs_new_password) = match err {
        TwoFactorError::WrongPassword => (Errors::one(fields.password, WRONG_PASSWORD), false),
        TwoFactorError::WrongCode => (Errors::one(fields.code, WRONG_CODE), false),
        TwoFactorError::NeedsNewPassword => (
            Errors::one(
                "new_password",
                format!(
                    "Choose a new password of {} characters or more before turning off two-factor authentication",
                    state.accounts.policy.min_len_single_factor
                ),
            ),
            true,
        ),
        TwoFactorError::Policy(violation) => (policy_errors(&violation), true),
        TwoFactorError::Service(ServiceError::Throttled { retry_after }) => (
            Errors::one(
                fields.password,
                format!(
                    "Too many attempts. Wait {} and try again.",
                    pages::describe_wait(retry_after)
                ),
            ),
            false,
        ),
        TwoFactorError::Service(failure) => return Err(failure.into()),
        TwoFactorError::WrongState | TwoFactorError::AccountDisabled => {
            return Ok(Redirect::to("/settings/security/two-factor").into_response());
        }
    };
    render_page(
        state,
        csrf,
        current,
        errors,
        needs_new_password,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await
}

pub(super) fn codes_page(
    csrf: &str,
    current: &CurrentUser,
    title: &str,
    intro: &'static str,
    codes: Vec<String>,
) -> Response {
    pages::render(
        StatusCode::OK,
        &RecoveryCodesPage {
            layout: Layout::new(title, csrf).signed_in(current.user.email.as_str()),
            intro,
            codes,
        },
    )
}

async fn enable(
    State(state): State<AppState>,
    csrf: CsrfToken,
    ClientOrigin(origin): ClientOrigin,
    current: CurrentUser,
    WebForm(form): WebForm<CodeForm>,
) -> Result<Response, AppError> {
    match two_factor::enable(
        &state.accounts,
        &current.user,
        &form.current_password,
        &form.totp_code,
        &origin,
    )
    .await
    {
        Ok(codes) => Ok(codes_page(
            &csrf.0,
            &current,
            "Two-factor authentication is on",
            "From now on, signing in and resetting your password ask for a code from your authenticator app.",
            codes,
        )),
        Err(err) => {
            let fields = Fields {
                password: "current_password",
                code: "totp_code",
            };
            failed(&state, &csrf.0, &current, fields, err).await
        }
    }
}

async fn regenerate(
    State(state): State<AppState>,
    csrf: CsrfToken,
    ClientOrigin(origin): ClientOrigin,
    current: CurrentUser,
    WebForm(form): WebForm<CodeForm>,
) -> Result<Response, AppError> {
    match two_factor::regenerate_recovery_codes(
        &state.accounts,
        &current.user,
        &form.current_password,
        &form.totp_code,
        &origin,
    )
    .await
    {
        Ok(codes) => Ok(codes_page(
            &csrf.0,
            &current,
            "Your new recovery codes",
            "Your old recovery codes no longer work.",
            codes,
        )),
        Err(err) => {
            let fields = Fields {
                password: "codes_current_password",
                code: "codes_totp_code",
            };
            failed(&state, &csrf.0, &current, fields, err).await
        }
    }
}

async fn disable(
    State(state): State<AppState>,
    csrf: CsrfToken,
    ClientOrigin(origin): ClientOrigin,
    current: CurrentUser,
    WebForm(form): WebForm<CodeForm>,
) -> Result<Response, AppError> {
    let new_password = match (&form.new_password, &form.new_password_confirm) {
        (Some(new), confirm) if !new.is_empty() => {
            Some((new.as_str(), confirm.as_deref().unwrap_or("")))
        }
        _ => None,
    };
    match two_factor::disable(
        &state.accounts,
        &current.user,
        current.session.digest().as_ref(),
        &form.current_password,
        &form.totp_code,
        new_password,
        &origin,
    )
    .await
    {
        Ok(new_password_set_at) => {
            if let Some(password_set_at) = new_password_set_at {
                current.session.rotate_for_password(password_set_at).await?;
            }
            Ok(Redirect::to("/settings/security?notice=two-factor-off").into_response())
        }
        Err(err) => {
            let fields = Fields {
                password: "off_current_password",
                code: "off_totp_code",
            };
            failed(&state, &csrf.0, &current, fields, err).await
        }
    }
}
