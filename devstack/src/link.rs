//! A network link between two Kafka nodes that a test can break: a TCP
//! forwarder that, while down, forwards nothing either way and accepts no
//! new connection, closing nothing — a path that drops every packet, as in
//! a network partition. When it is up again, what was held goes through
//! (as TCP's retransmissions would deliver it), unless an end gave up on
//! the connection meanwhile.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::watch;

pub struct Link {
    up: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Link {
    /// Listens on `listen` (bound now, so a busy address is an error here)
    /// and forwards to `upstream`, its tasks on `runtime`.
    pub fn start(
        runtime: &Handle,
        listen: SocketAddr,
        upstream: SocketAddr,
    ) -> std::io::Result<Self> {
        let bound = std::net::TcpListener::bind(listen)?;
        bound.set_nonblocking(true)?;
        let (up, watch) = watch::channel(true);
        let task = runtime.spawn(async move {
            match TcpListener::from_std(bound) {
                Ok(listener) => accept(listener, upstream, watch).await,
                Err(error) => eprintln!("link {listen} -> {upstream}: {error}"),
            }
        });
        Ok(Self { up, task })
    }

    /// Drops every packet from now on (connections stay open, silent).
    pub fn down(&self) {
        let _ = self.up.send(false);
    }

    /// Forwards again, what was held first.
    pub fn up(&self) {
        let _ = self.up.send(true);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Accepts while up; each connection forwarded both ways.
async fn accept(listener: TcpListener, upstream: SocketAddr, mut up: watch::Receiver<bool>) {
    loop {
        if up.wait_for(|up| *up).await.is_err() {
            return;
        }
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((client, _)) = accepted {
                    tokio::spawn(forward(client, upstream, up.clone()));
                }
            }
            changed = up.changed() => if changed.is_err() { return },
        }
    }
}

async fn forward(client: TcpStream, upstream: SocketAddr, up: watch::Receiver<bool>) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::spawn(pump(client_read, server_write, up.clone()));
    tokio::spawn(pump(server_read, client_write, up));
}

/// Copies one direction while the link is up; holds what it read while it
/// is down.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut up: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if up.wait_for(|up| *up).await.is_err() {
            return;
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown().await;
                    return;
                }
                Ok(n) => n,
            },
            changed = up.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        if up.wait_for(|up| *up).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
