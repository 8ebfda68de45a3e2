//! The server's own limits, as a slow or greedy client meets them: a request head that
//! never ends is cut off, connections are capped, `/metrics` can live on its own port,
//! and the development key is private.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::burst::{RawRequest, burst, source, tally, target};
use crate::helpers::*;
use crate::process::{ServiceProcess, fresh_database};

/// Half a request head: the request line and one header, then nothing.
const HALF_HEAD: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n";

/// Opens a connection and sends half a request head.
async fn half_head(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(HALF_HEAD)
        .await
        .expect("write half a head");
    stream
}

/// How long until the server closes `stream` (EOF or reset), or `None` within `cap`.
async fn time_until_closed(stream: &mut TcpStream, cap: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + cap;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
            // Whatever the server says (a 408, say) before closing is fine.
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn a_request_head_that_never_ends_is_cut_off_while_others_are_served() {
    let app = TestApp::spawn_with(|c| c.header_read_timeout_secs = 1).await;
    let mut slow = half_head(target(&app.base)).await;
    let waiting = tokio::spawn(async move {
        let closed = time_until_closed(&mut slow, Duration::from_secs(15)).await;
        (closed, slow)
    });

    // Meanwhile another connection is answered at once.
    let started = Instant::now();
    let response = app.browser().get("/healthz").await;
    assert_status(&response, StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    let (closed, _slow) = waiting.await.expect("reader");
    eprintln!("half-head connection closed after {closed:?} (None: still open at 15 s)");
    let closed = closed.expect("the server closes a half-sent head (still open after 15 s)");
    assert!(
        closed < Duration::from_secs(3),
        "closed only after {closed:?}"
    );
}

/// Reads one `/healthz` answer (`ok\n` body) from a keep-alive connection.
async fn read_healthz_answer(stream: &mut TcpStream) -> String {
    let mut raw = Vec::new();
    let mut buf = [0u8; 1024];
    while !raw.ends_with(b"\r\n\r\nok\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("an answer within 5 s")
            .expect("read");
        assert!(
            n > 0,
            "closed mid-answer: {}",
            String::from_utf8_lossy(&raw)
        );
        raw.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&raw).into_owned()
}

#[tokio::test]
async fn keep_alive_serves_several_requests_and_an_idle_connection_is_closed() {
    let app = TestApp::spawn_with(|c| c.header_read_timeout_secs = 1).await;
    let mut stream = TcpStream::connect(target(&app.base))
        .await
        .expect("connect");
    for _ in 0..3 {
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let answer = read_healthz_answer(&mut stream).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    // Idle between requests counts as waiting for the next head.
    let closed = time_until_closed(&mut stream, Duration::from_secs(15)).await;
    let closed = closed.expect("an idle keep-alive connection is closed");
    assert!(
        closed < Duration::from_secs(3),
        "closed only after {closed:?}"
    );
}

/// The `latchkey_http_connections_open` gauge of the listener at `base`, read from the
/// metrics listener at `metrics_base`.
async fn open_connections(metrics_base: &str, base: &str) -> f64 {
    let text = Browser::new(metrics_base)
        .get("/metrics")
        .await
        .text()
        .await
        .expect("body");
    let label = format!(
        "latchkey_http_connections_open{{listener=\"{}\"}} ",
        base.trim_start_matches("http://")
    );
    text.lines()
        .find_map(|line| line.strip_prefix(&label))
        .map_or(0.0, |value| value.trim().parse().expect("a number"))
}

#[tokio::test]
async fn ten_slow_connections_get_at_most_four_slots_and_the_server_recovers() {
    const TIMEOUT: Duration = Duration::from_secs(2);
    let app = TestApp::spawn_with(|c| {
        c.header_read_timeout_secs = TIMEOUT.as_secs();
        c.max_connections = 4;
        c.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
    })
    .await;
    let metrics_base = app.metrics_base().expect("a metrics listener");
    let slow: Vec<RawRequest> = (0..10)
        .map(|i| RawRequest {
            source: source(i, 10),
            target: target(&app.base),
            bytes: HALF_HEAD.to_vec(),
        })
        .collect();
    let started = Instant::now();
    let slow = tokio::spawn(burst(slow));

    // While they hold the slots, the server never serves more than four connections,
    // and a normal request waits its turn rather than being served beside them.
    let base = app.base.clone();
    let normal = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let asked = Instant::now();
        let status = Browser::new(&base).get("/healthz").await.status();
        (status, asked.elapsed())
    });
    let mut most = 0.0f64;
    while !slow.is_finished() {
        most = most.max(open_connections(&metrics_base, &app.base).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let slow = slow.await.expect("burst");
    let took = started.elapsed();
    let (status, waited) = normal.await.expect("normal request");
    eprintln!(
        "10 half heads, cap 4, timeout {TIMEOUT:?}: all closed after {took:?}; \
         most open at once {most}; a normal request waited {waited:?}"
    );
    assert!(slow.iter().all(|r| r.status != 200), "{:?}", tally(&slow));
    assert_eq!(most, 4.0, "connections served at once");
    // Ten connections four at a time take three timeouts; five or more at once, two.
    assert!(took >= TIMEOUT * 3 - Duration::from_millis(300), "{took:?}");
    assert_eq!(status, StatusCode::OK);
    assert!(waited >= TIMEOUT - Duration::from_millis(500), "{waited:?}");

    // Recovered: the slots are free again and requests are answered at once.
    let asked = Instant::now();
    assert_status(&app.browser().get("/healthz").await, StatusCode::OK);
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
    let open = open_connections(&metrics_base, &app.base).await;
    assert!(
        open <= 1.0,
        "the slow connections let go of their slots: {open} open"
    );
}

#[tokio::test]
async fn metrics_are_served_only_on_their_own_listener() {
    let app =
        TestApp::spawn_with(|c| c.metrics_listen = Some("127.0.0.1:0".parse().expect("addr")))
            .await;
    let metrics_base = app.metrics_base().expect("a metrics listener");
    assert_status(&app.browser().get("/healthz").await, StatusCode::OK);

    assert_status(&app.browser().get("/metrics").await, StatusCode::NOT_FOUND);
    let metrics = Browser::new(&metrics_base).get("/metrics").await;
    assert_status(&metrics, StatusCode::OK);
    let text = metrics.text().await.expect("body");
    assert!(
        text.contains("latchkey_http_request_duration_seconds"),
        "{text}"
    );
    // Only /metrics answers there: the pages stay on the main listener.
    for path in ["/sign-in", "/healthz", "/"] {
        assert_status(
            &Browser::new(&metrics_base).get(path).await,
            StatusCode::NOT_FOUND,
        );
    }

    // Unset, no metrics are served at all.
    let plain = TestApp::spawn().await;
    assert_status(
        &plain.browser().get("/metrics").await,
        StatusCode::NOT_FOUND,
    );
    assert!(plain.metrics_base().is_none());
}

#[tokio::test]
async fn a_generated_development_key_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;

    // No SMTP URL either: the file transport's var/mail must not make var/ public first.
    let database = fresh_database();
    let process = ServiceProcess::start_without_secret_key(&database, "", &[]).await;
    let mode = |path: &str| {
        std::fs::metadata(process.dir().join(path))
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .permissions()
            .mode()
            & 0o777
    };
    let (key, var) = (mode("var/secret_key"), mode("var"));
    eprintln!("var/secret_key {key:o}, var/ {var:o}");
    assert_eq!(key, 0o600, "var/secret_key is {key:o}");
    assert_eq!(var, 0o700, "var/ is {var:o}");
}
