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

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use connections::kafka::{GroupConsumer, Ownership};
use daemon::backoff::Backoff;
use daemon::metrics::Metrics;
use flows::Flow;
use flows::definition::{StageDef, Transform};
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::config::StageConfig;
use crate::normalise::normalise;

const TXN_TIMEOUT: Duration = Duration::from_secs(30);

/// The health cause of Kafka refusing the stage (see `policy`).
const KAFKA_REFUSES: &str = "kafka-refuses";

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("the consumer has no group metadata yet")]
    NoGroupMetadata,
    #[error("a blocking kafka call panicked")]
    Task,
    /// librdkafka stopped the consumer for good: a new session takes a new one.
    #[error("kafka consumer failed for good: {0}")]
    Fatal(String),
}

/// One record to produce in the batch's transaction.
struct OutRecord {
    topic: String,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Vec<(String, String)>,
}

pub struct FlowStage {
    pub flow: Flow,
    pub stage: StageDef,
    pub config: Arc<StageConfig>,
    pub metrics: Metrics,
    /// `/readyz`: the inputs' lag and whether records move.
    pub health: daemon::health::FlowHealth,
}

impl FlowStage {
    pub async fn run(self, shutdown: CancellationToken) {
        let flow = self.flow.name.to_string();
        let mut backoff = Backoff::default();
        while !shutdown.is_cancelled() {
            match self.session(&mut backoff, &shutdown).await {
                Ok(()) => break,
                Err(error) => {
                    self.metrics
                        .counter(
                            "stage_transactions_failed_total",
                            "Stage transactions aborted (inputs re-read).",
                            &[("flow", &flow)],
                        )
                        .inc();
                    if let crate::policy::Recovery::Hold(reason) = crate::policy::classify(&error) {
                        self.health.block(KAFKA_REFUSES, &reason);
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!(flow, %error, retry_in_ms = delay.as_millis() as u64, "stage batch aborted; resuming from the last committed offsets");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = shutdown.cancelled() => break,
                    }
                }
            }
        }
        tracing::info!(flow, "stage stopped");
    }

    /// A consumer and a transactional producer, used until an error (then
    /// both are dropped: the new consumer restarts from committed offsets).
    async fn session(
        &self,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> Result<(), StageError> {
        let flow = self.flow.name.to_string();
        let consumer: Arc<GroupConsumer> = Arc::new(
            connections::kafka::consumer_config(
                &self.config.kafka,
                &self.stage.consumer_group,
                &format!("outbox-stage-{flow}"),
            )
            .create_with_context(Ownership::default())?,
        );
        let producer: Arc<BaseProducer> = Arc::new(
            self.config
                .kafka
                .client_config()
                .set("client.id", format!("outbox-stage-{flow}"))
                .set(
                    "transactional.id",
                    format!("{}.{flow}", self.config.transactional_id_prefix),
                )
                .set("enable.idempotence", "true")
                .set("acks", "all")
                .set("linger.ms", "5")
                .set("transaction.timeout.ms", "60000")
                .create()?,
        );
        let init = Arc::clone(&producer);
        tokio::task::spawn_blocking(move || init.init_transactions(TXN_TIMEOUT))
            .await
            .map_err(|_| StageError::Task)??;
        let inputs: Vec<&str> = self.stage.inputs.iter().map(String::as_str).collect();
        consumer.subscribe(&inputs)?;
        tracing::info!(flow, inputs = ?inputs, output = %self.stage.output, "stage running");
        let probe_stop = shutdown.child_token();
        // Dropped with the session: a new session probes its new consumer.
        let _probe_guard = probe_stop.clone().drop_guard();
        tokio::spawn(connections::lag::run(
            Arc::clone(&consumer),
            connections::lag::LagProbe {
                from: connections::lag::LagFrom::Committed,
                gauge: "stage_input_lag",
                help: "Input messages in the partition after the stage's committed offset.",
                marker: "stage_records_total",
            },
            flow.clone(),
            self.metrics.clone(),
            self.health.clone(),
            daemon::health::probe_interval(self.config.stall_after),
            probe_stop,
        ));

        let mut idle_committed = TopicPartitionList::new();
        loop {
            let (records, offsets) = match self
                .collect_batch(&consumer, shutdown, &mut idle_committed)
                .await?
            {
                Some(batch) => batch,
                None => return Ok(()),
            };
            if records.is_empty() && offsets.count() == 0 {
                continue;
            }
            let count = records.len();
            let group = consumer
                .group_metadata()
                .ok_or(StageError::NoGroupMetadata)?;
            let txn = Arc::clone(&producer);
            tokio::task::spawn_blocking(move || commit_batch(&txn, &records, &offsets, &group))
                .await
                .map_err(|_| StageError::Task)??;
            backoff.reset();
            self.health.unblock(KAFKA_REFUSES);
            self.metrics
                .counter(
                    "stage_records_total",
                    "Input records transformed and committed.",
                    &[("flow", &flow)],
                )
                .add(count as i64);
        }
    }

    /// Reads until the batch is full or the oldest record is
    /// `flush_interval` old. `None` on shutdown (the open batch is dropped
    /// uncommitted and will be re-read).
    #[allow(clippy::type_complexity)]
    async fn collect_batch(
        &self,
        consumer: &Arc<GroupConsumer>,
        shutdown: &CancellationToken,
        idle_committed: &mut TopicPartitionList,
    ) -> Result<Option<(Vec<OutRecord>, TopicPartitionList)>, StageError> {
        let mut records = Vec::new();
        let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
        let mut deadline: Option<Instant> = None;
        let mut idle_check = tokio::time::interval(IDLE_COMMIT_EVERY);
        idle_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut revocations = consumer.context().revocations();
        loop {
            self.drop_if_revoked(
                consumer,
                &mut revocations,
                &mut records,
                &mut next,
                &mut deadline,
            );
            if records.len() >= self.config.batch_size {
                break;
            }
            let wait = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(None),
                // Nothing taken in: every record before the position is
                // committed in an earlier transaction, so the position (past
                // transaction markers) may be committed as is.
                _ = idle_check.tick(), if records.is_empty() => {
                    connections::kafka::commit_position_if_moved(consumer, idle_committed, self.flow.name.as_str()).await;
                }
                received = consumer.recv() => {
                    let message = match received {
                        Ok(m) => m,
                        Err(error) => {
                            if connections::kafka::is_missing_topic(&error) {
                                // Said once at info, naming the topic (`Ownership`).
                                tracing::debug!(flow = %self.flow.name, %error, "an input topic does not exist yet");
                            } else {
                                tracing::warn!(flow = %self.flow.name, %error, "stage consumer error");
                            }
                            if let Some((code, reason)) = consumer.client().fatal_error() {
                                return Err(StageError::Fatal(format!("{code:?}: {reason}")));
                            }
                            continue;
                        }
                    };
                    // The rebalance callbacks run inside recv: a message
                    // after a revocation belongs to the new assignment.
                    self.drop_if_revoked(consumer, &mut revocations, &mut records, &mut next, &mut deadline);
                    deadline.get_or_insert_with(|| Instant::now() + self.config.flush_interval);
                    next.insert((message.topic().to_owned(), message.partition()), message.offset() + 1);
                    records.push(self.transform(&message));
                }
                () = wait => break,
            }
        }
        self.drop_if_revoked(
            consumer,
            &mut revocations,
            &mut records,
            &mut next,
            &mut deadline,
        );
        // Everything delivered is in this batch, so the consumer's position
        // (past transaction markers, see `connections::kafka::positions`) commits
        // with it where it is ahead of the last record + 1.
        let mut offsets = TopicPartitionList::new();
        if let Ok(at) = connections::kafka::positions(consumer.as_ref()) {
            for e in at.elements() {
                if let Offset::Offset(o) = e.offset() {
                    let key = (e.topic().to_owned(), e.partition());
                    let n = next.get(&key).copied().unwrap_or(o);
                    next.insert(key, n.max(o));
                }
            }
        }
        for ((topic, partition), offset) in next {
            offsets.add_partition_offset(&topic, partition, Offset::Offset(offset))?;
        }
        Ok(Some((records, consumer.context().only_owned(&offsets))))
    }

    /// A revocation (eager protocol: every partition) restarts each
    /// reassigned partition from its committed offset, so what was taken in
    /// before it would come again into this same batch: drop it (whoever
    /// owns the partitions now reads it again).
    fn drop_if_revoked(
        &self,
        consumer: &GroupConsumer,
        seen: &mut u64,
        records: &mut Vec<OutRecord>,
        next: &mut BTreeMap<(String, i32), i64>,
        deadline: &mut Option<Instant>,
    ) {
        let now = consumer.context().revocations();
        if now == *seen {
            return;
        }
        *seen = now;
        if !records.is_empty() {
            self.metrics
                .counter(
                    "stage_records_dropped_on_revocation_total",
                    "Input records taken in before a rebalance revoked their partitions, dropped uncommitted (read again from the committed offsets).",
                    &[("flow", self.flow.name.as_str())],
                )
                .add(records.len() as i64);
            tracing::info!(flow = %self.flow.name, records = records.len(), "partitions revoked: the open batch is dropped and read again");
        }
        records.clear();
        next.clear();
        *deadline = None;
    }

    fn transform(&self, message: &rdkafka::message::BorrowedMessage<'_>) -> OutRecord {
        let topic = message.topic();
        let name = topic
            .strip_prefix(self.config.topic_prefix.as_str())
            .unwrap_or(topic);
        let result = match self.stage.transform {
            Transform::Normalise => normalise(name, message.payload()),
        };
        match result {
            Ok(out) => OutRecord {
                topic: self.stage.output.clone(),
                key: Some(out.key.into_bytes()),
                payload: Some(out.payload),
                headers: vec![],
            },
            Err(error) => {
                self.metrics
                    .counter(
                        "stage_dead_letters_total",
                        "Input records sent to the dead-letter topic.",
                        &[("flow", self.flow.name.as_str()), ("topic", topic)],
                    )
                    .inc();
                tracing::warn!(flow = %self.flow.name, topic, partition = message.partition(), offset = message.offset(), %error, "record dead-lettered");
                OutRecord {
                    topic: format!("{topic}.dlq"),
                    key: message.key().map(<[u8]>::to_vec),
                    payload: message.payload().map(<[u8]>::to_vec),
                    headers: vec![
                        ("error".into(), error),
                        ("source_topic".into(), topic.to_owned()),
                        ("source_partition".into(), message.partition().to_string()),
                        ("source_offset".into(), message.offset().to_string()),
                    ],
                }
            }
        }
    }
}

/// Produces `records` and commits them together with `offsets`. Blocking.
fn commit_batch(
    producer: &BaseProducer,
    records: &[OutRecord],
    offsets: &TopicPartitionList,
    group: &rdkafka::consumer::ConsumerGroupMetadata,
) -> Result<(), KafkaError> {
    producer.begin_transaction()?;
    let result = (|| {
        for r in records {
            let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
            for (k, v) in &r.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                });
            }
            let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&r.topic).headers(headers);
            if let Some(k) = &r.key {
                record = record.key(k.as_slice());
            }
            if let Some(p) = &r.payload {
                record = record.payload(p.as_slice());
            }
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        producer.poll(Duration::from_millis(10));
                    }
                    Err((e, _)) => return Err(e),
                }
            }
        }
        producer.send_offsets_to_transaction(offsets, group, TXN_TIMEOUT)?;
        daemon::failpoint::hit("stage-before-commit");
        producer.commit_transaction(TXN_TIMEOUT)
    })();
    if result.is_err() {
        // Best effort: the session is dropped anyway, and a new producer with
        // the same transactional id aborts whatever is left open.
        let _ = producer.abort_transaction(Duration::from_secs(10));
    }
    result
}

/// How often an idle stage checks whether its position moved past
/// transaction markers since it last committed.
const IDLE_COMMIT_EVERY: std::time::Duration = std::time::Duration::from_millis(500);
