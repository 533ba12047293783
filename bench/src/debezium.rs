//! Debezium, the change-data-capture peer: Kafka Connect standalone running
//! Debezium's PostgreSQL connector on the benchmark's Postgres, table
//! (`user_logins`) and broker, beside the relay's same figures.
//!
//! - **Backlog.** The connector streams first (its replication slot made,
//!   nothing snapshotted), then `n` rows are inserted in one transaction, as
//!   the relay's backlog is; the rate runs from that commit until the
//!   topic's high watermarks hold all `n` (process start not included: the
//!   JVM and the slot are up before). CPU is Connect's JVM + Postgres (its
//!   WAL sender decoding, less the inserting backend) + the broker, as the
//!   relay's `cpu_figures`.
//! - **Commit → in Kafka** at a steady rate, for Debezium and the relay
//!   alike: from the inserting transaction's commit until its last row is
//!   readable by a `read_committed` consumer on the topic.
//!
//! What runs: Debezium's Outbox Event Router on `user_logins` (see
//! [`connector_properties`]), JSON without schemas, keyed by `username` as
//! the relay keys its messages. Debezium's rows are inserted already
//! flagged sent, so no relay run later in the benchmark publishes them.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio_postgres::Client;

use crate::scenarios::{Figure, cpu_figures, figure, kafka_name};
use crate::setup::{Bench, CpuMeter, Daemon, cpu_seconds, free_addr, peak_rss_mib};

/// The rows' names in the results table.
const DEBEZIUM: &str = "peer, Debezium PostgreSQL connector (Kafka Connect standalone)";
/// The commit → in Kafka runs' rate, rows/s.
const LATENCY_RATE: u64 = 1_000;

/// Debezium's figures (backlog, CPU, RSS, commit → in Kafka), then the
/// relay's commit → in Kafka; the rows they inserted deleted afterwards. A
/// part that cannot run gives its row with the error; only a replication
/// slot or publication left behind (or the clean-up failing) is an error.
pub async fn peers(bench: &Bench, rows: u64, latency_secs: u64) -> anyhow::Result<Vec<Figure>> {
    let pg = bench.pg().await?;
    let floor: i64 = pg
        .query_one("SELECT coalesce(max(id), 0)::int8 FROM user_logins", &[])
        .await?
        .get(0);
    let backlog_measure = format!("{DEBEZIUM}: backlog streamed into Kafka");
    let latency_measure = format!("{DEBEZIUM}: {}", latency_label("p50"));
    let mut figures = match Connect::start(bench).await {
        Err(e) => vec![
            not_measured(&backlog_measure, "rows/s", &e),
            not_measured(&latency_measure, "ms", &e),
        ],
        Ok(connect) => {
            let mut figures = backlog(bench, &connect, rows, &backlog_measure)
                .await
                .unwrap_or_else(|e| vec![not_measured(&backlog_measure, "rows/s", &e)]);
            let latency = commit_to_kafka(bench, &connect.topic, latency_secs, false).await;
            // Debezium's own defaults, which the relay's figures are beside: a
            // batch short of max.batch.size waits up to poll.interval.ms.
            let setup = format!(
                "{}; the connector's defaults (poll.interval.ms 500, max.batch.size 2048)",
                connect.versions
            );
            figures.extend(latency_figures(DEBEZIUM, latency, &setup));
            connect.stop(bench).await?;
            figures
        }
    };
    let relay = relay_latency(bench, latency_secs).await;
    figures.extend(latency_figures("relay", relay, ""));
    // The rows inserted here go again: the measurements after this one (the
    // growth run's history) find the table as they did before it.
    pg.execute("DELETE FROM user_logins WHERE id > $1::int8", &[&floor])
        .await?;
    pg.batch_execute("VACUUM ANALYZE user_logins").await?;
    Ok(figures)
}

fn latency_label(percentile: &str) -> String {
    format!("latency, commit → in Kafka, {percentile} at {LATENCY_RATE} rows/s")
}

fn not_measured(measure: &str, unit: &'static str, e: &anyhow::Error) -> Figure {
    figure(measure, f64::NAN, unit, format!("not measured: {e:#}"))
}

/// What `scripts/peer-debezium.sh fetch` reports.
struct Install {
    script: PathBuf,
    debezium: String,
    kafka: String,
    plugin_path: String,
}

impl Install {
    /// Fetches Kafka Connect and the connector where missing (Maven, once).
    async fn fetch() -> anyhow::Result<Self> {
        let script: PathBuf = std::env::var("BENCH_PEER_DEBEZIUM")
            .context("BENCH_PEER_DEBEZIUM: Debezium runs in Kafka Connect started by scripts/peer-debezium.sh (scripts/bench.sh sets it)")?
            .into();
        let out = tokio::process::Command::new(&script)
            .arg("fetch")
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| format!("running {}", script.display()))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        anyhow::ensure!(
            out.status.success(),
            "{} fetch: {}",
            script.display(),
            stderr
                .lines()
                .rfind(|l| !l.trim().is_empty())
                .unwrap_or("failed")
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let value = |key: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_owned)
                .with_context(|| format!("{} fetch printed no {key}", script.display()))
        };
        Ok(Self {
            debezium: value("DEBEZIUM_VERSION")?,
            kafka: value("KAFKA_VERSION")?,
            plugin_path: value("PLUGIN_PATH")?,
            script,
        })
    }
}

/// Kafka Connect standalone running the connector; its slot streaming.
struct Connect {
    child: Child,
    topic: String,
    slot: String,
    publication: String,
    log: PathBuf,
    /// "Debezium 3.6.1.Final, Kafka Connect 4.1.1", for the notes.
    versions: String,
}

impl Connect {
    /// Writes the configuration under target/bench/debezium, starts the JVM
    /// and waits until its replication slot is streaming.
    async fn start(bench: &Bench) -> anyhow::Result<Self> {
        let install = Install::fetch().await?;
        let dir = std::env::current_dir()?.join("target/bench/debezium");
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        let slot =
            format!("{}_debezium", bench.name).replace(|c: char| !c.is_ascii_alphanumeric(), "_");
        let topic_prefix = bench.topic("debezium");
        let topic = bench.topic("debezium.user_events");
        bench.kafka.create_topic(&topic, bench.partitions).await?;
        write_private(
            &dir.join("worker.properties"),
            &worker_properties(bench, &install, &dir)?,
        )?;
        let connector = connector_properties(bench, &topic_prefix, &topic, &slot)?;
        write_private(&dir.join("connector.properties"), &connector)?;
        let log = dir.join("connect.log");
        let out = std::fs::File::create(&log)?;
        let child = Command::new(&install.script)
            .arg("run")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", install.script.display()))?;
        let mut connect = Self {
            child,
            topic,
            publication: slot.clone(),
            slot,
            log,
            versions: format!(
                "Debezium {}, Kafka Connect {}",
                install.debezium, install.kafka
            ),
        };
        if let Err(e) = connect
            .wait_streaming(bench, Duration::from_secs(180))
            .await
        {
            return Err(match connect.stop(bench).await {
                Ok(()) => e,
                Err(cleanup) => e.context(format!("cleaning up after it: {cleanup:#}")),
            });
        }
        Ok(connect)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Until the connector's WAL sender is streaming. Not merely its slot
    /// active: the slot is active from its creation, and the connector
    /// skips what was committed before the WAL position it reads after that
    /// (its `snapshot.mode=no_data` offset), so a row inserted in between
    /// never reaches Kafka. The WAL sender is `streaming` only once the
    /// connector has started replication from that position and caught up.
    async fn wait_streaming(&mut self, bench: &Bench, timeout: Duration) -> anyhow::Result<()> {
        let pg = bench.pg().await?;
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!(
                    "Kafka Connect exited ({status}) before streaming: {}",
                    self.errors()
                );
            }
            let streaming = pg
                .query_opt(
                    "SELECT r.state = 'streaming' FROM pg_replication_slots s \
                     JOIN pg_stat_replication r ON r.pid = s.active_pid WHERE s.slot_name = $1",
                    &[&self.slot],
                )
                .await?
                .is_some_and(|row| row.get::<_, Option<bool>>(0) == Some(true));
            if streaming {
                eprintln!(
                    "  Kafka Connect streaming after {:.1} s",
                    start.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            anyhow::ensure!(
                start.elapsed() < timeout,
                "Kafka Connect not streaming after {} s: {}",
                timeout.as_secs(),
                self.errors()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The log's last errors, for a row that says why.
    fn errors(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        format!("{} (log: {})", last_errors(&text), self.log.display())
    }

    /// SIGTERM (the connector drops its slot on a clean stop), then the slot
    /// and publication dropped whatever happened.
    async fn stop(mut self, bench: &Bench) -> anyhow::Result<()> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait()?.is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let pg = bench.pg().await?;
        drop_slots(&pg, &bench.name).await?;
        pg.batch_execute(&format!(
            "DROP PUBLICATION IF EXISTS \"{}\"",
            self.publication
        ))
        .await
        .context("dropping Debezium's publication")?;
        Ok(())
    }
}

/// A measurement that fails part-way leaves no JVM behind (its slot goes
/// at the next [`drop_slots`]).
impl Drop for Connect {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The last two error lines of a Kafka Connect log (an ERROR record or a
/// `Caused by`), at most 600 characters. Not the plugin scanner's: it logs
/// an ERROR at every start for a Debezium converter that does not load on
/// Kafka 4.1's JsonConverter, which the benchmark does not use.
fn last_errors(log: &str) -> String {
    let mut scanner = false;
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| {
            if l.starts_with('[') {
                scanner = l.contains("isolation.PluginScanner");
            }
            !scanner
                && (l.contains(" ERROR ") || l.starts_with("Caused by") || l.starts_with("Error"))
        })
        .collect();
    let last = errors[errors.len().saturating_sub(2)..].join(" / ");
    if last.is_empty() {
        return "no error logged".into();
    }
    last.chars().take(600).collect()
}

/// Drops the replication slots of `database` (a slot keeps WAL forever and
/// keeps the database from being dropped), ending the WAL senders holding
/// them first. The benchmark calls it before it recreates its database, so
/// a run that died leaves nothing behind for long.
pub async fn drop_slots(pg: &Client, database: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let slots = pg
            .query(
                "SELECT slot_name::text, active_pid FROM pg_replication_slots WHERE database = $1::text::name",
                &[&database],
            )
            .await?;
        if slots.is_empty() {
            return Ok(());
        }
        let mut last = None;
        for slot in &slots {
            let (name, holder): (String, Option<i32>) = (slot.get(0), slot.get(1));
            let done = match holder {
                Some(pid) => pg.execute("SELECT pg_terminate_backend($1)", &[&pid]).await,
                None => {
                    pg.execute("SELECT pg_drop_replication_slot($1)", &[&name])
                        .await
                }
            };
            // A sender that is just letting go: tried again below.
            if let Err(e) = done {
                last = Some(format!("{name}: {e}"));
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "replication slots of {database} not dropped after 30 s ({})",
            last.unwrap_or_else(|| "still held".into())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Written readable by the owner only: the connector's may hold the
/// database password.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// A Java properties value: backslashes and line breaks escaped.
fn property(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            _ => out.push(c),
        }
    }
    out
}

/// The worker: the broker, keys as plain strings (the relay's `username`
/// key bytes), values as JSON without schemas, the plugin, and a producer
/// as close to the relay's as Connect has (the relay's own settings as the
/// benchmark runs it); not transactional: Connect's exactly-once source
/// support needs distributed mode.
fn worker_properties(bench: &Bench, install: &Install, dir: &Path) -> anyhow::Result<String> {
    let env = flows::Env::from_pairs(bench.env(""));
    let acks = flows::settings::KAFKA_ACKS.get(&env)?;
    let linger = flows::settings::KAFKA_LINGER_MS.get(&env)?;
    let batch = flows::settings::KAFKA_BATCH_SIZE.get(&env)?;
    Ok(format!(
        "bootstrap.servers={brokers}
key.converter=org.apache.kafka.connect.storage.StringConverter
value.converter=org.apache.kafka.connect.json.JsonConverter
value.converter.schemas.enable=false
offset.storage.file.filename={offsets}
plugin.path={plugins}
plugin.discovery=service_load
listeners=http://{listen}
producer.acks={acks}
producer.enable.idempotence=true
producer.max.in.flight.requests.per.connection=5
producer.linger.ms={linger}
producer.batch.size={batch}
",
        brokers = property(bench.kafka.bootstrap_servers()),
        offsets = property(&dir.join("offsets").display().to_string()),
        plugins = property(&install.plugin_path),
        listen = free_addr()?,
        linger = linger.as_millis(),
    ))
}

/// The connector: `user_logins` only, streaming from its new slot without a
/// snapshot, each row through the Outbox Event Router into `topic`, keyed
/// by `username` as the relay keys it. The router takes a message's value
/// from one payload column and sets other columns beside it: `event_type`
/// is the payload, `id`, `username` and `event_time` go into the envelope
/// (the value is `{"payload": event_type, "id", "username", "event_time"}`,
/// the relay's four columns), `id` into the `id` header too. Every row goes
/// to the one topic (the route replacement names no group of the regex).
fn connector_properties(
    bench: &Bench,
    topic_prefix: &str,
    topic: &str,
    slot: &str,
) -> anyhow::Result<String> {
    let cfg: tokio_postgres::Config = bench.database_url.parse()?;
    let host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        _ => anyhow::bail!("Debezium needs a TCP host in the benchmark's database URL"),
    };
    let password = match cfg.get_password() {
        Some(p) => format!("database.password={}\n", property(std::str::from_utf8(p)?)),
        None => String::new(),
    };
    anyhow::ensure!(
        !topic.contains('$'),
        "topic {topic}: a `$` would be read as a group reference"
    );
    Ok(format!(
        "name={slot}
connector.class=io.debezium.connector.postgresql.PostgresConnector
tasks.max=1
database.hostname={host}
database.port={port}
database.user={user}
{password}database.dbname={db}
topic.prefix={topic_prefix}
plugin.name=pgoutput
slot.name={slot}
slot.drop.on.stop=true
publication.name={slot}
publication.autocreate.mode=filtered
table.include.list=public.user_logins
snapshot.mode=no_data
transforms=outbox
transforms.outbox.type=io.debezium.transforms.outbox.EventRouter
transforms.outbox.table.field.event.id=id
transforms.outbox.table.field.event.key=username
transforms.outbox.table.field.event.payload=event_type
transforms.outbox.table.fields.additional.placement=id:envelope:id,username:envelope:username,event_time:envelope:event_time
transforms.outbox.route.by.field=event_type
transforms.outbox.route.topic.replacement={topic}
",
        host = property(&host),
        port = cfg.get_ports().first().copied().unwrap_or(5432),
        user = property(cfg.get_user().unwrap_or("postgres")),
        db = property(cfg.get_dbname().unwrap_or(&bench.name)),
        topic = property(topic),
    ))
}

/// A topic's partitions, read to their high watermarks.
struct Watermarks {
    consumer: BaseConsumer,
    topic: String,
    partitions: i32,
}

impl Watermarks {
    fn new(bench: &Bench, topic: &str) -> anyhow::Result<Self> {
        Ok(Self {
            consumer: ClientConfig::new()
                .set("bootstrap.servers", bench.kafka.bootstrap_servers())
                .create()?,
            topic: topic.to_owned(),
            partitions: bench.partitions,
        })
    }

    /// Each partition's high watermark. Blocking.
    fn high(&self) -> anyhow::Result<Vec<i64>> {
        (0..self.partitions)
            .map(|p| {
                let (_, high) =
                    self.consumer
                        .fetch_watermarks(&self.topic, p, Duration::from_secs(10))?;
                Ok(high)
            })
            .collect()
    }

    /// Messages the topic has received (sum of high watermarks). Blocking.
    fn messages(&self) -> anyhow::Result<i64> {
        Ok(self.high()?.iter().sum())
    }

    /// Waits until the topic has received `at_least` messages, every 50 ms
    /// (ListOffsets requests: little for the measured broker to answer).
    async fn wait_for(self: &Arc<Self>, at_least: i64, timeout: Duration) -> anyhow::Result<()> {
        let me = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let start = Instant::now();
            loop {
                let held = me.messages()?;
                if held >= at_least {
                    return Ok(());
                }
                anyhow::ensure!(
                    start.elapsed() < timeout,
                    "{} holds {held} of {at_least} messages after {} s",
                    me.topic,
                    timeout.as_secs()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        })
        .await?
    }
}

/// Inserts one row (flagged sent or pending) and waits until the topic has
/// it: producer connections and metadata are not measured. Returns how long.
async fn warm_up(
    bench: &Bench,
    topic: &Arc<Watermarks>,
    pending: bool,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let before = topic.messages()?;
    bench
        .pg()
        .await?
        .execute(
            "INSERT INTO user_logins (username, event_type, event_time, sent_to_kafka) VALUES ('warm-up', 'login', now(), $1)",
            &[&!pending],
        )
        .await?;
    topic.wait_for(before + 1, Duration::from_secs(120)).await?;
    Ok(start.elapsed())
}

/// The backlog: `n` rows inserted in one transaction while the connector
/// streams; rate from the commit until the topic holds them all.
async fn backlog(
    bench: &Bench,
    connect: &Connect,
    n: u64,
    measure: &str,
) -> anyhow::Result<Vec<Figure>> {
    let topic = Arc::new(Watermarks::new(bench, &connect.topic)?);
    warm_up(bench, &topic, false).await?;
    let before = topic.messages()?;
    let pg = bench.pg().await?;
    let backend: i32 = pg.query_one("SELECT pg_backend_pid()", &[]).await?.get(0);
    // The WAL sender decoding for the connector: its title names no
    // database, so the meter's "postgres" leaves it out; counted here.
    let sender: Option<i32> = pg
        .query_one(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
            &[&connect.slot],
        )
        .await?
        .get(0);
    let sender = sender.context("the connector's replication slot has no WAL sender")? as u32;
    let cpu = CpuMeter::start(connect.pid(), "postgres", bench.kafka.pids());
    let decoding = cpu_seconds(sender);
    let inserting = cpu_seconds(backend as u32);
    let started = Instant::now();
    pg.execute(
        "INSERT INTO user_logins (username, event_type, event_time, sent_to_kafka)
         SELECT 'user' || (g % 1000), (ARRAY['login','registration','purchase'])[1 + g % 3], now() - make_interval(secs => g % 86400), TRUE
         FROM generate_series(1, $1::int) g",
        &[&(n as i32)],
    )
    .await?;
    let committed = Instant::now();
    let inserting = cpu_seconds(backend as u32) - inserting;
    // Slower than 1,000 rows/s (after two minutes) is reported as not done.
    let timeout = Duration::from_secs(120 + n / 1_000);
    topic.wait_for(before + n as i64, timeout).await?;
    let secs = committed.elapsed().as_secs_f64();
    let mut used = cpu.used();
    // The insert is the application's work, not the connector's.
    used[1] += cpu_seconds(sender) - decoding - inserting;
    let rss = peak_rss_mib(connect.pid());
    let held = topic.messages()? - before;
    let mut figures = vec![
        figure(
            measure,
            n as f64 / secs,
            "rows/s",
            format!(
                "{n} rows in {secs:.1} s from the insert's commit to the topic's high watermarks holding them ({held} messages; the insert took {:.1} s, the connector streaming before it); {}",
                (committed - started).as_secs_f64(),
                connect.versions
            ),
        ),
        figure(
            &format!("{measure}: Kafka Connect peak RSS"),
            rss,
            "MiB",
            "the JVM as connect-standalone.sh starts it (-Xms256M -Xmx2G), from its start",
        ),
    ];
    figures.extend(cpu_figures(
        measure,
        n,
        &used,
        ["Kafka Connect", "postgres", kafka_name(bench)],
    ));
    Ok(figures)
}

/// The relay's commit → in Kafka: its own topic, the rows inserted pending.
async fn relay_latency(bench: &Bench, secs: u64) -> anyhow::Result<Latencies> {
    let run = "kafka-latency.";
    let prefix = bench.topic(run);
    let mut env = bench.env(run);
    env.retain(|(k, _)| k != "KAFKA_TOPIC_PREFIX");
    env.push(("KAFKA_TOPIC_PREFIX".into(), prefix.clone()));
    let topic = format!("{prefix}user_events");
    bench.kafka.create_topic(&topic, bench.partitions).await?;
    // Only rows inserted from now on travel.
    bench
        .pg()
        .await?
        .execute(
            "UPDATE user_logins SET sent_to_kafka = TRUE WHERE NOT sent_to_kafka",
            &[],
        )
        .await?;
    let relay = Daemon::spawn("relay", &env)?;
    let latencies = commit_to_kafka(bench, &topic, secs, true).await;
    relay.stop();
    latencies
}

/// Each inserted transaction's row ids and the instant its commit returned.
type Commits = Arc<Mutex<Vec<(Vec<i64>, Instant)>>>;

/// One commit → in Kafka run.
struct Latencies {
    /// Per transaction, sorted.
    ms: Vec<f64>,
    transactions: usize,
    secs: u64,
    warm_up: Duration,
}

/// Rows at [`LATENCY_RATE`] for `secs` (`LATENCY_RATE / 100` rows every
/// 10 ms, each batch a transaction), pending or flagged sent; each
/// transaction's latency is from its commit until its last row was read
/// by a `read_committed` consumer assigned to `topic` from its high
/// watermarks.
async fn commit_to_kafka(
    bench: &Bench,
    topic: &str,
    secs: u64,
    pending: bool,
) -> anyhow::Result<Latencies> {
    let marks = Arc::new(Watermarks::new(bench, topic)?);
    let watch = Watch::start(bench, &marks)?;
    let warm_up = warm_up(bench, &marks, pending).await?;
    let commits: Commits = Arc::default();
    let inserter = tokio::spawn(insert_steadily(
        bench.database_url.clone(),
        secs,
        pending,
        Arc::clone(&commits),
    ));
    let seen = Arc::clone(&watch.seen);
    let all_read = || {
        let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
        let commits = commits.lock().map(|c| c.clone()).unwrap_or_default();
        (seen, commits)
    };
    let deadline = Instant::now() + Duration::from_secs(secs + 30);
    while !inserter.is_finished() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    inserter.await??;
    loop {
        let (seen, commits) = all_read();
        let done = commits
            .iter()
            .all(|(ids, _)| ids.iter().all(|id| seen.contains_key(id)));
        if done || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    watch.stop();
    let (seen, commits) = all_read();
    let mut ms: Vec<f64> = commits
        .iter()
        .filter_map(|(ids, committed)| {
            let last = ids
                .iter()
                .map(|id| seen.get(id))
                .collect::<Option<Vec<_>>>()?;
            let last = last.into_iter().max()?;
            Some(last.saturating_duration_since(*committed).as_secs_f64() * 1000.0)
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    Ok(Latencies {
        ms,
        transactions: commits.len(),
        secs,
        warm_up,
    })
}

/// The inserting side of [`commit_to_kafka`]: each batch's ids and the
/// instant its commit returned.
async fn insert_steadily(
    url: String,
    secs: u64,
    pending: bool,
    commits: Commits,
) -> anyhow::Result<()> {
    let (pg, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let per_tick = (LATENCY_RATE / 100) as i32;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        tick.tick().await;
        let row = pg
            .query_one(
                "WITH ins AS (INSERT INTO user_logins (username, event_type, event_time, sent_to_kafka)
                   SELECT 'lat' || (random() * 1000)::int, 'login', now(), $2 FROM generate_series(1, $1::int) RETURNING id)
                 SELECT array_agg(id::int8) FROM ins",
                &[&per_tick, &!pending],
            )
            .await?;
        let committed = Instant::now();
        if let Ok(mut c) = commits.lock() {
            c.push((row.get(0), committed));
        }
    }
    Ok(())
}

/// A `read_committed` consumer on its own thread, assigned to every
/// partition of a topic from its current high watermarks, noting when each
/// row id (the message's `id`) was read.
struct Watch {
    seen: Arc<Mutex<HashMap<i64, Instant>>>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Watch {
    fn start(bench: &Bench, marks: &Watermarks) -> anyhow::Result<Self> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bench.kafka.bootstrap_servers())
            .set("group.id", bench.topic("commit-to-kafka-watch"))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            // A fetch waits for data at most this long: the broker answers
            // at once when a message arrives; this bounds the rest.
            .set("fetch.wait.max.ms", "5")
            .create()?;
        let mut assignment = TopicPartitionList::new();
        for (p, high) in marks.high()?.into_iter().enumerate() {
            assignment.add_partition_offset(&marks.topic, p as i32, Offset::Offset(high))?;
        }
        consumer.assign(&assignment)?;
        let seen: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
            move || {
                while !stop.load(Ordering::Relaxed) {
                    let Some(Ok(message)) = consumer.poll(Duration::from_millis(50)) else {
                        continue;
                    };
                    let read = Instant::now();
                    let id = message
                        .payload()
                        .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
                        .and_then(|v| v.get("id")?.as_i64());
                    if let (Some(id), Ok(mut seen)) = (id, seen.lock()) {
                        seen.entry(id).or_insert(read);
                    }
                }
            }
        });
        Ok(Self { seen, stop, thread })
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

/// p50/p95/p99 rows of a commit → in Kafka run (`who`: "relay" or
/// [`DEBEZIUM`]), or the row saying why there are none.
fn latency_figures(who: &str, run: anyhow::Result<Latencies>, versions: &str) -> Vec<Figure> {
    let run = match run {
        Ok(run) if !run.ms.is_empty() => run,
        Ok(run) => {
            let e = anyhow::anyhow!(
                "none of {} transactions read back in {} s",
                run.transactions,
                run.secs + 30
            );
            return vec![not_measured(
                &format!("{who}: {}", latency_label("p50")),
                "ms",
                &e,
            )];
        }
        Err(e) => {
            return vec![not_measured(
                &format!("{who}: {}", latency_label("p50")),
                "ms",
                &e,
            )];
        }
    };
    let pct = |p: f64| run.ms[((run.ms.len() as f64 * p) as usize).min(run.ms.len() - 1)];
    let note = format!(
        "{} of {} transactions read ({} rows every 10 ms for {} s); a read_committed consumer assigned to the topic; warm-up {:.1} s{}{}",
        run.ms.len(),
        run.transactions,
        LATENCY_RATE / 100,
        run.secs,
        run.warm_up.as_secs_f64(),
        if versions.is_empty() { "" } else { "; " },
        versions
    );
    [
        ("p50", 0.50, note),
        ("p95", 0.95, String::new()),
        ("p99", 0.99, String::new()),
    ]
    .into_iter()
    .map(|(name, p, note)| {
        figure(
            &format!("{who}: {}", latency_label(name)),
            pct(p),
            "ms",
            note,
        )
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed start's row names the connector's error, not the plugin
    /// scanner's ERROR that every start on Kafka 4.1 logs first.
    #[test]
    fn last_errors_skips_the_plugin_scanner() {
        let log = "\
[2026-12-06 10:51:58,297] ERROR Failed to discover Converter in plugins (org.apache.kafka.connect.runtime.isolation.PluginScanner)
Caused by: java.lang.ExceptionInInitializerError
\tat org.apache.kafka.connect.runtime.isolation.PluginScanner.scan(PluginScanner.java:1)
[2026-12-06 10:52:10,458] INFO Starting streaming (io.debezium.pipeline.ChangeEventSourceCoordinator)
[2026-12-06 10:52:11,000] ERROR WorkerSourceTask{id=x-0} Task threw an uncaught exception (org.apache.kafka.connect.runtime.WorkerTask)
Caused by: org.postgresql.util.PSQLException: ERROR: replication slot \"x\" is active
";
        let errors = last_errors(log);
        assert!(errors.contains("Task threw"), "{errors}");
        assert!(errors.contains("replication slot"), "{errors}");
        assert!(
            !errors.contains("PluginScanner") && !errors.contains("ExceptionInInitializerError"),
            "{errors}"
        );
        assert_eq!(
            last_errors(&log.lines().take(3).collect::<Vec<_>>().join("\n")),
            "no error logged"
        );
    }

    /// A Java properties value keeps a backslash or a line break in a
    /// password as itself, not as an escape or a new property.
    #[test]
    fn property_escapes_backslashes_and_line_breaks() {
        assert_eq!(property("a\\b\nc=d\re"), "a\\\\b\\nc=d\\re");
        assert_eq!(property("plain"), "plain");
    }
}
