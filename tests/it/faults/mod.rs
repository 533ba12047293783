//! The fault suite: under a steady load on two flows (`user_logins`, and
//! `sales` with its two tables), inject each fault, then check that every
//! source row is flagged, the deduplicated ClickHouse view holds exactly the
//! source rows, and nothing stays pending. Each fault writes a results row
//! (`scripts/faults.sh` renders docs/faults.md). `FAULT_ROUNDS=long` runs the
//! long loop; CI runs the short one. Tests run one at a time (they restart
//! Postgres and load the machine).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use daemon::metrics::Metrics;
use outbox_tests::faults::{Load, long_mode, peak_rss_mib, rounds, verify};
use outbox_tests::proxy::Proxy;
use outbox_tests::stack::Kafka;
use outbox_tests::topic::{Isolation, read_all};
use outbox_tests::{Daemon, TestStack, wait_until};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

mod kafka;
mod postgres;
mod relay;
mod sink;

pub(super) static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub(super) const LOAD_ROWS_PER_SEC: u64 = 600;

pub(super) async fn stack(test: &str) -> anyhow::Result<TestStack> {
    stack_on(test, Kafka::Broker).await
}

pub(super) async fn stack_on(test: &str, kafka: Kafka) -> anyhow::Result<TestStack> {
    let mut stack = TestStack::start_on(test, kafka).await?;
    stack.flows = "user_logins,sales".into();
    stack.migrate().await?;
    outbox_tests::faults::record_arrivals(&stack).await?;
    Ok(stack)
}

pub(super) fn label(stack: &TestStack, what: &str, i: u32) -> String {
    format!("{}-{what}-{i}", stack.name)
}

/// Keeps a daemon running: respawns it whenever it exits (a failpoint abort)
/// and counts the restarts.
pub(super) async fn supervise_for(
    daemon: &mut Daemon,
    spawn: &dyn Fn(u32) -> Daemon,
    period: Duration,
    restarts: &mut u32,
) {
    let end = Instant::now() + period;
    while Instant::now() < end {
        if !daemon.is_running() {
            *restarts += 1;
            *daemon = spawn(*restarts + 1000);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
