//! `/`: the signed-in home page, with the Settings menu.

use askama::Template;
use axum::Router;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;

use super::AppState;
use super::CurrentUser;
use super::csrf::CsrfToken;
use super::pages::{self, Layout};

pub fn router() -> Router<AppState> {
    Router::new().route("/", get(show))
}

#[derive(Template)]
#[template(path = "home.html")]
struct HomePage {
    layout: Layout,
    email: String,
}

async fn show(csrf: CsrfToken, current: CurrentUser) -> Response {
    let page = HomePage {
        layout: Layout::new("Your account", &csrf.0).signed_in(current.user.email.as_str()),
        email: current.user.email.to_string(),
    };
    pages::render(StatusCode::OK, &page)
}
