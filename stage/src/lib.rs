//! Kafka → Kafka stages. The one transform built in, `normalise`, is the
//! demo's `etl` flow's (seed 004, replacing a Flink job). See `stage_loop` for the guarantee.

mod batch;
mod config;
mod error;
mod normalise;
mod stage_loop;
mod stats;
mod transaction;
mod transform;

use std::sync::Arc;

use std::convert::Infallible;

use daemon::metrics::Metrics;
use daemon::workers::{Panic, Stopped, Workers};
use tokio_util::sync::CancellationToken;

pub use config::StageConfig;

use crate::stage_loop::FlowStage;

/// Runs every selected flow's stage until `shutdown`, or until one panics
/// (a bug), which stops them all: Err with the panic.
pub async fn run(
    config: StageConfig,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), Panic> {
    let config = Arc::new(config);
    let health = daemon::health::Health::new(config.stall_after);
    daemon::http::serve_if_configured(config.metrics_addr, &metrics, &health, &shutdown).await;
    daemon::systemd::ready(&shutdown);
    let mut workers = Workers::<Infallible>::new(&shutdown);
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
        let stage = worker.run(shutdown.clone());
        workers.spawn(format!("flow {}", flow.name), async move {
            stage.await;
            Ok(())
        });
    }
    workers.join().await.map_err(|stopped| match stopped {
        Stopped::Panicked(panic) => panic,
        Stopped::Failed { error, .. } => match error {},
    })
}
