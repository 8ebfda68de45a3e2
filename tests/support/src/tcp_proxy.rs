//! A TCP proxy the test controls, put between the service and Postgres to simulate an
//! outage. [`TcpProxy::cut`] closes every open connection, then refuses new ones in one
//! of two ways ([`Outage`]); [`TcpProxy::restore`] lets connections through again.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// How a cut proxy treats new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outage {
    /// Nothing listens any more: connecting fails with "connection refused", as when
    /// Postgres is stopped.
    Refused,
    /// Connections are accepted and closed at once, as by a load balancer in front of a
    /// dead database.
    Dropped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Up,
    Cut(Outage),
}

pub struct TcpProxy {
    pub addr: SocketAddr,
    mode: watch::Sender<(Mode, u64)>,
    server: JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on 127.0.0.1 on a free port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("tcp proxy: bind");
        let addr = listener.local_addr().expect("tcp proxy: address");
        let (mode, watching) = watch::channel((Mode::Up, 0));
        let server = tokio::spawn(serve(listener, addr, upstream, watching));
        TcpProxy { addr, mode, server }
    }

    /// Closes every open connection and treats new ones as `outage` says, until
    /// [`TcpProxy::restore`].
    pub fn cut(&self, outage: Outage) {
        self.mode
            .send_modify(|(mode, cuts)| (*mode, *cuts) = (Mode::Cut(outage), *cuts + 1));
    }

    pub fn restore(&self) {
        self.mode.send_modify(|(mode, _)| *mode = Mode::Up);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn serve(
    listener: TcpListener,
    addr: SocketAddr,
    upstream: SocketAddr,
    mut mode: watch::Receiver<(Mode, u64)>,
) {
    let mut listener = Some(listener);
    let mut connections = JoinSet::new();
    loop {
        let current = mode.borrow_and_update().0;
        match current {
            Mode::Cut(Outage::Refused) => listener = None,
            _ if listener.is_none() => {
                // Listen on the same port again (SO_REUSEADDR is set by tokio).
                loop {
                    match TcpListener::bind(addr).await {
                        Ok(bound) => break listener = Some(bound),
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            }
            _ => {}
        }
        tokio::select! {
            accepted = async { listener.as_ref()?.accept().await.ok() }, if listener.is_some() => {
                let Some((client, _)) = accepted else { continue };
                if current != Mode::Up {
                    drop(client);
                    continue;
                }
                let cuts = mode.clone();
                connections.spawn(forward(client, upstream, cuts));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = mode.changed() => {}
        }
    }
}

async fn forward(
    mut client: TcpStream,
    upstream: SocketAddr,
    mut mode: watch::Receiver<(Mode, u64)>,
) {
    let cuts = mode.borrow_and_update().1;
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let cut = async {
        while mode.changed().await.is_ok() {
            if mode.borrow().1 != cuts {
                return;
            }
        }
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        () = cut => {}
    }
    // Dropping both streams closes both sides.
}
