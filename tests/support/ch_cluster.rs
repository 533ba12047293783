//! The ClickHouse cluster of 2 shards × 2 replicas that
//! `scripts/ch-cluster.sh` runs (with ZooKeeper), for the cluster tests:
//! its endpoints, a test stack whose sink writes to it
//! (`CLICKHOUSE_CLUSTER`), and its servers killed and started again.
//!
//! From the environment (`scripts/ch-cluster-test.sh` sets them):
//! `TEST_CH_CLUSTER_URLS` (the four servers' HTTP endpoints, servers 1 and
//! 2 the replicas of shard 1, 3 and 4 of shard 2) and
//! `TEST_CH_CLUSTER_NAME`.

use std::time::Duration;

use anyhow::Context;

use crate::stack::TestStack;
use crate::wait::wait_for;

pub struct ChCluster {
    pub name: String,
    pub urls: Vec<String>,
}

impl ChCluster {
    /// The running cluster; an error saying how to start one when the
    /// variables are not set.
    pub fn from_env() -> anyhow::Result<Self> {
        let urls = std::env::var("TEST_CH_CLUSTER_URLS").context(
            "TEST_CH_CLUSTER_URLS: the cluster tests need the 2×2 ClickHouse cluster: run scripts/ch-cluster-test.sh",
        )?;
        Ok(Self {
            name: std::env::var("TEST_CH_CLUSTER_NAME").unwrap_or_else(|_| "outbox_2x2".into()),
            urls: urls.split(',').map(str::to_owned).collect(),
        })
    }

    /// The cluster whose every server is its own shard (counting what each
    /// server was sent).
    pub fn each(&self) -> String {
        format!("{}_each", self.name)
    }

    /// A migrated stack (the demo's migrations rendered for the cluster by
    /// `sink migrate`) whose daemons run `flows` and whose sink writes to
    /// every server of the cluster.
    pub async fn stack(&self, test: &str, flows: &str) -> anyhow::Result<TestStack> {
        let mut stack = TestStack::start(test).await?;
        stack.flows = flows.into();
        stack.clickhouse_url = self.urls.join(",");
        stack
            .overrides
            .push(("CLICKHOUSE_CLUSTER".into(), self.name.clone()));
        stack.migrate().await?;
        Ok(stack)
    }

    /// A client of server `n` (1-4) bound to `database`.
    pub fn node(&self, n: usize, database: &str) -> clickhouse::Client {
        let cfg = sink::clickhouse::ClickHouseConfig {
            url: self.urls[n - 1].clone(),
            user: "default".into(),
            password: None,
            database: database.into(),
            ca_file: None,
            cluster: None,
        };
        sink::clickhouse::client::client(&cfg, Some(database))
    }

    /// Which shard (1 or 2) server `n` holds.
    pub fn shard_of_node(n: usize) -> usize {
        n.div_ceil(2)
    }

    fn script(&self, args: &[&str]) -> anyhow::Result<()> {
        let script = crate::repo_path("scripts/ch-cluster.sh");
        let out = std::process::Command::new(&script).args(args).output()?;
        anyhow::ensure!(
            out.status.success(),
            "{} {}: {}",
            script.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// kill -9 of server `n`.
    pub fn kill(&self, n: usize) -> anyhow::Result<()> {
        self.script(&["kill", &n.to_string()])
    }

    /// Starts server `n` again (its data kept) and waits until it answers.
    pub async fn start(&self, n: usize) -> anyhow::Result<()> {
        let n = n.to_string();
        let this = Self {
            name: self.name.clone(),
            urls: self.urls.clone(),
        };
        tokio::task::spawn_blocking(move || this.script(&["start", &n])).await?
    }

    /// kill -9 of ZooKeeper.
    pub fn kill_zookeeper(&self) -> anyhow::Result<()> {
        self.script(&["kill-zk"])
    }

    /// Starts ZooKeeper again (its data kept) and waits until it answers.
    pub async fn start_zookeeper(&self) -> anyhow::Result<()> {
        let this = Self {
            name: self.name.clone(),
            urls: self.urls.clone(),
        };
        tokio::task::spawn_blocking(move || this.script(&["start-zk"])).await?
    }

    /// Counts every row each server of the cluster is sent for `targets`
    /// (their local tables), in `<table>_arrivals` — a `Distributed` table
    /// over every server's count — which the fault suite's checks read
    /// (`faults::verify_tables`). Rows a replica fetches from another are
    /// not counted: only inserts, so repeats show as stored.
    pub async fn record_arrivals(&self, stack: &TestStack, targets: &[&str]) -> anyhow::Result<()> {
        let (db, ch) = (&stack.name, stack.ch());
        for t in targets {
            for sql in [
                format!(
                    "CREATE TABLE `{db}`.{t}_arrivals_here ON CLUSTER {} (id UInt64) ENGINE = MergeTree ORDER BY id",
                    self.name
                ),
                format!(
                    "CREATE MATERIALIZED VIEW `{db}`.{t}_arrivals_view ON CLUSTER {} TO `{db}`.{t}_arrivals_here AS SELECT id FROM `{db}`.{t}_local",
                    self.name
                ),
                format!(
                    "CREATE TABLE `{db}`.{t}_arrivals ON CLUSTER {} AS `{db}`.{t}_arrivals_here ENGINE = Distributed('{}', '{db}', '{t}_arrivals_here')",
                    self.name,
                    self.each()
                ),
            ] {
                ch.query(&sql)
                    .with_setting("wait_end_of_query", "1")
                    .execute()
                    .await
                    .with_context(|| sql.clone())?;
            }
        }
        Ok(())
    }

    /// Waits until both replicas of each shard hold the same rows of each
    /// of `tables` (their local tables: the same rows under `FINAL`, what
    /// queries return) with nothing left in their replication queues: a
    /// restarted replica caught up.
    ///
    /// Raw counts may differ for a while, and that is not a divergence: an
    /// insert that loses ZooKeeper mid-commit answers code 319 ("Unknown
    /// status, client must retry") and ClickHouse keeps the part on that
    /// replica alone; the sink stores the batch again (on a replica that
    /// takes it) and ClickHouse's part check removes the unregistered part
    /// after 5 minutes (`MAX_AGE_OF_LOCAL_PART_THAT_WASNT_ADDED_TO_ZOOKEEPER`).
    /// Until then that replica holds those rows twice, which `FINAL` folds.
    pub async fn wait_replicas_agree(&self, database: &str, tables: &[&str]) {
        wait_for(
            "the replicas of each shard holding the same rows",
            Duration::from_secs(120),
            || async {
                for t in tables {
                    let mut seen = Vec::new();
                    for n in 1..=self.urls.len() {
                        let node = self.node(n, database);
                        let distinct: u64 = node
                            .query(&format!("SELECT count() FROM {t}_local FINAL"))
                            .fetch_one()
                            .await?;
                        let raw: u64 = node
                            .query(&format!("SELECT count() FROM {t}_local"))
                            .fetch_one()
                            .await?;
                        let queued: u64 = node
                            .query("SELECT sum(queue_size) FROM system.replicas WHERE database = ? AND table = ?")
                            .bind(database)
                            .bind(format!("{t}_local"))
                            .fetch_one()
                            .await?;
                        seen.push((distinct, raw, queued));
                    }
                    let agree = seen
                        .chunks(2)
                        .all(|pair| pair[0].0 == pair[1].0 && pair[0].2 == 0 && pair[1].2 == 0);
                    if !agree {
                        return Ok(Err(format!(
                            "{t}_local on servers 1-4 (rows under FINAL, raw rows, queued): {seen:?}"
                        )));
                    }
                }
                Ok(Ok(()))
            },
        )
        .await;
    }
}
