//! The server's own limits, as a slow or greedy client meets them: a request head that
//! never ends is cut off, connections are capped, `/metrics` can live on its own port,
//! and the development key is private.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::burst::target;
use crate::helpers::*;

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
