//! The sink loop of one flow: a consumer in the flow's group reads its
//! topics (read_committed, no auto-commit), batches rows per target table
//! and, when the flush policy says so, inserts every table's block, publishes
//! dead letters, and only then commits the offsets of all it took in.
//!
//! Delivery contract: an offset is committed only after the rows before it
//! are stored in ClickHouse (or dead-lettered), so a crash at any point
//! re-reads them: at-least-once into ClickHouse, made effectively-once by the
//! ReplacingMergeTree targets keyed by source id (see `clickhouse::writer`).
//! A batch is stored only into columns of the types it was encoded for, or
//! converted first to a column widened since (`store_table`): otherwise it
//! is held, nothing committed, the flow not ready saying why. Servers that
//! check the types an insert declares (21.12+) make this atomic; on older
//! ones the types are read right before every insert, which leaves the
//! moment between that read and the insert (about a millisecond) open to
//! an `ALTER`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use connections::kafka::{GroupConsumer, Ownership};
use daemon::backoff::Backoff;
use daemon::metrics::Metrics;
use flows::Flow;
use futures::FutureExt;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::assignment::AssignmentCheck;
use crate::batcher::{Origin, PendingBatch};
use crate::clickhouse::ClickHouseWriter;
use crate::clickhouse::schema::TablePlan;
use crate::clickhouse::types::ChType;
use crate::config::SinkConfig;
use crate::dead_letter::DeadLetterQueue;
use crate::stats::SinkStats;

/// Messages taken from librdkafka's queue in one go when they are ready.
const READY_BURST: usize = 1024;

/// How often an idle sink checks whether its position moved past
/// transaction markers since it last committed.
const IDLE_COMMIT_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

pub struct FlowSink {
    pub flow: Flow,
    pub health: daemon::health::FlowHealth,
    pub config: Arc<SinkConfig>,
    pub plans: Vec<TablePlan>,
    pub writer: Arc<ClickHouseWriter>,
    pub metrics: Metrics,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// librdkafka stopped the consumer for good (e.g. this static member was
    /// fenced by another process with the same `SINK_GROUP_INSTANCE_ID`):
    /// the daemon exits non-zero with the reason rather than looking alive
    /// while consuming nothing. Kafka's own clients treat it the same way.
    #[error("kafka consumer failed for good: {0}")]
    Fatal(String),
}

/// The flow's consumer (settings: `connections::kafka::consumer_config`), a
/// static member of its group when the sink has a `group_instance_id`.
pub fn consumer(
    kafka: &crate::config::KafkaConfig,
    group: &str,
    flow: &str,
) -> Result<GroupConsumer, KafkaError> {
    let mut config = connections::kafka::consumer_config(
        &kafka.endpoint,
        group,
        &format!("outbox-sink-{group}"),
    );
    if let Some(id) = &kafka.group_instance_id {
        config.set("group.instance.id", format!("{id}.{flow}"));
    }
    config.create_with_context(Ownership::default())
}

impl FlowSink {
    /// Consumes until shutdown, or until librdkafka stops the consumer
    /// for good ([`SinkError::Fatal`]: the daemon exits non-zero).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), SinkError> {
        let flow = self.flow.name.to_string();
        let consumer = Arc::new(consumer(
            &self.config.kafka,
            &self.flow.consumer_group,
            &flow,
        )?);
        let dlq = DeadLetterQueue::new(
            &self.config.kafka.endpoint,
            &self.config.kafka.dlq_suffix,
            self.config.kafka.dlq_timeout,
        )?;
        let mut topics: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, plan) in self.plans.iter().enumerate() {
            topics.entry(plan.topic.clone()).or_default().push(i);
        }
        let names: Vec<&str> = topics.keys().map(String::as_str).collect();
        consumer.subscribe(&names)?;
        tracing::info!(flow, group = %self.flow.consumer_group, topics = ?names, "sink consuming");
        // A static member's restart gets the group's stored assignment,
        // which may predate a topic: see `assignment`.
        let assignment_check = tokio::spawn(
            AssignmentCheck::new(
                &flow,
                &self.flow.consumer_group,
                names.iter().map(|n| (*n).to_owned()).collect(),
            )
            .run(Arc::clone(&consumer), shutdown.clone()),
        );

        let lag_probe = tokio::spawn(connections::lag::run(
            Arc::clone(&consumer),
            connections::lag::LagProbe {
                from: connections::lag::LagFrom::Committed,
                gauge: "sink_consumer_lag",
                help: "Messages in the partition after the group's committed offset.",
                marker: "sink_flushes_total",
            },
            flow.clone(),
            self.metrics.clone(),
            self.health.clone(),
            daemon::health::probe_interval(self.config.stall_after),
            shutdown.clone(),
        ));
        let policy = self.config.flush.clone();
        let stats = SinkStats::new(&self.metrics, &flow);
        let mut batch = PendingBatch::new(self.plans.len(), self.config.max_message_bytes);
        // The plans messages are encoded with; a batch is flushed with the
        // plans it was encoded with, and a table change is adopted between
        // batches (see `check_schema`).
        let mut plans: Arc<Vec<TablePlan>> = Arc::new(self.plans.clone());
        let mut adopted: Option<Vec<TablePlan>> = None;
        // Targets are fixed for the run; their header columns with them.
        let reads_headers = self.plans.iter().any(|p| !p.headers.is_empty());
        let mut refusals: HashMap<String, String> = HashMap::new();
        let mut schema_check = tokio::time::interval_at(
            tokio::time::Instant::now() + self.config.schema_check,
            self.config.schema_check,
        );
        schema_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Freshness against SINK_MAX_FRESHNESS_MS: the worst of the last
        // stored batch, and the oldest row not yet stored.
        let mut storing_oldest: Option<i64> = None;
        let mut late_since: Option<Instant> = None;
        let mut freshness_check = tokio::time::interval(FRESHNESS_CHECK_EVERY);
        freshness_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // One batch may be storing while the next fills: flushes run one at
        // a time and in order, so offsets are still committed in order, and
        // a flush that gave up (shutdown) stops everything after it.
        let mut storing: Option<Pin<Box<dyn Future<Output = bool> + Send + '_>>> = None;
        let mut clean = true;
        // With nothing taken in and not yet stored, the consumer's position is
        // committed as it moves past transaction markers (see
        // `connections::kafka::positions`): an idle sink's lag reaches 0.
        let mut idle_check = tokio::time::interval(IDLE_COMMIT_EVERY);
        idle_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut idle_committed = TopicPartitionList::new();
        let mut fatal = None;
        loop {
            let deadline = batch.deadline(&policy);
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                _ = idle_check.tick(), if storing.is_none() && batch.is_empty() => {
                    connections::kafka::commit_position_if_moved(&consumer, &mut idle_committed, &flow).await;
                    continue;
                }
                _ = schema_check.tick() => {
                    adopted = self.check_schema(&plans, &mut refusals).await;
                }
                _ = freshness_check.tick(), if self.config.max_freshness.is_some() => {
                    let oldest = [storing_oldest, batch.oldest_stamp()].into_iter().flatten().min();
                    self.judge_freshness(oldest, &stats.last_freshness_ms, &mut late_since);
                }
                stored = async { storing.as_mut().expect("guarded").await }, if storing.is_some() => {
                    storing = None;
                    storing_oldest = None;
                    if !stored {
                        clean = false;
                        break;
                    }
                }
                received = consumer.recv() => {
                    let take = |batch: &mut PendingBatch, received: Result<BorrowedMessage<'_>, KafkaError>| match received {
                        Ok(message) => {
                            stats.messages_read.inc();
                            // Parsing a message's headers costs about a
                            // microsecond: only when a table reads one, or
                            // for the freshness of a sample of the rows.
                            let sampled = freshness_sampled(batch.stamped(), message.offset());
                            let headers = if reads_headers || sampled { message.headers() } else { None };
                            let origin = Origin {
                                topic: message.topic(),
                                partition: message.partition(),
                                offset: message.offset(),
                                key: message.key(),
                                headers: if reads_headers { headers } else { None },
                                timestamp: if sampled {
                                    committed_at(headers).or_else(|| message.timestamp().to_millis())
                                } else {
                                    None
                                },
                            };
                            let targets = topics.get(message.topic()).map_or(&[][..], Vec::as_slice);
                            batch.add_message(&plans, targets, origin, message.payload());
                        }
                        // Said once at info, naming the topic (`Ownership`).
                        Err(error) if connections::kafka::is_missing_topic(&error) => {
                            tracing::debug!(flow, %error, "a subscribed topic does not exist yet")
                        }
                        Err(error) => tracing::warn!(flow, %error, "kafka consumer error"),
                    };
                    let failed = received.is_err();
                    take(&mut batch, received);
                    if failed
                        && let crate::policy::Action::Stop(reason) = crate::policy::consumer(
                            &KafkaError::Canceled,
                            consumer.client().fatal_error(),
                        )
                    {
                        tracing::error!(flow, reason, "kafka consumer failed for good");
                        fatal = Some(reason);
                        break;
                    }
                    // Take what is already queued without a round through
                    // select!, timers and the clock per message.
                    for _ in 0..READY_BURST {
                        if batch.is_full(&policy) {
                            break;
                        }
                        match consumer.recv().now_or_never() {
                            Some(received) => take(&mut batch, received),
                            None => break,
                        }
                    }
                }
                () = sleep_until(deadline) => {}
            }
            let replan = adopted.is_some() && !batch.is_empty();
            if replan || batch.should_flush(&policy, Instant::now()) {
                if let Some(previous) = storing.take()
                    && !previous.await
                {
                    clean = false;
                    break;
                }
                storing_oldest = batch.oldest_stamp();
                let full = std::mem::replace(
                    &mut batch,
                    PendingBatch::new(self.plans.len(), self.config.max_message_bytes),
                );
                storing = Some(Box::pin(self.flush(
                    full,
                    Arc::clone(&plans),
                    &consumer,
                    &dlq,
                    &shutdown,
                    &stats,
                )));
            }
            if let Some(new) = adopted.take() {
                plans = Arc::new(new);
            }
        }
        // Shutdown: finish the batch being stored, then store and commit
        // what was taken in since — unless an earlier batch was abandoned
        // (committing later offsets would skip its rows).
        if let Some(previous) = storing.take() {
            clean &= previous.await;
        }
        if let Some(reason) = fatal {
            lag_probe.abort();
            assignment_check.abort();
            return Err(SinkError::Fatal(reason));
        }
        if clean && !batch.is_empty() {
            let finishing = CancellationToken::new();
            let stop_retrying = finishing.clone();
            // Give a ClickHouse outage a bounded grace period at shutdown.
            let grace = tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                stop_retrying.cancel();
            });
            self.flush(batch, plans, &consumer, &dlq, &finishing, &stats)
                .await;
            grace.abort();
        }
        lag_probe.abort();
        assignment_check.abort();
        tracing::info!(flow, "sink stopped");
        Ok(())
    }

    /// Inserts, dead-letters, commits — retrying with capped backoff while
    /// ClickHouse or Kafka fail. Returns false if `stop` fired first (then the
    /// batch is abandoned uncommitted and will be re-read).
    async fn flush(
        &self,
        mut batch: PendingBatch,
        plans: Arc<Vec<TablePlan>>,
        consumer: &Arc<GroupConsumer>,
        dlq: &DeadLetterQueue,
        stop: &CancellationToken,
        stats: &SinkStats,
    ) -> bool {
        let flow = self.flow.name.as_str();
        let started = Instant::now();
        stats.fill.observe_duration(batch.age(started));
        let mut backoff = Backoff::default();
        let mut worst_ms = 0;
        for (i, plan) in plans.iter().enumerate() {
            if batch.rows_per_table[i] == 0 {
                continue;
            }
            let rows = std::mem::replace(&mut batch.tables[i], BytesMut::new()).freeze();
            if !self
                .store_table(plan, rows, &mut backoff, stop, stats)
                .await
            {
                return false;
            }
            worst_ms = worst_ms.max(self.observe_freshness(plan, &batch.stamps[i]));
            self.metrics
                .counter(
                    "sink_rows_inserted_total",
                    "Rows accepted by ClickHouse.",
                    &[("flow", flow), ("table", &plan.table)],
                )
                .add(batch.rows_per_table[i] as i64);
        }
        if !batch.dead_letters.is_empty() {
            for letter in &batch.dead_letters {
                self.metrics
                    .counter(
                        "sink_dead_letters_total",
                        "Messages sent to the dead-letter topic.",
                        &[("flow", flow), ("topic", &letter.topic)],
                    )
                    .inc();
                tracing::warn!(flow, topic = %letter.topic, partition = letter.partition, offset = letter.offset, error = %letter.error, "message dead-lettered");
            }
            let mut unsent = batch.dead_letters.clone();
            let mut blocked = false;
            while let Err(error) = dlq.publish(&mut unsent).await {
                self.metrics
                    .counter(
                        "sink_dead_letter_failures_total",
                        "Attempts to write dead letters that failed (retried; the flow is not ready meanwhile).",
                        &[("flow", flow)],
                    )
                    .inc();
                let delay = backoff.next_delay();
                let topics: std::collections::BTreeSet<String> =
                    unsent.iter().map(|l| dlq.topic_for(&l.topic)).collect();
                tracing::warn!(flow, %error, letters = unsent.len(), retry_in_ms = delay.as_millis() as u64, "dead-letter publish failed; retrying the letters not acknowledged, nothing committed");
                // Not ready while letters cannot be written: the stream
                // stops here rather than skip them.
                let topics = topics.into_iter().collect::<Vec<_>>().join(", ");
                if let crate::policy::Action::Hold(reason) =
                    crate::policy::dead_letters(&error, &topics, unsent.len())
                {
                    self.health.block(DEAD_LETTERS, &reason);
                }
                blocked = true;
                if !sleep_or_stop(delay, stop).await {
                    return false;
                }
            }
            if blocked {
                tracing::info!(flow, "dead letters written again");
                self.health.unblock(DEAD_LETTERS);
            }
        }
        stats
            .last_freshness_ms
            .store(worst_ms, std::sync::atomic::Ordering::Relaxed);
        daemon::failpoint::hit_async("sink-after-insert").await;
        let inserted = Instant::now();
        stats.insert.observe_duration(inserted - started);
        stats.last_insert.set(daemon::time::unix_now());
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
        let owned = consumer.context().only_owned(&offsets);
        let foreign = offsets.count() - owned.count();
        if foreign > 0 {
            self.metrics
                .counter(
                    "sink_offsets_not_committed_revoked_total",
                    "Partition offsets of a stored batch not committed because the partition was revoked meanwhile.",
                    &[("flow", flow)],
                )
                .add(foreign as i64);
            tracing::info!(
                flow,
                partitions = foreign,
                "partitions revoked while the batch was stored; their offsets are left to the new owner"
            );
        }
        let offsets = owned;
        let committer = Arc::clone(consumer);
        match tokio::task::spawn_blocking(move || committer.commit(&offsets, CommitMode::Sync))
            .await
        {
            Ok(Ok(())) => {}
            // The rows are stored; an uncommitted offset only means they are
            // read again (e.g. after a rebalance) and absorbed by the table.
            Ok(Err(error)) => {
                let action = crate::policy::offset_commit(&error);
                tracing::warn!(flow, %error, ?action, "offset commit failed; rows will be re-read and deduplicated")
            }
            Err(error) => tracing::warn!(flow, %error, "offset commit task failed"),
        }
        stats.commit.observe_duration(inserted.elapsed());
        stats.flushes.inc();
        stats.batch_rows.observe(batch.rows() as f64);
        tracing::debug!(
            flow,
            rows = batch.rows(),
            dead_letters = batch.dead_letters.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "batch flushed"
        );
        true
    }
}

impl FlowSink {
    /// Records, per measured row just accepted by ClickHouse (see
    /// [`freshness_sampled`]), the time since its commit
    /// (`sink_freshness_seconds`); returns the worst, in ms.
    fn observe_freshness(&self, plan: &TablePlan, stamps: &[i64]) -> i64 {
        if stamps.is_empty() {
            return 0;
        }
        let histogram = self.metrics.histogram(
            "sink_freshness_seconds",
            "Per row loaded (every row of a batch up to 1,024, then one in 64): time from its commit in Postgres (the relay's committed_at header) to ClickHouse accepting it.",
            FRESHNESS_SECONDS,
            &[("flow", self.flow.name.as_str()), ("table", &plan.table)],
        );
        let now = unix_ms();
        let mut worst = 0;
        for &stamp in stamps {
            let ms = (now - stamp).max(0);
            worst = worst.max(ms);
            histogram.observe(ms as f64 / 1000.0);
        }
        worst
    }

    /// Holds the flow not ready while rows arrive later than
    /// SINK_MAX_FRESHNESS_MS after their commit — the last batch stored, or
    /// the oldest row still waiting (`oldest`, Unix ms) — for the stall
    /// window; clears it once they are on time.
    fn judge_freshness(
        &self,
        oldest: Option<i64>,
        last_freshness: &std::sync::atomic::AtomicI64,
        late_since: &mut Option<Instant>,
    ) {
        let Some(bound) = self.config.max_freshness else {
            return;
        };
        let waiting = oldest.map_or(0, |o| (unix_ms() - o).max(0));
        let worst = waiting.max(last_freshness.load(std::sync::atomic::Ordering::Relaxed));
        let bound_ms = bound.as_millis() as i64;
        if worst <= bound_ms {
            if late_since.take().is_some() {
                tracing::info!(flow = %self.flow.name, worst_ms = worst, "rows arrive within SINK_MAX_FRESHNESS_MS again");
            }
            self.health.unblock(FRESHNESS);
            return;
        }
        let since = *late_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= self.config.stall_after {
            self.health.block(
                FRESHNESS,
                &format!(
                    "rows loaded {worst} ms after their commit, over SINK_MAX_FRESHNESS_MS ({bound_ms} ms), for {} s",
                    since.elapsed().as_secs()
                ),
            );
        }
    }

    /// Reads each target table's columns again and judges the change
    /// against the plan in use (`schema::judge`): returns the new plans when
    /// one is adopted (a Nullable column added, a type widened); a change
    /// that would lose data holds the flow not ready, with the reason, and
    /// the old plan stays (its inserts fail if a column it fills is gone:
    /// nothing is committed until the column is back or the sink restarts).
    async fn check_schema(
        &self,
        plans: &[TablePlan],
        refusals: &mut HashMap<String, String>,
    ) -> Option<Vec<TablePlan>> {
        use crate::clickhouse::schema::{Change, SchemaError, judge, plan_table};
        let flow = self.flow.name.as_str();
        let mut next = plans.to_vec();
        let mut changed = false;
        for (i, plan) in plans.iter().enumerate() {
            let Some(target) = self
                .flow
                .targets
                .iter()
                .find(|t| t.table.as_str() == plan.table && t.topic == plan.topic)
            else {
                continue;
            };
            let cause = format!("schema:{}", plan.table);
            let now = plan_table(
                self.writer.client(),
                &self.config.clickhouse.database,
                flow,
                target,
                None,
            )
            .await;
            let refusal = match now {
                Ok(now) => match judge(plan, &now) {
                    Change::Same => None,
                    Change::Adopt(what) => {
                        tracing::info!(flow, table = %plan.table, changes = ?what, "target table changed; loading with its new columns from the next batch");
                        self.metrics
                            .counter(
                                "sink_schema_changes_total",
                                "Target table changes the sink adopted without a restart (a Nullable column added, a type widened).",
                                &[("flow", flow), ("table", &plan.table)],
                            )
                            .inc();
                        next[i] = now;
                        changed = true;
                        None
                    }
                    Change::Refuse(reason) => Some(reason),
                },
                // Unreachable: the inserts retry and say so.
                Err(SchemaError::ClickHouse(_)) => continue,
                Err(other) => Some(other.to_string()),
            };
            match refusal {
                Some(reason) => {
                    if refusals.get(&cause) != Some(&reason) {
                        tracing::error!(flow, table = %plan.table, reason, "target table changed in a way that would lose data; flow not ready");
                    }
                    self.health.block(&cause, &reason);
                    refusals.insert(cause, reason);
                }
                None => {
                    if refusals.remove(&cause).is_some() {
                        tracing::info!(flow, table = %plan.table, "target table fits the flow again");
                    }
                    self.health.unblock(&cause);
                }
            }
        }
        changed.then_some(next)
    }

    /// Inserts one table's rows of a batch (RowBinary encoded for `plan`),
    /// retrying with `backoff` until ClickHouse accepts them; false if
    /// `stop` fired first. The rows
    /// go only into columns of the types they were encoded for, or are
    /// converted to a widened column first (`refit`): where the server
    /// checks the types an insert declares, when it says they differ;
    /// elsewhere right before every insert.
    async fn store_table(
        &self,
        plan: &TablePlan,
        mut rows: bytes::Bytes,
        backoff: &mut Backoff,
        stop: &CancellationToken,
        stats: &SinkStats,
    ) -> bool {
        let flow = self.flow.name.as_str();
        let mut plan = std::borrow::Cow::Borrowed(plan);
        let mut refit = !self.writer.caps().insert_checks_types;
        let mut held = false;
        loop {
            // Why inserts into the table are held, when they are.
            let mut hold = None;
            let mut failed = None;
            let mut insert = true;
            if refit {
                match self.refit(&plan, &rows).await {
                    Ok(Some((now, converted))) => {
                        (plan, rows) = (std::borrow::Cow::Owned(now), converted);
                    }
                    // The table is gone: the insert says so (and holds).
                    Ok(None) => {}
                    Err(reason) => {
                        insert = false;
                        if reason.is_none() {
                            // The read before the insert is part of it.
                            stats.insert_failures.inc();
                        }
                        hold = reason.map(|r| {
                            format!(
                                "a batch for {} is held (nothing committed): {r}",
                                plan.table
                            )
                        });
                    }
                }
            }
            if insert {
                match self.writer.insert(&plan, rows.clone()).await {
                    Ok(()) => {
                        if held {
                            self.hold(&plan, None);
                        }
                        return true;
                    }
                    Err(error) => {
                        stats.insert_failures.inc();
                        hold = match crate::policy::insert(&error) {
                            crate::policy::Action::Hold(reason) => Some(format!(
                                "ClickHouse refuses inserts into {}: {reason}",
                                plan.table
                            )),
                            // Checked against the table already and still
                            // refused: not a change the sink can follow.
                            crate::policy::Action::Refit if refit => {
                                let detail: String = error.to_string().chars().take(300).collect();
                                Some(format!(
                                    "ClickHouse refuses the column types of the batch for {}: {detail}",
                                    plan.table
                                ))
                            }
                            crate::policy::Action::Refit => {
                                refit = true;
                                None
                            }
                            _ => None,
                        };
                        failed = Some(error);
                    }
                }
            }
            let delay = backoff.next_delay();
            if let Some(error) = failed {
                tracing::warn!(flow, table = %plan.table, %error, retry_in_ms = delay.as_millis() as u64, "clickhouse insert failed; retrying, offsets not committed");
            }
            if let Some(reason) = hold {
                held = true;
                self.hold(&plan, Some(&reason));
            }
            if !sleep_or_stop(delay, stop).await {
                return false;
            }
        }
    }

    /// Compares the types `rows` were encoded for (`plan`) with the table's
    /// columns as they are now (`schema::fit`). `Ok(Some(..))`: insert as
    /// this plan, with these rows (converted when a column was widened);
    /// `Ok(None)`: the table is gone, the insert will say so; `Err(Some)`:
    /// hold the batch for this reason; `Err(None)`: ClickHouse did not
    /// answer, try again.
    async fn refit(
        &self,
        plan: &TablePlan,
        rows: &bytes::Bytes,
    ) -> Result<Option<(TablePlan, bytes::Bytes)>, Option<String>> {
        use crate::clickhouse::schema::{Fit, column_types, fit};
        let flow = self.flow.name.as_str();
        let database = &self.config.clickhouse.database;
        let now = match column_types(self.writer.client(), database, &plan.table).await {
            Ok(now) if now.is_empty() => return Ok(None),
            Ok(now) => now,
            Err(error) => {
                tracing::warn!(flow, table = %plan.table, %error, "cannot read the target table's columns before the insert; retrying, offsets not committed");
                return Err(None);
            }
        };
        match fit(plan, &now) {
            Fit::Refuse(reason) => Err(Some(reason)),
            Fit::Fits {
                plan: now,
                convert: false,
            } => Ok(Some((now, rows.clone()))),
            Fit::Fits {
                plan: now,
                convert: true,
            } => {
                let from: Vec<&ChType> = plan.columns.iter().map(|c| &c.ty).collect();
                let to: Vec<&ChType> = now.columns.iter().map(|c| &c.ty).collect();
                let converted =
                    crate::clickhouse::encode::convert(rows, &from, &to).map_err(|e| {
                        Some(format!(
                            "its rows do not convert to the table's new column types ({e})"
                        ))
                    })?;
                tracing::info!(flow, table = %plan.table, rows = rows.len(), "batch encoded before a column was widened; converted to the new types");
                Ok(Some((now, converted.freeze())))
            }
        }
    }

    /// Inserts into `plan`'s table are held (`Some(reason)`: the flow is
    /// not ready, saying why, and `sink_insert_refused` is 1) — ClickHouse
    /// refuses the table for good, or the batch does not fit its columns
    /// any more — or go on again (`None`). Nothing is committed meanwhile:
    /// the batch is retried until it is stored.
    fn hold(&self, plan: &TablePlan, reason: Option<&str>) {
        let flow = self.flow.name.as_str();
        self.metrics
            .gauge(
                "sink_insert_refused",
                "1 while inserts into the target table are held: ClickHouse refuses it for good (dropped, altered, no grant) or a batch does not fit its columns any more; the flow is not ready meanwhile.",
                &[("flow", flow), ("table", &plan.table)],
            )
            .set(i64::from(reason.is_some()));
        match reason {
            Some(reason) => {
                tracing::error!(flow, table = %plan.table, reason, "inserts into the target table held; retrying, nothing committed");
                self.health.block(&format!("table:{}", plan.table), reason);
            }
            None => {
                tracing::info!(flow, table = %plan.table, "inserts into the target table go on");
                self.health.unblock(&format!("table:{}", plan.table));
            }
        }
    }
}

/// The health cause of dead letters that cannot be written.
const DEAD_LETTERS: &str = "dead-letters";
/// The health cause of rows arriving later than SINK_MAX_FRESHNESS_MS.
/// Rows of a batch whose freshness is measured, every one, before only a
/// sample is (see [`freshness_sampled`]).
const FRESHNESS_ALL_UP_TO: usize = 1_024;
/// Past [`FRESHNESS_ALL_UP_TO`], one row in this many (by offset).
const FRESHNESS_ONE_IN: i64 = 64;

/// Whether a message's freshness is measured: every row of a batch holding
/// fewer than [`FRESHNESS_ALL_UP_TO`] measured rows (a live stream's
/// batches, whole), then one in [`FRESHNESS_ONE_IN`] — reading the commit
/// time means parsing the message's headers, about a microsecond. The
/// oldest rows, read first, are always measured.
fn freshness_sampled(stamped: usize, offset: i64) -> bool {
    stamped < FRESHNESS_ALL_UP_TO || offset % FRESHNESS_ONE_IN == 0
}

/// The row's commit time from the relay's header (Unix ms), if there.
fn committed_at(headers: Option<&rdkafka::message::BorrowedHeaders>) -> Option<i64> {
    use rdkafka::message::Headers;
    headers?
        .iter()
        .find(|h| h.key == flows::COMMITTED_AT_HEADER)?
        .value
        .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
}

const FRESHNESS: &str = "freshness";
/// How often freshness is judged against its bound.
const FRESHNESS_CHECK_EVERY: std::time::Duration = std::time::Duration::from_millis(500);
/// Bucket bounds of `sink_freshness_seconds`: milliseconds to a minute.
const FRESHNESS_SECONDS: &[f64] = &[
    0.005, 0.01, 0.02, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

async fn sleep_or_stop(delay: std::time::Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        () = stop.cancelled() => false,
    }
}
