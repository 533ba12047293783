//! The sink's per-flow metrics, every series registered here, once, so the
//! loop only touches atomics.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::sync::atomic::AtomicI64;

use connections::lag::{LagFrom, LagProbe};
use daemon::metrics::{Histogram, Metrics, ROWS, SECONDS, Series};

use crate::clickhouse::schema::TablePlan;

/// The counter of stored batches; the lag probe reads it as the sign that
/// rows move.
const FLUSHES: &str = "sink_flushes_total";

/// The consumer's lag, from the group's committed offsets
/// (`connections::lag`).
pub const LAG: LagProbe = LagProbe {
    from: LagFrom::Committed,
    gauge: "sink_consumer_lag",
    help: "Messages in the partition after the group's committed offset.",
    marker: FLUSHES,
};

pub struct SinkStats {
    /// Messages taken from Kafka (dead-lettered ones included).
    pub messages_read: Series,
    pub flushes: Series,
    pub last_insert: Series,
    pub insert_failures: Series,
    pub dead_letter_failures: Series,
    /// Offsets of a stored batch left to a partition's new owner.
    pub offsets_left_to_new_owner: Series,
    pub batch_rows: Histogram,
    /// From a batch's first message to its flush decision.
    pub fill: Histogram,
    pub insert: Histogram,
    pub commit: Histogram,
    /// Per target table, in the order of the flow's plans.
    pub tables: Vec<TableStats>,
    /// Per source topic.
    dead_letters: HashMap<String, Series>,
    /// The worst freshness of the last batch stored, ms (judged against
    /// SINK_MAX_FRESHNESS_MS, see `flow_sink::freshness`).
    pub last_freshness_ms: AtomicI64,
    metrics: Metrics,
    flow: String,
}

/// One target table's series.
pub struct TableStats {
    pub rows_inserted: Series,
    pub schema_changes: Series,
    /// 1 while inserts into the table are held.
    pub insert_refused: Series,
    /// Registered with the first row measured: until then the table has
    /// no freshness (the dashboard shows none, rather than an empty one).
    freshness: OnceLock<Histogram>,
    metrics: Metrics,
    labels: [(&'static str, String); 2],
}

const PHASE_HELP: &str = "Time per batch in each phase: fill (first message to flush), insert (ClickHouse, all tables, retries included), commit (Kafka offsets).";
const DEAD_LETTERS: &str = "sink_dead_letters_total";
const DEAD_LETTERS_HELP: &str = "Messages sent to the dead-letter topic.";

/// Bucket bounds of `sink_freshness_seconds`: milliseconds to a minute.
const FRESHNESS_SECONDS: &[f64] = &[
    0.005, 0.01, 0.02, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

impl SinkStats {
    /// `plans`: the flow's target tables, whose series are indexed alike.
    pub fn new(metrics: &Metrics, flow: &str, plans: &[TablePlan]) -> Self {
        let of_flow = [("flow", flow)];
        let phase = |name: &str| {
            metrics.histogram(
                "sink_batch_phase_seconds",
                PHASE_HELP,
                SECONDS,
                &[("flow", flow), ("phase", name)],
            )
        };
        Self {
            messages_read: metrics.counter(
                "sink_messages_read_total",
                "Messages taken from Kafka (dead-lettered ones included; a message read again after a restart counts again).",
                &of_flow,
            ),
            flushes: metrics.counter(FLUSHES, "Batches stored and committed.", &of_flow),
            last_insert: metrics.gauge(
                "sink_last_insert_timestamp_seconds",
                "Unix time of the last batch ClickHouse accepted.",
                &of_flow,
            ),
            insert_failures: metrics.counter(
                "sink_insert_failures_total",
                "ClickHouse inserts that failed and were retried (where the sink reads the table's column types right before each insert, a failed read counts).",
                &of_flow,
            ),
            dead_letter_failures: metrics.counter(
                "sink_dead_letter_failures_total",
                "Attempts to write dead letters that failed (retried; the flow is not ready meanwhile).",
                &of_flow,
            ),
            offsets_left_to_new_owner: metrics.counter(
                "sink_offsets_not_committed_revoked_total",
                "Partition offsets of a stored batch not committed because the partition was revoked meanwhile.",
                &of_flow,
            ),
            batch_rows: metrics.histogram("sink_batch_rows", "Rows per flushed batch.", ROWS, &of_flow),
            fill: phase("fill"),
            insert: phase("insert"),
            commit: phase("commit"),
            tables: plans
                .iter()
                .map(|plan| TableStats::new(metrics, flow, &plan.table))
                .collect(),
            dead_letters: plans
                .iter()
                .map(|plan| (plan.topic.clone(), dead_letter_series(metrics, flow, &plan.topic)))
                .collect(),
            last_freshness_ms: AtomicI64::new(0),
            metrics: metrics.clone(),
            flow: flow.to_owned(),
        }
    }

    /// The dead-letter counter of a source topic.
    pub fn dead_letters(&self, topic: &str) -> Series {
        match self.dead_letters.get(topic) {
            Some(series) => series.clone(),
            None => dead_letter_series(&self.metrics, &self.flow, topic),
        }
    }
}

fn dead_letter_series(metrics: &Metrics, flow: &str, topic: &str) -> Series {
    metrics.counter(
        DEAD_LETTERS,
        DEAD_LETTERS_HELP,
        &[("flow", flow), ("topic", topic)],
    )
}

impl TableStats {
    fn new(metrics: &Metrics, flow: &str, table: &str) -> Self {
        let labels = [("flow", flow), ("table", table)];
        Self {
            rows_inserted: metrics.counter(
                "sink_rows_inserted_total",
                "Rows accepted by ClickHouse.",
                &labels,
            ),
            schema_changes: metrics.counter(
                "sink_schema_changes_total",
                "Target table changes the sink adopted without a restart (a Nullable column added, a type widened).",
                &labels,
            ),
            insert_refused: metrics.gauge(
                "sink_insert_refused",
                "1 while inserts into the target table are held: ClickHouse refuses it for good (dropped, altered, no grant) or a batch does not fit its columns any more; the flow is not ready meanwhile.",
                &labels,
            ),
            freshness: OnceLock::new(),
            metrics: metrics.clone(),
            labels: [("flow", flow.to_owned()), ("table", table.to_owned())],
        }
    }

    /// Per row loaded and measured: seconds from its commit to ClickHouse
    /// accepting it.
    pub fn freshness(&self) -> &Histogram {
        self.freshness.get_or_init(|| {
            let [(f, flow), (t, table)] = &self.labels;
            self.metrics.histogram(
                "sink_freshness_seconds",
                "Per row loaded (every row of a batch up to 1,024, then one in 64): time from its commit in Postgres (the relay's committed_at header) to ClickHouse accepting it.",
                FRESHNESS_SECONDS,
                &[(f, flow.as_str()), (t, table.as_str())],
            )
        })
    }
}
