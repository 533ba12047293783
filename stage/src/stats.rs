//! The stage's per-flow metrics, registered once, here, so the loop only
//! touches atomics.

use std::collections::HashMap;

use connections::lag::{LagFrom, LagProbe};
use daemon::metrics::{Metrics, Series};

/// The counter of committed records; the lag probe reads it as the sign
/// that records move.
const RECORDS: &str = "stage_records_total";

/// The inputs' lag, from the stage's committed offsets (`connections::lag`).
pub const LAG: LagProbe = LagProbe {
    from: LagFrom::Committed,
    gauge: "stage_input_lag",
    help: "Input messages in the partition after the stage's committed offset.",
    marker: RECORDS,
};

pub struct StageStats {
    /// Input records transformed and committed.
    pub records: Series,
    pub transactions_failed: Series,
    pub dropped_on_revocation: Series,
    /// Per input topic.
    dead_letters: HashMap<String, Series>,
    metrics: Metrics,
    flow: String,
}

const DEAD_LETTERS: &str = "stage_dead_letters_total";
const DEAD_LETTERS_HELP: &str = "Input records sent to the dead-letter topic.";

impl StageStats {
    pub fn new(metrics: &Metrics, flow: &str, inputs: &[String]) -> Self {
        let of_flow = [("flow", flow)];
        Self {
            records: metrics.counter(
                RECORDS,
                "Input records transformed and committed.",
                &of_flow,
            ),
            transactions_failed: metrics.counter(
                "stage_transactions_failed_total",
                "Stage transactions aborted (inputs re-read).",
                &of_flow,
            ),
            dropped_on_revocation: metrics.counter(
                "stage_records_dropped_on_revocation_total",
                "Input records taken in before a rebalance revoked their partitions, dropped uncommitted (read again from the committed offsets).",
                &of_flow,
            ),
            dead_letters: inputs
                .iter()
                .map(|topic| (topic.clone(), Self::dead_letter_series(metrics, flow, topic)))
                .collect(),
            metrics: metrics.clone(),
            flow: flow.to_owned(),
        }
    }

    /// The dead-letter counter of an input topic.
    pub fn dead_letters(&self, topic: &str) -> Series {
        match self.dead_letters.get(topic) {
            Some(series) => series.clone(),
            None => Self::dead_letter_series(&self.metrics, &self.flow, topic),
        }
    }

    fn dead_letter_series(metrics: &Metrics, flow: &str, topic: &str) -> Series {
        metrics.counter(
            DEAD_LETTERS,
            DEAD_LETTERS_HELP,
            &[("flow", flow), ("topic", topic)],
        )
    }
}
