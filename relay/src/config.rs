//! The relay's settings, one struct per concern, read with the getters of
//! their declarations (`flows::settings`, where each default lives;
//! `docs/settings.md` lists them).

use std::time::Duration;

use flows::settings::{self, Reader, selected_flows};
use flows::{Env, Flow, SettingError};

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
    /// `linger.ms`.
    pub linger: Duration,
    pub batch_size_bytes: u64,
    /// `transaction.timeout.ms` and `message.timeout.ms`.
    pub transaction_timeout: Duration,
    /// How long flushing a batch and committing its transaction may each
    /// take; past it the commit's outcome is unknown (see
    /// `PublishError::CommitUnknown`).
    pub commit_timeout: Duration,
    /// What the relay creates its topics with (`KAFKA_TOPIC_*`; a flow's
    /// `[flows.topics]` over it).
    pub topics: connections::topics::TopicSpec,
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
    /// Settings set but no longer used, with why: (name, why), for a
    /// warning at start-up.
    pub ignored: Vec<(&'static str, &'static str)>,
}

/// Settings the `migrate` command needs: only the database.
pub fn postgres_config(env: &Env) -> Result<PostgresConfig, SettingError> {
    Ok(PostgresConfig {
        url: connections::pg::database_url(env)?,
        session_timeout: settings::RELAY_SESSION_TIMEOUT_MS.get(env)?,
        query_timeout: settings::RELAY_QUERY_TIMEOUT_MS.get(env)?,
        pool: connections::pg_pool::PoolConfig::from_env(env)?,
    })
}

impl RelayConfig {
    pub fn from_env(env: &Env) -> Result<Self, SettingError> {
        env.reject_unknown(Reader::Relay)?;
        daemon::telemetry::log_format(env)?;
        let postgres = postgres_config(env)?;
        let endpoint = connections::kafka::KafkaEndpoint::from_env(env)?;
        // Transactions need the idempotent producer, which needs acks=all.
        let acks = settings::KAFKA_ACKS.get(env).map_err(|e| {
            SettingError::new(
                &e.name,
                "the relay publishes in transactions, which require acks=all",
            )
        })?;
        let batch_size = settings::RELAY_BATCH_SIZE.get(env)?;
        let poll_interval = settings::RELAY_POLL_INTERVAL_MS.get(env)?;
        if postgres.session_timeout < 2 * poll_interval {
            // An idle leader touches its sessions once per poll interval.
            return Err(SettingError::new(
                settings::RELAY_SESSION_TIMEOUT_MS.name,
                "must be at least twice RELAY_POLL_INTERVAL_MS",
            ));
        }
        let stuck_after = settings::RELAY_STUCK_AFTER_MS.get(env)?;
        let commit_timeout = settings::KAFKA_COMMIT_TIMEOUT_MS.get(env)?;
        if stuck_after < 3 * commit_timeout {
            // A batch's flush and commit may take that long each, then an abort.
            return Err(SettingError::new(
                settings::RELAY_STUCK_AFTER_MS.name,
                "must be at least three times KAFKA_COMMIT_TIMEOUT_MS",
            ));
        }
        let standby_retry = settings::RELAY_STANDBY_RETRY_MS.get(env)?;
        if stuck_after < 2 * postgres.query_timeout.max(poll_interval).max(standby_retry) {
            return Err(SettingError::new(
                settings::RELAY_STUCK_AFTER_MS.name,
                "must be at least twice RELAY_QUERY_TIMEOUT_MS, RELAY_POLL_INTERVAL_MS and RELAY_STANDBY_RETRY_MS",
            ));
        }
        Ok(Self {
            postgres,
            kafka: KafkaConfig {
                endpoint,
                transactional_id_prefix: settings::RELAY_TRANSACTIONAL_ID_PREFIX.get(env)?,
                acks: acks.to_owned(),
                linger: settings::KAFKA_LINGER_MS.get(env)?,
                batch_size_bytes: settings::KAFKA_BATCH_SIZE.get(env)?,
                transaction_timeout: settings::KAFKA_TRANSACTION_TIMEOUT_MS.get(env)?,
                commit_timeout,
                topics: connections::topics::TopicSpec::from_env(env)?,
            },
            batch: BatchConfig {
                // At most 100000, by its declaration.
                batch_size: u32::try_from(batch_size).unwrap_or(100_000),
                poll_interval,
                standby_retry,
                prune_interval: settings::RELAY_PRUNE_INTERVAL_MS.get(env)?,
            },
            flows: selected_flows(env)?,
            shards: crate::shard::Preferred::parse(&settings::RELAY_SHARDS.get(env)?)?,
            metrics_addr: settings::RELAY_METRICS_ADDR.get(env)?,
            stall_after: settings::RELAY_STALL_AFTER_MS.get(env)?,
            stuck_after,
            ignored: env.ignored(Reader::Relay),
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
            (
                "FLOWS_FILE",
                concat!(env!("CARGO_MANIFEST_DIR"), "/../demo/flows.toml"),
            ),
        ]
    }

    #[test]
    fn defaults() {
        let env = Env::from_pairs(base());
        let cfg = RelayConfig::from_env(&env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.batch.batch_size, 10_000);
        assert_eq!(cfg.batch.poll_interval, Duration::from_secs(1));
        assert_eq!(cfg.kafka.linger, Duration::from_millis(5));
        assert_eq!(cfg.kafka.transaction_timeout, Duration::from_secs(60));
        assert_eq!(cfg.flows[0].name.as_str(), "user_logins");
        assert!(cfg.ignored.is_empty());
        // Everything the relay read is declared as the relay's: a setting it
        // read but did not declare would be refused as unknown.
        for name in env.read_names() {
            let declared = settings::find(&name).map(|s| s.read_by().contains(&Reader::Relay));
            assert_eq!(declared, Some(true), "{name}");
        }
    }

    #[test]
    fn the_sweep_interval_is_accepted_and_named_as_ignored() {
        let mut pairs = base();
        pairs.push(("RELAY_SWEEP_INTERVAL_MS", "500"));
        let cfg = RelayConfig::from_env(&Env::from_pairs(pairs)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.ignored.len(), 1);
        assert_eq!(cfg.ignored[0].0, "RELAY_SWEEP_INTERVAL_MS");
    }

    #[test]
    fn debug_shows_no_secret() {
        let mut pairs = vec![
            ("DATABASE_URL", "postgres://u:pg-secret@localhost/db"),
            ("KAFKA_BROKERS", "localhost:9092"),
            ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
            ("KAFKA_SASL_USERNAME", "u"),
            ("KAFKA_SASL_PASSWORD", "kafka-secret"),
            (
                "FLOWS_FILE",
                concat!(env!("CARGO_MANIFEST_DIR"), "/../demo/flows.toml"),
            ),
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
