//! A TCP relay between the service and Postgres that counts round trips: the frontend
//! messages that make the client wait for an answer, read from the length framing of the
//! protocol. A Sync `S` that ends an extended-protocol statement (Parse, Bind, Execute…
//! since the last Sync) or a simple Query `Q` is a statement's round trip; a Sync with
//! nothing before it is a ping (sqlx 0.8 pings every connection as it goes back to its
//! pool, in a task of its own after the statement), counted apart.

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail};

/// Untyped startup-phase requests after which another untyped message follows.
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;

pub struct Relay {
    pub port: u16,
    counts: Arc<Counts>,
}

/// What the relay has seen, over every connection.
#[derive(Default)]
struct Counts {
    statements: AtomicU64,
    pings: AtomicU64,
}

impl Relay {
    /// Listens on a free loopback port and forwards every connection to `upstream`
    /// (`host:port`), each direction on a thread of its own (blocking I/O: the relay
    /// never waits behind the load generator's runtime).
    pub fn start(upstream: String) -> anyhow::Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the relay")?;
        let port = listener.local_addr()?.port();
        let counts = Arc::new(Counts::default());
        let counter = counts.clone();
        std::thread::Builder::new()
            .name("relay".into())
            .spawn(move || {
                for client in listener.incoming().flatten() {
                    if let Err(err) = forward(client, &upstream, counter.clone()) {
                        eprintln!("bench: relay: {err:#}");
                    }
                }
            })
            .context("starting the relay")?;
        Ok(Relay { port, counts })
    }

    /// Statements' round trips counted so far, over every connection.
    pub fn round_trips(&self) -> u64 {
        self.counts.statements.load(Ordering::Relaxed)
    }

    /// Bare Syncs (pings) counted so far, over every connection.
    pub fn pings(&self) -> u64 {
        self.counts.pings.load(Ordering::Relaxed)
    }
}

/// `host:port` of a `postgres://user@host:port?...` base URL (port 5432 if absent).
pub fn upstream_of(pg_base: &str) -> anyhow::Result<String> {
    let Some((_, rest)) = pg_base.split_once("://") else {
        bail!("LATCHKEY_BENCH_PG {pg_base:?} is not a postgres:// URL");
    };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    if host_port.is_empty() || host_port.starts_with('[') {
        bail!("the relay needs a host name or IPv4 address in LATCHKEY_BENCH_PG");
    }
    Ok(if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:5432")
    })
}

/// A `postgres://user@host:port/...` base URL's scheme and authority (`user@host:port`).
fn scheme_and_authority(pg_base: &str) -> (&str, &str) {
    let (scheme, rest) = pg_base.split_once("://").unwrap_or(("postgres", pg_base));
    (scheme, rest.split(['/', '?']).next().unwrap_or_default())
}

/// The base URL's own server with the options the relay's URL has (TLS off), for an
/// instance that bypasses the relay.
pub fn direct_base(pg_base: &str) -> String {
    let (scheme, authority) = scheme_and_authority(pg_base);
    format!("{scheme}://{authority}?sslmode=disable")
}

/// The base URL with the relay as the server and TLS off (the relay reads the protocol).
pub fn base_via_relay(pg_base: &str, port: u16) -> String {
    let (scheme, authority) = scheme_and_authority(pg_base);
    let user = authority
        .rsplit_once('@')
        .map_or(String::new(), |(u, _)| format!("{u}@"));
    format!("{scheme}://{user}127.0.0.1:{port}?sslmode=disable")
}

fn forward(client: TcpStream, upstream: &str, counter: Arc<Counts>) -> anyhow::Result<()> {
    let server = TcpStream::connect(upstream).with_context(|| format!("connecting {upstream}"))?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (client_in, server_out) = (client.try_clone()?, server.try_clone()?);
    std::thread::Builder::new()
        .name("relay-up".into())
        .spawn(move || {
            let mut framing = Framing::new(counter);
            copy_until_closed(client_in, server_out, |bytes| framing.feed(bytes));
        })?;
    std::thread::Builder::new()
        .name("relay-down".into())
        .spawn(move || copy_until_closed(server, client, |_| {}))?;
    Ok(())
}

/// Copies `from` to `to`, showing each chunk to `inspect`; then closes both.
fn copy_until_closed(mut from: TcpStream, mut to: TcpStream, mut inspect: impl FnMut(&[u8])) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                inspect(&buf[..n]);
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// Follows the frontend's message boundaries across reads: untyped startup messages
/// (length, code) until the StartupMessage itself, then typed ones (tag, length).
struct Framing {
    started: bool,
    header: Vec<u8>,
    skip: usize,
    /// Whether a message other than Sync came since the last Sync.
    work_since_sync: bool,
    counts: Arc<Counts>,
}

impl Framing {
    fn new(counts: Arc<Counts>) -> Framing {
        Framing {
            started: false,
            header: Vec::with_capacity(8),
            skip: 0,
            work_since_sync: false,
            counts,
        }
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let need = if self.started { 5 } else { 8 };
            let n = (need - self.header.len()).min(bytes.len());
            self.header.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.header.len() == need {
                self.end_header();
            }
        }
    }

    /// A whole header is in: count it if it ends a round trip, skip the rest of its body.
    fn end_header(&mut self) {
        let word = |at: usize| {
            let b = &self.header[at..at + 4];
            u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
        };
        if self.started {
            match self.header[0] {
                b'Q' => {
                    self.counts.statements.fetch_add(1, Ordering::Relaxed);
                }
                b'S' if self.work_since_sync => {
                    self.counts.statements.fetch_add(1, Ordering::Relaxed);
                    self.work_since_sync = false;
                }
                b'S' => {
                    self.counts.pings.fetch_add(1, Ordering::Relaxed);
                }
                _ => self.work_since_sync = true,
            }
            self.skip = word(1).saturating_sub(4);
        } else {
            let code = word(4) as u32;
            self.started = code != SSL_REQUEST && code != GSSENC_REQUEST;
            self.skip = word(0).saturating_sub(8);
        }
        self.header.clear();
    }
}
