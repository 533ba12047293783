//! The sink's view of each flow's consumer lag, every few seconds: per
//! assigned partition, the high watermark minus the group's committed
//! offset. Feeds the metrics and `/readyz` (see `flows::health`): lag with no
//! rows stored for the stall threshold means the pipeline is stuck.

use std::sync::Arc;
use std::time::Duration;

use flows::health::FlowHealth;
use flows::metrics::Metrics;
use rdkafka::Offset;
use rdkafka::consumer::{Consumer, StreamConsumer};
use tokio_util::sync::CancellationToken;

const KAFKA_TIMEOUT: Duration = Duration::from_secs(5);

/// (topic, partition, lag) of every assigned partition. Blocking.
pub fn partition_lag(
    consumer: &StreamConsumer,
) -> Result<Vec<(String, i32, i64)>, rdkafka::error::KafkaError> {
    let committed = consumer.committed(KAFKA_TIMEOUT)?;
    let mut lags = Vec::new();
    for e in committed.elements() {
        let (low, high) = consumer.fetch_watermarks(e.topic(), e.partition(), KAFKA_TIMEOUT)?;
        let from = match e.offset() {
            Offset::Offset(o) => o.max(low),
            _ => low,
        };
        lags.push((e.topic().to_owned(), e.partition(), (high - from).max(0)));
    }
    Ok(lags)
}

/// Probes until `shutdown`.
pub async fn run(
    consumer: Arc<StreamConsumer>,
    flow: String,
    metrics: Metrics,
    health: FlowHealth,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        let c = Arc::clone(&consumer);
        match tokio::task::spawn_blocking(move || partition_lag(&c)).await {
            Ok(Ok(lags)) => {
                let mut total = 0;
                for (topic, partition, lag) in &lags {
                    let partition = partition.to_string();
                    metrics
                        .gauge(
                            "sink_consumer_lag",
                            "Messages in the partition after the group's committed offset.",
                            &[("flow", &flow), ("topic", topic), ("partition", &partition)],
                        )
                        .set(*lag);
                    total += lag;
                }
                let marker = metrics.value("sink_flushes_total", &[("flow", &flow)]);
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
