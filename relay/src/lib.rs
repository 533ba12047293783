//! The outbox relay: publishes rows of Postgres outbox tables to Kafka in
//! transactions and flags them sent. See `flow_relay` for the delivery
//! contract.

pub mod config;
mod error;
mod flow_relay;
mod listener;
pub mod migrate;
mod pipeline;
pub mod probe;
mod publisher;
mod row_json;
pub mod scan;
pub mod source;
mod stats;

use std::sync::Arc;

use daemon::metrics::Metrics;
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
/// `shutdown`. Returns Err only for such a contradiction.
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
                source::OutboxSource::inspect(&client, flow.name.as_str(), source).await?;
                warn_if_pending_rows_mutable(&client, flow.name.as_str(), source).await;
                warn_if_not_tuned(&client, flow.name.as_str(), source).await;
            }
        }
    }
    let probe = tokio::spawn(probe::run(
        config.flows.clone(),
        pool.clone(),
        metrics.clone(),
        health,
        daemon::health::probe_interval(config.stall_after),
        shutdown.clone(),
    ));
    let beats = daemon::systemd::Beats::default();
    daemon::systemd::ready_watching(&shutdown, beats.clone(), config.stuck_after);
    let mut wakers = Wakers::default();
    let mut workers = tokio::task::JoinSet::new();
    for flow in config.flows.iter().filter(|f| !f.sources.is_empty()) {
        let wake = Arc::new(Notify::new());
        for source in &flow.sources {
            wakers.register(source.table.as_str(), Arc::clone(&wake));
        }
        let relay = FlowRelay {
            flow: flow.clone(),
            config: Arc::clone(&config),
            wake,
            metrics: metrics.clone(),
            beats: beats.clone(),
            pool: pool.clone(),
        };
        workers.spawn(relay.run(shutdown.clone()));
    }
    let listener = tokio::spawn(listener::listen(
        config.postgres.url.clone(),
        wakers,
        shutdown.clone(),
    ));
    let mut outcome = Ok(());
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                // A contradiction in one flow stops the process: running the
                // others silently would hide it.
                shutdown.cancel();
                outcome = Err(err);
            }
            Err(join) => {
                shutdown.cancel();
                outcome = Err(RelayError::Join(join));
            }
        }
    }
    let _ = listener.await;
    let _ = probe.await;
    outcome
}

/// A source table whose pending rows can be updated can show a row twice in
/// a target table ordered by the updated column (see migration
/// `0007_pending_rows_immutable`): said once at start-up, not refused.
async fn warn_if_pending_rows_mutable(
    client: &tokio_postgres::Client,
    flow: &str,
    source: &flows::SourceTable,
) {
    match source::pending_rows_protected(client, &source.table).await {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            flow,
            table = %source.table,
            "pending rows of this source table can be updated: a row changed between a crash and its re-delivery can appear twice in a target table ordered by the changed column; protect it with SELECT outbox_protect_pending('{}')",
            source.table
        ),
        Err(err) => {
            tracing::warn!(flow, table = %source.table, error = %connections::pg::detail(&err), "could not check the source table's update guard")
        }
    }
}

/// A source table with an index on the flag, or no free room on its pages,
/// makes every flag flip write index entries and a row version on another
/// page (migration `0008_keyset_relay`): said once at start-up.
async fn warn_if_not_tuned(
    client: &tokio_postgres::Client,
    flow: &str,
    source: &flows::SourceTable,
) {
    match source::source_tuned(client, &source.table).await {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            flow,
            table = %source.table,
            "flag flips on this source table are not HOT updates (an index names sent_to_kafka, or fillfactor is above 70): the relay is slower than it can be; tune it with SELECT outbox_tune_source('{}')",
            source.table
        ),
        Err(err) => {
            tracing::warn!(flow, table = %source.table, error = %connections::pg::detail(&err), "could not check the source table's tuning (run relay migrate)")
        }
    }
}
