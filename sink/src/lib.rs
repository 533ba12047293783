//! The sink: a Kafka consumer group per flow that batches messages into
//! ClickHouse and commits offsets only after ClickHouse accepted the rows.
//! See `flow_sink` for the delivery contract.

mod assignment;
mod batcher;
pub mod clickhouse;
pub mod config;
mod dead_letter;
mod error;
mod flow_sink;
mod stats;

use std::sync::Arc;

use daemon::backoff::Backoff;
use daemon::workers::{Stopped, Workers};
use tokio_util::sync::CancellationToken;

pub use config::SinkConfig;
pub use error::{RunError, SinkError};

use crate::clickhouse::migrate::MigrateError;
use crate::clickhouse::replicas::{Replicas, ShapeError};
use crate::clickhouse::schema::{SchemaError, plan_table};
use crate::clickhouse::{ClickHouseWriter, client};
use crate::flow_sink::FlowSink;

/// Waits for ClickHouse (retrying with backoff), checks every selected flow
/// against its tables, then runs one consumer per flow until `shutdown` —
/// or until one fails for good or panics, which stops them all.
pub async fn run(
    config: SinkConfig,
    metrics: daemon::metrics::Metrics,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let config = Arc::new(config);
    let health = daemon::health::Health::new(config.stall_after);
    daemon::http::serve_if_configured(config.metrics_addr, &metrics, &health, &shutdown).await;
    let replicas = Replicas::new(&config.clickhouse, &metrics);
    let Some(caps) = caps_with_retry(&replicas, &config, &shutdown).await else {
        return Ok(());
    };
    tracing::info!(
        version = ?caps.version,
        insert_checks_types = caps.insert_checks_types,
        cluster = ?config.clickhouse.cluster,
        "clickhouse server"
    );
    if !shape_with_retry(&replicas, &config, &shutdown).await? {
        return Ok(());
    }
    let writer = Arc::new(ClickHouseWriter::new(
        replicas,
        caps,
        config.clickhouse.database.clone(),
    ));
    let topics = connections::topics::Topics::new(&config.kafka.endpoint)
        .map_err(|e| RunError::Sink(SinkError::Kafka(e)))?;
    let mut sinks = Vec::new();
    for flow in config.flows.iter().filter(|f| !f.targets.is_empty()) {
        let mut plans = Vec::new();
        for target in &flow.targets {
            let fields = known_fields(flow, &target.topic);
            let Some(plan) = plan_with_retry(
                &writer,
                &config,
                flow.name.as_str(),
                target,
                fields.as_deref(),
                &shutdown,
            )
            .await?
            else {
                return Ok(());
            };
            plans.push(plan);
        }
        sinks.push(FlowSink {
            health: health.flow(flow.name.as_str()),
            flow: flow.clone(),
            config: Arc::clone(&config),
            plans,
            writer: Arc::clone(&writer),
            metrics: metrics.clone(),
            topics: topics.clone(),
        });
    }
    daemon::systemd::ready(&shutdown);
    let mut workers = Workers::new(&shutdown);
    for sink in sinks {
        workers.spawn(
            format!("flow {}", sink.flow.name),
            sink.run(shutdown.clone()),
        );
    }
    workers.join().await.map_err(|stopped| match stopped {
        Stopped::Failed { error, .. } => RunError::Sink(error),
        Stopped::Panicked(panic) => RunError::Panicked(panic),
    })
}

/// The message fields of `topic` when this flow's own relay publishes it: the
/// source table's columns.
fn known_fields(flow: &flows::Flow, topic: &str) -> Option<Vec<String>> {
    let source = flow.sources.iter().find(|s| s.topic == topic)?;
    Some(source.columns.iter().map(ToString::to_string).collect())
}

/// The server's capabilities (its version, from the first endpoint that
/// answers), retrying while ClickHouse is unreachable. `None` on shutdown.
async fn caps_with_retry(
    replicas: &Replicas,
    config: &SinkConfig,
    shutdown: &CancellationToken,
) -> Option<crate::clickhouse::caps::ServerCaps> {
    until_answered(&config.clickhouse.url, shutdown, || {
        replicas.any(|c| async move { crate::clickhouse::migrate::server_caps(&c).await })
    })
    .await
}

/// Cluster mode: the cluster's shards and which endpoint is which,
/// retrying while no endpoint answers. False on shutdown; an error when
/// the servers have no such cluster.
async fn shape_with_retry(
    replicas: &Replicas,
    config: &SinkConfig,
    shutdown: &CancellationToken,
) -> Result<bool, RunError> {
    let answer = until_answered(&config.clickhouse.url, shutdown, || async {
        match replicas.learn_shape().await {
            Err(ShapeError::ClickHouse(unreachable)) => Err(unreachable),
            answer => Ok(answer),
        }
    })
    .await;
    match answer {
        None => Ok(false),
        Some(Ok(())) => Ok(true),
        Some(Err(error)) => Err(RunError::Cluster(error.to_string())),
    }
}

/// Plans a target table, retrying while ClickHouse is unreachable. `None` on
/// shutdown.
async fn plan_with_retry(
    writer: &ClickHouseWriter,
    config: &SinkConfig,
    flow: &str,
    target: &flows::TargetTable,
    fields: Option<&[String]>,
    shutdown: &CancellationToken,
) -> Result<Option<crate::clickhouse::schema::TablePlan>, RunError> {
    let database = &config.clickhouse.database;
    let answer = until_answered(&config.clickhouse.url, shutdown, || async {
        let planned = match plan_table(writer.client(), database, flow, target, fields).await {
            Ok(plan) => writer.resolve(flow, &plan).await.map(|()| plan),
            error => error,
        };
        match planned {
            Err(SchemaError::ClickHouse(unreachable)) => Err(unreachable),
            answer => Ok(answer),
        }
    })
    .await;
    answer.transpose().map_err(RunError::Schema)
}

/// `sink migrate`: waits for ClickHouse (retrying with backoff: the first
/// endpoint of `CLICKHOUSE_URL` that answers), then creates the database
/// and applies the migrations. Returns the names applied.
pub async fn migrate_with_retry(
    cfg: &crate::clickhouse::ClickHouseConfig,
    migrations: &[flows::migrations::Migration],
    shutdown: &CancellationToken,
) -> Result<Vec<String>, MigrateError> {
    let answering = until_answered(&cfg.url, shutdown, || async {
        let mut last = None;
        for url in cfg.endpoints() {
            let root = client::client_at(cfg, url, None);
            match crate::clickhouse::migrate::server_caps(&root).await {
                Ok(_) => return Ok(url.to_owned()),
                Err(error) => last = Some(error),
            }
        }
        Err(last.unwrap_or(::clickhouse::error::Error::TimedOut))
    });
    let Some(url) = answering.await else {
        return Ok(Vec::new());
    };
    let root = client::client_at(cfg, &url, None);
    let db = client::client_at(cfg, &url, Some(&cfg.database));
    crate::clickhouse::migrate::migrate(
        &root,
        &db,
        &cfg.database,
        cfg.cluster.as_deref(),
        migrations,
    )
    .await
}

/// Calls `attempt` until ClickHouse answers it, backing off while it fails
/// with a ClickHouse error (logged with the URL, its password redacted).
/// `None` on shutdown.
async fn until_answered<T, Fut>(
    url: &str,
    shutdown: &CancellationToken,
    mut attempt: impl FnMut() -> Fut,
) -> Option<T>
where
    Fut: std::future::Future<Output = Result<T, ::clickhouse::error::Error>>,
{
    let mut backoff = Backoff::default();
    loop {
        match attempt().await {
            Ok(answer) => return Some(answer),
            Err(error) => {
                let retry_in_ms = backoff.upcoming().as_millis() as u64;
                tracing::warn!(url = %flows::settings::redact_urls(url), %error, retry_in_ms, "clickhouse unreachable");
                if !backoff.wait(shutdown).await {
                    return None;
                }
            }
        }
    }
}
