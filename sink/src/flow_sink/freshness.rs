//! Freshness: per row loaded, the time from its commit in Postgres (the
//! relay's `committed_at` header) to ClickHouse accepting it
//! (`sink_freshness_seconds`), measured for every row of a live stream's
//! batch and a sample of a backlog's; and, against SINK_MAX_FRESHNESS_MS,
//! the flow held not ready while rows arrive late.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::time::{Interval, MissedTickBehavior};

use super::Context;
use crate::stats::TableStats;

/// The health cause of rows arriving later than SINK_MAX_FRESHNESS_MS.
const FRESHNESS: &str = "freshness";
/// How often freshness is judged against its bound.
const FRESHNESS_CHECK_EVERY: Duration = Duration::from_millis(500);
/// Rows of a batch whose freshness is measured, every one, before only a
/// sample is (see [`sampled`]).
const FRESHNESS_ALL_UP_TO: usize = 1_024;
/// Past [`FRESHNESS_ALL_UP_TO`], one row in this many (by offset).
const FRESHNESS_ONE_IN: i64 = 64;

/// Whether a message's freshness is measured: every row of a batch holding
/// fewer than [`FRESHNESS_ALL_UP_TO`] measured rows (a live stream's
/// batches, whole), then one in [`FRESHNESS_ONE_IN`] — reading the commit
/// time means parsing the message's headers, about a microsecond. The
/// oldest rows, read first, are always measured.
pub(super) fn sampled(stamped: usize, offset: i64) -> bool {
    stamped < FRESHNESS_ALL_UP_TO || offset % FRESHNESS_ONE_IN == 0
}

/// The row's commit time from the relay's header (Unix ms), if there.
pub(super) fn committed_at(headers: Option<&rdkafka::message::BorrowedHeaders>) -> Option<i64> {
    use rdkafka::message::Headers;
    headers?
        .iter()
        .find(|h| h.key == flows::COMMITTED_AT_HEADER)?
        .value
        .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
}

/// Records, per measured row just accepted by ClickHouse (`stamps`: their
/// commit times, Unix ms), the time since its commit; returns the worst,
/// in ms.
pub(super) fn observe(table: &TableStats, stamps: &[i64]) -> i64 {
    if stamps.is_empty() {
        return 0;
    }
    let histogram = table.freshness();
    let now = unix_ms();
    let mut worst = 0;
    for &stamp in stamps {
        let ms = (now - stamp).max(0);
        worst = worst.max(ms);
        histogram.observe(ms as f64 / 1000.0);
    }
    worst
}

/// The judge of SINK_MAX_FRESHNESS_MS: the worst of the last stored batch
/// and the oldest row not yet stored, against the bound.
pub(super) struct Freshness {
    /// SINK_MAX_FRESHNESS_MS; `None`: not judged.
    bound: Option<Duration>,
    /// How long rows may be late before the flow is not ready.
    stall_after: Duration,
    every: Interval,
    /// Since when rows arrive late.
    late_since: Option<Instant>,
}

impl Freshness {
    pub fn new(bound: Option<Duration>, stall_after: Duration) -> Self {
        let mut every = tokio::time::interval(FRESHNESS_CHECK_EVERY);
        every.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            bound,
            stall_after,
            every,
            late_since: None,
        }
    }

    pub fn is_bounded(&self) -> bool {
        self.bound.is_some()
    }

    pub async fn tick(&mut self) {
        self.every.tick().await;
    }

    /// Holds the flow not ready while rows arrive later than
    /// SINK_MAX_FRESHNESS_MS after their commit — the last batch stored, or
    /// the oldest row still waiting (`oldest`, Unix ms) — for the stall
    /// window; clears it once they are on time.
    pub fn judge(&mut self, cx: &Context, oldest: Option<i64>) {
        let Some(bound) = self.bound else {
            return;
        };
        let waiting = oldest.map_or(0, |o| (unix_ms() - o).max(0));
        let worst = waiting.max(cx.stats.last_freshness_ms.load(Ordering::Relaxed));
        let bound_ms = bound.as_millis() as i64;
        if worst <= bound_ms {
            if self.late_since.take().is_some() {
                tracing::info!(
                    flow = cx.name(),
                    worst_ms = worst,
                    "rows arrive within SINK_MAX_FRESHNESS_MS again"
                );
            }
            cx.health.unblock(FRESHNESS);
            return;
        }
        let since = *self.late_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= self.stall_after {
            cx.health.block(
                FRESHNESS,
                &format!(
                    "rows loaded {worst} ms after their commit, over SINK_MAX_FRESHNESS_MS ({bound_ms} ms), for {} s",
                    since.elapsed().as_secs()
                ),
            );
        }
    }
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
