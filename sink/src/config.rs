//! The sink's settings, one struct per concern, read with the getters of
//! their declarations (`flows::settings`, where each default lives;
//! `docs/settings.md` lists them).

use std::time::Duration;

use flows::settings::{self, Reader};
use flows::{Env, Flow, SettingError};

use crate::clickhouse::ClickHouseConfig;

/// When a batch is flushed: whichever limit is reached first.
#[derive(Clone, Debug)]
pub struct FlushPolicy {
    pub max_rows: usize,
    pub max_bytes: usize,
    /// Age of the oldest buffered message; an idle stream still flushes.
    pub max_age: Duration,
    /// A quiet stream (nothing more queued) is stored at once, but no
    /// sooner than this after the flow's last insert.
    pub min_interval: Duration,
}

#[derive(Clone, Debug)]
pub struct KafkaConfig {
    /// The brokers and their security settings.
    pub endpoint: connections::kafka::KafkaEndpoint,
    /// Dead letters of topic T go to T + suffix.
    pub dlq_suffix: String,
    /// How long one attempt waits for Kafka to acknowledge a dead letter;
    /// a failed attempt makes the flow not ready until letters go through.
    pub dlq_timeout: Duration,
    /// Static group membership (`group.instance.id` = this + "." + flow): a
    /// sink restarted under the same id gets its partitions back at once
    /// instead of waiting out the session timeout. Unique per sink process
    /// (e.g. the host name); `None` = dynamic membership.
    pub group_instance_id: Option<String>,
    /// What dead-letter topics are created with (`KAFKA_TOPIC_*`; a flow's
    /// `[flows.topics]` over it).
    pub topics: connections::topics::TopicSpec,
}

#[derive(Clone, Debug)]
pub struct SinkConfig {
    pub clickhouse: ClickHouseConfig,
    pub kafka: KafkaConfig,
    pub flush: FlushPolicy,
    /// Larger messages go to the dead-letter topic unread.
    pub max_message_bytes: usize,
    pub flows: Vec<Flow>,
    /// Where `/metrics` and `/healthz` are served; `None` = off.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// A flow with consumer lag and nothing stored for this long is not
    /// ready (`/readyz`).
    pub stall_after: Duration,
    /// How often each target table's columns are read again, so a column
    /// added is loaded and one dropped or narrowed is refused (see
    /// `clickhouse::schema::judge`).
    pub schema_check: Duration,
    /// Rows loaded later than this after their commit, for `stall_after`,
    /// make the flow not ready (`None`: off).
    pub max_freshness: Option<Duration>,
}

/// Settings the `migrate` command needs: only ClickHouse.
pub fn clickhouse_config(env: &Env) -> Result<ClickHouseConfig, SettingError> {
    let url = settings::CLICKHOUSE_URL.get(env)?;
    let ca_file = settings::CLICKHOUSE_CA_FILE
        .get_opt(env)?
        .map(|path| path.display().to_string());
    if let Some(file) = &ca_file {
        connections::tls::check_ca_file(file)
            .map_err(|e| SettingError::new(settings::CLICKHOUSE_CA_FILE.name, e))?;
    }
    let database = settings::CLICKHOUSE_DATABASE.get(env)?;
    Ok(ClickHouseConfig {
        cluster: settings::CLICKHOUSE_CLUSTER.get_opt(env)?,
        url,
        user: settings::CLICKHOUSE_USER.get(env)?,
        password: settings::CLICKHOUSE_PASSWORD.get_opt(env)?,
        database,
        ca_file,
    })
}

impl SinkConfig {
    pub fn from_env(env: &Env) -> Result<Self, SettingError> {
        env.reject_unknown(Reader::Sink)?;
        daemon::telemetry::log_format(env)?;
        let clickhouse = clickhouse_config(env)?;
        let max_rows = settings::SINK_BATCH_ROWS.get(env)?;
        let max_bytes = settings::SINK_BATCH_BYTES.get(env)?;
        let dlq_suffix = settings::SINK_DLQ_SUFFIX.get(env)?;
        Ok(Self {
            clickhouse,
            kafka: KafkaConfig {
                endpoint: connections::kafka::KafkaEndpoint::from_env(env)?,
                dlq_suffix,
                dlq_timeout: settings::SINK_DLQ_TIMEOUT_MS.get(env)?,
                group_instance_id: settings::SINK_GROUP_INSTANCE_ID.get_opt(env)?,
                topics: connections::topics::TopicSpec::from_env(env)?,
            },
            flush: FlushPolicy {
                max_rows: usize::try_from(max_rows).unwrap_or(usize::MAX),
                max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
                max_age: settings::SINK_FLUSH_INTERVAL_MS.get(env)?,
                min_interval: settings::SINK_MIN_INSERT_INTERVAL_MS.get(env)?,
            },
            max_message_bytes: usize::try_from(settings::SINK_MAX_MESSAGE_BYTES.get(env)?)
                .unwrap_or(usize::MAX),
            flows: flows::settings::selected_flows(env)?,
            metrics_addr: settings::SINK_METRICS_ADDR.get(env)?,
            max_freshness: settings::SINK_MAX_FRESHNESS_MS.get(env)?,
            schema_check: settings::SINK_SCHEMA_CHECK_MS.get(env)?,
            stall_after: settings::SINK_STALL_AFTER_MS.get(env)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors() {
        let base = [
            ("CLICKHOUSE_URL", "http://localhost:8123"),
            ("KAFKA_BROKERS", "localhost:9092"),
            ("CLICKHOUSE_PASSWORD", "s3cret"),
            (
                "FLOWS_FILE",
                concat!(env!("CARGO_MANIFEST_DIR"), "/../demo/flows.toml"),
            ),
        ];
        let env = Env::from_pairs(base);
        let cfg = SinkConfig::from_env(&env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.clickhouse.database, "default");
        assert_eq!(cfg.flush.max_rows, 100_000);
        assert_eq!(cfg.flush.max_age, Duration::from_millis(100));
        assert_eq!(cfg.max_freshness, None);
        assert!(!format!("{cfg:?}").contains("s3cret"));
        // Everything the sink read is declared as the sink's.
        for name in env.read_names() {
            let declared = settings::find(&name).map(|s| s.read_by().contains(&Reader::Sink));
            assert_eq!(declared, Some(true), "{name}");
        }

        let mut bad = base.to_vec();
        bad.push(("SINK_FLUSH_INTERVAL", "5"));
        let err = SinkConfig::from_env(&Env::from_pairs(bad)).err();
        assert_eq!(err.map(|e| e.name), Some("SINK_FLUSH_INTERVAL".into()));

        let err =
            SinkConfig::from_env(&Env::from_pairs([("CLICKHOUSE_URL", "localhost:8123")])).err();
        assert_eq!(err.map(|e| e.name), Some("CLICKHOUSE_URL".into()));
    }
}
