//! The sink's settings, one struct per concern, read from the environment.
//! Defaults are documented in README.md ("Settings").

use std::time::Duration;

use flows::settings::check_url;
use flows::{Env, Flow, SettingError};

use crate::clickhouse::ClickHouseConfig;

/// Every variable the sink reads besides `connections::kafka::KNOWN_VARS` (the
/// brokers and their security settings). Variables starting with `SINK_`,
/// `CLICKHOUSE_` or `KAFKA_` that are not listed are refused as misspelt.
pub const KNOWN_VARS: &[&str] = &[
    "CLICKHOUSE_URL",
    "CLICKHOUSE_USER",
    "CLICKHOUSE_PASSWORD",
    "CLICKHOUSE_DATABASE",
    "CLICKHOUSE_CA_FILE",
    "KAFKA_TOPIC_PREFIX",
    "KAFKA_GROUP_PREFIX",
    "SINK_BATCH_ROWS",
    "SINK_BATCH_BYTES",
    "SINK_FLUSH_INTERVAL_MS",
    "SINK_DLQ_SUFFIX",
    "SINK_DLQ_TIMEOUT_MS",
    "SINK_MAX_MESSAGE_BYTES",
    "SINK_METRICS_ADDR",
    "SINK_STALL_AFTER_MS",
    "SINK_SCHEMA_CHECK_MS",
    "SINK_MAX_FRESHNESS_MS",
    "SINK_DASHBOARD_ADDR",
    "SINK_GROUP_INSTANCE_ID",
    "FLOWS",
    "FLOWS_FILE",
    "LOG_FORMAT",
];

/// When a batch is flushed: whichever limit is reached first.
#[derive(Clone, Debug)]
pub struct FlushPolicy {
    pub max_rows: usize,
    pub max_bytes: usize,
    /// Age of the oldest buffered message; an idle stream still flushes.
    pub max_age: Duration,
}

#[derive(Clone, Debug)]
pub struct KafkaConfig {
    /// The brokers and their security settings.
    pub endpoint: connections::kafka::KafkaEndpoint,
    /// Dead letters of topic T go to T + suffix.
    pub dlq_suffix: String,
    /// How long one attempt waits for Kafka to acknowledge a dead letter;
    /// a failed attempt makes the flow not ready until letters go through.
    pub dlq_timeout: std::time::Duration,
    /// Static group membership (`group.instance.id` = this + "." + flow): a
    /// sink restarted under the same id gets its partitions back at once
    /// instead of waiting out the session timeout. Unique per sink process
    /// (e.g. the host name); `None` = dynamic membership.
    pub group_instance_id: Option<String>,
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
    pub stall_after: std::time::Duration,
    /// How often each target table's columns are read again, so a column
    /// added is loaded and one dropped or narrowed is refused (see
    /// `clickhouse::schema::judge`).
    pub schema_check: std::time::Duration,
    /// Rows loaded later than this after their commit, for `stall_after`,
    /// make the flow not ready (`None`: off).
    pub max_freshness: Option<std::time::Duration>,
}

/// Settings the `migrate` command needs: only ClickHouse.
pub fn clickhouse_config(env: &Env) -> Result<ClickHouseConfig, SettingError> {
    let url = env.required("CLICKHOUSE_URL")?;
    check_url("CLICKHOUSE_URL", &url, &["http", "https"])?;
    let ca_file = env.get("CLICKHOUSE_CA_FILE").map(str::to_owned);
    if let Some(file) = &ca_file {
        connections::tls::check_ca_file(file)
            .map_err(|e| SettingError::new("CLICKHOUSE_CA_FILE", e))?;
    }
    let database = env.string_or("CLICKHOUSE_DATABASE", "default");
    flows::ident::Ident::new(database.clone())
        .map_err(|e| SettingError::new("CLICKHOUSE_DATABASE", e.to_string()))?;
    Ok(ClickHouseConfig {
        url,
        user: env.string_or("CLICKHOUSE_USER", "default"),
        password: env.get("CLICKHOUSE_PASSWORD").map(str::to_owned),
        database,
        ca_file,
    })
}

impl SinkConfig {
    pub fn from_env(env: &Env) -> Result<Self, SettingError> {
        env.reject_unknown(
            &["SINK_", "CLICKHOUSE_", "KAFKA_", "POSTGRES_"],
            &[
                KNOWN_VARS,
                connections::kafka::KNOWN_VARS,
                connections::pg_pool::KNOWN_VARS,
            ],
        )?;
        daemon::telemetry::log_format(env)?;
        let clickhouse = clickhouse_config(env)?;
        let max_rows = env.positive_or("SINK_BATCH_ROWS", 100_000)?;
        let max_bytes = env.positive_or("SINK_BATCH_BYTES", 16 * 1024 * 1024)?;
        let dlq_suffix = env.string_or("SINK_DLQ_SUFFIX", ".dlq");
        flows::ident::check_kafka_name(&dlq_suffix)
            .map_err(|e| SettingError::new("SINK_DLQ_SUFFIX", e.to_string()))?;
        Ok(Self {
            clickhouse,
            kafka: KafkaConfig {
                endpoint: connections::kafka::KafkaEndpoint::from_env(env)?,
                dlq_suffix,
                dlq_timeout: std::time::Duration::from_millis(
                    env.positive_or("SINK_DLQ_TIMEOUT_MS", 30_000)?,
                ),
                group_instance_id: match env.get("SINK_GROUP_INSTANCE_ID") {
                    Some(id) => {
                        flows::ident::check_kafka_name(id).map_err(|e| {
                            SettingError::new("SINK_GROUP_INSTANCE_ID", e.to_string())
                        })?;
                        Some(id.to_owned())
                    }
                    None => None,
                },
            },
            flush: FlushPolicy {
                max_rows: usize::try_from(max_rows).unwrap_or(usize::MAX),
                max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
                max_age: Duration::from_millis(env.positive_or("SINK_FLUSH_INTERVAL_MS", 100)?),
            },
            max_message_bytes: usize::try_from(
                env.positive_or("SINK_MAX_MESSAGE_BYTES", 1024 * 1024)?,
            )
            .unwrap_or(usize::MAX),
            flows: flows::settings::selected_flows(env)?,
            metrics_addr: daemon::http::parse_addr(
                "SINK_METRICS_ADDR",
                &env.string_or("SINK_METRICS_ADDR", "127.0.0.1:9102"),
            )?,
            max_freshness: match env.parse_or::<u64>("SINK_MAX_FRESHNESS_MS", 0) {
                Ok(0) => None,
                Ok(ms) => Some(std::time::Duration::from_millis(ms)),
                Err(_) => {
                    return Err(flows::SettingError::new(
                        "SINK_MAX_FRESHNESS_MS",
                        "expected a whole number of milliseconds (0: off)",
                    ));
                }
            },
            schema_check: std::time::Duration::from_millis(
                env.positive_or("SINK_SCHEMA_CHECK_MS", 5_000)?,
            ),
            stall_after: std::time::Duration::from_millis(
                env.positive_or("SINK_STALL_AFTER_MS", 60_000)?,
            ),
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
        ];
        let cfg = SinkConfig::from_env(&Env::from_pairs(base)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.clickhouse.database, "default");
        assert_eq!(cfg.flush.max_rows, 100_000);
        assert!(!format!("{cfg:?}").contains("s3cret"));

        let mut bad = base.to_vec();
        bad.push(("SINK_FLUSH_INTERVAL", "5"));
        let err = SinkConfig::from_env(&Env::from_pairs(bad)).err();
        assert_eq!(err.map(|e| e.name), Some("SINK_FLUSH_INTERVAL".into()));

        let err =
            SinkConfig::from_env(&Env::from_pairs([("CLICKHOUSE_URL", "localhost:8123")])).err();
        assert_eq!(err.map(|e| e.name), Some("CLICKHOUSE_URL".into()));
    }
}
