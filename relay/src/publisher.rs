//! The Kafka side of the relay: one transactional producer per flow.
//!
//! Contract: `publish_batch` returns Ok only after `commit_transaction`
//! succeeded, so every message of the batch is durably in Kafka and visible to
//! read_committed consumers. Any error leaves the transaction aborted (or the
//! producer due for re-creation) and the caller flips nothing.

use crate::shard::Shard;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};

use crate::config::KafkaConfig;
use crate::source::OutboxBatch;

const INIT_TIMEOUT: Duration = Duration::from_secs(30);
const ABORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Collects per-message delivery failures; the opaque is the source row id.
#[derive(Default)]
pub struct DeliveryTracker {
    failures: Mutex<Vec<(i64, KafkaError)>>,
}

impl ClientContext for DeliveryTracker {}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, id: usize) {
        if let Err((err, _)) = result
            && let Ok(mut failures) = self.failures.lock()
        {
            failures.push((i64::try_from(id).unwrap_or(i64::MAX), err.clone()));
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The transaction failed and was aborted; retrying the batch is safe.
    #[error("kafka transaction aborted: {0}")]
    Aborted(#[source] KafkaError),
    /// Another producer with this transactional id took over (a standby
    /// that became active while this relay was frozen): this relay is no
    /// longer the flow's leader. Nothing of the transaction is visible.
    #[error("kafka producer fenced (another relay took over this flow): {0}")]
    Fenced(#[source] KafkaError),
    /// The producer is unusable (fatal error, or the abort failed): create a
    /// new one before retrying.
    #[error("kafka producer must be recreated: {0}")]
    Fatal(#[source] KafkaError),
    /// `commit_transaction` failed in a way that does not say the
    /// transaction was not committed (a timeout, a broken connection): the
    /// broker may have committed it. The producer is recreated and the
    /// batch, not flagged, is published again — a repeat if it had landed.
    #[error("kafka commit outcome unknown (the batch may be in Kafka; it is published again): {0}")]
    CommitUnknown(#[source] KafkaError),
    /// Kafka refused these rows for good (e.g. too large); the transaction
    /// was aborted. The caller sets them aside and retries the others.
    #[error("kafka refused {} row(s) permanently", .0.len())]
    Rejected(Vec<(i64, String)>),
    /// A topic of the batch could not be made sure of (created, or found):
    /// nothing was sent, no transaction begun.
    #[error(transparent)]
    Topic(#[from] connections::topics::TopicError),
}

/// Errors that no retry will cure for that one message.
fn is_permanent_for_message(err: &KafkaError) -> bool {
    matches!(
        err.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::InvalidMessageSize
        )
    )
}

/// Kafka says a newer producer holds this transactional id.
fn is_fenced(err: &KafkaError) -> bool {
    matches!(
        err.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::Fenced
                | RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
        )
    )
}

enum SendError {
    /// This row can never be produced.
    Rejected(i64, KafkaError),
    /// This row's topic column makes no topic (a routed source).
    Unroutable(i64, String),
    Kafka(KafkaError),
}

/// Where a published batch spent its time.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PublishTimings {
    /// Handing the messages to the producer (begin transaction included).
    pub send: Duration,
    /// `commit_transaction`: flushing and the transaction's two-phase commit.
    pub commit: Duration,
}

pub struct Publisher {
    producer: ThreadedProducer<DeliveryTracker>,
    flow: String,
    /// How long flushing and committing a batch may each take.
    commit_timeout: Duration,
}

impl Publisher {
    /// Creates the producer and initialises transactions, fencing any earlier
    /// producer with the same transactional id. Blocking.
    pub fn connect(cfg: &KafkaConfig, flow: &str, shard: Shard) -> Result<Self, KafkaError> {
        // `flow`, or `flow.shard-1-of-4`: one transactional id per shard.
        let unit = shard.unit(flow).replace('/', ".");
        let producer: ThreadedProducer<DeliveryTracker> = cfg
            .endpoint
            .client_config()
            .set("client.id", format!("outbox-relay-{unit}"))
            .set(
                "transactional.id",
                format!("{}.{unit}", cfg.transactional_id_prefix),
            )
            .set("enable.idempotence", "true")
            // Topics are created by the relay itself (`connections::topics`),
            // never by a broker as a side effect of a metadata request.
            .set("allow.auto.create.topics", "false")
            .set("acks", &cfg.acks)
            .set("linger.ms", cfg.linger.as_millis().to_string())
            .set("batch.size", cfg.batch_size_bytes.to_string())
            .set(
                "transaction.timeout.ms",
                cfg.transaction_timeout.as_millis().to_string(),
            )
            .set(
                "message.timeout.ms",
                cfg.transaction_timeout.as_millis().to_string(),
            )
            .set("queue.buffering.max.messages", "200000")
            // Only failures need a report (DeliveryTracker keeps nothing
            // else); skipping the rest saves an event per message.
            .set("delivery.report.only.error", "true")
            .create_with_context(DeliveryTracker::default())?;
        producer.init_transactions(INIT_TIMEOUT)?;
        Ok(Self {
            producer,
            flow: flow.to_owned(),
            commit_timeout: cfg.commit_timeout,
        })
    }

    /// Publishes every message of `batch` to `topic` in one transaction.
    /// Blocking: run it on a blocking thread.
    pub fn publish_batch(
        &self,
        topic: &str,
        table: &str,
        batch: &OutboxBatch,
    ) -> Result<PublishTimings, PublishError> {
        let start = Instant::now();
        if let Ok(mut f) = self.producer.context().failures.lock() {
            f.clear();
        }
        self.producer
            .begin_transaction()
            .map_err(PublishError::Fatal)?;
        let outcome = match self.send_all(topic, table, batch) {
            Ok(()) => {
                let send = start.elapsed();
                match self.flush() {
                    Ok(()) => {
                        daemon::failpoint::hit("relay-before-kafka-commit");
                        match self.producer.commit_transaction(self.commit_timeout) {
                            Ok(()) => {
                                return Ok(PublishTimings {
                                    send,
                                    commit: start.elapsed() - send,
                                });
                            }
                            Err(err) => self.after_failed_commit(err),
                        }
                    }
                    Err(err) => self.abort_after(err),
                }
            }
            Err(SendError::Rejected(id, err)) => {
                let _ = self.abort_after(KafkaError::Canceled);
                return Err(PublishError::Rejected(vec![(id, err.to_string())]));
            }
            Err(SendError::Unroutable(id, reason)) => {
                let _ = self.abort_after(KafkaError::Canceled);
                return Err(PublishError::Rejected(vec![(id, reason)]));
            }
            Err(SendError::Kafka(err)) => self.abort_after(err),
        };
        let rejected: Vec<(i64, String)> = self
            .producer
            .context()
            .failures
            .lock()
            .map(|f| {
                f.iter()
                    .filter(|(_, e)| is_permanent_for_message(e))
                    .map(|(id, e)| (*id, e.to_string()))
                    .collect()
            })
            .unwrap_or_default();
        if rejected.is_empty() {
            Err(outcome)
        } else {
            Err(PublishError::Rejected(rejected))
        }
    }

    fn send_all(&self, topic: &str, table: &str, batch: &OutboxBatch) -> Result<(), SendError> {
        for message in &batch.messages {
            let id = message.id.to_string();
            let topic = match &message.topic {
                None => topic,
                Some(Ok(routed)) => routed.as_str(),
                Some(Err(reason)) => return Err(SendError::Unroutable(message.id, reason.clone())),
            };
            let mut headers = OwnedHeaders::new_with_capacity(3 + message.headers.len())
                .insert(Header {
                    key: "flow",
                    value: Some(self.flow.as_bytes()),
                })
                .insert(Header {
                    key: "source_table",
                    value: Some(table.as_bytes()),
                })
                .insert(Header {
                    key: "source_id",
                    value: Some(id.as_bytes()),
                });
            // The row's commit time travels as a header, not as the
            // record's timestamp: a backlog published long after its
            // commits would carry timestamps already past a topic's
            // retention (deleted before any sink read them) or refused by
            // `message.timestamp.before.max.ms`. The record's timestamp is
            // the producer's: when it was published.
            let committed = message.stamp.map(|ms| ms.to_string());
            if let Some(ms) = &committed {
                headers = headers.insert(Header {
                    key: flows::COMMITTED_AT_HEADER,
                    value: Some(ms.as_bytes()),
                });
            }
            for (key, value) in &message.headers {
                headers = headers.insert(Header {
                    key: key.as_str(),
                    value: value.as_deref().map(str::as_bytes),
                });
            }
            let mut record =
                BaseRecord::with_opaque_to(topic, usize::try_from(message.id).unwrap_or(0))
                    .payload(message.payload.as_bytes())
                    .headers(headers);
            if let Some(key) = &message.key {
                record = record.key(key.as_bytes());
            }
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    // The background thread drains the queue; wait for room.
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err((err, _)) if is_permanent_for_message(&err) => {
                        return Err(SendError::Rejected(message.id, err));
                    }
                    Err((err, _)) => return Err(SendError::Kafka(err)),
                }
            }
        }
        Ok(())
    }

    /// Waits until every message sent is acknowledged. rdkafka's own flush
    /// (called by `commit_transaction`) waits in 100 ms poll slices while the
    /// producer's thread takes the events, so every commit took ≥100 ms;
    /// librdkafka's flush wakes as soon as the count of messages in flight
    /// reaches zero. After it, `commit_transaction` finds nothing in flight.
    #[allow(unsafe_code)]
    fn flush(&self) -> Result<(), KafkaError> {
        let timeout_ms = i32::try_from(self.commit_timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: the pointer is the live producer handle owned by
        // `self.producer`; rd_kafka_flush is thread-safe.
        let err = unsafe {
            rdkafka::bindings::rd_kafka_flush(self.producer.client().native_ptr(), timeout_ms)
        };
        match RDKafkaErrorCode::from(err) {
            RDKafkaErrorCode::NoError => Ok(()),
            code => Err(KafkaError::Flush(code)),
        }
    }

    /// After a failed `commit_transaction`: unless the error says the
    /// transaction was not committed (abortable, fenced), the broker may
    /// have committed it (the reply came too late, the connection broke):
    /// the outcome is unknown. Either way the transaction is aborted (an
    /// abort of a transaction that committed fails, and the producer is
    /// recreated) and nothing is flagged, so a committed batch goes again.
    fn after_failed_commit(&self, err: KafkaError) -> PublishError {
        let known_not_committed =
            is_fenced(&err) || matches!(&err, KafkaError::Transaction(e) if e.txn_requires_abort());
        let outcome = self.abort_after(err);
        match outcome {
            PublishError::Aborted(err) | PublishError::Fatal(err) if !known_not_committed => {
                PublishError::CommitUnknown(err)
            }
            other => other,
        }
    }

    /// Aborts the open transaction after `err`, classifying what the caller
    /// must do next (see [`PublishError`]).
    fn abort_after(&self, err: KafkaError) -> PublishError {
        let fatal = match &err {
            KafkaError::Transaction(e) => e.is_fatal(),
            _ => false,
        };
        if is_fenced(&err) {
            return PublishError::Fenced(err);
        }
        if fatal {
            return PublishError::Fatal(err);
        }
        match self.producer.abort_transaction(ABORT_TIMEOUT) {
            Ok(()) => PublishError::Aborted(err),
            Err(abort_err) => {
                tracing::warn!(flow = %self.flow, error = %abort_err, "abort failed; recreating producer");
                PublishError::Fatal(err)
            }
        }
    }
}

/// Shares a publisher with blocking tasks.
pub type SharedPublisher = Arc<Publisher>;
