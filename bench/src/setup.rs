//! The benchmark's own databases, Kafka cluster and daemon processes.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::Cluster;
use anyhow::Context;
use tokio_postgres::{Client, NoTls};

pub struct Bench {
    pub name: String,
    pub database_url: String,
    pub clickhouse_url: String,
    pub kafka: Cluster,
    /// This run's topic and group prefix (topics outlive a run on a broker).
    pub prefix: String,
    pub partitions: i32,
    /// Rows of the backlog (ids 1..=backlog).
    pub backlog: u64,
}

impl Bench {
    /// A fresh Postgres database and ClickHouse database named `name`,
    /// migrated, and this run's topics with `partitions` partitions on
    /// `kafka`.
    pub async fn start(
        name: &str,
        admin_url: &str,
        clickhouse_url: &str,
        kafka: Cluster,
        partitions: i32,
        backlog: u64,
    ) -> anyhow::Result<Self> {
        let (admin, conn) = tokio_postgres::connect(admin_url, NoTls)
            .await
            .context("connecting to Postgres")?;
        tokio::spawn(conn);
        // A Debezium run that died may have left its slot, which would keep
        // the database from being dropped (and WAL from being recycled).
        crate::debezium::drop_slots(&admin, name).await?;
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\""))
            .await?;
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await?;
        let database_url = connections::pg::with_database(admin_url, name);
        let prefix = format!("bench{}.", std::process::id());
        kafka
            .create_topic(&format!("{prefix}user_events"), partitions)
            .await?;
        let bench = Self {
            name: name.into(),
            database_url,
            clickhouse_url: clickhouse_url.into(),
            kafka,
            prefix,
            partitions,
            backlog,
        };
        let (mut pg, conn) = tokio_postgres::connect(&bench.database_url, NoTls).await?;
        tokio::spawn(conn);
        // The demo's flows: the benchmark drives `user_logins`.
        let demo = [outbox_demo::migrations_dir()];
        relay::migrate::migrate(&mut pg, &flows::migrations::all("postgres", &demo)?).await?;
        let cfg = bench.clickhouse_config();
        let root = sink::clickhouse::client::client(&cfg, None);
        root.query(&format!("DROP DATABASE IF EXISTS `{name}`"))
            .execute()
            .await?;
        sink::migrate_with_retry(
            &cfg,
            &flows::migrations::all("clickhouse", &demo)?,
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
            ca_file: None,
            cluster: None,
        }
    }

    /// A new throw-away ClickHouse for a Kafka-engine measurement (the
    /// command `BENCH_PEER_CLICKHOUSE_RESTART`, scripts/peer-clickhouse.sh,
    /// starts it and prints its URL), its database `engine_peer` created.
    pub async fn peer_ch(&self) -> anyhow::Result<clickhouse::Client> {
        let restart = std::env::var("BENCH_PEER_CLICKHOUSE_RESTART").context(
            "BENCH_PEER_CLICKHOUSE_RESTART: the Kafka-engine peer runs in its own ClickHouse (scripts/bench.sh sets it)",
        )?;
        let out = tokio::process::Command::new(&restart).output().await?;
        anyhow::ensure!(
            out.status.success(),
            "{restart}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let cfg = sink::clickhouse::ClickHouseConfig {
            url,
            user: "default".into(),
            password: None,
            database: "engine_peer".into(),
            ca_file: None,
            cluster: None,
        };
        sink::clickhouse::client::client(&cfg, None)
            .query("CREATE DATABASE IF NOT EXISTS engine_peer")
            .execute()
            .await?;
        Ok(sink::clickhouse::client::client(&cfg, Some("engine_peer")))
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

    /// The backlog's source ids.
    pub fn backlog_ids(&self) -> std::ops::RangeInclusive<u64> {
        1..=self.backlog
    }

    /// `topic` under this run's prefix.
    pub fn topic(&self, topic: &str) -> String {
        format!("{}{topic}", self.prefix)
    }

    /// The daemons' environment: this benchmark's databases, cluster and
    /// topics; groups under this run's prefix and `group_prefix`.
    pub fn env(&self, group_prefix: &str) -> Vec<(String, String)> {
        let groups = format!("{}{group_prefix}", self.prefix);
        [
            ("DATABASE_URL", self.database_url.as_str()),
            ("KAFKA_BROKERS", self.kafka.bootstrap_servers()),
            ("KAFKA_TOPIC_PREFIX", &self.prefix),
            ("CLICKHOUSE_URL", &self.clickhouse_url),
            ("CLICKHOUSE_DATABASE", &self.name),
            (
                "FLOWS_FILE",
                &outbox_demo::flows_file().display().to_string(),
            ),
            ("FLOWS", "user_logins"),
            ("KAFKA_GROUP_PREFIX", &groups),
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
        // Tuning experiments: the benchmark's own RELAY_*/SINK_* settings
        // reach the daemons (its defaults otherwise).
        let tuning = std::env::vars().filter(|(k, _)| {
            (k.starts_with("RELAY_") || k.starts_with("SINK_")) && !k.ends_with("_METRICS_ADDR")
        });
        let child = Command::new(path)
            .arg("run")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(tuning)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()?;
        Ok(Self { child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory so far, MiB (VmHWM).
    pub fn peak_rss_mib(&self) -> f64 {
        peak_rss_mib(self.child.id())
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

/// A measurement that fails part-way leaves no daemon behind.
impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Peak resident memory of process `pid` so far, MiB (VmHWM).
pub fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?.to_owned();
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(0.0, |kib| kib / 1024.0)
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

/// A free local port for a daemon's metrics endpoint.
pub fn free_addr() -> anyhow::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.to_string())
}

/// Sum and count of every series of histogram `name` whose labels contain
/// `label="…"`, keyed by that label's value.
pub fn histogram_means(text: &str, name: &str, label: &str) -> Vec<(String, f64, f64)> {
    let value_of = |line: &str| -> Option<(String, f64)> {
        let (series, value) = line.rsplit_once(' ')?;
        let start = series.find(&format!("{label}=\""))? + label.len() + 2;
        let end = start + series[start..].find('"')?;
        Some((series[start..end].to_owned(), value.parse().ok()?))
    };
    let mut out: Vec<(String, f64, f64)> = Vec::new();
    for line in text.lines() {
        let (is_sum, rest) = if let Some(r) = line.strip_prefix(&format!("{name}_sum")) {
            (true, r)
        } else if let Some(r) = line.strip_prefix(&format!("{name}_count")) {
            (false, r)
        } else {
            continue;
        };
        let Some((key, value)) = value_of(rest) else {
            continue;
        };
        let i = match out.iter().position(|(k, _, _)| *k == key) {
            Some(i) => i,
            None => {
                out.push((key, 0.0, 0.0));
                out.len() - 1
            }
        };
        if is_sum {
            out[i].1 += value;
        } else {
            out[i].2 += value;
        }
    }
    out
}

/// CPU time (user + system) a process has used so far, seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let ticks = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name, which is in parentheses.
            let rest = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
            Some(rest.get(11)?.parse::<f64>().ok()? + rest.get(12)?.parse::<f64>().ok()?)
        })
        .unwrap_or(0.0);
    ticks / 100.0
}

/// The benchmark's database by default.
pub const DATABASE: &str = "outbox_bench";

/// The benchmark's own database (its sessions are the Postgres CPU a run
/// counts, see [`CpuMeter`]): [`DATABASE`], or BENCH_DATABASE_NAME
/// for a run beside another one on the same Postgres and ClickHouse.
pub fn database() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| std::env::var("BENCH_DATABASE_NAME").unwrap_or_else(|_| DATABASE.into()))
}

/// CPU time of every live process whose command name is `comm`, seconds,
/// by process id. For `postgres`, only the processes working for the
/// benchmark: the sessions of [`database`] (and their parallel workers) and
/// the server's own (WAL writer, checkpointer, …) — not another database's
/// sessions (a test run beside the benchmark would otherwise count as its
/// cost).
fn cpu_seconds_by_pid(comm: &str) -> std::collections::HashMap<u32, f64> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Default::default();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == comm)
        })
        .filter(|pid| comm != "postgres" || works_for_bench(*pid))
        .map(|pid| (pid, cpu_seconds(pid)))
        .collect()
}

/// Whether `name` is a database of the benchmark: [`database`], or one of
/// its own runs beside it (`outbox_bench_cluster`, the three brokers' rows).
fn bench_database(name: &str) -> bool {
    name == database()
        || name
            .strip_prefix(DATABASE)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('_'))
}

/// Whether Postgres process `pid` works for a benchmark database
/// ([`bench_database`]), by its title
/// (`postgres: 15/main: <user> <database> <host> <state>`, `…: autovacuum
/// worker <database>`, `…: parallel worker for PID <n>`, `…: checkpointer`).
fn works_for_bench(pid: u32) -> bool {
    let Ok(cmdline) = std::fs::read_to_string(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let title = cmdline.trim_end_matches('\0').replace('\0', " ");
    // After "postgres: <cluster>: ", or the postmaster's own command line.
    let Some(what) = title.splitn(3, ": ").nth(2) else {
        return true;
    };
    let words: Vec<&str> = what.split_whitespace().collect();
    if let Some(leader) = what.strip_prefix("parallel worker for PID ") {
        return leader.trim().parse().is_ok_and(works_for_bench);
    }
    // A WAL sender's title names its user, not its database: whose it is
    // cannot be told here (the Debezium measurement counts its own by its
    // slot's `active_pid`).
    if what.starts_with("walsender ") {
        return false;
    }
    if what.starts_with("autovacuum worker") {
        return words.iter().any(|w| bench_database(w));
    }
    let is_session = words
        .get(2)
        .is_some_and(|host| host.contains('(') || *host == "[local]");
    !is_session || words.get(1).is_some_and(|db| bench_database(db))
}

/// CPU seconds used by the parties of a run: its daemons, a server
/// (postgres or clickhouse-server's processes) and Kafka (the broker's JVM,
/// or this process where it hosts the mock cluster).
pub struct CpuMeter {
    daemons: Vec<u32>,
    server: &'static str,
    kafka: Vec<u32>,
    start: [f64; 2],
    /// The server's processes at the start, by id: one that ends during the
    /// run (a session closing) must not take its earlier CPU off the total.
    server_start: std::collections::HashMap<u32, f64>,
}

impl CpuMeter {
    pub fn start(daemon: u32, server: &'static str, kafka: Vec<u32>) -> Self {
        Self::start_all(vec![daemon], server, kafka)
    }

    /// [`Self::start`] for several daemons (their CPU summed).
    pub fn start_all(daemons: Vec<u32>, server: &'static str, kafka: Vec<u32>) -> Self {
        Self {
            server,
            start: [cpu_seconds_all(&daemons), cpu_seconds_all(&kafka)],
            server_start: cpu_seconds_by_pid(server),
            daemons,
            kafka,
        }
    }

    /// [daemons, server, Kafka] seconds since `start`. The server's: what
    /// its processes alive now used since the start (all of it for one
    /// started since).
    pub fn used(&self) -> [f64; 3] {
        let server = cpu_seconds_by_pid(self.server)
            .into_iter()
            .map(|(pid, now)| now - self.server_start.get(&pid).copied().unwrap_or(0.0))
            .sum();
        [
            cpu_seconds_all(&self.daemons) - self.start[0],
            server,
            cpu_seconds_all(&self.kafka) - self.start[1],
        ]
    }
}

/// CPU time of these processes, seconds.
pub fn cpu_seconds_all(pids: &[u32]) -> f64 {
    pids.iter().map(|pid| cpu_seconds(*pid)).sum()
}

#[cfg(test)]
mod tests {
    use super::bench_database;

    #[test]
    fn the_three_brokers_database_is_the_benchmarks_too() {
        assert!(bench_database("outbox_bench"));
        assert!(bench_database("outbox_bench_cluster"));
        assert!(!bench_database("outbox_benchmark"));
        assert!(!bench_database("t_fresh_hist_1"));
    }
}
