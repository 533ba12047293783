//! Draining one source table: batches flow through a pipeline of lanes so
//! Postgres and Kafka work at the same time.
//!
//! Each lane is a Postgres connection holding at most one open transaction.
//! While batch k (locked on one lane) is in its Kafka transaction, the other
//! lane flags and commits batch k−1 and then locks batch k+1 (`SKIP LOCKED`
//! passes over the rows locked by the first). Then the lanes swap. (A third
//! lane, flagging and locking at once, was measured and gained nothing: see
//! `flow_relay::LANES`.)
//!
//! Order and delivery (the contract of `flow_relay`) still hold:
//! - a batch is published only after the previous batch's Kafka transaction
//!   committed, so Kafka receives rows in id order;
//! - a batch is flagged only after its own Kafka transaction committed;
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
use crate::scan::{Range, Scan};
use crate::source::{OutboxBatch, OutboxSource};
use crate::stats::{FlowStats, Republish, TableStats};

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
    pub flow: &'a str,
    pub batch_size: u32,
    pub stats: &'a FlowStats,
}

/// A source table and where its scan stands.
pub struct Source<'a> {
    pub table: &'a OutboxSource,
    pub stats: &'a TableStats,
    pub scan: &'a Mutex<Scan>,
}

/// A batch locked in an open transaction on a lane.
struct Locked {
    lane: usize,
    batch: OutboxBatch,
    /// Where the scan's cursor stands once it commits (keyset batches).
    end: Option<i64>,
}

/// A batch whose Kafka transaction committed, awaiting its flag and commit.
struct Published {
    lane: usize,
    batch: OutboxBatch,
    kafka: PublishTimings,
    end: Option<i64>,
}

impl Lanes<'_> {
    /// Looks into the scan's holes, drains up to [`MAX_BATCHES_PER_TURN`]
    /// batches, and saves the scan's position. A failed turn rewinds the
    /// scan to its last committed batch.
    pub async fn drain(
        &self,
        source: &Source<'_>,
        shutdown: &CancellationToken,
    ) -> Result<Drained, RelayError> {
        let rescans_due = scan_of(source).rescans_due();
        if rescans_due {
            let taken = within(
                self.query_timeout,
                "reading the rescans",
                source
                    .table
                    .take_rescans(&self.lanes[0], self.flow, source.scan),
            )
            .await?;
            if taken > 0 {
                tracing::info!(flow = self.flow, table = %source.table.table, rows = taken, "rows set pending again behind the scan (relay replay) taken up");
            }
        }
        let (holes, needs_guard) = {
            let scan = scan_of(source);
            (scan.holes(), scan.needs_guard())
        };
        if !holes.0.is_empty() {
            let look = within(
                self.query_timeout,
                "the look into the scan's holes",
                source.table.look(&self.lanes[0], &holes, needs_guard),
            )
            .await?;
            scan_of(source).looked(&look);
        }
        let drained = self.drain_batches(source, shutdown).await;
        // A failure, or rows set aside (their batch rolled back first).
        if drained.as_ref().map_or(true, |d| d.set_aside > 0) {
            scan_of(source).rewind();
        }
        let open_holes = scan_of(source).open_holes();
        source.stats.show_open_holes(open_holes);
        let unsaved = scan_of(source).unsaved();
        if let Some(position) = unsaved {
            within(
                self.query_timeout,
                "saving the scan's position",
                source
                    .table
                    .save_position(&self.lanes[0], self.flow, position),
            )
            .await?;
            scan_of(source).saved(position);
        }
        drained
    }

    async fn drain_batches(
        &self,
        source: &Source<'_>,
        shutdown: &CancellationToken,
    ) -> Result<Drained, RelayError> {
        let (table, stats) = (source.table, source.stats);
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
                self.publish(table, current.batch),
                self.finish_then_lock(previous.take(), prefetch.then_some(other), source),
            );
            let next = match behind {
                Ok((committed, next)) => {
                    drained.sent += committed;
                    next
                }
                Err((err, unflagged)) => {
                    // The batch just published (if it was) is not flagged:
                    // it goes again, after the one that failed here.
                    self.stats.republished(Republish::Postgres, unflagged);
                    let in_kafka = match &published {
                        Ok(_) => Some(Republish::OtherLane),
                        Err(PublishError::CommitUnknown(_)) => {
                            Some(Republish::KafkaCommitOutcomeUnknown)
                        }
                        Err(_) => None,
                    };
                    if let Some(why) = in_kafka {
                        self.stats.republished(why, batch.len());
                    }
                    self.rollback(this).await;
                    self.rollback(other).await;
                    return Err(err);
                }
            };
            let kafka = match published {
                Ok(kafka) => kafka,
                Err(err) => {
                    if matches!(err, PublishError::CommitUnknown(_)) {
                        self.stats
                            .republished(Republish::KafkaCommitOutcomeUnknown, batch.len());
                    }
                    self.rollback(this).await;
                    if next.is_some() {
                        self.rollback(other).await;
                    }
                    let err = RelayError::from(err);
                    if classify(&err) != Recovery::SetAside {
                        return Err(err);
                    }
                    let RelayError::Publish(PublishError::Rejected(rejected)) = err else {
                        return Err(err);
                    };
                    drained.set_aside = self.set_aside(this, table, &batch, &rejected).await?;
                    stats.set_aside.add(drained.set_aside as i64);
                    drained.more = true;
                    return Ok(drained);
                }
            };
            daemon::failpoint::hit("relay-after-kafka-commit");
            tracing::debug!(unit = %table.position_key, lane = this, from_holes = batch.from_holes, ids = %batch.id_runs(), "batch committed in kafka");
            previous = Some(Published {
                lane: this,
                batch,
                kafka,
                end: current.end,
            });
            match next {
                Some(locked) => current = locked,
                None => {
                    drained.more = full;
                    break;
                }
            }
            turn += 1;
        }
        if let Some(last) = previous {
            let rows = last.batch.len();
            match self.finish(last, source).await {
                Ok(rows) => drained.sent += rows,
                Err((lane, err)) => {
                    self.stats.republished(Republish::Postgres, rows);
                    self.rollback(lane).await;
                    return Err(err);
                }
            }
        }
        Ok(drained)
    }

    /// BEGIN on `lane` and lock the next pending rows (a due hole's, else
    /// the keyset's); `None` (transaction closed) when there are none.
    async fn lock_batch(
        &self,
        lane: usize,
        source: &Source<'_>,
    ) -> Result<Option<Locked>, RelayError> {
        let client = &self.lanes[lane];
        let start = Instant::now();
        let limit = self.query_timeout;
        within(limit, "BEGIN", client.batch_execute("BEGIN")).await?;
        loop {
            let range = scan_of(source).next_range();
            // The holes below this range, as they stood before its fetch.
            let below = scan_of(source).holes_below(range.bounds().0);
            let with_holes = !below.0.is_empty();
            if with_holes {
                within(limit, "SAVEPOINT", client.batch_execute("SAVEPOINT batch")).await?;
            }
            if let Range::Hole { .. } = range {
                daemon::failpoint::hit_async("relay-before-hole-lock").await;
            }
            let mut batch = within(
                limit,
                "the pending rows' fetch",
                source.table.fetch_pending(client, self.batch_size, range),
            )
            .await?;
            let end = if with_holes {
                self.take_lower_holes(client, source, range, &below, &mut batch)
                    .await?
            } else {
                scan_of(source).locked(range, &batch.ids(), &batch.passed)
            };
            if batch.is_empty() {
                if let Range::Hole { .. } = range {
                    continue;
                }
                return self.nothing_pending(client, source).await;
            }
            self.stats.fetched(batch.len(), start.elapsed());
            return Ok(Some(Locked { lane, batch, end }));
        }
    }

    /// After a range's fetch (in a savepoint): locks the committed rows of
    /// the holes below it and puts them first. Any transaction with a row
    /// in the batch has committed, so its rows in lower holes are visible
    /// now (a newer snapshot than the fetch's); without this a later row of
    /// a key could go out before an earlier one waiting in a hole (found by
    /// `tests/shards.rs`, pinned by `tests/keyset.rs`). When the holes hold
    /// a full batch, the range's rows are rolled back and wait. Returns
    /// where the cursor stands once the batch commits (see [`Scan::locked`]).
    async fn take_lower_holes(
        &self,
        client: &Client,
        source: &Source<'_>,
        range: Range,
        below: &(Vec<i64>, Vec<i64>),
        batch: &mut OutboxBatch,
    ) -> Result<Option<i64>, RelayError> {
        let limit = self.query_timeout;
        let candidates = within(
            limit,
            "the look for rows in the scan's holes",
            source.table.hole_candidates(client, self.batch_size, below),
        )
        .await?;
        let end = if candidates.len() >= self.batch_size as usize && !batch.is_empty() {
            // The holes may hold more than one batch: this range's rows
            // wait for them, unlocked (rolled back to before their
            // fetch) so no other lane passes them by.
            within(
                limit,
                "ROLLBACK TO SAVEPOINT",
                client.batch_execute("ROLLBACK TO SAVEPOINT batch"),
            )
            .await?;
            let waiting = std::mem::take(&mut batch.messages);
            match range {
                Range::Keyset { .. } => {
                    let ids: Vec<i64> = waiting.iter().map(|m| m.id).collect();
                    let mut scan = scan_of(source);
                    let end = scan.locked(range, &ids, &batch.passed);
                    // A hole now, looked into like any other.
                    if let (Some(lo), Some(hi)) = (ids.first(), ids.last()) {
                        scan.left_pending(*lo, *hi);
                    }
                    end
                }
                // Still a hole: the next look finds its rows again.
                Range::Hole { .. } => None,
            }
        } else {
            scan_of(source).locked(range, &batch.ids(), &batch.passed)
        };
        within(
            limit,
            "the fetch from the scan's holes",
            source.table.lock_from_holes(client, &candidates, batch),
        )
        .await?;
        Ok(end)
    }

    /// A keyset fetch found nothing: the cursor moves to the table's last
    /// id (see [`Scan::skip_to`]) and the lane's transaction ends.
    async fn nothing_pending(
        &self,
        client: &Client,
        source: &Source<'_>,
    ) -> Result<Option<Locked>, RelayError> {
        let limit = self.query_timeout;
        let last = within(limit, "the last id", source.table.last_id(client)).await?;
        within(limit, "COMMIT", client.batch_execute("COMMIT")).await?;
        if let Some(last) = last {
            scan_of(source).skip_to(last);
        }
        Ok(None)
    }

    /// Publishes on a blocking thread; hands the batch back either way.
    async fn publish(
        &self,
        source: &OutboxSource,
        batch: OutboxBatch,
    ) -> (OutboxBatch, Result<PublishTimings, PublishError>) {
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

    /// Flags a published batch sent and commits its lane's transaction.
    async fn finish(
        &self,
        done: Published,
        source: &Source<'_>,
    ) -> Result<usize, (usize, RelayError)> {
        let (table, stats) = (source.table, source.stats);
        let client = &self.lanes[done.lane];
        let start = Instant::now();
        let limit = self.query_timeout;
        let marked = async {
            let flag = async {
                daemon::failpoint::hit_async("relay-before-flag").await;
                table.mark_sent(client, &done.batch).await
            };
            within(limit, "the flag update", flag).await?;
            let mark = start.elapsed();
            within(limit, "COMMIT", client.batch_execute("COMMIT")).await?;
            Ok::<Duration, RelayError>(mark)
        }
        .await;
        let mark = marked.map_err(|err| (done.lane, err))?;
        if let Some(end) = done.end {
            scan_of(source).committed(end);
        }
        let rows = done.batch.len();
        self.stats
            .published(rows, done.kafka, mark, start.elapsed() - mark);
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
    crate::scan::lock(source.scan)
}
