//! Capped exponential backoff with jitter, used for every retry of an
//! unreachable or failing service.
//!
//! Hand-made on purpose: the retry loops here are `select!`s that also
//! watch shutdown, log each attempt's delay and report attempts to health;
//! they need only "the next delay". Crates such as `backon` drive a retried
//! future themselves, which would mean wrapping each loop body in a closure
//! and losing the shutdown branch — more code than these 40 lines.

use std::time::Duration;

/// Why 10 s: long enough that a service down for minutes sees a handful of
/// attempts a minute, short enough that recovery is noticed within seconds of
/// the service coming back (a stalled pipeline costs latency, not data).
pub const BACKOFF_CEILING: Duration = Duration::from_secs(10);
const BACKOFF_START: Duration = Duration::from_millis(100);

#[derive(Clone, Debug)]
pub struct Backoff {
    next: Duration,
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
            next: start,
            ceiling,
            attempts: 0,
        }
    }

    /// The delay before the next attempt: doubles up to the ceiling, with
    /// ±20% jitter so that several daemons do not retry in lockstep.
    pub fn next_delay(&mut self) -> Duration {
        self.attempts += 1;
        let base = self.next;
        self.next = (self.next * 2).min(self.ceiling);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let jitter = 0.8 + f64::from(nanos % 400) / 1000.0;
        base.mul_f64(jitter).min(self.ceiling)
    }

    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    pub fn reset(&mut self) {
        *self = Self::new(BACKOFF_START, self.ceiling);
    }
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
}
