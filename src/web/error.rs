//! `AppError`: what a request can fail with beyond its own form errors, and the page each gets.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::pages::{self, ErrorPage};
use crate::auth::ServiceError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Missing or wrong CSRF token, or a cross-site request.
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    /// The request could not be read as a form.
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("not found")]
    NotFound,
    #[error("too many attempts")]
    Throttled { retry_after: std::time::Duration },
    /// Hashing queue full or the database out of reach: try again shortly.
    #[error("service unavailable")]
    Unavailable,
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl From<ServiceError> for AppError {
    fn from(failure: ServiceError) -> AppError {
        match failure {
            ServiceError::Throttled { retry_after } => AppError::Throttled { retry_after },
            ServiceError::Busy => AppError::Unavailable,
            ServiceError::Unexpected(e) => AppError::from(e),
        }
    }
}

/// A database that cannot be reached is an outage (503), not a bug (500).
fn is_unavailable(err: &anyhow::Error) -> bool {
    crate::auth::is_unavailable(err)
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, heading, message): (StatusCode, &str, &str) = match &self {
            AppError::Forbidden(why) => {
                tracing::warn!(reason = why, "refused a request");
                (
                    StatusCode::FORBIDDEN,
                    "This form has expired",
                    "Go back, reload the page and try again.",
                )
            }
            AppError::BadRequest(why) => {
                tracing::info!(reason = %why, "unreadable request");
                (
                    StatusCode::BAD_REQUEST,
                    "Something was wrong with that request",
                    "Go back and try again.",
                )
            }
            AppError::NotFound => (
                StatusCode::NOT_FOUND,
                "Page not found",
                "Check the address, or go to the home page.",
            ),
            AppError::Throttled { retry_after } => {
                let mut page = pages::render(
                    StatusCode::TOO_MANY_REQUESTS,
                    &ErrorPage::new(
                        "Too many attempts",
                        &format!("Wait {} and try again.", pages::describe_wait(*retry_after)),
                    ),
                );
                if let Ok(v) = HeaderValue::from_str(&retry_after.as_secs().to_string()) {
                    page.headers_mut().insert(header::RETRY_AFTER, v);
                }
                return page;
            }
            AppError::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Sorry, the service is busy",
                "Nothing was changed. Try again in a few seconds.",
            ),
            AppError::Unexpected(err) if is_unavailable(err) => {
                tracing::error!(error = format!("{err:#}"), "database unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Sorry, the service is unavailable",
                    "Try again in a few minutes.",
                )
            }
            AppError::Unexpected(err) => {
                tracing::error!(error = format!("{err:#}"), "request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Sorry, something went wrong",
                    "Try again later.",
                )
            }
        };
        let mut response = pages::render(status, &ErrorPage::new(heading, message));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        response
    }
}
