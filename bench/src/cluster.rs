//! The Kafka the benchmark measures on: the real broker the scripts run
//! (`BENCH_KAFKA_BROKERS`, set by scripts/bench.sh), or librdkafka's mock
//! cluster in-process (`BENCH_KAFKA=mock`, a labelled second column only);
//! and, for the `kafka-cluster` rows, three brokers it starts itself.

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
    /// Three brokers and a controller started by the benchmark
    /// (`devstack::cluster`): replication factor 3, `min.insync.replicas=2`.
    Three(Box<devstack::cluster::KafkaCluster>),
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

    /// Starts three brokers and a controller on loopback (ports from
    /// `BENCH_CLUSTER_PORT`, default 19500; data under
    /// `target/bench/kafka-cluster`), the nodes talking directly. Blocking.
    pub fn three() -> anyhow::Result<Self> {
        let port = std::env::var("BENCH_CLUSTER_PORT")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(19_500);
        let mut options = devstack::cluster::ClusterOptions::new(
            std::path::PathBuf::from("target/bench/kafka-cluster"),
            port,
        )?;
        options.partitionable = false;
        options.heap = "512m".into();
        Ok(Self::Three(Box::new(
            devstack::cluster::KafkaCluster::start(options)?,
        )))
    }

    pub fn bootstrap_servers(&self) -> &str {
        match self {
            Self::Broker { brokers, .. } => brokers,
            Self::Mock(mock) => mock.bootstrap_servers(),
            Self::Three(cluster) => cluster.bootstrap_servers(),
        }
    }

    pub fn label(&self) -> &str {
        match self {
            Self::Broker { label, .. } => label,
            Self::Mock(_) => "librdkafka's mock Kafka (in the bench process)",
            Self::Three(_) => {
                "Apache Kafka, three brokers and a KRaft controller (replication factor 3, min.insync.replicas 2)"
            }
        }
    }

    /// The processes whose CPU time is Kafka's.
    pub fn pids(&self) -> Vec<u32> {
        match self {
            Self::Broker { pid, .. } => pid.iter().copied().collect(),
            Self::Mock(_) => vec![std::process::id()],
            Self::Three(cluster) => cluster.pids(),
        }
    }

    pub fn is_mock(&self) -> bool {
        matches!(self, Self::Mock(_))
    }

    /// Its name in the CPU figures.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Broker { .. } => "Kafka broker",
            Self::Mock(_) => "mock Kafka (bench process)",
            Self::Three(_) => "Kafka (3 brokers, controller)",
        }
    }

    pub async fn create_topic(&self, topic: &str, partitions: i32) -> anyhow::Result<()> {
        match self {
            Self::Mock(mock) => mock.create_topic(topic, partitions),
            Self::Broker { brokers, .. } => create_topic(brokers, topic, partitions).await,
            Self::Three(cluster) => {
                create_topic_with(cluster.bootstrap_servers(), topic, partitions, 3).await
            }
        }
    }
}

/// Creates `topic` on a real broker (an existing one is fine).
pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<()> {
    create_topic_with(brokers, topic, partitions, 1).await
}

/// Creates `topic` with `replicas` replicas of each partition (with 3,
/// `min.insync.replicas=2`); an existing one is fine.
async fn create_topic_with(
    brokers: &str,
    topic: &str,
    partitions: i32,
    replicas: i32,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replicas));
    if replicas >= 3 {
        new = new.set("min.insync.replicas", "2");
    }
    let results = admin
        .create_topics(
            &[new],
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
