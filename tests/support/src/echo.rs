//! The application a proxy protects in the forward-auth tests: it answers every request
//! with JSON of what reached it (method, path, query, every header as received, in
//! order), and keeps a log of those requests, so a test can tell what the application
//! saw and whether a request reached it at all. `GET /toss-cookie?value=V` also sets the
//! shared session cookie to `V` on the parent domain, as an attacker's page on a sibling
//! host would ("cookie tossing", docs/security.md).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One request as the application received it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// The raw query string, without `?`; empty when there is none.
    pub query: String,
    /// Every header line, lower-case name and value, in the order received (so a
    /// duplicated header shows twice).
    pub headers: Vec<(String, String)>,
}

impl Seen {
    /// Every value of the header `name` (case-insensitive).
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The one value of `name`; panics if it came more than once.
    pub fn header(&self, name: &str) -> Option<&str> {
        let values = self.header_values(name);
        assert!(
            values.len() <= 1,
            "{name} came {} times: {values:?}",
            values.len()
        );
        values.first().copied()
    }

    /// The path with `?query` when there is one: what the client asked for.
    pub fn path_and_query(&self) -> String {
        if self.query.is_empty() {
            self.path.clone()
        } else {
            format!("{}?{}", self.path, self.query)
        }
    }
}

pub struct EchoApp {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    server: JoinHandle<()>,
}

impl EchoApp {
    /// Listens on 127.0.0.1 on a free port.
    pub async fn start() -> EchoApp {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("echo: bind");
        let addr = listener.local_addr().expect("echo: address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new().fallback(echo).with_state(seen.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        EchoApp { addr, seen, server }
    }

    /// Every request that has reached the application so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().map(|s| s.len()).unwrap_or_default()
    }
}

impl Drop for EchoApp {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn echo(State(log): State<Arc<Mutex<Vec<Seen>>>>, request: Request) -> Response {
    let seen = Seen {
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
        query: request.uri().query().unwrap_or("").to_owned(),
        headers: request
            .headers()
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
    };
    if let Ok(mut log) = log.lock() {
        log.push(seen.clone());
    }
    if seen.path == "/toss-cookie"
        && let Some(value) = seen.query.strip_prefix("value=")
    {
        let cookie = format!(
            "latchkey_session={value}; Domain={}; Path=/; HttpOnly; SameSite=Lax",
            crate::proxies::COOKIE_DOMAIN
        );
        return (
            [
                (axum::http::header::CACHE_CONTROL, "no-store".to_owned()),
                (axum::http::header::SET_COOKIE, cookie),
            ],
            axum::Json(seen),
        )
            .into_response();
    }
    (
        [(axum::http::header::CACHE_CONTROL, "no-store")],
        axum::Json(seen),
    )
        .into_response()
}
