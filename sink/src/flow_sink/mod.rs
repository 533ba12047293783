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
//! converted first to a column widened since (`store`): otherwise it is
//! held, nothing committed, the flow not ready saying why. Servers that
//! check the types an insert declares (21.12+) make this atomic; on older
//! ones the types are read right before every insert, which leaves the
//! moment between that read and the insert (about a millisecond) open to
//! an `ALTER`.
//!
//! The steps, each a file with its own state: take messages in (`consume`,
//! and an idle consumer's position committed), flush a batch (`flush`:
//! store every table's rows (`store`) → dead-letter → commit), follow the
//! target tables' changes (`schema_watch`) and judge freshness
//! (`freshness`). One batch may be storing while the next fills; errors
//! are sorted by `error::classify`.

mod consume;
mod flush;
mod freshness;
mod schema_watch;
mod store;

use std::sync::Arc;
use std::time::{Duration, Instant};

use connections::kafka::{GroupConsumer, Ownership};
use daemon::metrics::Metrics;
use flows::Flow;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::assignment::AssignmentCheck;
use crate::batcher::PendingBatch;
use crate::clickhouse::ClickHouseWriter;
use crate::clickhouse::schema::TablePlan;
use crate::config::SinkConfig;
use crate::dead_letter::DeadLetterQueue;
use crate::error::SinkError;
use crate::stats::SinkStats;

use consume::{IdleCommit, Intake};
use flush::Storing;
use freshness::Freshness;
use schema_watch::SchemaWatch;

/// How long the last batch's store may retry at shutdown (a ClickHouse
/// outage then ends with the batch uncommitted, read again on restart).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

pub struct FlowSink {
    pub flow: Flow,
    pub health: daemon::health::FlowHealth,
    pub config: Arc<SinkConfig>,
    pub plans: Vec<TablePlan>,
    pub writer: Arc<ClickHouseWriter>,
    pub metrics: Metrics,
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

/// What the steps of one running flow share: its definition and settings,
/// health, the ClickHouse writer, the Kafka clients and the metrics.
struct Context {
    flow: Flow,
    config: Arc<SinkConfig>,
    health: daemon::health::FlowHealth,
    writer: Arc<ClickHouseWriter>,
    consumer: Arc<GroupConsumer>,
    dlq: DeadLetterQueue,
    stats: SinkStats,
}

impl Context {
    fn name(&self) -> &str {
        self.flow.name.as_str()
    }

    fn empty_batch(&self) -> PendingBatch {
        PendingBatch::new(self.stats.tables.len(), self.config.max_message_bytes)
    }
}

impl FlowSink {
    /// Consumes until shutdown, or until librdkafka stops the consumer
    /// for good ([`SinkError::ConsumerFailed`]: the daemon exits non-zero).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), SinkError> {
        let intake = Intake::new(&self.plans);
        let cx = self.start(&intake)?;
        let _helpers = Helpers::spawn(&cx, &intake, &self.metrics, &shutdown);
        let mut consuming = Consuming::new(&cx, intake, self.plans);
        let end = consuming.consume(&shutdown).await;
        consuming.finish(end).await
    }

    /// The flow's clients and metrics; its consumer subscribed.
    fn start(&self, intake: &Intake) -> Result<Context, SinkError> {
        let flow = self.flow.name.as_str();
        let consumer = Arc::new(consumer(
            &self.config.kafka,
            &self.flow.consumer_group,
            flow,
        )?);
        let dlq = DeadLetterQueue::new(
            &self.config.kafka.endpoint,
            &self.config.kafka.dlq_suffix,
            self.config.kafka.dlq_timeout,
        )?;
        let topics = intake.topics();
        consumer.subscribe(&topics)?;
        tracing::info!(flow, group = %self.flow.consumer_group, topics = ?topics, "sink consuming");
        Ok(Context {
            stats: SinkStats::new(&self.metrics, flow, &self.plans),
            flow: self.flow.clone(),
            config: Arc::clone(&self.config),
            health: self.health.clone(),
            writer: Arc::clone(&self.writer),
            consumer,
            dlq,
        })
    }
}

/// The tasks beside the loop, each with its own requests to Kafka that may
/// wait on an unreachable broker: the group's assignment kept whole
/// (`assignment`) and the consumer's lag probed. Stopped when dropped.
struct Helpers(Vec<JoinHandle<()>>);

impl Helpers {
    fn spawn(
        cx: &Context,
        intake: &Intake,
        metrics: &Metrics,
        shutdown: &CancellationToken,
    ) -> Self {
        let topics = intake.topics().into_iter().map(str::to_owned).collect();
        // A static member's restart gets the group's stored assignment,
        // which may predate a topic: see `assignment`.
        let assignment = AssignmentCheck::new(cx.name(), &cx.flow.consumer_group, topics)
            .run(Arc::clone(&cx.consumer), shutdown.clone());
        let lag = connections::lag::run(
            Arc::clone(&cx.consumer),
            crate::stats::LAG,
            cx.name().to_owned(),
            metrics.clone(),
            cx.health.clone(),
            daemon::health::probe_interval(cx.config.stall_after),
            shutdown.clone(),
        );
        Self(vec![tokio::spawn(assignment), tokio::spawn(lag)])
    }
}

impl Drop for Helpers {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Why the loop ended.
enum End {
    Shutdown,
    /// A flush gave up (shutdown while it retried): its batch is
    /// uncommitted, so nothing after it may be committed either.
    Abandoned,
    /// The consumer failed for good.
    Failed(SinkError),
}

/// The loop's state: the batch filling, the one storing, and each step's own.
struct Consuming<'a> {
    cx: &'a Context,
    intake: Intake,
    batch: PendingBatch,
    /// The plans messages are encoded with; a batch is flushed with the
    /// plans it was encoded with, and a table change is adopted between
    /// batches (see `schema_watch`).
    plans: Arc<Vec<TablePlan>>,
    storing: Storing<'a>,
    schema: SchemaWatch,
    freshness: Freshness,
    idle: IdleCommit,
    /// When the last flush started (the floor of a quiet stream's next).
    last_flush: Option<Instant>,
}

impl<'a> Consuming<'a> {
    fn new(cx: &'a Context, intake: Intake, plans: Vec<TablePlan>) -> Self {
        Self {
            cx,
            intake,
            batch: cx.empty_batch(),
            plans: Arc::new(plans),
            storing: Storing::default(),
            schema: SchemaWatch::new(cx.config.schema_check),
            freshness: Freshness::new(cx.config.max_freshness, cx.config.stall_after),
            idle: IdleCommit::new(),
            last_flush: None,
        }
    }

    async fn consume(&mut self, shutdown: &'a CancellationToken) -> End {
        let cx = self.cx;
        loop {
            let deadline = self.batch.deadline(&cx.config.flush, self.last_flush);
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return End::Shutdown,
                _ = self.idle.tick(), if !self.storing.is_busy() && self.batch.is_empty() => {
                    self.idle.commit(cx).await;
                    continue;
                }
                () = self.schema.tick() => self.schema.check(cx, &self.plans).await,
                () = self.freshness.tick(), if self.freshness.is_bounded() => {
                    let waiting = [self.storing.oldest(), self.batch.oldest_stamp()];
                    self.freshness.judge(cx, waiting.into_iter().flatten().min());
                }
                stored = self.storing.stored(), if self.storing.is_busy() => {
                    if !stored {
                        return End::Abandoned;
                    }
                }
                received = cx.consumer.recv() => {
                    if let Err(error) = self.intake.take(cx, &mut self.batch, &self.plans, received) {
                        return End::Failed(error);
                    }
                }
                () = sleep_until(deadline) => {}
            }
            if !self.flush_if_due(shutdown).await {
                return End::Abandoned;
            }
        }
    }

    /// The flush decision: the batch's own (`PendingBatch::should_flush`),
    /// or a table change to adopt while rows encoded for the old plan wait.
    /// Waits for the batch storing before (flushes run one at a time, in
    /// order); false if that one gave up.
    async fn flush_if_due(&mut self, shutdown: &'a CancellationToken) -> bool {
        let cx = self.cx;
        let replan = self.schema.has_adopted() && !self.batch.is_empty();
        let now = Instant::now();
        if replan
            || self
                .batch
                .should_flush(&cx.config.flush, now, self.last_flush)
        {
            if !self.storing.stored().await {
                return false;
            }
            self.last_flush = Some(Instant::now());
            let full = std::mem::replace(&mut self.batch, cx.empty_batch());
            self.storing
                .start(cx, full, Arc::clone(&self.plans), shutdown);
        }
        if let Some(new) = self.schema.take_adopted() {
            self.plans = Arc::new(new);
        }
        true
    }

    /// Finishes the batch being stored, then stores and commits what was
    /// taken in since — unless an earlier batch was abandoned (committing
    /// later offsets would skip its rows) or the consumer failed. With
    /// everything stored, the position past the last transaction marker
    /// is committed too: a sink stopped cleanly leaves no lag behind.
    async fn finish(mut self, end: End) -> Result<(), SinkError> {
        let mut clean = self.storing.stored().await && !matches!(end, End::Abandoned);
        if let End::Failed(error) = end {
            return Err(error);
        }
        if clean && !self.batch.is_empty() {
            let finishing = CancellationToken::new();
            let stop_retrying = finishing.clone();
            let grace = tokio::spawn(async move {
                tokio::time::sleep(SHUTDOWN_GRACE).await;
                stop_retrying.cancel();
            });
            clean = self.cx.flush(self.batch, self.plans, &finishing).await;
            grace.abort();
        }
        if clean {
            self.idle.commit(self.cx).await;
        }
        tracing::info!(flow = self.cx.name(), "sink stopped");
        Ok(())
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
