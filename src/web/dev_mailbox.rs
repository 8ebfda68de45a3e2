//! `/dev/mailbox`: the mail the file transport wrote, in the browser, for someone trying
//! latchkey on their own machine. The router merges these routes only when mail goes to
//! files and `public_url` is http on a loopback address; anywhere else they do not exist.

use askama::Template;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use time::OffsetDateTime;

use super::AppError;
use super::AppState;
use super::pages::{self, Layout};
use crate::mail::mailbox;

pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/dev/mailbox", get(list))
        .route("/dev/mailbox/{name}", get(show))
        .route("/dev/mailbox/{name}/html", get(show_html))
        .route_layer(axum::middleware::from_fn_with_state(
            state,
            only_this_machine,
        ))
}

/// The mailbox holds live reset links: it answers only a browser on this machine that
/// asked for `public_url`'s own host. A peer elsewhere (`LATCHKEY_LISTEN=0.0.0.0`) or a
/// page on another site whose name was rebound to 127.0.0.1 (its requests carry that
/// site's `Host`) gets the same 404 as when there is no mailbox at all.
async fn only_this_machine(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let peer_is_loopback = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .is_some_and(|axum::extract::ConnectInfo(addr)| addr.ip().to_canonical().is_loopback());
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok());
    if peer_is_loopback && host.is_some_and(|host| is_public_host(&state.config.public_url, host)) {
        next.run(request).await
    } else {
        tracing::info!("dev mailbox refused: not a loopback peer asking for public_url's host");
        AppError::NotFound.into_response()
    }
}

/// Whether a `Host` header names `public_url`'s host and port.
fn is_public_host(public_url: &url::Url, host: &str) -> bool {
    let Some(want_host) = public_url.host_str() else {
        return false;
    };
    let Some(want_port) = public_url.port_or_known_default() else {
        return false;
    };
    let (name, port) = match host.rsplit_once(':') {
        // An IPv6 literal without a port ends in `]`.
        Some((name, port)) if !port.contains(']') => match port.parse::<u16>() {
            Ok(port) => (name, port),
            Err(_) => return false,
        },
        _ => (host, 80),
    };
    name.eq_ignore_ascii_case(want_host) && port == want_port
}

struct Row {
    name: String,
    when: String,
    to: String,
    subject: String,
}

#[derive(Template)]
#[template(path = "dev_mailbox.html")]
struct ListPage {
    layout: Layout,
    dir: String,
    rows: Vec<Row>,
}

/// A piece of a text body: plain text, or a link to make clickable.
struct Piece {
    text: String,
    link: bool,
}

#[derive(Template)]
#[template(path = "dev_mailbox_message.html")]
struct MessagePage {
    layout: Layout,
    name: String,
    when: String,
    from: String,
    to: String,
    date: String,
    text: Option<Vec<Piece>>,
    html_links: Vec<String>,
    has_html: bool,
}

fn when(at: std::time::SystemTime) -> String {
    let at = OffsetDateTime::from(at);
    at.format(time::macros::format_description!(
        "[year]-[month]-[day] [hour]:[minute]:[second] UTC"
    ))
    .unwrap_or_else(|_| at.to_string())
}

fn is_link_char(c: char) -> bool {
    !c.is_whitespace() && !matches!(c, '<' | '>' | '"' | '\'')
}

/// The text with its `http://` and `https://` URLs marked as links.
fn pieces(text: &str) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = [rest.find("http://"), rest.find("https://")]
        .into_iter()
        .flatten()
        .min()
    {
        let len = rest[start..]
            .find(|c: char| !is_link_char(c))
            .unwrap_or(rest.len() - start);
        if start > 0 {
            out.push(Piece {
                text: rest[..start].to_owned(),
                link: false,
            });
        }
        out.push(Piece {
            text: rest[start..start + len].to_owned(),
            link: true,
        });
        rest = &rest[start + len..];
    }
    if !rest.is_empty() {
        out.push(Piece {
            text: rest.to_owned(),
            link: false,
        });
    }
    out
}

/// The `href="http…"` targets of an HTML part, in order, each once.
fn html_links(html: &str) -> Vec<String> {
    let mut links: Vec<String> = Vec::new();
    for chunk in html.split("href=\"").skip(1) {
        let Some(end) = chunk.find('"') else { continue };
        let link = chunk[..end].replace("&amp;", "&");
        if (link.starts_with("http://") || link.starts_with("https://")) && !links.contains(&link) {
            links.push(link);
        }
    }
    links
}

async fn list(State(state): State<AppState>) -> Result<Response, AppError> {
    let entries = mailbox::list(&state.config.mail_dir).await?;
    let rows = entries
        .into_iter()
        .map(|e| Row {
            when: when(e.modified),
            name: e.name,
            to: e.to,
            subject: e.subject,
        })
        .collect();
    Ok(pages::render(
        StatusCode::OK,
        &ListPage {
            layout: Layout::new("Development mailbox", ""),
            dir: state.config.mail_dir.display().to_string(),
            rows,
        },
    ))
}

async fn show(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, AppError> {
    let Some(message) = mailbox::read(&state.config.mail_dir, &name).await? else {
        return Err(AppError::NotFound);
    };
    let title = if message.subject.is_empty() {
        "(no subject)".to_owned()
    } else {
        message.subject.clone()
    };
    Ok(pages::render(
        StatusCode::OK,
        &MessagePage {
            layout: Layout::new(&title, ""),
            when: when(message.modified),
            from: message.from,
            to: message.to,
            date: message.date,
            text: message.text.as_deref().map(pieces),
            html_links: message.html.as_deref().map(html_links).unwrap_or_default(),
            has_html: message.html.is_some(),
            name: message.name,
        },
    ))
}

/// The HTML part as the mail client would show it, in a sandbox: no script, no plugins,
/// nothing loaded from anywhere (the mails carry no images).
async fn show_html(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, AppError> {
    let Some(html) = mailbox::read(&state.config.mail_dir, &name)
        .await?
        .and_then(|m| m.html)
    else {
        return Err(AppError::NotFound);
    };
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "sandbox allow-top-navigation-by-user-activation; default-src 'none'; \
                     style-src 'unsafe-inline'; frame-ancestors 'none'",
                ),
            ),
        ],
        html,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_in_text_are_marked_and_the_rest_kept() {
        let got = pieces("open this:\n\nhttp://127.0.0.1:8080/x?token=ab-c\n\nthen go");
        let shown: Vec<(&str, bool)> = got.iter().map(|p| (p.text.as_str(), p.link)).collect();
        assert_eq!(
            shown,
            [
                ("open this:\n\n", false),
                ("http://127.0.0.1:8080/x?token=ab-c", true),
                ("\n\nthen go", false)
            ]
        );
    }

    #[test]
    fn html_links_are_found_once_each() {
        let html = r#"<a href="http://a/x?a=1&amp;b=2">x</a><a href="http://a/x?a=1&amp;b=2">y</a><a href="javascript:alert(1)">z</a>"#;
        assert_eq!(html_links(html), ["http://a/x?a=1&b=2"]);
    }
}
