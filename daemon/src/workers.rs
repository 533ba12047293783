//! How every daemon's `run` ends: its workers (a flow's loop, a shard's,
//! the relay's listener and probe) run in one [`Workers`] set. The first
//! to end with an error or a panic cancels the shutdown token, so the
//! others stop between batches as on SIGTERM; `run` returns that failure
//! once all have stopped, and the binary exits non-zero ([`PANIC_EXIT`]
//! after a panic). A daemon never runs on with one of its workers gone.
//!
//! A panic outside a worker's own task — in a blocking call it awaits or a
//! helper task it spawned, where the caller sees only a failed call and
//! may retry it — is caught by [`stop_on_panic`], which the binaries
//! install: the first panic anywhere in the process cancels the token too,
//! and [`Workers::join`] reports it. A panic is a bug: restarting the
//! process (systemd, Kubernetes) is the one recovery that does not carry
//! on with state the panic left half-updated.

use std::collections::HashMap;
use std::future::Future;
use std::sync::OnceLock;

use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;

/// The exit code after a panic: what Rust itself returns when `main`
/// panics.
pub const PANIC_EXIT: u8 = 101;

/// A panic: where (the worker, or the thread and source location) and its
/// message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{place} panicked: {message}")]
pub struct Panic {
    pub place: String,
    pub message: String,
}

/// Why a daemon's workers stopped before shutdown was asked for.
#[derive(Debug, thiserror::Error)]
pub enum Stopped<E: std::error::Error + 'static> {
    #[error("{worker}: {error}")]
    Failed {
        worker: String,
        #[source]
        error: E,
    },
    #[error(transparent)]
    Panicked(Panic),
}

/// A daemon's workers, each named for the logs.
pub struct Workers<E> {
    set: JoinSet<Result<(), E>>,
    names: HashMap<Id, String>,
    shutdown: CancellationToken,
}

impl<E> Workers<E>
where
    E: std::error::Error + Send + 'static,
{
    /// Workers that cancel `shutdown` when one of them fails.
    pub fn new(shutdown: &CancellationToken) -> Self {
        Self {
            set: JoinSet::new(),
            names: HashMap::new(),
            shutdown: shutdown.clone(),
        }
    }

    pub fn spawn<F>(&mut self, name: impl Into<String>, work: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
    {
        let handle = self.set.spawn(work);
        self.names.insert(handle.id(), name.into());
    }

    /// Waits for every worker. The first to fail (error or panic) cancels
    /// the shutdown token; once all have stopped, the failure is returned
    /// — a panic before an error, and a panic [`stop_on_panic`] caught
    /// elsewhere in the process counts.
    pub async fn join(mut self) -> Result<(), Stopped<E>> {
        let mut failed: Option<Stopped<E>> = None;
        let mut panicked: Option<Panic> = None;
        while let Some(joined) = self.set.join_next_with_id().await {
            match joined {
                Ok((_, Ok(()))) => {}
                Ok((id, Err(error))) => {
                    let worker = self.name(id);
                    tracing::error!(worker, %error, "worker failed; stopping the daemon");
                    self.shutdown.cancel();
                    failed.get_or_insert(Stopped::Failed { worker, error });
                }
                Err(join) if join.is_panic() => {
                    let worker = self.name(join.id());
                    let message = payload_message(join.into_panic().as_ref());
                    tracing::error!(worker, panic = %message, "worker panicked; stopping the daemon");
                    self.shutdown.cancel();
                    panicked.get_or_insert(Panic {
                        place: worker,
                        message,
                    });
                }
                // Cancelled: only a runtime shutting down aborts these tasks.
                Err(_) => {}
            }
        }
        match panicked.or_else(first_panic) {
            Some(panic) => Err(Stopped::Panicked(panic)),
            None => failed.map_or(Ok(()), Err),
        }
    }

    fn name(&self, id: Id) -> String {
        self.names
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("worker {id}"))
    }
}

static FIRST_PANIC: OnceLock<Panic> = OnceLock::new();

/// Makes the first panic anywhere in the process stop the daemon: it is
/// printed as before (the previous hook runs), logged, remembered for
/// [`Workers::join`], and `shutdown` is cancelled. For the binaries' `run`
/// commands only: a process-wide hook, which an in-process test harness
/// must not get.
pub fn stop_on_panic(shutdown: &CancellationToken) {
    let shutdown = shutdown.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        let thread = std::thread::current();
        let place = match info.location() {
            Some(at) => format!("{} at {at}", thread.name().unwrap_or("a thread")),
            None => thread.name().unwrap_or("a thread").to_owned(),
        };
        let message = payload_message(info.payload());
        if FIRST_PANIC
            .set(Panic {
                place: place.clone(),
                message: message.clone(),
            })
            .is_ok()
        {
            tracing::error!(place, panic = %message, "panicked; stopping the daemon");
        }
        shutdown.cancel();
    }));
}

/// The first panic [`stop_on_panic`] saw, if any.
pub fn first_panic() -> Option<Panic> {
    FIRST_PANIC.get().cloned()
}

fn payload_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("refused")]
    struct Refused;

    /// A worker that runs until shutdown, like a flow loop.
    async fn until_shutdown(shutdown: CancellationToken) -> Result<(), Refused> {
        shutdown.cancelled().await;
        Ok(())
    }

    #[tokio::test]
    async fn a_failing_worker_stops_the_others_and_is_returned() {
        let shutdown = CancellationToken::new();
        let mut workers = Workers::new(&shutdown);
        workers.spawn("flow a", until_shutdown(shutdown.clone()));
        workers.spawn("flow b", async { Err(Refused) });
        let stopped = workers.join().await;
        assert!(shutdown.is_cancelled());
        assert!(
            matches!(&stopped, Err(Stopped::Failed { worker, .. }) if worker == "flow b"),
            "{stopped:?}"
        );
    }

    #[tokio::test]
    async fn a_panicking_worker_stops_the_others_and_is_returned() {
        let shutdown = CancellationToken::new();
        let mut workers = Workers::new(&shutdown);
        workers.spawn("flow a", until_shutdown(shutdown.clone()));
        workers.spawn("flow b", panics());
        let stopped = workers.join().await;
        assert!(shutdown.is_cancelled());
        assert!(
            matches!(&stopped, Err(Stopped::Panicked(Panic { place, message })) if place == "flow b" && message == "bug in b"),
            "{stopped:?}"
        );
    }

    #[tokio::test]
    async fn workers_stopped_by_shutdown_end_well() {
        let shutdown = CancellationToken::new();
        let mut workers = Workers::new(&shutdown);
        workers.spawn("flow a", until_shutdown(shutdown.clone()));
        shutdown.cancel();
        assert!(workers.join().await.is_ok());
    }

    async fn panics() -> Result<(), Refused> {
        panic!("bug in b")
    }
}
