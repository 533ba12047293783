//! The relay's metrics, every series registered here (once per flow and
//! table, so the hot loop only touches atomics).

use std::time::Duration;

use daemon::metrics::{Histogram, Metrics, ROWS, SECONDS, Series};

use crate::publisher::PublishTimings;

/// Per flow.
pub struct FlowStats {
    rows_read: Series,
    pub failed: Series,
    last_publish: Series,
    pub leader: Series,
    pub batches: Series,
    pub batch_rows: Histogram,
    fetch: Histogram,
    send: Histogram,
    kafka_commit: Histogram,
    pg_commit: Histogram,
    republished: [Series; 3],
}

/// Why rows already committed in Kafka were left unflagged, so that they
/// are published again (`relay_rows_republished_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Republish {
    /// Flagging the batch or committing its Postgres transaction failed
    /// (the session was lost, a deadline passed).
    Postgres,
    /// The other lane failed while this batch was in Kafka; every batch not
    /// yet committed in Postgres is rolled back.
    OtherLane,
    /// The Kafka commit failed without saying the transaction was not
    /// committed: the batch may be in Kafka (counted as if it were).
    KafkaCommitOutcomeUnknown,
}

impl Republish {
    const ALL: [Self; 3] = [
        Self::Postgres,
        Self::OtherLane,
        Self::KafkaCommitOutcomeUnknown,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::OtherLane => "other_lane",
            Self::KafkaCommitOutcomeUnknown => "kafka_commit_outcome_unknown",
        }
    }
}

const REPUBLISHED_HELP: &str = "Rows committed (or, for kafka_commit_outcome_unknown, possibly committed) in Kafka but not flagged sent, so published again: reason postgres (their flag or Postgres commit failed), other_lane (rolled back with a failure on the other lane), kafka_commit_outcome_unknown. A crash between the two commits is not counted (the process is gone).";

/// Per source table of a flow.
pub struct TableStats {
    pub published: Series,
    pub set_aside: Series,
    /// Transactions running at the end of the scan's window (see
    /// `window`), summed over the shards this relay leads: each adds what
    /// its count changed by.
    waiting_for: Series,
    waiting_shown: std::sync::atomic::AtomicI64,
}

const PHASE_HELP: &str = "Time per batch in each phase: fetch (take the rows, flag them sent and build JSON, one statement), send (hand to the producer), kafka_commit, pg_commit (makes the flags durable).";

impl FlowStats {
    pub fn new(metrics: &Metrics, flow: &str) -> Self {
        let phase = |name: &str| {
            metrics.histogram(
                "relay_batch_phase_seconds",
                PHASE_HELP,
                SECONDS,
                &[("flow", flow), ("phase", name)],
            )
        };
        Self {
            rows_read: metrics.counter(
                "relay_rows_read_total",
                "Rows locked and read from Postgres (a batch retried is read again).",
                &[("flow", flow)],
            ),
            failed: metrics.counter(
                "relay_batches_failed_total",
                "Batches not published (nothing flagged; retried).",
                &[("flow", flow)],
            ),
            last_publish: metrics.gauge(
                "relay_last_publish_timestamp_seconds",
                "Unix time of the last batch committed in Kafka and Postgres.",
                &[("flow", flow)],
            ),
            leader: metrics.gauge(
                "relay_leader",
                "Shards of the flow this relay leads (1 while it is the active instance of a flow not split).",
                &[("flow", flow)],
            ),
            batches: metrics.counter(
                "relay_batches_published_total",
                "Batches committed in Kafka and Postgres.",
                &[("flow", flow)],
            ),
            batch_rows: metrics.histogram(
                "relay_batch_rows",
                "Rows per published batch.",
                ROWS,
                &[("flow", flow)],
            ),
            fetch: phase("fetch"),
            send: phase("send"),
            kafka_commit: phase("kafka_commit"),
            pg_commit: phase("pg_commit"),
            republished: Republish::ALL.map(|why| {
                metrics.counter(
                    "relay_rows_republished_total",
                    REPUBLISHED_HELP,
                    &[("flow", flow), ("reason", why.label())],
                )
            }),
        }
    }

    /// `rows` already in Kafka go again (see [`Republish`]).
    pub fn republished(&self, why: Republish, rows: usize) {
        if rows > 0 {
            self.republished[why as usize].add(rows as i64);
        }
    }

    pub fn fetched(&self, rows: usize, took: Duration) {
        self.rows_read.add(rows as i64);
        self.fetch.observe_duration(took);
    }

    pub fn published(&self, rows: usize, kafka: PublishTimings, commit: Duration) {
        self.batches.inc();
        self.batch_rows.observe(rows as f64);
        self.send.observe_duration(kafka.send);
        self.kafka_commit.observe_duration(kafka.commit);
        self.pg_commit.observe_duration(commit);
        self.last_publish.set(daemon::time::unix_now());
    }
}

impl TableStats {
    pub fn new(metrics: &Metrics, flow: &str, table: &str) -> Self {
        let labels = [("flow", flow), ("table", table)];
        Self {
            published: metrics.counter(
                "relay_rows_published_total",
                "Rows published to Kafka and flagged sent.",
                &labels,
            ),
            set_aside: metrics.counter(
                "relay_rows_set_aside_total",
                "Rows Kafka refused for good, moved to outbox_dead_rows.",
                &labels,
            ),
            waiting_for: metrics.gauge(
                "relay_scan_running_transactions",
                "Transactions still running when the active relay's current window was cut (their rows go out in a later window); summed over the shards it leads. A figure stuck high points at long-running writers.",
                &labels,
            ),
            waiting_shown: std::sync::atomic::AtomicI64::new(0),
        }
    }

    /// This scan's running transactions now (0 once it stops leading).
    pub fn show_waiting_for(&self, running: usize) {
        let running = running as i64;
        let before = self
            .waiting_shown
            .swap(running, std::sync::atomic::Ordering::Relaxed);
        self.waiting_for.add(running - before);
    }
}

/// A source table's backlog as the probe saw it (see `probe`).
pub struct BacklogStats {
    pub rows: Series,
    pub oldest_age_s: Series,
}

impl BacklogStats {
    pub fn new(metrics: &Metrics, flow: &str, table: &str) -> Self {
        let labels = [("flow", flow), ("table", table)];
        Self {
            rows: metrics.gauge(
                "relay_backlog_rows",
                "Pending rows in the source table (counted up to 1,000,000).",
                &labels,
            ),
            oldest_age_s: metrics.gauge(
                "relay_oldest_pending_age_seconds",
                "How long the oldest pending row has been the oldest, as seen by the probe (every few seconds).",
                &labels,
            ),
        }
    }
}

/// Rows the prune deleted from a source table (see `prune`).
pub fn pruned_rows(metrics: &Metrics, flow: &str, table: &str) -> Series {
    metrics.counter(
        "relay_pruned_rows_total",
        "Sent rows deleted from a source table for being older than the flow's retention.",
        &[("flow", flow), ("table", table)],
    )
}

/// When the flow's last prune finished.
pub fn last_prune(metrics: &Metrics, flow: &str) -> Series {
    metrics.gauge(
        "relay_last_prune_timestamp_seconds",
        "When the flow's last prune finished (Unix seconds).",
        &[("flow", flow)],
    )
}
