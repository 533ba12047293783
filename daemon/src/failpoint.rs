//! Crash points for fault tests: `OUTBOX_FAILPOINTS=name=action,…` makes the
//! process stop short when it reaches a named point.
//!
//! Compiled only with the cargo feature `failpoints` (as tikv/fail-rs does):
//! the test build enables it (the `outbox-tests` crate depends on this crate
//! with it, so `cargo build --workspace --bins` and `cargo test --workspace`
//! get it), a release build (`cargo build --release`, the Docker image's
//! `-p outbox-cli`) does not. Without it [`hit`] and [`hit_async`] are empty
//! and inlined away: no environment variable can make a production daemon
//! abort, pause or hang, and [`announce`] says the variable is ignored.
//!
//! Actions: a probability (`0.05`) aborts the process (like kill -9: no
//! cleanup, no flush) when the draw hits; `pause` stops the process with
//! SIGSTOP the first time the point is reached (a frozen, then resumed
//! "zombie": the test sends SIGCONT); `hang` blocks the calling thread for
//! ever (a stuck loop in a live process); `panic` panics the calling thread
//! every time (a bug in a worker: the daemon must end non-zero, see
//! `crate::workers`); `delay:MS` waits that long there every time (a slow
//! step), `delay:MS:N` only the first N times. Every hit is announced on
//! stderr as `failpoint NAME: …`, so a test counts hits in the daemon's log.
//!
//! Points: `relay-before-kafka-commit` (batch produced, Kafka transaction
//! not yet committed), `relay-after-kafka-commit` (Kafka committed, Postgres
//! not yet), `relay-before-flag` (async, inside the flag update's deadline),
//! `relay-prune-after-detach` (a partition detached to be dropped, not yet
//! settled), `sink-after-insert` (ClickHouse accepted, offsets not yet
//! committed), `stage-before-commit` (records produced, transaction not yet
//! committed).

/// The variable that arms crash points in a test build.
pub const VARIABLE: &str = "OUTBOX_FAILPOINTS";

#[cfg(feature = "failpoints")]
pub use armed::{hit, hit_async};

/// Does nothing: this build has no crash points (see the module doc).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &str) {}

/// Does nothing: this build has no crash points (see the module doc). A
/// ready future rather than an `async fn`, whose state would keep the name.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit_async(_name: &str) -> std::future::Ready<()> {
    std::future::ready(())
}

/// Whether this build has crash points (the `failpoints` feature).
pub const COMPILED: bool = cfg!(feature = "failpoints");

/// Logs, once at start, what becomes of `OUTBOX_FAILPOINTS` when it is
/// set: armed in a test build, ignored with a warning in a build without
/// crash points. Unset, nothing (a command's output stays as it is).
pub fn announce() {
    let Some(spec) = std::env::var(VARIABLE)
        .ok()
        .filter(|s| !s.trim().is_empty())
    else {
        return;
    };
    if COMPILED {
        tracing::warn!(points = %spec, "test build: crash points armed");
    } else {
        tracing::warn!(
            "{VARIABLE} is set but ignored: this build has no crash points (cargo feature `failpoints`)"
        );
    }
}

#[cfg(feature = "failpoints")]
mod armed {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    #[derive(Debug, Clone, Copy, PartialEq)]
    pub(super) enum Action {
        Abort(f64),
        Pause,
        Hang,
        Panic,
        /// Wait this long, the first `times` hits (every hit when `None`).
        Delay(std::time::Duration, Option<u32>),
    }

    static POINTS: OnceLock<Vec<(String, Action)>> = OnceLock::new();
    static PAUSED: AtomicBool = AtomicBool::new(false);
    /// Hits of counted delays so far (one process arms few points).
    static DELAYED: AtomicU32 = AtomicU32::new(0);

    pub(super) fn parse(spec: &str) -> Vec<(String, Action)> {
        spec.split(',')
            .filter_map(|spec| {
                let (name, action) = spec.split_once('=')?;
                let action = match action.trim() {
                    "pause" => Action::Pause,
                    "hang" => Action::Hang,
                    "panic" => Action::Panic,
                    d if d.starts_with("delay:") => {
                        let (ms, times) = match d[6..].split_once(':') {
                            Some((ms, n)) => (ms, Some(n.parse().ok()?)),
                            None => (&d[6..], None),
                        };
                        Action::Delay(std::time::Duration::from_millis(ms.parse().ok()?), times)
                    }
                    p => Action::Abort(p.parse().ok()?),
                };
                Some((name.trim().to_owned(), action))
            })
            .collect()
    }

    fn points() -> &'static [(String, Action)] {
        POINTS.get_or_init(|| parse(&std::env::var(super::VARIABLE).unwrap_or_default()))
    }

    /// Aborts or pauses the process if `name` is armed (see the module doc).
    pub fn hit(name: &str) {
        let Some((_, action)) = points().iter().find(|(n, _)| n == name) else {
            return;
        };
        match *action {
            Action::Abort(p) => {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos());
                if f64::from(nanos % 1_000_000) / 1_000_000.0 < p {
                    eprintln!("failpoint {name}: aborting");
                    std::process::abort();
                }
            }
            Action::Delay(d, times) => {
                if let Some(d) = delay_due(name, d, times) {
                    std::thread::sleep(d);
                }
            }
            Action::Panic => {
                eprintln!("failpoint {name}: panicking");
                panic!("failpoint {name}");
            }
            Action::Hang => {
                eprintln!("failpoint {name}: hanging");
                loop {
                    std::thread::park();
                }
            }
            Action::Pause => {
                if PAUSED.swap(true, Ordering::SeqCst) {
                    return;
                }
                eprintln!("failpoint {name}: pausing (SIGSTOP)");
                stop_this_process();
                eprintln!("failpoint {name}: resumed");
            }
        }
    }

    /// [`hit`] for async code: `delay:MS` sleeps on the runtime's timer (the
    /// task waits, other tasks run); the other actions as in [`hit`].
    pub async fn hit_async(name: &str) {
        match points().iter().find(|(n, _)| n == name) {
            Some((_, Action::Delay(d, times))) => {
                if let Some(d) = delay_due(name, *d, *times) {
                    tokio::time::sleep(d).await;
                }
            }
            Some(_) => hit(name),
            None => {}
        }
    }

    /// The delay to take at this hit, announcing counted ones.
    fn delay_due(
        name: &str,
        d: std::time::Duration,
        times: Option<u32>,
    ) -> Option<std::time::Duration> {
        let Some(times) = times else {
            return Some(d);
        };
        let hit = DELAYED.fetch_add(1, Ordering::SeqCst);
        if hit >= times {
            return None;
        }
        eprintln!("failpoint {name}: delaying {d:?}");
        Some(d)
    }

    /// Stops the whole process with SIGSTOP sent to the calling thread, which
    /// is stopped before `raise` returns: nothing after the crash point runs
    /// until SIGCONT. (The `kill -STOP` child used before raced: the calling
    /// thread sometimes went on, e.g. sent the Kafka commit, before the
    /// process stopped.)
    #[allow(unsafe_code)]
    fn stop_this_process() {
        // SAFETY: raise(3) with a valid signal number has no memory effects.
        unsafe {
            libc::raise(libc::SIGSTOP);
        }
    }
}

#[cfg(all(test, feature = "failpoints"))]
mod tests {
    use super::armed::{Action, parse};

    #[test]
    fn actions_parse() {
        assert_eq!(
            parse("a=0.5, b=pause,c=x,d,e=delay:20:2,f=delay:5,g=panic"),
            vec![
                ("a".to_owned(), Action::Abort(0.5)),
                ("b".to_owned(), Action::Pause),
                (
                    "e".to_owned(),
                    Action::Delay(std::time::Duration::from_millis(20), Some(2))
                ),
                (
                    "f".to_owned(),
                    Action::Delay(std::time::Duration::from_millis(5), None)
                ),
                ("g".to_owned(), Action::Panic),
            ]
        );
    }
}
