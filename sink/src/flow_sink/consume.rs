//! Taking messages in: each received message is decoded into the batch (or
//! becomes a dead letter there), and what is already queued follows without
//! a round through the loop. While nothing is taken in, the consumer's
//! position is committed as it moves past transaction markers.

use std::collections::HashMap;
use std::time::Duration;

use futures::FutureExt;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message, TopicPartitionList};
use tokio::time::{Interval, MissedTickBehavior};

use super::{Context, freshness};
use crate::batcher::{Origin, PendingBatch};
use crate::clickhouse::schema::TablePlan;
use crate::error::{Recovery, SinkError, classify};

/// Messages taken from librdkafka's queue in one go when they are ready.
const READY_BURST: usize = 1024;

/// How often an idle sink checks whether its position moved past
/// transaction markers since it last committed.
const IDLE_COMMIT_EVERY: Duration = Duration::from_millis(500);

/// Where each topic's messages go.
pub(super) struct Intake {
    /// Topic → the plans (indexes) its messages feed.
    topics: HashMap<String, Vec<usize>>,
    /// Targets are fixed for the run; their header columns with them.
    reads_headers: bool,
}

impl Intake {
    pub fn new(plans: &[TablePlan]) -> Self {
        let mut topics: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, plan) in plans.iter().enumerate() {
            topics.entry(plan.topic.clone()).or_default().push(i);
        }
        Self {
            topics,
            reads_headers: plans.iter().any(|p| !p.headers.is_empty()),
        }
    }

    /// The topics to subscribe to.
    pub fn topics(&self) -> Vec<&str> {
        self.topics.keys().map(String::as_str).collect()
    }

    /// Takes a received message, then those already queued (without a
    /// round through `select!`, timers and the clock per message) until
    /// the batch is full or nothing more is queued (the batch is then
    /// quiet). Err when the consumer failed for good.
    pub fn take(
        &self,
        cx: &Context,
        batch: &mut PendingBatch,
        plans: &[TablePlan],
        received: Result<BorrowedMessage<'_>, KafkaError>,
    ) -> Result<(), SinkError> {
        self.take_one(cx, batch, plans, received)?;
        // Whether the consumer had nothing more queued: the batch may then
        // be stored at once (`PendingBatch::should_flush`).
        let mut quiet = false;
        for _ in 0..READY_BURST {
            if batch.is_full(&cx.config.flush) {
                break;
            }
            match cx.consumer.recv().now_or_never() {
                Some(received) => self.take_one(cx, batch, plans, received)?,
                None => {
                    quiet = true;
                    break;
                }
            }
        }
        batch.set_quiet(quiet);
        Ok(())
    }

    fn take_one(
        &self,
        cx: &Context,
        batch: &mut PendingBatch,
        plans: &[TablePlan],
        received: Result<BorrowedMessage<'_>, KafkaError>,
    ) -> Result<(), SinkError> {
        match received {
            Ok(message) => {
                self.add(cx, batch, plans, &message);
                Ok(())
            }
            Err(error) => consumer_error(cx, error),
        }
    }

    fn add(
        &self,
        cx: &Context,
        batch: &mut PendingBatch,
        plans: &[TablePlan],
        message: &BorrowedMessage<'_>,
    ) {
        cx.stats.messages_read.inc();
        // Parsing a message's headers costs about a microsecond: only when
        // a table reads one, or for the freshness of a sample of the rows.
        let sampled = freshness::sampled(batch.stamped(), message.offset());
        let headers = if self.reads_headers || sampled {
            message.headers()
        } else {
            None
        };
        let origin = Origin {
            topic: message.topic(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key(),
            headers: if self.reads_headers { headers } else { None },
            timestamp: if sampled {
                freshness::committed_at(headers).or_else(|| message.timestamp().to_millis())
            } else {
                None
            },
        };
        let targets = self
            .topics
            .get(message.topic())
            .map_or(&[][..], Vec::as_slice);
        batch.add_message(plans, targets, origin, message.payload());
    }
}

/// Logs a consumer error; Err when the consumer failed for good with it.
fn consumer_error(cx: &Context, error: KafkaError) -> Result<(), SinkError> {
    let flow = cx.name();
    if connections::kafka::is_missing_topic(&error) {
        // Said once at info, naming the topic (`Ownership`).
        tracing::debug!(flow, %error, "a subscribed topic does not exist yet");
    } else {
        tracing::warn!(flow, %error, "kafka consumer error");
    }
    let error = SinkError::from_consumer(error, cx.consumer.client().fatal_error());
    match classify(&error) {
        Recovery::Fatal => {
            tracing::error!(flow, %error, "kafka consumer failed for good");
            Err(error)
        }
        _ => Ok(()),
    }
}

/// With nothing taken in and not yet stored, the consumer's position is
/// committed as it moves past transaction markers (see
/// `connections::kafka::positions`): an idle sink's lag reaches 0.
pub(super) struct IdleCommit {
    every: Interval,
    /// The position committed last.
    committed: TopicPartitionList,
}

impl IdleCommit {
    pub fn new() -> Self {
        let mut every = tokio::time::interval(IDLE_COMMIT_EVERY);
        every.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            every,
            committed: TopicPartitionList::new(),
        }
    }

    pub async fn tick(&mut self) {
        self.every.tick().await;
    }

    pub async fn commit(&mut self, cx: &Context) {
        connections::kafka::commit_position_if_moved(&cx.consumer, &mut self.committed, cx.name())
            .await;
    }
}
