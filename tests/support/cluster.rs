//! The three-broker Kafka cluster the cluster tests share
//! (`devstack::cluster`: a KRaft controller and three brokers on loopback,
//! replication factor 3, `min.insync.replicas=2`, topic auto-creation off),
//! started once per test process on first use and gone with it.
//!
//! - `TEST_KAFKA_JARS`: the broker's jars (default: where
//!   `scripts/kafka-lib.sh` caches them; `scripts/cluster-test.sh` fetches
//!   them first).
//! - `TEST_CLUSTER_PORT` (default 19400): the controller's port; brokers
//!   on the next hundred.
//!
//! Its data and logs are in `target/kafka-cluster/` (emptied at start).

use std::sync::OnceLock;
use std::time::Duration;

use devstack::cluster::{ClusterOptions, KafkaCluster};

/// The cluster, started on first use (about half a minute).
pub fn shared() -> anyhow::Result<&'static KafkaCluster> {
    static CLUSTER: OnceLock<Result<KafkaCluster, String>> = OnceLock::new();
    CLUSTER
        .get_or_init(|| start().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("starting the three-broker cluster: {e}"))
}

fn start() -> anyhow::Result<KafkaCluster> {
    let port = std::env::var("TEST_CLUSTER_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(19_400);
    let exe = std::env::current_exe()?;
    let dir = exe
        .ancestors()
        .nth(3)
        .map(|target| target.join("kafka-cluster"))
        .unwrap_or_else(|| std::env::temp_dir().join("kafka-cluster"));
    let mut options = ClusterOptions::new(dir, port)?;
    if let Some(jars) = std::env::var_os("TEST_KAFKA_JARS").filter(|j| !j.is_empty()) {
        options.jars = jars.into();
    }
    KafkaCluster::start(options)
}

/// Whole again: every link healed, every node running, every partition's
/// replicas in sync. Where each cluster test starts.
pub fn whole() -> anyhow::Result<&'static KafkaCluster> {
    let cluster = shared()?;
    cluster.recover(Duration::from_secs(120))?;
    Ok(cluster)
}
