//! Test support: real Postgres, real ClickHouse and a real Kafka broker (the
//! librdkafka mock in-process only for fault injection a broker cannot do),
//! one isolated set of databases, topics, groups and transactional ids per
//! test.
//!
//! Endpoints, from the environment with local defaults:
//! - `TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`):
//!   a role that may create databases; each test gets its own database.
//! - `TEST_CLICKHOUSE_URL` (default `http://127.0.0.1:8123`), user `default`,
//!   no password; each test gets its own ClickHouse database.
//! - `TEST_KAFKA_BROKERS` (default `127.0.0.1:9092`): the real broker, and
//!   `TEST_KAFKA_SSL_BROKERS`, `TEST_KAFKA_SASL_SSL_BROKERS`,
//!   `TEST_KAFKA_MTLS_BROKERS`, `TEST_KAFKA_LOCAL_*` for its TLS listeners,
//!   CA and users (scripts/test.sh sets them all; see `broker`).
//! - `TEST_KAFKA_JARS`, `TEST_CLUSTER_PORT`: the three-broker cluster the
//!   cluster tests start themselves (see `cluster`).
//! - `TEST_CH_CLUSTER_URLS`, `TEST_CH_CLUSTER_NAME`: the ClickHouse cluster
//!   of 2 shards × 2 replicas the cluster tests need (`ch_cluster`;
//!   scripts/ch-cluster-test.sh starts it and sets them).
//! - `TEST_BACKEND`: `local` (the services above), `testcontainers`
//!   (Postgres, Kafka and ClickHouse containers as docker-compose.yml
//!   describes them, started by the test process: `containers`). `local`
//!   unless set: the backend is chosen outright, never guessed.
//!   Tests that need what only the local services have fail on containers,
//!   saying so (`stack::require_local`).

pub mod broker;
pub mod browser;
pub mod ch_cluster;
pub mod cluster;
pub mod compose;
pub mod containers;
pub mod daemon;
pub mod faults;
pub mod http;
pub mod pg_pair;
pub mod proxy;
pub mod stack;
pub mod systemd;
pub mod tls_proxy;
pub mod topic;
pub mod wait;

pub use daemon::Daemon;

/// A path in the repository (`rel` from its root), e.g. an example.
pub fn repo_path(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel)
}
pub use stack::TestStack;
pub use wait::wait_until;

/// Logs to the test output, once per process.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}
