//! Collects one transaction's batch: input records transformed as they come,
//! and the offsets past them, until the batch is full or its oldest record
//! is `STAGE_FLUSH_INTERVAL_MS` old.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use connections::kafka::GroupConsumer;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::error::StageError;
use crate::stage_loop::FlowStage;
use crate::stats::StageStats;
use crate::transform::OutRecord;

/// How often an idle stage checks whether its position moved past
/// transaction markers since it last committed.
const IDLE_COMMIT_EVERY: Duration = Duration::from_millis(500);

/// Records taken in for the next transaction.
struct OpenBatch {
    records: Vec<OutRecord>,
    /// (topic, partition) → the offset past the last record taken in.
    next: BTreeMap<(String, i32), i64>,
    /// When the batch is due: `flush_interval` after its first record.
    deadline: Option<Instant>,
    /// The consumer's revocation count the batch was taken under.
    revocations: u64,
}

/// A batch ready for its transaction.
pub struct ClosedBatch {
    pub records: Vec<OutRecord>,
    /// The offsets to commit with the records: past every record, and past
    /// transaction markers where the consumer's position is ahead.
    pub offsets: TopicPartitionList,
}

impl ClosedBatch {
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.offsets.count() == 0
    }
}

impl FlowStage {
    /// Reads until the batch is full or the oldest record is
    /// `flush_interval` old. `None` on shutdown (the open batch is dropped
    /// uncommitted and will be re-read).
    pub(crate) async fn collect_batch(
        &self,
        consumer: &Arc<GroupConsumer>,
        stats: &StageStats,
        shutdown: &CancellationToken,
        idle_committed: &mut TopicPartitionList,
    ) -> Result<Option<ClosedBatch>, StageError> {
        let flow = self.flow.name.as_str();
        let mut batch = OpenBatch::new(consumer);
        let mut idle_check = tokio::time::interval(IDLE_COMMIT_EVERY);
        idle_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            batch.drop_if_revoked(consumer, stats, flow);
            if batch.records.len() >= self.config.batch_size {
                break;
            }
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(None),
                // Nothing taken in: every record before the position is
                // committed in an earlier transaction, so the position (past
                // transaction markers) may be committed as is.
                _ = idle_check.tick(), if batch.records.is_empty() => {
                    connections::kafka::commit_position_if_moved(consumer, idle_committed, flow).await;
                }
                received = consumer.recv() => self.take(&mut batch, consumer, stats, received)?,
                () = sleep_until(batch.deadline) => break,
            }
        }
        batch.drop_if_revoked(consumer, stats, flow);
        Ok(Some(batch.close(consumer)?))
    }

    /// Takes one received record into the batch, transformed. A consumer
    /// error is logged (librdkafka retries by itself) unless the consumer
    /// failed for good: that ends the session.
    fn take(
        &self,
        batch: &mut OpenBatch,
        consumer: &GroupConsumer,
        stats: &StageStats,
        received: Result<BorrowedMessage<'_>, KafkaError>,
    ) -> Result<(), StageError> {
        let flow = self.flow.name.as_str();
        let message = match received {
            Ok(message) => message,
            Err(error) => {
                if connections::kafka::is_missing_topic(&error) {
                    // Said once at info, naming the topic (`Ownership`).
                    tracing::debug!(flow, %error, "an input topic does not exist yet");
                } else {
                    tracing::warn!(flow, %error, "stage consumer error");
                }
                return match consumer.client().fatal_error() {
                    Some((code, reason)) => Err(StageError::Fatal(format!("{code:?}: {reason}"))),
                    None => Ok(()),
                };
            }
        };
        // The rebalance callbacks run inside recv: a message after a
        // revocation belongs to the new assignment.
        batch.drop_if_revoked(consumer, stats, flow);
        let record = self.transform(&message, stats);
        batch.add(&message, record, self.config.flush_interval);
        Ok(())
    }
}

impl OpenBatch {
    fn new(consumer: &GroupConsumer) -> Self {
        Self {
            records: Vec::new(),
            next: BTreeMap::new(),
            deadline: None,
            revocations: consumer.context().revocations(),
        }
    }

    fn add(&mut self, message: &BorrowedMessage<'_>, record: OutRecord, due_in: Duration) {
        self.deadline.get_or_insert_with(|| Instant::now() + due_in);
        let partition = (message.topic().to_owned(), message.partition());
        self.next.insert(partition, message.offset() + 1);
        self.records.push(record);
    }

    /// A revocation (eager protocol: every partition) restarts each
    /// reassigned partition from its committed offset, so what was taken in
    /// before it would come again into this same batch: drop it (whoever
    /// owns the partitions now reads it again).
    fn drop_if_revoked(&mut self, consumer: &GroupConsumer, stats: &StageStats, flow: &str) {
        let now = consumer.context().revocations();
        if now == self.revocations {
            return;
        }
        self.revocations = now;
        if !self.records.is_empty() {
            stats.dropped_on_revocation.add(self.records.len() as i64);
            tracing::info!(
                flow,
                records = self.records.len(),
                "partitions revoked: the open batch is dropped and read again"
            );
        }
        self.records.clear();
        self.next.clear();
        self.deadline = None;
    }

    /// Everything delivered is in this batch, so the consumer's position
    /// (past transaction markers, see `connections::kafka::positions`)
    /// commits with it where it is ahead of the last record + 1. Only the
    /// partitions the consumer still owns.
    fn close(mut self, consumer: &GroupConsumer) -> Result<ClosedBatch, KafkaError> {
        if let Ok(at) = connections::kafka::positions(consumer) {
            for e in at.elements() {
                if let Offset::Offset(o) = e.offset() {
                    let key = (e.topic().to_owned(), e.partition());
                    let n = self.next.get(&key).copied().unwrap_or(o);
                    self.next.insert(key, n.max(o));
                }
            }
        }
        let mut offsets = TopicPartitionList::new();
        for ((topic, partition), offset) in self.next {
            offsets.add_partition_offset(&topic, partition, Offset::Offset(offset))?;
        }
        Ok(ClosedBatch {
            records: self.records,
            offsets: consumer.context().only_owned(&offsets),
        })
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
