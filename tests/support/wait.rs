//! Waiting on conditions with a deadline, never on bare sleeps.

use std::future::Future;
use std::panic::Location;
use std::time::{Duration, Instant};

/// Polls `check` every 50 ms until it returns Ok(true). Panics at the
/// deadline naming the condition, the caller's location and the last error or
/// state seen.
#[track_caller]
pub fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F) -> impl Future<Output = ()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    wait_for(what, timeout, move || {
        let fut = check();
        async move {
            Ok(match fut.await? {
                true => Ok(()),
                false => Err("condition false".to_owned()),
            })
        }
    })
}

/// Like [`wait_until`], with the check saying what it saw when the
/// condition does not hold yet (`Ok(Err(state))`): the panic at the
/// deadline shows the last state, not just "false".
#[track_caller]
pub fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F) -> impl Future<Output = ()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Result<(), String>>>,
{
    let caller = Location::caller();
    let what = what.to_owned();
    async move {
        let deadline = Instant::now() + timeout;
        let mut last: String;
        loop {
            match check().await {
                Ok(Ok(())) => return,
                Ok(Err(state)) => last = state,
                Err(e) => last = format!("error: {e:#}"),
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what} (at {caller}); last: {last}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
