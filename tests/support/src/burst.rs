//! Races as an attacker runs them: every connection is opened first, each from its own
//! loopback source address if asked, and only when all are connected is every request
//! written at once. A sequential loop proves nothing about a race; this does.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::cookie::CookieStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::sync::Barrier;

use crate::helpers::Browser;

/// One request of a burst: raw HTTP/1.1 bytes, sent to `target` from `source`.
#[derive(Clone)]
pub struct RawRequest {
    pub source: IpAddr,
    pub target: SocketAddr,
    pub bytes: Vec<u8>,
}

/// What came back on one connection.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `Set-Cookie` value for `name`, if the answer set one.
    pub fn set_cookie(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie"))
            .find_map(|(_, v)| v.strip_prefix(&format!("{name}=")))
            .and_then(|rest| rest.split(';').next())
            .map(str::to_owned)
    }
}

/// `127.0.0.(2 + i % n)`: `n` distinct loopback source addresses.
pub fn source(i: usize, n: usize) -> IpAddr {
    let last = 2 + (i % n.max(1)) as u8;
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// `host:port` of a base URL such as `http://127.0.0.1:8080`.
pub fn target(base: &str) -> SocketAddr {
    base.trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .expect("base is http://ip:port")
}

/// The `Cookie` header a browser would send to `base`.
pub fn cookie_header(browser: &Browser, base: &str) -> String {
    let url = base.parse().expect("url");
    browser
        .jar
        .cookies(&url)
        .and_then(|v| v.to_str().ok().map(str::to_owned))
        .unwrap_or_default()
}

/// A urlencoded form POST, with `Connection: close` so the answer ends at EOF.
pub fn form_post(base: &str, path: &str, cookie: &str, fields: &[(&str, &str)]) -> Vec<u8> {
    let body: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish();
    let host = base.trim_start_matches("http://").trim_end_matches('/');
    format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\nCookie: {cookie}\r\nUser-Agent: burst\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A GET with the given cookies.
pub fn get(base: &str, path: &str, cookie: &str) -> Vec<u8> {
    let host = base.trim_start_matches("http://").trim_end_matches('/');
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\nUser-Agent: burst\r\n\
         Connection: close\r\n\r\n"
    )
    .into_bytes()
}

/// Opens every connection, waits until all are open, then writes every request at the
/// same instant and reads each answer. Answers come back in the order of `requests`; a
/// connection that fails gives status 0 (and the error as its body).
pub async fn burst(requests: Vec<RawRequest>) -> Vec<RawResponse> {
    let barrier = Arc::new(Barrier::new(requests.len()));
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|request| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                let connected = connect(request.source, request.target).await;
                // Everyone waits here, connected or not, so the writes go out together.
                barrier.wait().await;
                let mut stream = match connected {
                    Ok(stream) => stream,
                    Err(e) => return failed(format!("connect: {e}")),
                };
                if let Err(e) = stream.write_all(&request.bytes).await {
                    return failed(format!("write: {e}"));
                }
                let mut raw = Vec::new();
                let read =
                    tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut raw));
                match read.await {
                    Ok(Ok(_)) => parse(&raw),
                    Ok(Err(e)) => failed(format!("read: {e}")),
                    Err(_) => failed("read: timed out".into()),
                }
            })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        out.push(task.await.expect("burst task"));
    }
    out
}

async fn connect(source: IpAddr, target: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    socket.set_nodelay(true)?;
    socket.connect(target).await
}

fn failed(why: String) -> RawResponse {
    RawResponse {
        status: 0,
        headers: Vec::new(),
        body: why,
    }
}

fn parse(raw: &[u8]) -> RawResponse {
    let text = String::from_utf8_lossy(raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return failed(format!("no head in {} bytes", raw.len()));
    };
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let chunked = headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    RawResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

/// How many answers had each status, e.g. `[(303, 5), (429, 25)]`, for messages.
pub fn tally(responses: &[RawResponse]) -> Vec<(u16, usize)> {
    let mut counts: std::collections::BTreeMap<u16, usize> = Default::default();
    for r in responses {
        *counts.entry(r.status).or_default() += 1;
    }
    counts.into_iter().collect()
}
