//! A consumer's lag, every few seconds: per assigned partition, the high
//! watermark minus where the group stands. Feeds a gauge and `/readyz` (see
//! `health`): lag with nothing moving for the stall threshold means the
//! pipeline is stuck. The sink and the stage measure from their committed
//! offsets (rows are done once ClickHouse accepted them, records once their
//! transaction committed; both commit their position when idle, past
//! transaction markers). Measured on the real broker: the stage's
//! *position* lagged by a partition's whole content in one run of six
//! while its committed offsets stood at the end.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::Offset;
use rdkafka::consumer::Consumer;

use crate::kafka::GroupConsumer;
use tokio_util::sync::CancellationToken;

use daemon::health::FlowHealth;
use daemon::metrics::Metrics;

const KAFKA_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a partition's lag is counted from.
#[derive(Clone, Copy, Debug)]
pub enum LagFrom {
    /// The group's committed offset (asked of the broker).
    Committed,
    /// The consumer's own position (what it has taken in).
    Position,
}

/// What one daemon's probe reports.
#[derive(Clone, Copy, Debug)]
pub struct LagProbe {
    pub from: LagFrom,
    /// Gauge per flow, topic and partition, and its help text.
    pub gauge: &'static str,
    pub help: &'static str,
    /// A counter of the flow whose change means rows moved.
    pub marker: &'static str,
}

/// (topic, partition, lag) of every assigned partition. Blocking.
pub fn partition_lag(
    consumer: &GroupConsumer,
    from: LagFrom,
) -> Result<Vec<(String, i32, i64)>, rdkafka::error::KafkaError> {
    let offsets = match from {
        LagFrom::Committed => consumer.committed(KAFKA_TIMEOUT)?,
        LagFrom::Position => consumer.position()?,
    };
    let mut lags = Vec::new();
    for e in offsets.elements() {
        let (low, high) = consumer.fetch_watermarks(e.topic(), e.partition(), KAFKA_TIMEOUT)?;
        let at = match e.offset() {
            Offset::Offset(o) => o.max(low),
            _ => low,
        };
        lags.push((e.topic().to_owned(), e.partition(), (high - at).max(0)));
    }
    Ok(lags)
}

/// Probes until `shutdown`.
pub async fn run(
    consumer: Arc<GroupConsumer>,
    probe: LagProbe,
    flow: String,
    metrics: Metrics,
    health: FlowHealth,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        let c = Arc::clone(&consumer);
        match tokio::task::spawn_blocking(move || partition_lag(&c, probe.from)).await {
            Ok(Ok(lags)) => {
                let mut total = 0;
                for (topic, partition, lag) in &lags {
                    let partition = partition.to_string();
                    metrics
                        .gauge(
                            probe.gauge,
                            probe.help,
                            &[("flow", &flow), ("topic", topic), ("partition", &partition)],
                        )
                        .set(*lag);
                    total += lag;
                }
                let marker = metrics.value(probe.marker, &[("flow", &flow)]);
                health.observe(total, marker);
            }
            Ok(Err(error)) => {
                tracing::warn!(flow, %error, "consumer lag probe failed");
                health.unreachable();
            }
            Err(error) => tracing::warn!(flow, %error, "consumer lag probe panicked"),
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shutdown.cancelled() => return,
        }
    }
}
