//! The one way to render: an askama page inside `base.html`, with its status code.

use std::time::Duration;

use askama::Template;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

/// What every page's layout needs: its heading, the form token, who is signed in,
/// the error summary and the success banner.
#[derive(Debug, Default)]
pub struct Layout {
    pub title: String,
    pub csrf: String,
    pub user_email: Option<String>,
    pub errors: Errors,
    pub notice: Option<String>,
}

impl Layout {
    pub fn new(title: &str, csrf: &str) -> Layout {
        Layout {
            title: title.to_owned(),
            csrf: csrf.to_owned(),
            ..Layout::default()
        }
    }

    pub fn signed_in(mut self, email: &str) -> Layout {
        self.user_email = Some(email.to_owned());
        self
    }

    pub fn with_errors(mut self, errors: Errors) -> Layout {
        self.errors = errors;
        self
    }

    pub fn with_notice(mut self, notice: Option<String>) -> Layout {
        self.notice = notice;
        self
    }

    /// "Error: " first, so a screen reader hears the outcome before the page name.
    pub fn document_title(&self) -> String {
        if self.errors.is_empty() {
            format!("{} – latchkey", self.title)
        } else {
            format!("Error: {} – latchkey", self.title)
        }
    }
}

/// Messages for the fields of a form, in the order the fields appear.
#[derive(Debug, Default, Clone)]
pub struct Errors(Vec<(&'static str, String)>);

impl Errors {
    pub fn one(field: &'static str, message: impl Into<String>) -> Errors {
        Errors(vec![(field, message.into())])
    }

    pub fn add(&mut self, field: &'static str, message: impl Into<String>) {
        self.0.push((field, message.into()));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn get(&self, field: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(f, _)| *f == field)
            .map(|(_, m)| m.as_str())
    }

    pub fn has(&self, field: &str) -> bool {
        self.get(field).is_some()
    }

    pub fn iter(&self) -> impl Iterator<Item = &(&'static str, String)> {
        self.0.iter()
    }
}

/// Renders `page` with `status`; a template error is logged and becomes a plain 500.
pub fn render(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(err) => {
            tracing::error!(error = %err, "rendering a page failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "Sorry, something went wrong. Try again later.",
            )
                .into_response()
        }
    }
}

#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage {
    pub layout: Layout,
    pub message: String,
}

impl ErrorPage {
    pub fn new(heading: &str, message: &str) -> ErrorPage {
        ErrorPage {
            layout: Layout::new(heading, ""),
            message: message.to_owned(),
        }
    }
}

/// "45 seconds", "2 minutes": a wait said in words.
pub fn describe_wait(wait: Duration) -> String {
    let secs = wait.as_secs().max(1);
    if secs < 60 {
        format!("{secs} second{}", if secs == 1 { "" } else { "s" })
    } else {
        let minutes = secs.div_ceil(60);
        format!("{minutes} minute{}", if minutes == 1 { "" } else { "s" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_read_as_words() {
        assert_eq!(describe_wait(Duration::from_secs(1)), "1 second");
        assert_eq!(describe_wait(Duration::from_secs(45)), "45 seconds");
        assert_eq!(describe_wait(Duration::from_secs(60)), "1 minute");
        assert_eq!(describe_wait(Duration::from_secs(61)), "2 minutes");
    }
}
