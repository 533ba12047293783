//! One flow's stage: consume the inputs, transform, produce the output — and
//! commit the consumer offsets inside the producer's transaction.
//!
//! Contract: a batch's output records and the offsets past its input records
//! commit atomically (`send_offsets_to_transaction`, then
//! `commit_transaction`). A crash or failure at any moment leaves either both
//! or neither: the next session (this process after backoff, or a restarted
//! one, whose `init_transactions` aborts any transaction left open) resumes
//! from the last committed offsets. read_committed readers of the output see
//! every input record's result exactly once. (librdkafka's mock cluster does
//! not hide aborted records; there the ClickHouse side's dedup key absorbs
//! them.)
//!
//! The steps: a session ([`FlowStage::session`]) builds a consumer and a
//! transactional producer, then repeats: collect a batch (`batch`),
//! transform each record as it comes (`transform`), commit records and
//! offsets in one transaction (`transaction`). Any error ends the session;
//! `error::classify` says whether the flow is also not ready meanwhile.

use std::sync::Arc;

use connections::kafka::{GroupConsumer, Ownership};
use daemon::backoff::Backoff;
use daemon::metrics::Metrics;
use flows::Flow;
use flows::definition::StageDef;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::Consumer;
use rdkafka::producer::BaseProducer;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::config::StageConfig;
use crate::error::{Recovery, StageError, classify};
use crate::stats::StageStats;

/// The health cause of Kafka refusing the stage (see `error`).
const KAFKA_REFUSES: &str = "kafka-refuses";

pub struct FlowStage {
    pub flow: Flow,
    pub stage: StageDef,
    pub config: Arc<StageConfig>,
    pub metrics: Metrics,
    /// `/readyz`: the inputs' lag and whether records move.
    pub health: daemon::health::FlowHealth,
}

impl FlowStage {
    /// Runs sessions until shutdown; a failed one is followed by a new one
    /// after backoff.
    pub async fn run(self, shutdown: CancellationToken) {
        let flow = self.flow.name.to_string();
        let stats = StageStats::new(&self.metrics, &flow, &self.stage.inputs);
        let mut backoff = Backoff::default();
        while !shutdown.is_cancelled() {
            let Err(error) = self.session(&stats, &mut backoff, &shutdown).await else {
                break;
            };
            stats.transactions_failed.inc();
            if let Recovery::Hold(reason) = classify(&error) {
                self.health.block(KAFKA_REFUSES, &reason);
            }
            let retry_in_ms = backoff.upcoming().as_millis() as u64;
            tracing::warn!(flow, %error, retry_in_ms, "stage batch aborted; resuming from the last committed offsets");
            if !backoff.wait(&shutdown).await {
                break;
            }
        }
        tracing::info!(flow, "stage stopped");
    }

    /// A consumer and a transactional producer, used until an error (then
    /// both are dropped: the new consumer restarts from committed offsets).
    async fn session(
        &self,
        stats: &StageStats,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> Result<(), StageError> {
        let (consumer, producer) = self.connect().await?;
        // The output and dead-letter topics are created before they are
        // written; the output at once, as its sink may be waiting for it.
        let topics = connections::topics::Topics::new(&self.config.kafka)?;
        let spec = self.config.topics.for_flow(&self.flow.topics);
        topics.ensure(&[self.stage.output.as_str()], &spec).await?;
        let _probe = self.probe_lag(&consumer, shutdown);
        let mut idle_committed = TopicPartitionList::new();
        loop {
            let collected = self
                .collect_batch(&consumer, stats, shutdown, &mut idle_committed)
                .await?;
            let Some(batch) = collected else {
                return Ok(());
            };
            if batch.is_empty() {
                continue;
            }
            let records = batch.records.len();
            let mut written: Vec<&str> = batch.records.iter().map(|r| r.topic.as_str()).collect();
            written.sort_unstable();
            written.dedup();
            topics.ensure(&written, &spec).await?;
            crate::transaction::commit(&producer, &consumer, batch).await?;
            backoff.reset();
            self.health.unblock(KAFKA_REFUSES);
            stats.records.add(records as i64);
        }
    }

    /// The session's consumer, subscribed to the inputs, and its producer,
    /// its transactions initialised (which aborts one a predecessor left
    /// open).
    async fn connect(&self) -> Result<(Arc<GroupConsumer>, Arc<BaseProducer>), StageError> {
        let flow = self.flow.name.as_str();
        let consumer: Arc<GroupConsumer> = Arc::new(
            connections::kafka::consumer_config(
                &self.config.kafka,
                &self.stage.consumer_group,
                &format!("outbox-stage-{flow}"),
            )
            .create_with_context(Ownership::default())?,
        );
        let producer = crate::transaction::producer(&self.config, flow).await?;
        let inputs: Vec<&str> = self.stage.inputs.iter().map(String::as_str).collect();
        consumer.subscribe(&inputs)?;
        tracing::info!(flow, inputs = ?inputs, output = %self.stage.output, "stage running");
        Ok((consumer, producer))
    }

    /// Probes the consumer's lag until the returned guard is dropped with
    /// the session (a new session probes its new consumer) or shutdown.
    fn probe_lag(&self, consumer: &Arc<GroupConsumer>, shutdown: &CancellationToken) -> DropGuard {
        let probe_stop = shutdown.child_token();
        tokio::spawn(connections::lag::run(
            Arc::clone(consumer),
            crate::stats::LAG,
            self.flow.name.to_string(),
            self.metrics.clone(),
            self.health.clone(),
            daemon::health::probe_interval(self.config.stall_after),
            probe_stop.clone(),
        ));
        probe_stop.drop_guard()
    }
}
