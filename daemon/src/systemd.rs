//! systemd's notify protocol (`Type=notify`): `READY=1` once the daemon
//! serves, `WATCHDOG=1` at half the unit's `WatchdogSec=`, `STOPPING=1` at
//! shutdown. Outside systemd (no `NOTIFY_SOCKET`) every call does nothing.
//!
//! The watchdog pings come from the async runtime itself, so a daemon whose
//! runtime hangs stops pinging and systemd restarts it; so does one whose
//! flow loop stopped turning ([`Beats`]: a loop that has not beaten for its
//! `stuck_after` is stuck — every wait inside it is bounded, so that is a
//! hang, not a slow database). A pipeline that is alive but stalled (its
//! backlog not moving, e.g. a database that is down while the loop retries)
//! is reported by `/readyz`, not by the watchdog: restarting would not cure
//! a database that is down.
//!
//! The notify call is hand-made on purpose: the protocol is one datagram to
//! a Unix socket, and `notify_to` takes the socket's path, so the tests
//! check path and abstract sockets without setting `NOTIFY_SOCKET` in a
//! multi-threaded test process (the `sd-notify` crate reads only the
//! process environment). The watchdog logic ([`Beats`]) is the product's own.

use std::collections::BTreeMap;
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok()? != std::process::id()
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// When each flow loop last turned. Cheap to clone.
#[derive(Clone, Default)]
pub struct Beats {
    last: Arc<Mutex<BTreeMap<String, Instant>>>,
}

impl Beats {
    /// `flow`'s loop is turning.
    pub fn beat(&self, flow: &str) {
        if let Ok(mut last) = self.last.lock() {
            last.insert(flow.to_owned(), Instant::now());
        }
    }

    /// The flow whose loop has not turned for longer than `after`, and for
    /// how long.
    pub fn stuck(&self, after: Duration) -> Option<(String, Duration)> {
        let last = self.last.lock().ok()?;
        last.iter()
            .map(|(flow, at)| (flow.clone(), at.elapsed()))
            .filter(|(_, quiet)| *quiet > after)
            .max_by_key(|(_, quiet)| *quiet)
    }
}

/// Tells systemd the daemon is ready and keeps the watchdog fed until
/// `shutdown`, then says it is stopping.
pub fn ready(shutdown: &CancellationToken) {
    ready_watching(shutdown, Beats::default(), Duration::MAX);
}

/// [`ready`], feeding the watchdog only while no loop of `beats` has been
/// quiet for longer than `stuck_after`: a stuck flow gets the daemon
/// restarted by systemd (`WatchdogSec=`).
pub fn ready_watching(shutdown: &CancellationToken, beats: Beats, stuck_after: Duration) {
    if !notify("READY=1") {
        return;
    }
    tracing::debug!("notified systemd: ready");
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        let interval = watchdog_interval();
        let mut reported = false;
        loop {
            let tick = async {
                match interval {
                    Some(every) => tokio::time::sleep(every).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = tick => match beats.stuck(stuck_after) {
                    None => {
                        notify("WATCHDOG=1");
                        reported = false;
                    }
                    Some((flow, quiet)) => {
                        if !reported {
                            tracing::error!(flow, quiet_s = quiet.as_secs(), "flow loop stuck; no longer feeding the systemd watchdog");
                            reported = true;
                        }
                    }
                },
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
    fn a_loop_quiet_too_long_is_stuck() {
        let beats = Beats::default();
        assert_eq!(beats.stuck(Duration::ZERO), None, "no loops, nothing stuck");
        beats.beat("a");
        assert_eq!(beats.stuck(Duration::from_secs(60)), None);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(
            beats
                .stuck(Duration::from_millis(1))
                .map(|(f, _)| f)
                .as_deref(),
            Some("a")
        );
        beats.beat("a");
        assert_eq!(beats.stuck(Duration::from_secs(60)), None);
    }

    #[test]
    fn a_missing_socket_is_not_fatal() {
        assert!(!notify_to(
            std::ffi::OsStr::new("/nonexistent/notify.sock"),
            "READY=1"
        ));
    }
}
