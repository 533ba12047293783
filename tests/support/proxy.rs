//! A TCP proxy that a test can cut, black-hole and restore, to take a
//! service away from one daemon without touching the server other tests
//! share.

use std::net::SocketAddr;

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Up,
    /// Connections closed, new ones refused: what a stopped server looks like.
    Cut,
    /// Nothing forwarded and nothing closed: open connections (and new ones)
    /// stay established but silent, like a network path that drops every
    /// packet while something in between still answers TCP.
    Blackhole,
}

pub struct Proxy {
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    task: tokio::task::JoinHandle<()>,
}

/// Keeps `sockets` open, reading and writing nothing, until the proxy is
/// dropped.
async fn hold<T>(sockets: T, mut mode: watch::Receiver<Mode>) {
    while mode.changed().await.is_ok() {}
    drop(sockets);
}

impl Proxy {
    /// Listens on 127.0.0.1 (a free port) and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (mode_tx, mode) = watch::channel(Mode::Up);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let now = *mode.borrow();
                match now {
                    Mode::Cut => drop(client),
                    Mode::Blackhole => {
                        tokio::spawn(hold(client, mode.clone()));
                    }
                    Mode::Up => {
                        let mut mode = mode.clone();
                        tokio::spawn(async move {
                            let Ok(mut server) = TcpStream::connect(upstream).await else {
                                return;
                            };
                            let mut client = client;
                            let changed = tokio::select! {
                                _ = copy_bidirectional(&mut client, &mut server) => None,
                                m = async {
                                    while mode.changed().await.is_ok() {
                                        let m = *mode.borrow();
                                        if m != Mode::Up { return Some(m) }
                                    }
                                    None
                                } => m,
                            };
                            if changed == Some(Mode::Blackhole) {
                                hold((client, server), mode).await;
                            }
                        });
                    }
                }
            }
        });
        Ok(Self {
            addr,
            mode: mode_tx,
            task,
        })
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        let _ = self.mode.send(Mode::Cut);
    }

    /// Forwards nothing more on open connections, without closing them, and
    /// accepts new ones that never reach the server.
    pub fn blackhole(&self) {
        let _ = self.mode.send(Mode::Blackhole);
    }

    /// New connections are forwarded again (black-holed ones stay dead).
    pub fn restore(&self) {
        let _ = self.mode.send(Mode::Up);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
