//! The stage's settings, read with the getters of their declarations
//! (`flows::settings`, where each default lives; `docs/settings.md` lists
//! them).

use std::time::Duration;

use flows::settings::{self, Reader, selected_flows};
use flows::{Env, Flow, SettingError};

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
    /// What the output and dead-letter topics are created with
    /// (`KAFKA_TOPIC_*`; a flow's `[flows.topics]` over it).
    pub topics: connections::topics::TopicSpec,
}

impl StageConfig {
    pub fn from_env(env: &Env) -> Result<Self, SettingError> {
        env.reject_unknown(Reader::Stage)?;
        daemon::telemetry::log_format(env)?;
        let flows: Vec<Flow> = selected_flows(env)?
            .into_iter()
            .filter(|f| f.stage.is_some())
            .collect();
        if flows.is_empty() {
            return Err(SettingError::new(
                "FLOWS",
                "selects no flow with a stage (the demo's is `etl`)",
            ));
        }
        Ok(Self {
            kafka: connections::kafka::KafkaEndpoint::from_env(env)?,
            topic_prefix: settings::KAFKA_TOPIC_PREFIX.get(env)?,
            transactional_id_prefix: settings::STAGE_TRANSACTIONAL_ID_PREFIX.get(env)?,
            batch_size: usize::try_from(settings::STAGE_BATCH_SIZE.get(env)?).unwrap_or(usize::MAX),
            flush_interval: settings::STAGE_FLUSH_INTERVAL_MS.get(env)?,
            flows,
            metrics_addr: settings::STAGE_METRICS_ADDR.get(env)?,
            stall_after: settings::STAGE_STALL_AFTER_MS.get(env)?,
            topics: connections::topics::TopicSpec::from_env(env)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_only_declared_settings() {
        let env = Env::from_pairs([
            ("KAFKA_BROKERS", "localhost:9092"),
            ("FLOWS", "etl"),
            (
                "FLOWS_FILE",
                concat!(env!("CARGO_MANIFEST_DIR"), "/../demo/flows.toml"),
            ),
        ]);
        let cfg = StageConfig::from_env(&env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.batch_size, 10_000);
        assert_eq!(cfg.flush_interval, Duration::from_millis(100));
        assert_eq!(cfg.transactional_id_prefix, "outbox-stage");
        // Everything the stage read is declared as the stage's.
        for name in env.read_names() {
            let declared = settings::find(&name).map(|s| s.read_by().contains(&Reader::Stage));
            assert_eq!(declared, Some(true), "{name}");
        }
        let err = StageConfig::from_env(&Env::from_pairs([
            ("KAFKA_BROKERS", "localhost:9092"),
            ("STAGE_FLUSH_INTERVAL", "5"),
        ]))
        .err();
        assert_eq!(err.map(|e| e.name), Some("STAGE_FLUSH_INTERVAL".into()));
    }
}
