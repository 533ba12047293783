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
    let caller = Location::caller();
    let what = what.to_owned();
    async move {
        let deadline = Instant::now() + timeout;
        let mut last: String;
        loop {
            match check().await {
                Ok(true) => return,
                Ok(false) => last = "condition false".into(),
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
