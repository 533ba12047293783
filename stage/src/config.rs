//! The stage's settings, read from the environment (README.md, "Settings").

use std::time::Duration;

use flows::settings::selected_flows;
use flows::{Env, Flow, SettingError};

/// The stage's own variables; `connections::kafka::KNOWN_VARS` adds the brokers
/// and their security settings.
pub const KNOWN_VARS: &[&str] = &[
    "KAFKA_TOPIC_PREFIX",
    "KAFKA_GROUP_PREFIX",
    "STAGE_BATCH_SIZE",
    "STAGE_FLUSH_INTERVAL_MS",
    "STAGE_TRANSACTIONAL_ID_PREFIX",
    "STAGE_METRICS_ADDR",
    "STAGE_STALL_AFTER_MS",
    "FLOWS",
    "FLOWS_FILE",
    "LOG_FORMAT",
];

#[derive(Clone, Debug)]
pub struct StageConfig {
    pub kafka: connections::kafka::KafkaEndpoint,
    /// Stripped from input topic names before the transform sees them.
    pub topic_prefix: String,
    /// `transactional.id` = prefix + "." + flow: a restarted stage fences
    /// its predecessor and aborts its open transaction.
    pub transactional_id_prefix: String,
    /// Input records per transaction.
    pub batch_size: usize,
    /// A transaction is committed at the latest this long after its first record.
    pub flush_interval: Duration,
    /// Flows that have a stage.
    pub flows: Vec<Flow>,
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// A flow with input lag and no record committed for this long is not
    /// ready (`/readyz`).
    pub stall_after: Duration,
}

impl StageConfig {
    pub fn from_env(env: &Env) -> Result<Self, SettingError> {
        env.reject_unknown(
            &["STAGE_", "KAFKA_"],
            &[KNOWN_VARS, connections::kafka::KNOWN_VARS],
        )?;
        daemon::telemetry::log_format(env)?;
        let flows: Vec<Flow> = selected_flows(env)?
            .into_iter()
            .filter(|f| f.stage.is_some())
            .collect();
        if flows.is_empty() {
            return Err(SettingError::new(
                "FLOWS",
                "selects no flow with a stage (the built-in one is `etl`)",
            ));
        }
        Ok(Self {
            kafka: connections::kafka::KafkaEndpoint::from_env(env)?,
            topic_prefix: env.string_or("KAFKA_TOPIC_PREFIX", ""),
            transactional_id_prefix: env.string_or("STAGE_TRANSACTIONAL_ID_PREFIX", "outbox-stage"),
            batch_size: usize::try_from(env.positive_or("STAGE_BATCH_SIZE", 10_000)?)
                .unwrap_or(10_000),
            flush_interval: Duration::from_millis(env.positive_or("STAGE_FLUSH_INTERVAL_MS", 100)?),
            flows,
            metrics_addr: daemon::http::parse_addr(
                "STAGE_METRICS_ADDR",
                &env.string_or("STAGE_METRICS_ADDR", "127.0.0.1:9103"),
            )?,
            stall_after: Duration::from_millis(env.positive_or("STAGE_STALL_AFTER_MS", 60_000)?),
        })
    }
}
