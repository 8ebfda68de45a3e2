//! Settings → Security: change password, active sessions, recent activity.

use askama::Template;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use time::OffsetDateTime;
use uuid::Uuid;

use super::csrf::CsrfToken;
use super::pages::{self, Errors, Layout};
use super::reset_password::policy_errors;
use super::{AppError, ClientOrigin, CurrentUser, WebForm};
use crate::app::AppState;
use crate::auth::change::{ChangeError, change_password};
use crate::auth::security::security_overview;
use crate::auth::{Accounts, ServiceError, session as sessions};
use crate::domain::describe_user_agent;
use crate::store::audit::EventKind;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/settings/security", get(show))
        .route("/settings/security/password", post(change))
        .route(
            "/settings/security/sessions/revoke-others",
            post(revoke_others),
        )
        .route(
            "/settings/security/sessions/{public_id}/revoke",
            post(revoke_one),
        )
}

struct SessionRow {
    public_id: Uuid,
    browser: String,
    ip: String,
    current: bool,
    created: String,
    created_iso: String,
    last_seen_ago: String,
    last_seen_iso: String,
}

struct ActivityRow {
    what: &'static str,
    when: String,
    when_iso: String,
    ip: String,
    browser: String,
}

#[derive(Template)]
#[template(path = "settings_security.html")]
struct SecurityPage {
    layout: Layout,
    email: String,
    hint: String,
    two_factor: bool,
    sessions: Vec<SessionRow>,
    has_others: bool,
    activity: Vec<ActivityRow>,
    /// Connected applications (Sign in with latchkey).
    connected: Vec<super::oidc::ConnectedRow>,
}

fn iso(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn human(t: OffsetDateTime) -> String {
    t.format(time::macros::format_description!(
        "[day] [month repr:short] [year], [hour]:[minute] UTC"
    ))
    .unwrap_or_default()
}

/// "just now", "5 minutes ago", "2 hours ago", "3 days ago".
fn ago(t: OffsetDateTime) -> String {
    let secs = (OffsetDateTime::now_utc() - t).whole_seconds().max(0);
    let (n, unit) = match secs {
        0..60 => return "just now".to_owned(),
        60..3600 => (secs / 60, "minute"),
        3600..86400 => (secs / 3600, "hour"),
        _ => (secs / 86400, "day"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

async fn render_page(
    state: &AppState,
    csrf: &str,
    current: &CurrentUser,
    errors: Errors,
    notice: Option<String>,
    status: StatusCode,
) -> Result<Response, AppError> {
    let overview = security_overview(
        &state.accounts,
        &current.user,
        current.session.digest().as_ref(),
    )
    .await?;
    let has_others = overview.has_others();
    let rows: Vec<SessionRow> = overview
        .sessions
        .into_iter()
        .map(|s| SessionRow {
            current: s.current,
            public_id: s.info.public_id,
            browser: describe_user_agent(s.info.user_agent.as_deref()),
            ip: s.info.ip.unwrap_or_else(|| "unknown".into()),
            created: human(s.info.created_at),
            created_iso: iso(s.info.created_at),
            last_seen_ago: ago(s.info.last_seen_at),
            last_seen_iso: iso(s.info.last_seen_at),
        })
        .collect();
    let activity = overview
        .activity
        .into_iter()
        .map(|e| ActivityRow {
            what: EventKind::describe(&e.kind),
            when: human(e.created_at),
            when_iso: iso(e.created_at),
            ip: e.ip.unwrap_or_else(|| "unknown".into()),
            browser: describe_user_agent(e.user_agent.as_deref()),
        })
        .collect();
    let page = SecurityPage {
        layout: Layout::new("Security", csrf)
            .signed_in(current.user.email.as_str())
            .with_errors(errors)
            .with_notice(notice),
        email: current.user.email.to_string(),
        hint: format!(
            "{} characters or more. Spaces and any characters are fine; not a common password, not your email address.",
            if current.user.has_two_factor() {
                state.accounts.policy.min_len_two_factor
            } else {
                state.accounts.policy.min_len_single_factor
            }
        ),
        two_factor: current.user.has_two_factor(),
        has_others,
        sessions: rows,
        activity,
        connected: super::oidc::connected_rows(&state.oidc, current.user.id).await?,
    };
    Ok(pages::render(status, &page))
}

#[derive(Deserialize)]
struct NoticeQuery {
    notice: Option<String>,
    count: Option<u64>,
}

fn notice_text(query: &NoticeQuery) -> Option<String> {
    let others = |n: u64| match n {
        0 => "No other sessions were signed in.".to_owned(),
        1 => "1 other session was signed out.".to_owned(),
        n => format!("{n} other sessions were signed out."),
    };
    match query.notice.as_deref()? {
        "password-changed" => Some(format!(
            "Your password was changed. {}",
            others(query.count.unwrap_or(0))
        )),
        "sessions-revoked" => Some(others(query.count.unwrap_or(0))),
        "session-revoked" => Some("The session was signed out.".to_owned()),
        "application-removed" => Some("The application no longer has access.".to_owned()),
        "two-factor-off" => Some("Two-factor authentication is off.".to_owned()),
        _ => None,
    }
}

async fn show(
    State(state): State<AppState>,
    csrf: CsrfToken,
    current: CurrentUser,
    Query(query): Query<NoticeQuery>,
) -> Result<Response, AppError> {
    render_page(
        &state,
        &csrf.0,
        &current,
        Errors::default(),
        notice_text(&query),
        StatusCode::OK,
    )
    .await
}

#[derive(Deserialize)]
struct ChangeForm {
    #[serde(default)]
    current_password: String,
    #[serde(default)]
    new_password: String,
    #[serde(default)]
    new_password_confirm: String,
}

async fn change(
    State(state): State<AppState>,
    csrf: CsrfToken,
    ClientOrigin(origin): ClientOrigin,
    current: CurrentUser,
    WebForm(form): WebForm<ChangeForm>,
) -> Result<Response, AppError> {
    let outcome = change_password(
        &state.accounts,
        current.user.id,
        current.session.digest().as_ref(),
        &form.current_password,
        &form.new_password,
        &form.new_password_confirm,
        &origin,
    )
    .await;
    let errors = match outcome {
        Ok(changed) => {
            current
                .session
                .rotate_for_password(changed.password_set_at)
                .await?;
            return Ok(Redirect::to(&format!(
                "/settings/security?notice=password-changed&count={}",
                changed.signed_out
            ))
            .into_response());
        }
        Err(ChangeError::WrongCurrent) => {
            Errors::one("current_password", "Your current password is incorrect")
        }
        Err(ChangeError::SameAsCurrent) => Errors::one(
            "new_password",
            "Your new password must be different from your current password",
        ),
        Err(ChangeError::Policy(violation)) => policy_errors(&violation),
        Err(ChangeError::SessionEnded) => {
            current.session.sign_out().await?;
            return Ok(Redirect::to("/sign-in").into_response());
        }
        Err(ChangeError::Service(ServiceError::Throttled { retry_after })) => Errors::one(
            "current_password",
            format!(
                "Too many attempts. Wait {} and try again.",
                pages::describe_wait(retry_after)
            ),
        ),
        Err(ChangeError::Service(failure)) => return Err(failure.into()),
    };
    render_page(
        &state,
        &csrf.0,
        &current,
        errors,
        None,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await
}

async fn revoke_others(
    State(accounts): State<Accounts>,
    ClientOrigin(origin): ClientOrigin,
    current: CurrentUser,
) -> Result<Response, AppError> {
    let keep = current.session.digest();
    let count = sessions::sign_out_others(&accounts, &current.user, keep.as_ref(), &origin).await?;
    Ok(Redirect::to(&format!(
        "/settings/security?notice=sessions-revoked&count={count}"
    ))
    .into_response())
}

async fn revoke_one(
    State(accounts): State<Accounts>,
    ClientOrigin(origin): ClientOrigin,
    current: CurrentUser,
    Path(public_id): Path<String>,
) -> Result<Response, AppError> {
    let Ok(public_id) = Uuid::parse_str(&public_id) else {
        return Err(AppError::NotFound);
    };
    sessions::sign_out_one(&accounts, &current.user, public_id, &origin).await?;
    Ok(Redirect::to("/settings/security?notice=session-revoked").into_response())
}
