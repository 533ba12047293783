//! Flushing a batch: store every table's rows (`store`) → publish the dead
//! letters → commit the offsets of all the batch took in. Each step retries
//! until it succeeds, so the offsets are committed only after everything
//! before them is in ClickHouse or the dead-letter topics. At most one batch
//! is storing while the next fills ([`Storing`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::BytesMut;
use daemon::backoff::Backoff;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::{Context, freshness};
use crate::batcher::PendingBatch;
use crate::clickhouse::schema::TablePlan;
use crate::dead_letter::DeadLetter;
use crate::error::{Recovery, SinkError, classify};

/// The health cause of dead letters that cannot be written.
const DEAD_LETTERS: &str = "dead-letters";

impl Context {
    /// Inserts, dead-letters, commits — retrying with capped backoff while
    /// ClickHouse or Kafka fail. Returns false if `stop` fired first (then the
    /// batch is abandoned uncommitted and will be re-read).
    pub(super) async fn flush(
        &self,
        mut batch: PendingBatch,
        plans: Arc<Vec<TablePlan>>,
        stop: &CancellationToken,
    ) -> bool {
        let stats = &self.stats;
        let started = Instant::now();
        stats.fill.observe_duration(batch.age(started));
        let mut backoff = Backoff::default();
        let Some(worst_ms) = self.store(&mut batch, &plans, &mut backoff, stop).await else {
            return false;
        };
        if !self
            .dead_letter(&batch.dead_letters, &mut backoff, stop)
            .await
        {
            return false;
        }
        stats.last_freshness_ms.store(worst_ms, Ordering::Relaxed);
        daemon::failpoint::hit_async("sink-after-insert").await;
        let inserted = Instant::now();
        stats.insert.observe_duration(inserted - started);
        stats.last_insert.set(daemon::time::unix_now());
        self.commit(&batch).await;
        stats.commit.observe_duration(inserted.elapsed());
        stats.flushes.inc();
        stats.batch_rows.observe(batch.rows() as f64);
        tracing::debug!(
            flow = self.name(),
            rows = batch.rows(),
            dead_letters = batch.dead_letters.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "batch flushed"
        );
        true
    }

    /// Stores every table's rows of the batch; the worst freshness of the
    /// rows measured, in ms. `None` if `stop` fired first.
    async fn store(
        &self,
        batch: &mut PendingBatch,
        plans: &[TablePlan],
        backoff: &mut Backoff,
        stop: &CancellationToken,
    ) -> Option<i64> {
        let mut worst_ms = 0;
        for (i, plan) in plans.iter().enumerate() {
            if batch.rows_per_table[i] == 0 {
                continue;
            }
            let table = &self.stats.tables[i];
            let rows = std::mem::replace(&mut batch.tables[i], BytesMut::new()).freeze();
            if !self.store_table(table, plan, rows, backoff, stop).await {
                return None;
            }
            worst_ms = worst_ms.max(freshness::observe(table, &batch.stamps[i]));
            table.rows_inserted.add(batch.rows_per_table[i] as i64);
        }
        Some(worst_ms)
    }

    /// Publishes the batch's dead letters, resending those Kafka did not
    /// acknowledge until it has them all; the flow is not ready meanwhile
    /// (the stream stops here rather than skip them). False if `stop` fired
    /// first.
    async fn dead_letter(
        &self,
        letters: &[DeadLetter],
        backoff: &mut Backoff,
        stop: &CancellationToken,
    ) -> bool {
        let flow = self.name();
        if letters.is_empty() {
            return true;
        }
        for letter in letters {
            self.stats.dead_letters(&letter.topic).inc();
            tracing::warn!(flow, topic = %letter.topic, partition = letter.partition, offset = letter.offset, error = %letter.error, "message dead-lettered");
        }
        let mut unsent = letters.to_vec();
        let mut blocked = false;
        while let Err(error) = self.dlq.publish(&mut unsent).await {
            self.stats.dead_letter_failures.inc();
            let retry_in_ms = backoff.upcoming().as_millis() as u64;
            tracing::warn!(flow, %error, letters = unsent.len(), retry_in_ms, "dead-letter publish failed; retrying the letters not acknowledged, nothing committed");
            let topics: std::collections::BTreeSet<String> = unsent
                .iter()
                .map(|l| self.dlq.topic_for(&l.topic))
                .collect();
            let error = SinkError::DeadLetters {
                topics: topics.into_iter().collect::<Vec<_>>().join(", "),
                waiting: unsent.len(),
                error,
            };
            if let Recovery::Hold(reason) = classify(&error) {
                self.health.block(DEAD_LETTERS, &reason);
            }
            blocked = true;
            if !backoff.wait(stop).await {
                return false;
            }
        }
        if blocked {
            tracing::info!(flow, "dead letters written again");
            self.health.unblock(DEAD_LETTERS);
        }
        true
    }

    /// Commits the offsets past everything the batch took in, for the
    /// partitions this member still owns. A failed commit is carried:
    /// the rows are stored, so they are only read again.
    async fn commit(&self, batch: &PendingBatch) {
        let flow = self.name();
        let mut offsets = TopicPartitionList::new();
        for (topic, partition, next) in batch.offsets() {
            if let Err(error) = offsets.add_partition_offset(topic, partition, Offset::Offset(next))
            {
                tracing::warn!(flow, %error, "cannot record offset");
            }
        }
        // Partitions revoked while the batch was stored belong to another
        // member now: their rows are stored (a repeat there is absorbed),
        // but their offsets are the new owner's to commit.
        let owned = self.consumer.context().only_owned(&offsets);
        let foreign = offsets.count() - owned.count();
        if foreign > 0 {
            self.stats.offsets_left_to_new_owner.add(foreign as i64);
            tracing::info!(
                flow,
                partitions = foreign,
                "partitions revoked while the batch was stored; their offsets are left to the new owner"
            );
        }
        let committer = Arc::clone(&self.consumer);
        match tokio::task::spawn_blocking(move || committer.commit(&owned, CommitMode::Sync)).await
        {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                let error = SinkError::OffsetCommit(error);
                let recovery = classify(&error);
                tracing::warn!(flow, %error, ?recovery, "offset commit failed; rows will be re-read and deduplicated")
            }
            Err(error) => tracing::warn!(flow, %error, "offset commit task failed"),
        }
    }
}

/// The batch being stored while the next fills. Flushes run one at a time
/// and in order, so offsets are still committed in order, and a flush that
/// gave up (shutdown) stops everything after it.
#[derive(Default)]
pub(super) struct Storing<'a> {
    flush: Option<Pin<Box<dyn Future<Output = bool> + Send + 'a>>>,
    /// The oldest row timestamp of the batch storing, Unix ms (freshness).
    oldest: Option<i64>,
}

impl<'a> Storing<'a> {
    pub fn is_busy(&self) -> bool {
        self.flush.is_some()
    }

    pub fn oldest(&self) -> Option<i64> {
        self.oldest
    }

    /// Starts flushing `batch` (the one before must be finished).
    pub fn start(
        &mut self,
        cx: &'a Context,
        batch: PendingBatch,
        plans: Arc<Vec<TablePlan>>,
        stop: &'a CancellationToken,
    ) {
        self.oldest = batch.oldest_stamp();
        self.flush = Some(Box::pin(cx.flush(batch, plans, stop)));
    }

    /// Waits until the batch is stored (true at once when none is): false
    /// if its flush gave up. Safe to drop unfinished (the flush stays, and
    /// goes on when awaited again).
    pub async fn stored(&mut self) -> bool {
        let Some(flush) = self.flush.as_mut() else {
            return true;
        };
        let stored = flush.await;
        self.flush = None;
        self.oldest = None;
        stored
    }
}
