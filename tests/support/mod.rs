//! Test support: real Postgres, real ClickHouse and a Kafka cluster (the
//! librdkafka mock in-process, or real Kafka), one isolated set of databases,
//! topics and groups per test.
//!
//! Endpoints, from the environment with local defaults:
//! - `TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`):
//!   a role that may create databases; each test gets its own database.
//! - `TEST_CLICKHOUSE_URL` (default `http://127.0.0.1:8123`), user `default`,
//!   no password; each test gets its own ClickHouse database.
//! - `TEST_KAFKA_BROKERS`: a real Kafka to use instead of the in-process mock
//!   (fault-injection tests are then skipped, saying so).
//! - `TEST_BACKEND`: `local` (the services above), `testcontainers` (start
//!   Postgres, apache/kafka and clickhouse-server containers), or `auto`
//!   (default: testcontainers when a Docker socket exists, else local).

pub mod browser;
pub mod containers;
pub mod daemon;
pub mod faults;
pub mod proxy;
pub mod stack;
pub mod tls_proxy;
pub mod wait;

pub use daemon::Daemon;
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
