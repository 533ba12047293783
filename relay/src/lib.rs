//! The outbox relay: publishes rows of Postgres outbox tables to Kafka in
//! transactions and flags them sent. See `flow_relay` for the delivery
//! contract.

pub mod config;
mod error;
mod flow_relay;
mod listener;
pub mod migrate;
mod pipeline;
pub mod positions;
pub mod probe;
pub mod prune;
mod publisher;
mod row_json;
pub mod shard;
pub mod source;
mod stats;
pub mod window;

use std::sync::Arc;

use daemon::metrics::Metrics;
use daemon::workers::{Stopped, Workers};
use futures::FutureExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use config::RelayConfig;
pub use error::RelayError;
pub use flow_relay::leader_key;
pub use listener::CHANNEL;

use crate::flow_relay::FlowRelay;
use crate::listener::Wakers;

/// Checks every selected flow against the database (refusing a flow whose
/// definition contradicts its tables), then relays all of them until
/// `shutdown`. Returns Err for such a contradiction, or when a worker
/// panicked ([`RelayError::Panicked`]); either stops every worker.
pub async fn run(
    config: RelayConfig,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), RelayError> {
    let config = Arc::new(config);
    let health = daemon::health::Health::new(config.stall_after);
    daemon::http::serve_if_configured(config.metrics_addr, &metrics, &health, &shutdown).await;
    let pool = connections::pg_pool::Pool::new(&config.postgres.url, &config.postgres.pool)?;
    if let Some(client) = pool.get_retrying("startup check", &shutdown).await {
        for flow in &config.flows {
            for source in &flow.sources {
                source::OutboxSource::inspect(
                    &client,
                    flow.name.as_str(),
                    source,
                    shard::Shard::WHOLE,
                )
                .await?;
                warn_about_source(&client, flow.name.as_str(), source).await;
            }
        }
    }
    let topics = connections::topics::Topics::new(&config.kafka.endpoint)?;
    let mut workers = Workers::new(&shutdown);
    workers.spawn(
        "probe",
        probe::run(
            config.flows.clone(),
            pool.clone(),
            metrics.clone(),
            health.clone(),
            daemon::health::probe_interval(config.stall_after),
            shutdown.clone(),
        )
        .map(Ok),
    );
    let beats = daemon::systemd::Beats::default();
    daemon::systemd::ready_watching(&shutdown, beats.clone(), config.stuck_after);
    let mut wakers = Wakers::default();
    for flow in config.flows.iter().filter(|f| !f.sources.is_empty()) {
        for shard in shard::Shard::all(flow.shards) {
            let wake = Arc::new(Notify::new());
            for source in &flow.sources {
                wakers.register(source.table.as_str(), Arc::clone(&wake));
            }
            let relay = FlowRelay {
                flow: flow.clone(),
                shard,
                preferred: config.shards.prefers(shard),
                config: Arc::clone(&config),
                wake,
                metrics: metrics.clone(),
                beats: beats.clone(),
                pool: pool.clone(),
                topics: topics.clone(),
                spec: config.kafka.topics.for_flow(&flow.topics),
                health: health.flow(flow.name.as_str()),
            };
            workers.spawn(
                format!("flow {}", shard.unit(flow.name.as_str())),
                relay.run(shutdown.clone()),
            );
        }
    }
    workers.spawn(
        "listener",
        listener::listen(config.postgres.url.clone(), wakers, shutdown.clone()).map(Ok),
    );
    // A contradiction in one flow, or a panic anywhere, stops the process:
    // running the others on would hide it.
    workers.join().await.map_err(|stopped| match stopped {
        Stopped::Failed { error, .. } => error,
        Stopped::Panicked(panic) => RelayError::Panicked(panic),
    })
}

/// What `relay run` checks of each source table at start-up besides its
/// columns (a table without `outbox_txid` is refused by
/// `OutboxSource::inspect`): said once as a warning, never refused.
/// - Pending rows that can be updated can show a row twice in a target
///   table ordered by the updated column (migration
///   `0007_pending_rows_immutable`).
/// - Without the (outbox_txid, id) index every window reads the whole
///   table; without the `outbox_pending_again` trigger a row set pending by
///   hand is not found; an index on the flag, or no free room on the pages,
///   makes every flag flip write index entries and a row version on another
///   page (migration `0010_txid_windows`).
async fn warn_about_source(
    client: &tokio_postgres::Client,
    flow: &str,
    source: &flows::SourceTable,
) {
    let table = &source.table;
    match source::pending_rows_protected(client, table).await {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            flow,
            %table,
            "pending rows of this source table can be updated: a row changed between a crash and its re-delivery can appear twice in a target table ordered by the changed column; protect it with SELECT outbox_protect_pending('{table}')"
        ),
        Err(err) => {
            tracing::warn!(flow, %table, error = %connections::pg::detail(&err), "could not check the source table's update guard")
        }
    }
    match source::source_missing(client, table).await {
        Ok(missing) if missing.is_empty() => {}
        Ok(missing) => tracing::warn!(
            flow,
            %table,
            missing = %missing.join(", "),
            "this source table is not tuned for the relay (without the index every window reads the whole table, without the trigger rows set pending by hand are not found, with an index on the flag or a full fillfactor flag flips are not HOT updates); tune it with SELECT outbox_tune_source('{table}')"
        ),
        Err(err) => {
            tracing::warn!(flow, %table, error = %connections::pg::detail(&err), "could not check the source table's tuning (run relay migrate)")
        }
    }
}
