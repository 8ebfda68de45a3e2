//! `/healthz` (the process runs), `/readyz` (Postgres answers), `/metrics` (Prometheus).
//!
//! The public listener says only "ready" or not: counters and outbox figures move with
//! every mail sent, so reading them after a forgot-password request tells an outsider
//! whether the address has an account. They are served on the metrics listener alone.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use super::AppState;
use crate::mail::outbox::{Backlog, backlog};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
}

/// `/metrics` and the detailed `/readyz`, served only on `metrics_listen`.
pub fn metrics_router() -> Router<AppState> {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/readyz", get(detailed_ready))
}

/// 200 while Postgres answers, whatever the mail relay does; nothing more.
async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    if crate::auth::database_answers(&state.accounts, Duration::from_secs(2)).await {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n")
    }
}

/// The metrics listener's readiness: the body adds the outbox's figures so a stuck
/// outbox shows without reading logs.
async fn detailed_ready(State(state): State<AppState>) -> impl IntoResponse {
    if !crate::auth::database_answers(&state.accounts, Duration::from_secs(2)).await {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "database unavailable\n".to_owned(),
        );
    }
    let mut body = "ready\n".to_owned();
    match backlog(&state.pool).await {
        Ok(backlog) => {
            body.push_str(&format!(
                "outbox pending={} failed={} oldest_pending_secs={:.0}\n",
                backlog.pending, backlog.failed, backlog.oldest_pending_secs
            ));
            if let (Some(class), Some(ago)) =
                (backlog.last_error_class, backlog.last_error_secs_ago)
            {
                body.push_str(&format!("mail last_error={class} secs_ago={ago:.0}\n"));
            }
        }
        Err(err) => tracing::warn!(error = format!("{err:#}"), "reading the outbox backlog"),
    }
    (StatusCode::OK, body)
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut body = state.metrics.render();
    if let Ok(backlog) = backlog(&state.pool).await {
        body.push_str(&outbox_metrics(&backlog));
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}

/// Gauges read from the table at scrape time, so they are right whichever instance sent.
fn outbox_metrics(backlog: &Backlog) -> String {
    let mut out = format!(
        "# TYPE latchkey_outbox_pending gauge\nlatchkey_outbox_pending {}\n\
         # TYPE latchkey_outbox_failed gauge\nlatchkey_outbox_failed {}\n\
         # TYPE latchkey_outbox_oldest_pending_seconds gauge\nlatchkey_outbox_oldest_pending_seconds {:.0}\n",
        backlog.pending, backlog.failed, backlog.oldest_pending_secs
    );
    if let (Some(class), Some(ago)) = (&backlog.last_error_class, backlog.last_error_secs_ago) {
        out.push_str(&format!(
            "# TYPE latchkey_mail_last_error_age_seconds gauge\nlatchkey_mail_last_error_age_seconds{{class=\"{class}\"}} {ago:.0}\n"
        ));
    }
    out
}
