//! The relay's settings, one struct per concern, read from the environment.
//! Defaults are documented in README.md ("Settings").

use std::time::Duration;

use flows::settings::selected_flows;
use flows::{Env, Flow, SettingError};

/// Every variable the relay reads. Variables starting with `RELAY_` or
/// `KAFKA_` that are not listed here are refused as misspelt.
/// `connections::kafka::KNOWN_VARS` adds the brokers and their security settings.
pub const KNOWN_VARS: &[&str] = &[
    "DATABASE_URL",
    "KAFKA_TOPIC_PREFIX",
    "KAFKA_GROUP_PREFIX",
    "KAFKA_ACKS",
    "KAFKA_LINGER_MS",
    "KAFKA_BATCH_SIZE",
    "KAFKA_TRANSACTION_TIMEOUT_MS",
    "KAFKA_COMMIT_TIMEOUT_MS",
    "RELAY_BATCH_SIZE",
    "RELAY_POLL_INTERVAL_MS",
    "RELAY_STANDBY_RETRY_MS",
    // Accepted and ignored: the sweep it paced is gone (see `window`).
    "RELAY_SWEEP_INTERVAL_MS",
    "RELAY_PRUNE_INTERVAL_MS",
    "RELAY_SHARDS",
    "RELAY_QUERY_TIMEOUT_MS",
    "RELAY_STUCK_AFTER_MS",
    "RELAY_SESSION_TIMEOUT_MS",
    "RELAY_TRANSACTIONAL_ID_PREFIX",
    "RELAY_METRICS_ADDR",
    "RELAY_STALL_AFTER_MS",
    "FLOWS",
    "FLOWS_FILE",
    "LOG_FORMAT",
];

#[derive(Clone)]
pub struct PostgresConfig {
    /// libpq-style URL; may carry a password, so never logged unredacted.
    pub url: String,
    /// The server ends a leader's session idle this long, in or out of a
    /// transaction (`idle_in_transaction_session_timeout`,
    /// `idle_session_timeout`): a relay frozen while leading (a stopped
    /// process, a VM paused) loses its locks and a standby takes over.
    pub session_timeout: Duration,
    /// Every query of the relay's own sessions ends within this: on the
    /// client (a deadline: a dead network path never answers) and on the
    /// server (`statement_timeout`). A lane past it is dropped and the
    /// relay reconnects, standing by if another relay took over meanwhile.
    pub query_timeout: Duration,
    /// The pooled sessions (start-up check, backlog probe, the commands):
    /// not the lanes, nor the `LISTEN` connection.
    pub pool: connections::pg_pool::PoolConfig,
}

/// Shows the URL with its password replaced.
impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &flows::settings::redact_url(&self.url))
            .field("session_timeout", &self.session_timeout)
            .field("query_timeout", &self.query_timeout)
            .field("pool", &self.pool)
            .finish()
    }
}

#[derive(Clone, Debug)]
pub struct KafkaConfig {
    /// The brokers and their security settings.
    pub endpoint: connections::kafka::KafkaEndpoint,
    /// `transactional.id` = prefix + "." + flow name: a restarted relay
    /// fences its predecessor's producer for the same flow.
    pub transactional_id_prefix: String,
    pub acks: String,
    pub linger_ms: u64,
    pub batch_size_bytes: u64,
    pub transaction_timeout_ms: u64,
    /// How long flushing a batch and committing its transaction may each
    /// take; past it the commit's outcome is unknown (see
    /// `PublishError::CommitUnknown`).
    pub commit_timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct BatchConfig {
    /// Rows locked, published and flagged per transaction.
    pub batch_size: u32,
    /// How often to look for pending rows when no NOTIFY arrived.
    pub poll_interval: Duration,
    /// How often a standby tries to take over a flow.
    pub standby_retry: Duration,
    /// How often the active relay deletes a flow's sent rows older than its
    /// `retention` (flows with one; see `prune`).
    pub prune_interval: Duration,
}

#[derive(Clone, Debug)]
pub struct RelayConfig {
    pub postgres: PostgresConfig,
    pub kafka: KafkaConfig,
    pub batch: BatchConfig,
    pub flows: Vec<Flow>,
    /// The shards of split flows this relay leads first (see `shard`).
    pub shards: crate::shard::Preferred,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; `None` = off.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// A flow with pending rows and nothing moving for this long is not
    /// ready (`/readyz`).
    pub stall_after: Duration,
    /// A flow loop that has not turned for this long is stuck: the systemd
    /// watchdog is no longer fed (every wait in the loop is bounded, by
    /// `RELAY_QUERY_TIMEOUT_MS`, Kafka's timeouts and the backoff ceiling).
    pub stuck_after: Duration,
}

/// Settings the `migrate` command needs: only the database.
pub fn postgres_config(env: &Env) -> Result<PostgresConfig, SettingError> {
    Ok(PostgresConfig {
        url: connections::pg::database_url(env, "DATABASE_URL")?,
        session_timeout: Duration::from_millis(
            env.positive_or("RELAY_SESSION_TIMEOUT_MS", 30_000)?,
        ),
        query_timeout: Duration::from_millis(env.positive_or("RELAY_QUERY_TIMEOUT_MS", 15_000)?),
        pool: connections::pg_pool::PoolConfig::from_env(env)?,
    })
}

impl RelayConfig {
    pub fn from_env(env: &Env) -> Result<Self, SettingError> {
        env.reject_unknown(
            &["RELAY_", "KAFKA_", "POSTGRES_"],
            &[
                KNOWN_VARS,
                connections::kafka::KNOWN_VARS,
                connections::pg_pool::KNOWN_VARS,
            ],
        )?;
        daemon::telemetry::log_format(env)?;
        let postgres = postgres_config(env)?;
        let endpoint = connections::kafka::KafkaEndpoint::from_env(env)?;
        let acks = env.string_or("KAFKA_ACKS", "all");
        if acks != "all" && acks != "-1" {
            // Transactions need the idempotent producer, which needs acks=all.
            return Err(SettingError::new(
                "KAFKA_ACKS",
                "the relay publishes in transactions, which require acks=all",
            ));
        }
        let batch_size = env.positive_or("RELAY_BATCH_SIZE", 10_000)?;
        if batch_size > 100_000 {
            return Err(SettingError::new(
                "RELAY_BATCH_SIZE",
                "must be at most 100000",
            ));
        }
        let poll_interval =
            Duration::from_millis(env.positive_or("RELAY_POLL_INTERVAL_MS", 1_000)?);
        if postgres.session_timeout < 2 * poll_interval {
            // An idle leader touches its sessions once per poll interval.
            return Err(SettingError::new(
                "RELAY_SESSION_TIMEOUT_MS",
                "must be at least twice RELAY_POLL_INTERVAL_MS",
            ));
        }
        let stuck_after = Duration::from_millis(env.positive_or("RELAY_STUCK_AFTER_MS", 120_000)?);
        let commit_timeout =
            Duration::from_millis(env.positive_or("KAFKA_COMMIT_TIMEOUT_MS", 30_000)?);
        if stuck_after < 3 * commit_timeout {
            // A batch's flush and commit may take that long each, then an abort.
            return Err(SettingError::new(
                "RELAY_STUCK_AFTER_MS",
                "must be at least three times KAFKA_COMMIT_TIMEOUT_MS",
            ));
        }
        let standby_retry =
            Duration::from_millis(env.positive_or("RELAY_STANDBY_RETRY_MS", 1_000)?);
        if stuck_after < 2 * postgres.query_timeout.max(poll_interval).max(standby_retry) {
            return Err(SettingError::new(
                "RELAY_STUCK_AFTER_MS",
                "must be at least twice RELAY_QUERY_TIMEOUT_MS, RELAY_POLL_INTERVAL_MS and RELAY_STANDBY_RETRY_MS",
            ));
        }
        Ok(Self {
            postgres,
            kafka: KafkaConfig {
                endpoint,
                transactional_id_prefix: env
                    .string_or("RELAY_TRANSACTIONAL_ID_PREFIX", "outbox-relay"),
                acks,
                linger_ms: env.parse_or("KAFKA_LINGER_MS", 5)?,
                batch_size_bytes: env.positive_or("KAFKA_BATCH_SIZE", 1_000_000)?,
                transaction_timeout_ms: env.positive_or("KAFKA_TRANSACTION_TIMEOUT_MS", 60_000)?,
                commit_timeout,
            },
            batch: BatchConfig {
                batch_size: u32::try_from(batch_size).unwrap_or(100_000),
                poll_interval,
                standby_retry,
                prune_interval: Duration::from_millis(
                    env.positive_or("RELAY_PRUNE_INTERVAL_MS", 300_000)?,
                ),
            },
            flows: selected_flows(env)?,
            shards: crate::shard::Preferred::parse(&env.string_or("RELAY_SHARDS", "all"))?,
            metrics_addr: daemon::http::parse_addr(
                "RELAY_METRICS_ADDR",
                &env.string_or("RELAY_METRICS_ADDR", "127.0.0.1:9101"),
            )?,
            stall_after: Duration::from_millis(env.positive_or("RELAY_STALL_AFTER_MS", 60_000)?),
            stuck_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Vec<(&'static str, &'static str)> {
        vec![
            ("DATABASE_URL", "postgres://u:pw@localhost/db"),
            ("KAFKA_BROKERS", "localhost:9092"),
        ]
    }

    #[test]
    fn defaults() {
        let cfg = RelayConfig::from_env(&Env::from_pairs(base())).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.batch.batch_size, 10_000);
        assert_eq!(cfg.batch.poll_interval, Duration::from_secs(1));
        assert_eq!(cfg.flows[0].name.as_str(), "user_logins");
    }

    #[test]
    fn debug_shows_no_secret() {
        let mut pairs = vec![
            ("DATABASE_URL", "postgres://u:pg-secret@localhost/db"),
            ("KAFKA_BROKERS", "localhost:9092"),
            ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
            ("KAFKA_SASL_USERNAME", "u"),
            ("KAFKA_SASL_PASSWORD", "kafka-secret"),
        ];
        pairs.push(("KAFKA_SASL_MECHANISM", "PLAIN"));
        let cfg = RelayConfig::from_env(&Env::from_pairs(pairs)).unwrap_or_else(|e| panic!("{e}"));
        let shown = format!("{cfg:?}");
        assert!(shown.contains("localhost/db"), "{shown}");
        assert!(
            !shown.contains("pg-secret") && !shown.contains("kafka-secret"),
            "{shown}"
        );
    }

    #[test]
    fn errors_name_the_setting() {
        let mut pairs = base();
        pairs.push(("RELAY_BATCH_SIZE", "lots"));
        let err = RelayConfig::from_env(&Env::from_pairs(pairs)).err();
        assert_eq!(err.map(|e| e.name), Some("RELAY_BATCH_SIZE".into()));

        let err = RelayConfig::from_env(&Env::from_pairs([("KAFKA_BROKERS", "x")])).err();
        assert_eq!(err.map(|e| e.name), Some("DATABASE_URL".into()));

        let mut pairs = base();
        pairs.push(("FLOWS", "user_logins,nope"));
        let err = RelayConfig::from_env(&Env::from_pairs(pairs)).err();
        assert_eq!(err.map(|e| e.name), Some("FLOWS".into()));
    }
}
