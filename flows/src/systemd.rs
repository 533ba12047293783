//! systemd's notify protocol (`Type=notify`): `READY=1` once the daemon
//! serves, `WATCHDOG=1` at half the unit's `WatchdogSec=`, `STOPPING=1` at
//! shutdown. Outside systemd (no `NOTIFY_SOCKET`) every call does nothing.
//!
//! The watchdog pings come from the async runtime itself, so a daemon whose
//! runtime hangs stops pinging and systemd restarts it. A pipeline that is
//! alive but stalled (its backlog not moving) is reported by `/readyz`, not
//! by the watchdog: restarting would not cure a database that is down.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Sends `state` (e.g. `READY=1`) to systemd; false when not under systemd
/// or the message could not be sent.
pub fn notify(state: &str) -> bool {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(path) => notify_to(&path, state),
        None => false,
    }
}

fn notify_to(path: &std::ffi::OsStr, state: &str) -> bool {
    let Ok(socket) = UnixDatagram::unbound() else {
        return false;
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        // An abstract socket (Linux).
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
    } else {
        socket.send_to(state.as_bytes(), path)
    };
    sent.is_ok()
}

/// The ping interval systemd asks for (half of `WATCHDOG_USEC`), if this
/// process is the one it watches.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Some(pid) = std::env::var("WATCHDOG_PID").ok() {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Tells systemd the daemon is ready and keeps the watchdog fed until
/// `shutdown`, then says it is stopping.
pub fn ready(shutdown: &CancellationToken) {
    if !notify("READY=1") {
        return;
    }
    tracing::debug!("notified systemd: ready");
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        let interval = watchdog_interval();
        loop {
            let tick = async {
                match interval {
                    Some(every) => tokio::time::sleep(every).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = tick => { notify("WATCHDOG=1"); }
                () = shutdown.cancelled() => {
                    notify("STOPPING=1");
                    return;
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_to_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("notify-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).expect("bind");
        assert!(notify_to(path.as_os_str(), "READY=1"));
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn reports_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("outbox-notify-test-{}", std::process::id());
        let addr =
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("addr");
        let listener = UnixDatagram::bind_addr(&addr).expect("bind");
        assert!(notify_to(
            std::ffi::OsStr::new(&format!("@{name}")),
            "WATCHDOG=1"
        ));
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"WATCHDOG=1");
    }

    #[test]
    fn a_missing_socket_is_not_fatal() {
        assert!(!notify_to(
            std::ffi::OsStr::new("/nonexistent/notify.sock"),
            "READY=1"
        ));
    }
}
