//! The sink into a ClickHouse cluster of 2 shards × 2 replicas with
//! ZooKeeper (`scripts/ch-cluster.sh`, the command `BENCH_CH_CLUSTER`
//! names; started for this measurement and stopped after it), loading the
//! same preloaded topic as the single-server run: the demo's tables
//! migrated for the cluster (`CLICKHOUSE_CLUSTER`), each row written
//! straight into its shard's Replicated table, counted through the
//! `Distributed` table.

use std::time::{Duration, Instant};

use anyhow::Context;

use crate::scenarios::{Figure, figure};
use crate::setup::{Bench, CpuMeter, Daemon, free_addr, histogram_means, time_until};

/// The running cluster; stopped when dropped.
struct Running {
    script: String,
    name: String,
    urls: String,
}

impl Running {
    async fn up() -> anyhow::Result<Self> {
        let script = std::env::var("BENCH_CH_CLUSTER").context(
            "BENCH_CH_CLUSTER: the command that starts the ClickHouse cluster (scripts/bench.sh sets it)",
        )?;
        let out = tokio::process::Command::new(&script)
            .arg("up")
            .output()
            .await?;
        anyhow::ensure!(
            out.status.success(),
            "{script} up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let value = |key: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")))
                .map(str::to_owned)
                .with_context(|| format!("{script} up printed no {key}"))
        };
        Ok(Self {
            name: value("CH_CLUSTER_NAME")?,
            urls: value("CH_CLUSTER_URLS")?,
            script,
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = std::process::Command::new(&self.script)
            .arg("down")
            .status();
    }
}

/// The relay run's topic loaded into the cluster by one sink.
pub async fn sink_into_cluster(bench: &Bench, n: u64) -> anyhow::Result<Vec<Figure>> {
    let cluster = Running::up().await?;
    let cfg = sink::clickhouse::ClickHouseConfig {
        url: cluster.urls.clone(),
        cluster: Some(cluster.name.clone()),
        ..bench.clickhouse_config()
    };
    let demo = [outbox_demo::migrations_dir()];
    sink::migrate_with_retry(
        &cfg,
        &flows::migrations::all("clickhouse", &demo)?,
        &tokio_util::sync::CancellationToken::new(),
    )
    .await?;
    let ch = sink::clickhouse::client::client(&cfg, Some(&cfg.database));
    let metrics_addr = free_addr()?;
    let mut env = bench.env("sinkcluster.");
    env.retain(|(k, _)| k != "CLICKHOUSE_URL" && k != "SINK_METRICS_ADDR");
    env.extend([
        ("CLICKHOUSE_URL".to_owned(), cluster.urls.clone()),
        ("CLICKHOUSE_CLUSTER".to_owned(), cluster.name.clone()),
        ("SINK_METRICS_ADDR".to_owned(), metrics_addr.clone()),
    ]);
    let sink = Daemon::spawn("sink", &env)?;
    let cpu = CpuMeter::start(sink.pid(), "clickhouse-serv", bench.kafka.pids());
    let count = || async {
        let c: u64 = ch
            .query("SELECT count() FROM user_logins")
            .fetch_one()
            .await?;
        anyhow::Ok(c)
    };
    let started = Instant::now();
    let to_first = time_until(
        Duration::from_secs(120),
        Duration::from_millis(5),
        || async { Ok(count().await? > 0) },
    )
    .await?;
    let first = count().await?;
    time_until(
        Duration::from_secs(900),
        Duration::from_millis(20),
        || async { Ok(count().await? >= n) },
    )
    .await?;
    let took = started.elapsed();
    let used = cpu.used();
    let rss = sink.peak_rss_mib();
    let scraped = daemon::http::fetch_metrics(&metrics_addr)
        .await
        .unwrap_or_default();
    let caught_up = replicas_agree(&cfg, &cluster.urls).await?;
    sink.stop();
    let steady = (took - to_first).as_secs_f64();
    let measure = "sink into a ClickHouse cluster (2 shards × 2 replicas)";
    let mut figures = vec![
        figure(
            &format!("{measure}: topic preloaded into ClickHouse"),
            (n - first) as f64 / steady,
            "rows/s",
            format!(
                "{n} messages in {} partitions; each row straight into its shard's Replicated table (split by intHash64(id), the Distributed table's key), shards written concurrently; rate from the first batch stored to the last",
                bench.partitions
            ),
        ),
        figure(
            &format!("{measure}: topic preloaded, process start included"),
            n as f64 / took.as_secs_f64(),
            "rows/s",
            format!(
                "{:.1} s in all, of which {:.1} s to the first batch stored",
                took.as_secs_f64(),
                to_first.as_secs_f64()
            ),
        ),
        figure(
            &format!("{measure}: second replicas caught up"),
            caught_up.as_secs_f64() * 1000.0,
            "ms",
            "after the last row was readable through the Distributed table, until each shard's two replicas held the same rows",
        ),
        figure(&format!("{measure}: sink peak RSS"), rss, "MiB", ""),
        figure(
            &format!("{measure}: CPU per 100k rows"),
            used.iter().sum::<f64>() / n as f64 * 100_000.0,
            "s",
            format!(
                "sink {:.2} s, the ClickHouse servers (all five) {:.2} s, Kafka broker {:.2} s",
                used[0] / n as f64 * 100_000.0,
                used[1] / n as f64 * 100_000.0,
                used[2] / n as f64 * 100_000.0
            ),
        ),
    ];
    figures.extend(write_ways(&cfg, &cluster.urls, n).await?);
    for (phase, sum, count) in histogram_means(&scraped, "sink_batch_phase_seconds", "phase") {
        if count > 0.0 && phase == "insert" {
            figures.push(figure(
                &format!("{measure}: mean insert per batch"),
                sum / count * 1000.0,
                "ms",
                format!("{count} batches, both shards"),
            ));
        }
    }
    Ok(figures)
}

/// How long until both replicas of each shard hold the same rows of
/// `user_logins` (from now).
async fn replicas_agree(
    cfg: &sink::clickhouse::ClickHouseConfig,
    urls: &str,
) -> anyhow::Result<Duration> {
    let nodes: Vec<clickhouse::Client> = urls
        .split(',')
        .map(|url| {
            let one = sink::clickhouse::ClickHouseConfig {
                url: url.to_owned(),
                ..cfg.clone()
            };
            sink::clickhouse::client::client(&one, Some(&cfg.database))
        })
        .collect();
    time_until(
        Duration::from_secs(300),
        Duration::from_millis(20),
        || async {
            let mut counts = Vec::new();
            for node in &nodes {
                let c: u64 = node
                    .query("SELECT count() FROM user_logins_local")
                    .fetch_one()
                    .await?;
                counts.push(c);
            }
            Ok(counts.chunks(2).all(|pair| pair[0] == pair[1]))
        },
    )
    .await
}

/// The two ways of writing to the cluster, side by side, without Kafka or
/// the sink around them: the same `rows` user_logins rows (RowBinary, the
/// sink's encoder, blocks of 100,000) inserted (a) through the
/// `Distributed` table on server 1, synchronously
/// (`insert_distributed_sync=1`: it answers once every shard stored its
/// rows — its default answers before), and (b) split by the sharding key
/// and inserted straight into each shard's local table, the shards
/// concurrently (what the sink does). Ids above the preloaded ones. The
/// split is timed with (b), as the sink pays it.
async fn write_ways(
    cfg: &sink::clickhouse::ClickHouseConfig,
    urls: &str,
    rows: u64,
) -> anyhow::Result<Vec<Figure>> {
    use sink::clickhouse::encode::{ColumnPlan, encode_row};
    use sink::clickhouse::sharding::{KeyHash, Sharding, Slots};
    use sink::clickhouse::types::ChType;
    let columns: Vec<ColumnPlan> = [
        ("id", "UInt64"),
        ("username", "Nullable(String)"),
        ("event_type", "Nullable(String)"),
        ("event_time", "Nullable(DateTime)"),
    ]
    .into_iter()
    .map(|(name, ty)| {
        Ok(ColumnPlan {
            column: name.into(),
            field: name.into(),
            ty: ChType::parse(ty)?,
            type_name: ty.into(),
            constant: None,
        })
    })
    .collect::<anyhow::Result<_>>()?;
    let node = |i: usize| {
        let url = urls.split(',').nth(i).unwrap_or_default().to_owned();
        let one = sink::clickhouse::ClickHouseConfig { url, ..cfg.clone() };
        sink::clickhouse::client::client(&one, Some(&cfg.database))
    };
    let block = 100_000u64;
    // Other ids for each way: a Replicated table drops a block it stored
    // already (the same rows in the same order), which would flatter the
    // second way.
    let blocks = |first_id: u64| -> anyhow::Result<Vec<bytes::Bytes>> {
        (0..rows.div_ceil(block))
        .map(|b| {
            let mut out = bytes::BytesMut::new();
            for id in (b * block..((b + 1) * block).min(rows)).map(|i| i + first_id) {
                let message = serde_json::json!({"id": id, "username": format!("user-{}", id % 1000), "event_type": "login", "event_time": 1_700_000_000 + id % 86_400});
                if let serde_json::Value::Object(map) = message {
                    encode_row(&columns, &map, &mut out)?;
                }
            }
            Ok(out.freeze())
        })
        .collect()
    };
    let insert = |client: clickhouse::Client,
                  table: &'static str,
                  rows: bytes::Bytes,
                  sync: bool| async move {
        let mut insert = client.insert_formatted_with(format!(
            "INSERT INTO {table} (id, username, event_type, event_time) FORMAT RowBinary"
        ));
        if sync {
            insert = insert.with_setting("insert_distributed_sync", "1");
        }
        insert.send(rows).await?;
        anyhow::Ok(insert.end().await?)
    };
    let through_blocks = blocks(10 * rows)?;
    let started = Instant::now();
    for rows in &through_blocks {
        insert(node(0), "user_logins", rows.clone(), true).await?;
    }
    let through = started.elapsed();
    let sharding = Sharding {
        local_database: cfg.database.clone(),
        local_table: "user_logins_local".into(),
        key_column: "id".into(),
        hash: KeyHash::IntHash64,
    };
    let slots = Slots::new(&[1, 1]);
    let straight_blocks = blocks(20 * rows)?;
    let started = Instant::now();
    for rows in &straight_blocks {
        let parts = slots
            .split(&sharding, &columns, rows)
            .map_err(anyhow::Error::msg)?;
        let [one, two] = [0, 1].map(|s| parts[s].clone().freeze());
        let (a, b) = tokio::join!(
            insert(node(0), "user_logins_local", one, false),
            insert(node(2), "user_logins_local", two, false)
        );
        a?;
        b?;
    }
    let straight = started.elapsed();
    let note = |took: Duration| {
        format!(
            "{rows} rows in blocks of {block}, {:.2} s",
            took.as_secs_f64()
        )
    };
    Ok(vec![
        figure(
            "ClickHouse cluster, writing (a): through the Distributed table, insert_distributed_sync=1",
            rows as f64 / through.as_secs_f64(),
            "rows/s",
            note(through),
        ),
        figure(
            "ClickHouse cluster, writing (b): straight into each shard's table (the sink's way)",
            rows as f64 / straight.as_secs_f64(),
            "rows/s",
            format!(
                "{}; the same blocks split by intHash64(id), both shards at once",
                note(straight)
            ),
        ),
    ])
}
