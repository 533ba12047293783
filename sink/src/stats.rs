//! The sink's per-flow metrics, registered once so the loop only touches
//! atomics.

use daemon::metrics::{Histogram, Metrics, ROWS, SECONDS, Series};

pub struct SinkStats {
    /// Messages taken from Kafka (dead-lettered ones included).
    pub messages_read: Series,
    pub flushes: Series,
    pub last_insert: Series,
    pub insert_failures: Series,
    pub batch_rows: Histogram,
    /// From a batch's first message to its flush decision.
    pub fill: Histogram,
    pub insert: Histogram,
    pub commit: Histogram,
    /// The worst freshness of the last batch stored, ms (judged against
    /// SINK_MAX_FRESHNESS_MS, see `flow_sink`).
    pub last_freshness_ms: std::sync::atomic::AtomicI64,
}

const PHASE_HELP: &str = "Time per batch in each phase: fill (first message to flush), insert (ClickHouse, all tables, retries included), commit (Kafka offsets).";

impl SinkStats {
    pub fn new(metrics: &Metrics, flow: &str) -> Self {
        let phase = |name: &str| {
            metrics.histogram(
                "sink_batch_phase_seconds",
                PHASE_HELP,
                SECONDS,
                &[("flow", flow), ("phase", name)],
            )
        };
        Self {
            last_freshness_ms: std::sync::atomic::AtomicI64::new(0),
            messages_read: metrics.counter(
                "sink_messages_read_total",
                "Messages taken from Kafka (dead-lettered ones included; a message read again after a restart counts again).",
                &[("flow", flow)],
            ),
            flushes: metrics.counter(
                "sink_flushes_total",
                "Batches stored and committed.",
                &[("flow", flow)],
            ),
            last_insert: metrics.gauge(
                "sink_last_insert_timestamp_seconds",
                "Unix time of the last batch ClickHouse accepted.",
                &[("flow", flow)],
            ),
            insert_failures: metrics.counter(
                "sink_insert_failures_total",
                "ClickHouse inserts that failed and were retried (where the sink reads the table's column types right before each insert, a failed read counts).",
                &[("flow", flow)],
            ),
            batch_rows: metrics.histogram(
                "sink_batch_rows",
                "Rows per flushed batch.",
                ROWS,
                &[("flow", flow)],
            ),
            fill: phase("fill"),
            insert: phase("insert"),
            commit: phase("commit"),
        }
    }
}
