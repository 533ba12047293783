//! The Kafka the benchmark measures on: the real broker the scripts run
//! (`BENCH_KAFKA_BROKERS`, set by scripts/bench.sh), or librdkafka's mock
//! cluster in-process (`BENCH_KAFKA=mock`, a labelled second column only).

use std::time::Duration;

use anyhow::Context;
use devstack::MockKafka;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

pub enum Cluster {
    Broker {
        brokers: String,
        /// The broker JVM's pid, for its CPU time.
        pid: Option<u32>,
        label: String,
    },
    Mock(MockKafka),
}

impl Cluster {
    /// From the environment: the broker unless `BENCH_KAFKA=mock`.
    pub fn from_env() -> anyhow::Result<Self> {
        if std::env::var("BENCH_KAFKA").as_deref() == Ok("mock") {
            return Ok(Self::Mock(MockKafka::start(3)?));
        }
        let brokers = std::env::var("BENCH_KAFKA_BROKERS")
            .context("BENCH_KAFKA_BROKERS: the broker to measure on (scripts/bench.sh starts one and sets it), or BENCH_KAFKA=mock")?;
        Ok(Self::Broker {
            brokers,
            pid: std::env::var("BENCH_KAFKA_PID")
                .ok()
                .and_then(|p| p.trim().parse().ok()),
            label: format!(
                "Apache Kafka {} (one KRaft node)",
                std::env::var("BENCH_KAFKA_VERSION").unwrap_or_else(|_| "?".into())
            ),
        })
    }

    pub fn bootstrap_servers(&self) -> &str {
        match self {
            Self::Broker { brokers, .. } => brokers,
            Self::Mock(mock) => mock.bootstrap_servers(),
        }
    }

    pub fn label(&self) -> &str {
        match self {
            Self::Broker { label, .. } => label,
            Self::Mock(_) => "librdkafka's mock Kafka (in the bench process)",
        }
    }

    /// The process whose CPU time is Kafka's.
    pub fn pid(&self) -> u32 {
        match self {
            Self::Broker { pid, .. } => pid.unwrap_or(0),
            Self::Mock(_) => std::process::id(),
        }
    }

    pub fn is_mock(&self) -> bool {
        matches!(self, Self::Mock(_))
    }

    pub async fn create_topic(&self, topic: &str, partitions: i32) -> anyhow::Result<()> {
        match self {
            Self::Mock(mock) => mock.create_topic(topic, partitions),
            Self::Broker { brokers, .. } => create_topic(brokers, topic, partitions).await,
        }
    }
}

/// Creates `topic` on a real broker (an existing one is fine).
pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await?;
    for result in results {
        match result {
            Ok(_) => {}
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => anyhow::bail!("creating topic {name}: {code}"),
        }
    }
    Ok(())
}
