//! One test's isolated share of the services.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use daemon::metrics::Metrics;
use devstack::MockKafka;
use flows::Env;
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;

use super::containers;

pub struct TestStack {
    /// Unique name: the test's Postgres and ClickHouse database, and the
    /// prefix of its topics, groups and transactional ids.
    pub name: String,
    pub database_url: String,
    pub clickhouse_url: String,
    /// The ClickHouse user the test and its daemons use (`default`, no
    /// password, on the local services; compose's on containers).
    pub clickhouse_user: String,
    pub clickhouse_password: Option<String>,
    pub kafka_brokers: String,
    /// The in-process mock cluster, when not running against real Kafka.
    pub mock: Option<Arc<MockKafka>>,
    /// Extra variables for the daemons (e.g. a proxied CLICKHOUSE_URL).
    pub overrides: Vec<(String, String)>,
    /// FLOWS for the daemons.
    pub flows: String,
}

struct Endpoints {
    admin_url: String,
    clickhouse_url: String,
    clickhouse_user: String,
    clickhouse_password: Option<String>,
    kafka_brokers: Option<String>,
}

/// Which services the tests run on (`TEST_BACKEND`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Backend {
    /// The services on this machine (scripts/test.sh starts them).
    Local,
    /// Containers the test process starts (tests/support/containers.rs).
    Testcontainers,
}

/// `TEST_BACKEND`: `local` (the default) or `testcontainers`. Chosen
/// outright, never guessed from what the machine has: a backend that cannot
/// start fails every test that needs it, saying why.
pub fn backend() -> anyhow::Result<Backend> {
    match std::env::var("TEST_BACKEND").as_deref() {
        Err(_) | Ok("local") => Ok(Backend::Local),
        Ok("testcontainers") => Ok(Backend::Testcontainers),
        Ok(other) => anyhow::bail!("TEST_BACKEND must be local or testcontainers, not {other:?}"),
    }
}

/// Fails, naming what the test needs (`needs`), unless the tests run on the
/// local services: for what only they have (the broker's TLS listeners, a
/// server this machine can restart). Never a silent pass on containers.
pub fn require_local(needs: &str) -> anyhow::Result<()> {
    match backend()? {
        Backend::Local => Ok(()),
        Backend::Testcontainers => anyhow::bail!(
            "this test needs {needs}: it runs on the local services only (TEST_BACKEND=local, as scripts/test.sh sets)"
        ),
    }
}

/// Fails, naming what the test needs, unless the tests run on the
/// testcontainers backend: for tests that start containers of their own on
/// its network.
pub fn require_containers(needs: &str) -> anyhow::Result<()> {
    match backend()? {
        Backend::Testcontainers => Ok(()),
        Backend::Local => anyhow::bail!(
            "this test needs {needs}: it runs on the testcontainers backend only (TEST_BACKEND=testcontainers, \
             as scripts/containers-check.sh sets, after scripts/images.sh)"
        ),
    }
}

async fn endpoints() -> anyhow::Result<Endpoints> {
    if backend()? == Backend::Testcontainers {
        let c = containers::shared().await?;
        return Ok(Endpoints {
            admin_url: c.database_url.clone(),
            clickhouse_url: c.clickhouse_url.clone(),
            clickhouse_user: c.clickhouse_user.clone(),
            clickhouse_password: c.clickhouse_password.clone(),
            kafka_brokers: Some(c.kafka_brokers.clone()),
        });
    }
    Ok(Endpoints {
        admin_url: std::env::var("TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into()),
        clickhouse_url: std::env::var("TEST_CLICKHOUSE_URL")
            .unwrap_or_else(|_| "http://127.0.0.1:8123".into()),
        clickhouse_user: "default".into(),
        clickhouse_password: None,
        kafka_brokers: Some(super::broker::plaintext()),
    })
}

/// Which Kafka a test runs on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kafka {
    /// The real broker (`TEST_KAFKA_BROKERS`, started by scripts/test.sh):
    /// every test about the delivery guarantee.
    Broker,
    /// librdkafka's mock cluster in-process, only for what a broker cannot be
    /// told to do (injected request errors, a slow broker).
    Mock,
}

impl TestStack {
    /// Creates the test's databases on the real broker (fails, saying how to
    /// start one, when none answers).
    pub async fn start(test: &str) -> anyhow::Result<Self> {
        Self::start_on(test, Kafka::Broker).await
    }

    /// Creates the test's databases and a mock cluster of 3 brokers: only
    /// for fault injection a real broker cannot do.
    pub async fn start_on_mock(test: &str) -> anyhow::Result<Self> {
        Self::start_on(test, Kafka::Mock).await
    }

    pub async fn start_on(test: &str, kafka: Kafka) -> anyhow::Result<Self> {
        let ep = endpoints().await?;
        let mut stack = Self::databases(test, &ep).await?;
        match (kafka, ep.kafka_brokers) {
            (Kafka::Broker, Some(b)) => {
                super::broker::check_answers(&b)?;
                stack.kafka_brokers = b;
            }
            _ => {
                let mock = MockKafka::start(3)?;
                stack.kafka_brokers = mock.bootstrap_servers().to_owned();
                stack.create_demo_topics_on(&mock)?;
                stack.mock = Some(Arc::new(mock));
            }
        }
        Ok(stack)
    }

    /// Creates the test's databases, its Kafka the brokers at `brokers` (a
    /// cluster the test started, see `cluster`).
    pub async fn start_on_brokers(test: &str, brokers: &str) -> anyhow::Result<Self> {
        let mut stack = Self::databases(test, &endpoints().await?).await?;
        super::broker::check_answers(brokers)?;
        stack.kafka_brokers = brokers.to_owned();
        Ok(stack)
    }

    /// The test's Postgres database (ClickHouse's is made by `migrate`);
    /// no Kafka yet.
    async fn databases(test: &str, ep: &Endpoints) -> anyhow::Result<Self> {
        super::init_logging();
        let name = format!("t_{test}_{}", rand::random::<u32>());
        let (admin, conn) = tokio_postgres::connect(&ep.admin_url, NoTls)
            .await
            .context("connecting to the test Postgres (TEST_DATABASE_URL)")?;
        tokio::spawn(conn);
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await?;
        Ok(Self {
            database_url: connections::pg::with_database(&ep.admin_url, &name),
            clickhouse_url: ep.clickhouse_url.clone(),
            clickhouse_user: ep.clickhouse_user.clone(),
            clickhouse_password: ep.clickhouse_password.clone(),
            kafka_brokers: String::new(),
            mock: None,
            overrides: Vec::new(),
            flows: "user_logins".into(),
            name,
        })
    }

    /// librdkafka's mock cluster has no CreateTopics and the daemons never
    /// let a broker create a topic for them: every topic the demo's flows
    /// touch (their dead-letter topics too) is made on the mock first.
    fn create_demo_topics_on(&self, mock: &MockKafka) -> anyhow::Result<()> {
        let (flows_file, _) = demo_files();
        let catalog =
            flows::FlowCatalog::load(&[flows_file])?.with_prefixes(&format!("{}.", self.name), "");
        let mut topics = std::collections::BTreeSet::new();
        for flow in catalog.flows() {
            topics.extend(flow.sources.iter().map(|s| s.topic.clone()));
            topics.extend(flow.targets.iter().map(|t| t.topic.clone()));
            if let Some(stage) = &flow.stage {
                topics.insert(stage.output.clone());
                topics.extend(stage.inputs.iter().cloned());
            }
        }
        for topic in topics {
            mock.create_topic(&topic, 4)?;
            mock.create_topic(&format!("{topic}.dlq"), 4)?;
        }
        Ok(())
    }

    /// A stack with both migrations run: where most tests start.
    pub async fn migrated(test: &str) -> anyhow::Result<Self> {
        let stack = Self::start(test).await?;
        stack.migrate().await?;
        Ok(stack)
    }

    /// A migrated stack whose daemons run `flows` (a FLOWS value).
    pub async fn migrated_for(test: &str, flows: &str) -> anyhow::Result<Self> {
        let mut stack = Self::start(test).await?;
        stack.flows = flows.into();
        stack.migrate().await?;
        Ok(stack)
    }

    /// Writes `toml` as this test's flows file and has the daemons read it
    /// after the demo's (`FLOWS_FILE` in [`Self::daemon_env`]: its flows are
    /// added to the demo's, or replace them by name); its path.
    pub fn use_flows_file(&mut self, toml: &str) -> anyhow::Result<std::path::PathBuf> {
        let path = std::env::temp_dir().join(format!("{}-flows.toml", self.name));
        std::fs::write(&path, toml)?;
        self.overrides.retain(|(k, _)| k != "FLOWS_FILE");
        let (demo, _) = demo_files();
        self.overrides
            .push(("FLOWS_FILE".into(), format!("{demo},{}", path.display())));
        Ok(path)
    }

    /// Runs both migrations with the demo's (as `relay migrate` and `sink
    /// migrate` do with MIGRATIONS_DIR=demo/migrations): the demo's flows
    /// are what most tests drive.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        self.migrate_with(&outbox_demo::migrations_dir()).await
    }

    /// The product's migrations and those of one MIGRATIONS_DIR folder
    /// (e.g. an example's own flows, without the demo's).
    pub async fn migrate_with(&self, dir: &std::path::Path) -> anyhow::Result<()> {
        let dirs = [dir.to_path_buf()];
        let mut pg = self.pg().await?;
        relay::migrate::migrate(&mut pg, &flows::migrations::all("postgres", &dirs)?).await?;
        let cfg = sink::config::clickhouse_config(&Env::from_pairs(self.daemon_env()))?;
        let ch = flows::migrations::all("clickhouse", &dirs)?;
        sink::migrate_with_retry(&cfg, &ch, &CancellationToken::new()).await?;
        Ok(())
    }

    /// Creates the topics of the stack's flows as `relay migrate` does
    /// given the Kafka settings (the relay itself creates a missing one
    /// before its first batch): for a test whose measure must not include a
    /// topic's creation and the sink's discovery of it.
    pub async fn create_topics(&self) -> anyhow::Result<()> {
        let env = Env::from_pairs(self.daemon_env());
        let endpoint = connections::kafka::KafkaEndpoint::from_env(&env)?;
        let topics = connections::topics::Topics::new(&endpoint)?;
        let flows = flows::settings::selected_flows(&env)?;
        let spec = connections::topics::TopicSpec::from_env(&env)?;
        relay::migrate::create_topics(&topics, &flows, &spec, &CancellationToken::new()).await?;
        Ok(())
    }

    pub fn topic(&self, topic: &str) -> String {
        format!("{}.{topic}", self.name)
    }

    pub fn group(&self, group: &str) -> String {
        format!("{}.{group}", self.name)
    }

    /// The environment both daemons get: this test's databases, brokers and
    /// name prefixes, the demo's flows and migrations, short intervals, the
    /// ClickHouse user where it is not `default`, then any overrides.
    pub fn daemon_env(&self) -> Vec<(String, String)> {
        let (flows_file, migrations_dir) = demo_files();
        let mut env: Vec<(String, String)> = [
            ("DATABASE_URL", self.database_url.as_str()),
            ("FLOWS_FILE", &flows_file),
            ("MIGRATIONS_DIR", &migrations_dir),
            ("FLOWS", &self.flows),
            ("KAFKA_BROKERS", &self.kafka_brokers),
            ("CLICKHOUSE_URL", &self.clickhouse_url),
            ("CLICKHOUSE_DATABASE", &self.name),
            ("KAFKA_TOPIC_PREFIX", &format!("{}.", self.name)),
            ("KAFKA_GROUP_PREFIX", &format!("{}.", self.name)),
            ("RELAY_TRANSACTIONAL_ID_PREFIX", &self.name),
            ("RELAY_POLL_INTERVAL_MS", "500"),
            ("RELAY_STANDBY_RETRY_MS", "200"),
            ("SINK_FLUSH_INTERVAL_MS", "100"),
            ("RELAY_METRICS_ADDR", "127.0.0.1:0"),
            ("SINK_METRICS_ADDR", "127.0.0.1:0"),
            ("STAGE_METRICS_ADDR", "127.0.0.1:0"),
            (
                "STAGE_TRANSACTIONAL_ID_PREFIX",
                &format!("{}.stage", self.name),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        if self.clickhouse_user != "default" {
            env.push(("CLICKHOUSE_USER".into(), self.clickhouse_user.clone()));
        }
        if let Some(password) = &self.clickhouse_password {
            env.push(("CLICKHOUSE_PASSWORD".into(), password.clone()));
        }
        for (k, v) in &self.overrides {
            env.retain(|(name, _)| name != k);
            env.push((k.clone(), v.clone()));
        }
        env
    }

    /// Starts the relay library in-process, exactly as `relay run` does.
    pub fn spawn_relay(&self, metrics: &Metrics) -> anyhow::Result<Running> {
        let config = relay::RelayConfig::from_env(&Env::from_pairs(self.daemon_env()))?;
        Ok(Running::spawn(metrics, |m, s| async move {
            Ok(relay::run(config, m, s).await?)
        }))
    }

    /// Starts the sink library in-process, exactly as `sink run` does.
    pub fn spawn_sink(&self, metrics: &Metrics) -> anyhow::Result<Running> {
        let config = sink::SinkConfig::from_env(&Env::from_pairs(self.daemon_env()))?;
        Ok(Running::spawn(metrics, |m, s| async move {
            Ok(sink::run(config, m, s).await?)
        }))
    }

    /// Starts the stage library in-process, exactly as `stage run` does.
    pub fn spawn_stage(&self, metrics: &Metrics) -> anyhow::Result<Running> {
        let config = stage::StageConfig::from_env(&Env::from_pairs(self.daemon_env()))?;
        Ok(Running::spawn(metrics, |m, s| async move {
            Ok(stage::run(config, m, s).await?)
        }))
    }

    pub async fn pg(&self) -> anyhow::Result<Client> {
        let (client, conn) = tokio_postgres::connect(&self.database_url, NoTls).await?;
        tokio::spawn(conn);
        Ok(client)
    }

    pub fn ch(&self) -> clickhouse::Client {
        sink::clickhouse::client::client(
            &sink::clickhouse::ClickHouseConfig {
                url: self.clickhouse_url.clone(),
                user: self.clickhouse_user.clone(),
                password: self.clickhouse_password.clone(),
                database: self.name.clone(),
                ca_file: None,
                cluster: None,
            },
            Some(&self.name),
        )
    }

    /// Rows of `table` that queries see: deduplicated with FINAL.
    pub async fn ch_count_final(&self, table: &str) -> anyhow::Result<u64> {
        Ok(self
            .ch()
            .query(&format!("SELECT count() FROM `{table}` FINAL"))
            .fetch_one()
            .await?)
    }

    /// Rows stored now, duplicates included until a merge folds them
    /// (see [`Self::ch_count_arrived`] for every row accepted).
    pub async fn ch_count_raw(&self, table: &str) -> anyhow::Result<u64> {
        Ok(self
            .ch()
            .query(&format!("SELECT count() FROM `{table}`"))
            .fetch_one()
            .await?)
    }

    /// Rows ClickHouse accepted into `table` so far, every insert counted
    /// (its `<table>_arrivals` view, `faults::record_arrivals_into`): a
    /// count no merge lowers.
    pub async fn ch_count_arrived(&self, table: &str) -> anyhow::Result<u64> {
        Ok(self
            .ch()
            .query(&format!("SELECT count() FROM `{table}_arrivals`"))
            .fetch_one()
            .await?)
    }

    pub async fn pending(&self, table: &str) -> anyhow::Result<i64> {
        let pg = self.pg().await?;
        Ok(pg
            .query_one(
                &format!("SELECT count(*) FROM \"{table}\" WHERE sent_to_kafka IS NOT TRUE"),
                &[],
            )
            .await?
            .get(0))
    }
}

/// FLOWS_FILE and MIGRATIONS_DIR of the demo's flows in this checkout.
pub fn demo_files() -> (String, String) {
    (
        outbox_demo::flows_file().display().to_string(),
        outbox_demo::migrations_dir().display().to_string(),
    )
}

/// A daemon running in-process.
pub struct Running {
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Runs `daemon(metrics, shutdown)` as a task.
    fn spawn<F, Fut>(metrics: &Metrics, daemon: F) -> Self
    where
        F: FnOnce(Metrics, CancellationToken) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(daemon(metrics.clone(), shutdown.clone()));
        Self { shutdown, task }
    }

    /// Cancels it like SIGTERM and waits for a clean stop.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .context("daemon did not stop within 15 s")??
    }
}
