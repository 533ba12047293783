//! Draining one source table: batches flow through a pipeline of lanes so
//! Postgres and Kafka work at the same time.
//!
//! Each lane is a Postgres connection holding at most one open transaction.
//! While batch k (taken on one lane) is in its Kafka transaction, the other
//! lane commits batch k−1 and then takes batch k+1 (the window's rows after
//! batch k's, see `window`). Then the lanes swap. (A third
//! lane, flagging and locking at once, was measured and gained nothing: see
//! `flow_relay::LANES`.)
//!
//! Order and delivery (the contract of `flow_relay`) still hold:
//! - a batch is published only after the previous batch's Kafka transaction
//!   committed, so Kafka receives rows in the window's order;
//! - a batch's flags (flipped by its fetch, in its lane's transaction)
//!   commit only after its own Kafka transaction committed;
//! - if anything fails, every batch not yet committed in Postgres is rolled
//!   back, including one already in Kafka. It is published again later, after
//!   the batches before it (a repeat, which the sinks' keyed tables absorb),
//!   never before them.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::error::{Recovery, RelayError, classify, within};
use crate::publisher::{PublishError, PublishTimings, SharedPublisher};
use crate::source::{OutboxBatch, OutboxSource};
use crate::stats::{FlowStats, Republish, TableStats};
use crate::window::Scan;

/// Batches one call drains at most before other tables of the flow get a
/// turn (and shutdown is checked).
const MAX_BATCHES_PER_TURN: usize = 32;

/// What one call did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Drained {
    /// Rows published and flagged sent.
    pub sent: usize,
    /// Rows Kafka refused for good, moved to `outbox_dead_rows`; the producer
    /// must be recreated before the next batch.
    pub set_aside: usize,
    /// More rows may be pending (the last batch was full, or cut short).
    pub more: bool,
}

/// The connections a leader relays on (two or more), and where it reports.
pub struct Lanes<'a> {
    pub lanes: &'a [Client],
    /// Each Postgres call's deadline (`RELAY_QUERY_TIMEOUT_MS`).
    pub query_timeout: Duration,
    /// Beaten once per batch (the systemd watchdog's view of the loop).
    pub beats: &'a daemon::systemd::Beats,
    pub publisher: &'a SharedPublisher,
    /// Makes sure a batch's topics exist before it is sent.
    pub topics: &'a connections::topics::Topics,
    /// What the flow's topics are created with.
    pub spec: &'a connections::topics::TopicSpec,
    pub flow: &'a str,
    pub batch_size: u32,
    pub stats: &'a FlowStats,
}

/// A source table and where its scan stands (a scan unit's windows, locked
/// for a moment, never across an await).
pub struct Source<'a> {
    pub table: &'a OutboxSource,
    pub stats: &'a TableStats,
    pub scan: &'a Mutex<Scan>,
}

/// A batch locked in an open transaction on a lane.
struct Locked {
    lane: usize,
    batch: OutboxBatch,
}

/// A batch whose Kafka transaction committed, awaiting its flag and commit.
struct Published {
    lane: usize,
    batch: OutboxBatch,
    kafka: PublishTimings,
}

impl Lanes<'_> {
    /// Opens a new window when the last one is done (see `window`), drains
    /// up to [`MAX_BATCHES_PER_TURN`] batches of it, and saves the floor. A
    /// failed turn goes back to the last committed batch.
    pub async fn drain(
        &self,
        source: &Source<'_>,
        shutdown: &CancellationToken,
    ) -> Result<Drained, RelayError> {
        let needs_window = scan_of(source).needs_window();
        if needs_window {
            let end = within(
                self.query_timeout,
                "the snapshot",
                crate::positions::current_snapshot(&self.lanes[0]),
            )
            .await?;
            scan_of(source).open(end);
        }
        let drained = self.drain_batches(source, shutdown).await;
        // A failure, or rows set aside (their batch rolled back first).
        if drained.as_ref().map_or(true, |d| d.set_aside > 0) {
            scan_of(source).rewind();
        }
        let running = scan_of(source).running();
        source.stats.show_waiting_for(running);
        let unsaved = scan_of(source).unsaved();
        if let Some(floor) = unsaved {
            within(
                self.query_timeout,
                "saving the scan's floor",
                crate::positions::save_floor(
                    &self.lanes[0],
                    &source.table.position_key,
                    self.flow,
                    &floor,
                ),
            )
            .await?;
            scan_of(source).saved(floor);
        }
        drained
    }

    /// Publishes batch after batch of the window on alternating lanes, the
    /// next one taken while the current one is in Kafka (see the module).
    async fn drain_batches(
        &self,
        source: &Source<'_>,
        shutdown: &CancellationToken,
    ) -> Result<Drained, RelayError> {
        let mut drained = Drained::default();
        let mut current = match self.lock_batch(0, source).await {
            Ok(Some(locked)) => locked,
            Ok(None) => return Ok(drained),
            Err(err) => {
                self.rollback(0).await;
                return Err(err);
            }
        };
        let mut previous: Option<Published> = None;
        let mut turn = 1;
        loop {
            self.beats.beat(self.flow);
            let full = current.batch.len() == self.batch_size as usize;
            let prefetch = full && turn < MAX_BATCHES_PER_TURN && !shutdown.is_cancelled();
            let this = current.lane;
            let other = (this + 1) % self.lanes.len();
            let ((batch, published), behind) = tokio::join!(
                self.publish(source.table, current.batch),
                self.finish_then_lock(previous.take(), prefetch.then_some(other), source),
            );
            let next = match behind {
                Ok((committed, next)) => {
                    drained.sent += committed;
                    next
                }
                Err((err, unflagged)) => {
                    self.lanes_failed(&published, batch.len(), unflagged, [this, other])
                        .await;
                    return Err(err);
                }
            };
            let kafka = match published {
                Ok(kafka) => kafka,
                Err(err) => {
                    let taken = next.is_some().then_some(other);
                    return self
                        .not_published(err, this, taken, source, &batch, drained)
                        .await;
                }
            };
            daemon::failpoint::hit("relay-after-kafka-commit");
            tracing::debug!(unit = %source.table.position_key, lane = this, ids = %batch.id_runs(), "batch committed in kafka");
            previous = Some(Published {
                lane: this,
                batch,
                kafka,
            });
            let Some(locked) = next else {
                drained.more = full;
                break;
            };
            current = locked;
            turn += 1;
        }
        if let Some(last) = previous {
            drained.sent += self.finish_last(last, source).await?;
        }
        Ok(drained)
    }

    /// The other lane failed (its commit, or taking the next batch): both
    /// lanes roll back. Counts what goes again: the rows of the batch that
    /// failed to commit, and the batch just published (it is in Kafka, or
    /// may be), which now follows the one that failed.
    async fn lanes_failed(
        &self,
        published: &Result<PublishTimings, PublishError>,
        rows: usize,
        unflagged: usize,
        lanes: [usize; 2],
    ) {
        self.stats.republished(Republish::Postgres, unflagged);
        let in_kafka = match published {
            Ok(_) => Some(Republish::OtherLane),
            Err(PublishError::CommitUnknown(_)) => Some(Republish::KafkaCommitOutcomeUnknown),
            Err(_) => None,
        };
        if let Some(why) = in_kafka {
            self.stats.republished(why, rows);
        }
        for lane in lanes {
            self.rollback(lane).await;
        }
    }

    /// The batch on `lane` did not reach Kafka: its lane (and `taken`, the
    /// lane holding the next batch) roll back. Rows Kafka refused for good
    /// are set aside (see `error::classify`) and the turn ends there; any
    /// other failure is returned.
    async fn not_published(
        &self,
        err: PublishError,
        lane: usize,
        taken: Option<usize>,
        source: &Source<'_>,
        batch: &OutboxBatch,
        mut drained: Drained,
    ) -> Result<Drained, RelayError> {
        if matches!(err, PublishError::CommitUnknown(_)) {
            self.stats
                .republished(Republish::KafkaCommitOutcomeUnknown, batch.len());
        }
        self.rollback(lane).await;
        if let Some(other) = taken {
            self.rollback(other).await;
        }
        let err = RelayError::from(err);
        if classify(&err) != Recovery::SetAside {
            return Err(err);
        }
        let RelayError::Publish(PublishError::Rejected(rejected)) = err else {
            return Err(err);
        };
        drained.set_aside = self.set_aside(lane, source.table, batch, &rejected).await?;
        source.stats.set_aside.add(drained.set_aside as i64);
        drained.more = true;
        Ok(drained)
    }

    /// Commits the turn's last published batch; on failure its lane rolls
    /// back and its rows go again.
    async fn finish_last(&self, last: Published, source: &Source<'_>) -> Result<usize, RelayError> {
        let rows = last.batch.len();
        match self.finish(last, source).await {
            Ok(rows) => Ok(rows),
            Err((lane, err)) => {
                self.stats.republished(Republish::Postgres, rows);
                self.rollback(lane).await;
                Err(err)
            }
        }
    }

    /// BEGIN on `lane` and lock the window's next rows; `None`
    /// (transaction closed) when it holds no more.
    async fn lock_batch(
        &self,
        lane: usize,
        source: &Source<'_>,
    ) -> Result<Option<Locked>, RelayError> {
        let Some(bounds) = scan_of(source).next() else {
            return Ok(None);
        };
        let client = &self.lanes[lane];
        let start = Instant::now();
        let limit = self.query_timeout;
        within(limit, "BEGIN", client.batch_execute("BEGIN")).await?;
        let batch = within(
            limit,
            "the pending rows' fetch",
            source.table.fetch_pending(client, self.batch_size, &bounds),
        )
        .await?;
        let full = batch.len() >= self.batch_size as usize;
        scan_of(source).locked(batch.end(), full);
        if batch.is_empty() {
            within(limit, "COMMIT", client.batch_execute("COMMIT")).await?;
            return Ok(None);
        }
        self.stats.fetched(batch.len(), start.elapsed());
        Ok(Some(Locked { lane, batch }))
    }

    /// Publishes on a blocking thread, once its topics exist; hands the
    /// batch back either way.
    async fn publish(
        &self,
        source: &OutboxSource,
        batch: OutboxBatch,
    ) -> (OutboxBatch, Result<PublishTimings, PublishError>) {
        if let Err(err) = self.ensure_topics(source, &batch).await {
            return (batch, Err(err));
        }
        let publisher = Arc::clone(self.publisher);
        let topic = source.topic.clone();
        let table = source.table.clone();
        let task = tokio::task::spawn_blocking(move || {
            let published = publisher.publish_batch(&topic, &table, &batch);
            (batch, published)
        });
        match task.await {
            Ok(done) => done,
            Err(join) => {
                // The batch moved into the panicked task; nothing is flagged.
                tracing::error!(flow = self.flow, error = %join, "publishing task panicked");
                let lost = rdkafka::error::KafkaError::Canceled;
                (OutboxBatch::default(), Err(PublishError::Fatal(lost)))
            }
        }
    }

    /// Creates the batch's topics that do not exist yet (a routed source's
    /// new ones too), before anything is sent. A topic whose name Kafka
    /// refuses makes the rows routed to it rows Kafka refuses for good.
    async fn ensure_topics(
        &self,
        source: &OutboxSource,
        batch: &OutboxBatch,
    ) -> Result<(), PublishError> {
        let topics = batch.topics(&source.topic);
        match self.topics.ensure(&topics, self.spec).await {
            Ok(()) => Ok(()),
            Err(err) => {
                let ids = err.name_refused().map(|t| batch.routed_to(t));
                match ids {
                    Some(ids) if !ids.is_empty() => {
                        let reason = err.to_string();
                        Err(PublishError::Rejected(
                            ids.into_iter().map(|id| (id, reason.clone())).collect(),
                        ))
                    }
                    // The source's own topic: the flow is held instead.
                    _ => Err(PublishError::Topic(err)),
                }
            }
        }
    }

    /// Flags and commits `previous` (if any), then locks the next batch on
    /// `lane` (if asked). Returns the rows committed and the locked batch;
    /// on failure, with the rows of `previous` left unflagged (in Kafka, so
    /// they go again).
    async fn finish_then_lock(
        &self,
        previous: Option<Published>,
        lane: Option<usize>,
        source: &Source<'_>,
    ) -> Result<(usize, Option<Locked>), (RelayError, usize)> {
        let committed = match previous {
            Some(done) => {
                let rows = done.batch.len();
                self.finish(done, source)
                    .await
                    .map_err(|(_, err)| (err, rows))?
            }
            None => 0,
        };
        let next = match lane {
            Some(lane) => self
                .lock_batch(lane, source)
                .await
                .map_err(|err| (err, 0))?,
            None => None,
        };
        Ok((committed, next))
    }

    /// Commits a published batch's lane transaction: its rows' flags
    /// (flipped by the fetch) become durable.
    async fn finish(
        &self,
        done: Published,
        source: &Source<'_>,
    ) -> Result<usize, (usize, RelayError)> {
        let stats = source.stats;
        let client = &self.lanes[done.lane];
        let start = Instant::now();
        let limit = self.query_timeout;
        let committed = async {
            let commit = async {
                daemon::failpoint::hit_async("relay-before-flag").await;
                client.batch_execute("COMMIT").await
            };
            within(limit, "COMMIT", commit).await
        }
        .await;
        committed.map_err(|err| (done.lane, err))?;
        if let Some(end) = done.batch.end() {
            scan_of(source).committed(end);
        }
        let rows = done.batch.len();
        self.stats.published(rows, done.kafka, start.elapsed());
        stats.published.add(rows as i64);
        Ok(rows)
    }

    /// Best effort: a broken session rolls back by itself.
    async fn rollback(&self, lane: usize) {
        let rollback = self.lanes[lane].batch_execute("ROLLBACK");
        let _ = within(self.query_timeout, "ROLLBACK", rollback).await;
    }

    /// Moves the rows Kafka refused for good to `outbox_dead_rows`.
    async fn set_aside(
        &self,
        lane: usize,
        source: &OutboxSource,
        batch: &OutboxBatch,
        rejected: &[(i64, String)],
    ) -> Result<usize, RelayError> {
        let dead: Vec<(i64, &str, &str)> = rejected
            .iter()
            .filter_map(|(id, error)| {
                let row = batch.messages.iter().find(|m| m.id == *id)?;
                Some((*id, row.payload.as_str(), error.as_str()))
            })
            .collect();
        for (id, _, error) in &dead {
            tracing::error!(flow = self.flow, table = %source.table, id, error, "kafka refused the row for good; set aside in outbox_dead_rows");
        }
        within(
            self.query_timeout,
            "setting rows aside",
            source.set_aside(&self.lanes[lane], self.flow, &dead),
        )
        .await?;
        Ok(dead.len())
    }
}

fn scan_of<'a>(source: &'a Source<'_>) -> std::sync::MutexGuard<'a, Scan> {
    source
        .scan
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
