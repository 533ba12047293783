//! The benchmark's own databases, Kafka cluster and daemon processes.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use devstack::MockKafka;
use tokio_postgres::{Client, NoTls};

pub struct Bench {
    pub name: String,
    pub database_url: String,
    pub clickhouse_url: String,
    pub mock: MockKafka,
    pub partitions: i32,
}

impl Bench {
    /// A fresh Postgres database and ClickHouse database named `name`,
    /// migrated, and a mock Kafka cluster whose topics get `partitions`
    /// partitions (the mock keeps only ~5 MiB per partition).
    pub async fn start(
        name: &str,
        admin_url: &str,
        clickhouse_url: &str,
        partitions: i32,
    ) -> anyhow::Result<Self> {
        let (admin, conn) = tokio_postgres::connect(admin_url, NoTls)
            .await
            .context("connecting to Postgres")?;
        tokio::spawn(conn);
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\""))
            .await?;
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await?;
        let database_url = match admin_url.rfind('/') {
            Some(i) if i > admin_url.find("//").map_or(0, |j| j + 1) => {
                format!("{}/{name}", &admin_url[..i])
            }
            _ => format!("{admin_url}/{name}"),
        };
        let mock = MockKafka::start(3)?;
        for topic in ["user_events"] {
            mock.create_topic(topic, partitions)?;
        }
        let bench = Self {
            name: name.into(),
            database_url,
            clickhouse_url: clickhouse_url.into(),
            mock,
            partitions,
        };
        let (mut pg, conn) = tokio_postgres::connect(&bench.database_url, NoTls).await?;
        tokio::spawn(conn);
        relay::migrate::migrate(&mut pg, &flows::migrations::postgres()).await?;
        let cfg = bench.clickhouse_config();
        let root = sink::clickhouse::client::client(&cfg, None);
        root.query(&format!("DROP DATABASE IF EXISTS `{name}`"))
            .execute()
            .await?;
        sink::migrate_with_retry(
            &cfg,
            &flows::migrations::clickhouse(),
            &tokio_util::sync::CancellationToken::new(),
        )
        .await?;
        Ok(bench)
    }

    pub fn clickhouse_config(&self) -> sink::clickhouse::ClickHouseConfig {
        sink::clickhouse::ClickHouseConfig {
            url: self.clickhouse_url.clone(),
            user: "default".into(),
            password: None,
            database: self.name.clone(),
        }
    }

    pub fn ch(&self) -> clickhouse::Client {
        let cfg = self.clickhouse_config();
        sink::clickhouse::client::client(&cfg, Some(&cfg.database))
    }

    pub async fn pg(&self) -> anyhow::Result<Client> {
        let (client, conn) = tokio_postgres::connect(&self.database_url, NoTls).await?;
        tokio::spawn(conn);
        Ok(client)
    }

    /// The daemons' environment: this benchmark's databases and cluster.
    pub fn env(&self, group_prefix: &str) -> Vec<(String, String)> {
        [
            ("DATABASE_URL", self.database_url.as_str()),
            ("KAFKA_BROKERS", self.mock.bootstrap_servers()),
            ("CLICKHOUSE_URL", &self.clickhouse_url),
            ("CLICKHOUSE_DATABASE", &self.name),
            ("FLOWS", "user_logins"),
            ("KAFKA_GROUP_PREFIX", group_prefix),
            ("RELAY_METRICS_ADDR", "off"),
            ("SINK_METRICS_ADDR", "off"),
            ("RUST_LOG", "warn"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }
}

/// A daemon binary next to this one (`target/release/relay` …).
pub struct Daemon {
    child: Child,
}

impl Daemon {
    pub fn spawn(name: &str, env: &[(String, String)]) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let path: PathBuf = exe.with_file_name(name);
        anyhow::ensure!(
            path.exists(),
            "{} not built (cargo build --release --bins)",
            path.display()
        );
        let child = Command::new(path)
            .arg("run")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()?;
        Ok(Self { child })
    }

    /// Peak resident memory so far, MiB (VmHWM).
    pub fn peak_rss_mib(&self) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                let line = s.lines().find(|l| l.starts_with("VmHWM:"))?.to_owned();
                line.split_whitespace().nth(1)?.parse::<f64>().ok()
            })
            .map_or(0.0, |kib| kib / 1024.0)
    }

    /// SIGTERM and wait (kill after 15 s).
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` every `every` until it is true; returns the elapsed time.
pub async fn time_until<F, Fut>(
    timeout: Duration,
    every: Duration,
    mut check: F,
) -> anyhow::Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let start = Instant::now();
    loop {
        if check().await? {
            return Ok(start.elapsed());
        }
        anyhow::ensure!(start.elapsed() < timeout, "timed out after {timeout:?}");
        tokio::time::sleep(every).await;
    }
}
