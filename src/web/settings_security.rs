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

use super::browser::describe_user_agent;
use super::csrf::CsrfToken;
use super::pages::{self, Errors, Layout};
use super::reset_password::policy_errors;
use super::{ClientOrigin, CurrentUser, WebForm};
use crate::app::AppState;
use crate::auth::Failure;
use crate::auth::change::{ChangeError, change_password};
use crate::error::AppError;
use crate::store::audit::{self, EventKind};
use crate::store::sessions::{self, id_hash};

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
    let current_hash = current.session.id().map(|id| id_hash(&id));
    let mut rows: Vec<SessionRow> = sessions::list_for_user(&state.pool, current.user.id)
        .await?
        .into_iter()
        .map(|s| SessionRow {
            current: Some(&s.id_hash) == current_hash.as_ref(),
            public_id: s.public_id,
            browser: describe_user_agent(s.user_agent.as_deref()),
            ip: s.ip.unwrap_or_else(|| "unknown".into()),
            created: human(s.created_at),
            created_iso: iso(s.created_at),
            last_seen_ago: ago(s.last_seen_at),
            last_seen_iso: iso(s.last_seen_at),
        })
        .collect();
    // This device first, so the unfamiliar ones stand out below it.
    rows.sort_by_key(|r| !r.current);
    let activity = audit::recent_for_user(&state.pool, current.user.id, 20)
        .await?
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
                state.policy.min_len_two_factor
            } else {
                state.policy.min_len_single_factor
            }
        ),
        two_factor: current.user.has_two_factor(),
        has_others: rows.iter().any(|r| !r.current),
        sessions: rows,
        activity,
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
        &state,
        current.user.id,
        &current.session,
        &form.current_password,
        &form.new_password,
        &form.new_password_confirm,
        &origin,
    )
    .await;
    let errors = match outcome {
        Ok(signed_out) => {
            return Ok(Redirect::to(&format!(
                "/settings/security?notice=password-changed&count={signed_out}"
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
        Err(ChangeError::SessionEnded) => return Ok(Redirect::to("/sign-in").into_response()),
        Err(ChangeError::Failure(Failure::Throttled { retry_after })) => Errors::one(
            "current_password",
            format!(
                "Too many attempts. Wait {} and try again.",
                pages::describe_wait(retry_after)
            ),
        ),
        Err(ChangeError::Failure(failure)) => return Err(failure.into()),
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
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    current: CurrentUser,
) -> Result<Response, AppError> {
    let keep = current.session.id();
    let mut conn = state.pool.acquire().await.map_err(anyhow::Error::from)?;
    let count = sessions::delete_for_user(&mut conn, current.user.id, keep.as_ref()).await?;
    audit::record(
        &mut *conn,
        EventKind::SessionsRevoked,
        Some(current.user.id),
        Some(current.user.email.as_str()),
        &origin,
        Some(&format!("{count} sessions")),
    )
    .await?;
    Ok(Redirect::to(&format!(
        "/settings/security?notice=sessions-revoked&count={count}"
    ))
    .into_response())
}

async fn revoke_one(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    current: CurrentUser,
    Path(public_id): Path<String>,
) -> Result<Response, AppError> {
    let Ok(public_id) = Uuid::parse_str(&public_id) else {
        return Err(AppError::NotFound);
    };
    if sessions::delete_one(&state.pool, current.user.id, public_id).await? {
        audit::record(
            &state.pool,
            EventKind::SessionsRevoked,
            Some(current.user.id),
            Some(current.user.email.as_str()),
            &origin,
            Some("1 session"),
        )
        .await?;
    }
    Ok(Redirect::to("/settings/security?notice=session-revoked").into_response())
}
