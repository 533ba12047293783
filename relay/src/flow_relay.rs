//! The relay loop of one flow: win leadership, then drain pending rows in
//! batches, one Postgres transaction and one Kafka transaction per batch.
//!
//! Delivery contract: a row is flagged `sent_to_kafka` only after the Kafka
//! transaction carrying it committed, and in the same Postgres transaction
//! that locked it. A crash between the Kafka commit and the Postgres commit
//! leaves the rows pending, so they are published again (at-least-once); the
//! sink's tables are keyed by source id and absorb the repeat.

use std::sync::Arc;
use std::time::Duration;

use flows::Flow;
use flows::backoff::Backoff;
use flows::metrics::Metrics;
use tokio::sync::Notify;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::config::RelayConfig;
use crate::error::{Recovery, RelayError, classify};
use crate::publisher::{PublishError, Publisher, SharedPublisher};
use crate::source::OutboxSource;

pub struct FlowRelay {
    pub flow: Flow,
    pub config: Arc<RelayConfig>,
    pub wake: Arc<Notify>,
    pub metrics: Metrics,
}

/// The advisory-lock key of a flow: one active relay per flow per database.
fn leader_key(flow: &str) -> String {
    format!("outbox-relay/{flow}")
}

impl FlowRelay {
    /// Runs until `shutdown`. Returns Err only when the flow's definition
    /// contradicts the database.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), RelayError> {
        let flow = self.flow.name.to_string();
        let mut backoff = Backoff::default();
        while !shutdown.is_cancelled() {
            let Some(client) =
                crate::pg::connect(&self.config.postgres.url, &flow, &shutdown).await
            else {
                break;
            };
            match self.lead(&client, &mut backoff, &shutdown).await {
                Ok(()) => break,
                Err(err) if classify(&err) == Recovery::Fatal => return Err(err),
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(flow, %error, retry_in_ms = delay.as_millis() as u64, "relay session lost; reconnecting");
                    sleep_or_shutdown(delay, &shutdown).await;
                }
            }
        }
        tracing::info!(flow, "relay stopped");
        Ok(())
    }

    /// Waits to become the flow's leader on `client`'s session, then relays
    /// until shutdown (Ok) or until the session is unusable (Err).
    async fn lead(
        &self,
        client: &Client,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> Result<(), RelayError> {
        let flow = self.flow.name.to_string();
        let mut sources = Vec::new();
        for source in &self.flow.sources {
            sources.push(OutboxSource::inspect(client, &flow, source).await?);
        }
        if !self.acquire_leadership(client, shutdown).await? {
            return Ok(());
        }
        let mut publisher = match self.new_publisher(backoff, shutdown).await {
            Some(p) => p,
            None => return Ok(()),
        };
        let failed = self.metrics.counter(
            "relay_batches_failed_total",
            "Batches not published (nothing flagged; retried).",
            &[("flow", &flow)],
        );
        let leader = self.metrics.gauge(
            "relay_leader",
            "1 while this relay is the flow's active instance.",
            &[("flow", &flow)],
        );
        leader.set(1);
        let result = self
            .relay_until_error(client, &sources, &mut publisher, backoff, shutdown, &failed)
            .await;
        leader.set(0);
        result
    }

    async fn relay_until_error(
        &self,
        client: &Client,
        sources: &[OutboxSource],
        publisher: &mut SharedPublisher,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
        failed: &flows::metrics::Series,
    ) -> Result<(), RelayError> {
        let flow = self.flow.name.to_string();
        let batch_size = self.config.batch.batch_size;
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let mut more = false;
            for source in sources {
                match relay_batch(client, publisher, source, &flow, batch_size).await {
                    Ok(BatchOutcome { sent, set_aside }) => {
                        more |= sent == batch_size as usize || set_aside > 0;
                        if set_aside > 0 {
                            self.metrics
                                .counter(
                                    "relay_rows_set_aside_total",
                                    "Rows Kafka refused for good, moved to outbox_dead_rows.",
                                    &[("flow", &flow), ("table", &source.table)],
                                )
                                .add(set_aside as i64);
                            // The aborted transaction may leave the producer
                            // needing an epoch bump (see error::classify).
                            *publisher = match self.new_publisher(backoff, shutdown).await {
                                Some(p) => p,
                                None => return Ok(()),
                            };
                        }
                        if sent > 0 {
                            self.metrics
                                .counter(
                                    "relay_rows_published_total",
                                    "Rows published to Kafka and flagged sent.",
                                    &[("flow", &flow), ("table", &source.table)],
                                )
                                .add(sent as i64);
                            self.metrics
                                .counter(
                                    "relay_batches_published_total",
                                    "Batches committed in Kafka and Postgres.",
                                    &[("flow", &flow)],
                                )
                                .inc();
                        }
                        backoff.reset();
                    }
                    Err(err) => match classify(&err) {
                        Recovery::RecreateProducer => {
                            failed.inc();
                            let delay = backoff.next_delay();
                            tracing::warn!(flow, table = %source.table, error = %err, retry_in_ms = delay.as_millis() as u64, "batch not published; nothing flagged, retrying with a new kafka producer");
                            if !sleep_or_shutdown(delay, shutdown).await {
                                return Ok(());
                            }
                            *publisher = match self.new_publisher(backoff, shutdown).await {
                                Some(p) => p,
                                None => return Ok(()),
                            };
                        }
                        Recovery::Reconnect | Recovery::Fatal => {
                            failed.inc();
                            return Err(err);
                        }
                    },
                }
            }
            if !more {
                tokio::select! {
                    () = self.wake.notified() => {}
                    () = tokio::time::sleep(self.config.batch.poll_interval) => {}
                    () = shutdown.cancelled() => return Ok(()),
                }
            }
        }
    }

    /// Session-level advisory lock: held until this connection ends, so a
    /// killed leader's lock is released by Postgres and a standby takes over
    /// at its next attempt. Returns false on shutdown.
    async fn acquire_leadership(
        &self,
        client: &Client,
        shutdown: &CancellationToken,
    ) -> Result<bool, RelayError> {
        let flow = self.flow.name.to_string();
        let key = leader_key(&flow);
        let mut announced = false;
        loop {
            let won: bool = client
                .query_one(
                    "SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
                    &[&key],
                )
                .await?
                .get(0);
            if won {
                tracing::info!(flow, "active relay for this flow");
                return Ok(true);
            }
            if !announced {
                tracing::info!(flow, "another relay is active for this flow; standing by");
                announced = true;
            }
            tokio::select! {
                () = tokio::time::sleep(self.config.batch.standby_retry) => {}
                () = shutdown.cancelled() => return Ok(false),
            }
        }
    }

    async fn new_publisher(
        &self,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> Option<SharedPublisher> {
        let flow = self.flow.name.to_string();
        loop {
            let kafka = self.config.kafka.clone();
            let name = flow.clone();
            match tokio::task::spawn_blocking(move || Publisher::connect(&kafka, &name)).await {
                Ok(Ok(p)) => return Some(Arc::new(p)),
                Ok(Err(error)) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(flow, %error, retry_in_ms = delay.as_millis() as u64, "kafka producer not ready");
                    if !sleep_or_shutdown(delay, shutdown).await {
                        return None;
                    }
                }
                Err(error) => {
                    tracing::error!(flow, %error, "kafka producer set-up panicked");
                    return None;
                }
            }
        }
    }
}

/// What one batch did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Rows published and flagged sent.
    pub sent: usize,
    /// Rows Kafka refused for good, moved to `outbox_dead_rows` (and flagged,
    /// so the flow moves on); `relay replay` puts them back.
    pub set_aside: usize,
}

/// One batch: lock pending rows, publish them in a Kafka transaction, flag
/// them, commit.
pub async fn relay_batch(
    client: &Client,
    publisher: &SharedPublisher,
    source: &OutboxSource,
    flow: &str,
    batch_size: u32,
) -> Result<BatchOutcome, RelayError> {
    // `transaction()` needs `&mut Client`; the worker owns its client, so
    // BEGIN/COMMIT are issued by hand on the shared reference.
    client.batch_execute("BEGIN").await?;
    let result = async {
        let rows = source.fetch_pending(client, batch_size).await?;
        if rows.is_empty() {
            return Ok((rows, Ok(())));
        }
        let publisher = Arc::clone(publisher);
        let topic = source.topic.clone();
        let table = source.table.clone();
        let (rows, published) = tokio::task::spawn_blocking(move || {
            let published = publisher.publish_batch(&topic, &table, &rows);
            (rows, published)
        })
        .await?;
        if published.is_ok() {
            flows::failpoint::hit("relay-after-kafka-commit");
            source.mark_sent(client, &rows.ids()).await?;
        }
        Ok::<_, RelayError>((rows, published))
    }
    .await;
    match result {
        Ok((rows, Ok(()))) => {
            client.batch_execute("COMMIT").await?;
            Ok(BatchOutcome {
                sent: rows.len(),
                set_aside: 0,
            })
        }
        Ok((rows, Err(PublishError::Rejected(rejected)))) => {
            client.batch_execute("ROLLBACK").await?;
            let dead: Vec<(i64, &str, &str)> = rejected
                .iter()
                .filter_map(|(id, error)| {
                    let row = rows.messages.iter().find(|m| m.id == *id)?;
                    Some((*id, row.payload.as_str(), error.as_str()))
                })
                .collect();
            for (id, _, error) in &dead {
                tracing::error!(flow, table = %source.table, id, error, "kafka refused the row for good; set aside in outbox_dead_rows");
            }
            source.set_aside(client, flow, &dead).await?;
            Ok(BatchOutcome {
                sent: 0,
                set_aside: dead.len(),
            })
        }
        Ok((_, Err(err))) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(err.into())
        }
        Err(err) => {
            // Best effort: if the session is broken Postgres rolls back anyway.
            let _ = client.batch_execute("ROLLBACK").await;
            Err(err)
        }
    }
}

/// Sleeps unless shut down first; false when shut down.
async fn sleep_or_shutdown(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        () = shutdown.cancelled() => false,
    }
}
