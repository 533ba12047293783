//! Kafka → Kafka stages. The built-in one is the `etl` flow's normaliser
//! (seed 004, replacing a Flink job). See `stage_loop` for the guarantee.

mod config;
mod normalise;
mod policy;
mod stage_loop;

use std::sync::Arc;

use daemon::metrics::Metrics;
use tokio_util::sync::CancellationToken;

pub use config::StageConfig;

use crate::stage_loop::FlowStage;

/// Runs every selected flow's stage until `shutdown`.
pub async fn run(config: StageConfig, metrics: Metrics, shutdown: CancellationToken) {
    let config = Arc::new(config);
    let health = daemon::health::Health::new(config.stall_after);
    daemon::http::serve_if_configured(config.metrics_addr, &metrics, &health, &shutdown).await;
    daemon::systemd::ready(&shutdown);
    let mut tasks = tokio::task::JoinSet::new();
    for flow in &config.flows {
        let Some(stage) = flow.stage.clone() else {
            continue;
        };
        let worker = FlowStage {
            health: health.flow(flow.name.as_str()),
            flow: flow.clone(),
            stage,
            config: Arc::clone(&config),
            metrics: metrics.clone(),
        };
        tasks.spawn(worker.run(shutdown.clone()));
    }
    while tasks.join_next().await.is_some() {}
}
