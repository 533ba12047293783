//! Capped exponential backoff with jitter, used for every retry of an
//! unreachable or failing service.
//!
//! Hand-made on purpose: a retry here waits under the shutdown token, logs
//! the delay it is about to wait and reports attempts to health; it needs
//! only "wait the next delay, unless shut down" ([`Backoff::wait`]). Crates
//! such as `backon` drive a retried future themselves, which would mean
//! wrapping each loop body in a closure and losing the shutdown branch —
//! more code than these lines.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Why 10 s: long enough that a service down for minutes sees a handful of
/// attempts a minute, short enough that recovery is noticed within seconds of
/// the service coming back (a stalled pipeline costs latency, not data).
pub const BACKOFF_CEILING: Duration = Duration::from_secs(10);
const BACKOFF_START: Duration = Duration::from_millis(100);

#[derive(Clone, Debug)]
pub struct Backoff {
    /// The next delay before jitter.
    base: Duration,
    /// The next delay, jitter applied: what [`Backoff::upcoming`] says and
    /// the next wait sleeps.
    upcoming: Duration,
    ceiling: Duration,
    attempts: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(BACKOFF_START, BACKOFF_CEILING)
    }
}

impl Backoff {
    pub fn new(start: Duration, ceiling: Duration) -> Self {
        Self {
            base: start,
            upcoming: jittered(start, ceiling),
            ceiling,
            attempts: 0,
        }
    }

    /// Sleeps the next delay unless `shutdown` fires first: true when the
    /// delay is over (retry now), false on shutdown (give up).
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = shutdown.cancelled() => false,
        }
    }

    /// The delay the next [`Backoff::wait`] sleeps, for the log line that
    /// announces the retry.
    pub fn upcoming(&self) -> Duration {
        self.upcoming
    }

    /// The delay before the next attempt: doubles up to the ceiling, with
    /// ±20% jitter so that several daemons do not retry in lockstep.
    pub fn next_delay(&mut self) -> Duration {
        self.attempts += 1;
        let delay = self.upcoming;
        self.base = (self.base * 2).min(self.ceiling);
        self.upcoming = jittered(self.base, self.ceiling);
        delay
    }

    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    pub fn reset(&mut self) {
        *self = Self::new(BACKOFF_START, self.ceiling);
    }
}

/// `base` ±20%, at most `ceiling`.
fn jittered(base: Duration, ceiling: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let jitter = 0.8 + f64::from(nanos % 400) / 1000.0;
    base.mul_f64(jitter).min(ceiling)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_ceiling_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(80) && first <= Duration::from_millis(120));
        for _ in 0..10 {
            assert!(b.next_delay() <= Duration::from_secs(1));
        }
        assert!(b.next_delay() >= Duration::from_millis(800));
        assert_eq!(b.attempts(), 12);
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(120));
    }

    #[test]
    fn upcoming_is_the_delay_waited_next() {
        let mut b = Backoff::default();
        for _ in 0..8 {
            let told = b.upcoming();
            assert_eq!(b.next_delay(), told);
        }
    }

    #[tokio::test]
    async fn waits_the_delay_or_gives_up_on_shutdown() {
        let shutdown = CancellationToken::new();
        let mut b = Backoff::new(Duration::from_millis(20), Duration::from_millis(20));
        let started = std::time::Instant::now();
        assert!(b.wait(&shutdown).await, "the delay is over: retry");
        assert!(started.elapsed() >= Duration::from_millis(16));
        assert_eq!(b.attempts(), 1);

        let mut long = Backoff::new(Duration::from_secs(60), Duration::from_secs(60));
        shutdown.cancel();
        let started = std::time::Instant::now();
        assert!(!long.wait(&shutdown).await, "shut down: give up");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
