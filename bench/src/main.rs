//! `bench` — the benchmark on the local stack: the relay against its own SQL
//! ceiling, the sink loading a preloaded topic, end-to-end latency, memory.
//! `--smoke` runs it small (CI keeps it working); the full run is documented
//! in BENCHMARKS.md. Results: a Markdown table on stdout and JSON.

mod ch_cluster;
mod cluster;
mod debezium;
mod peers;
mod scale;
mod scenarios;
mod setup;

use clap::Parser;

/// Benchmark of relay and sink on this machine's stack.
#[derive(Parser)]
#[command(name = "bench")]
struct Cli {
    /// A few seconds' run that exercises every measurement.
    #[arg(long)]
    smoke: bool,
    /// Backlog size for the throughput runs (default 1,000,000; smoke 20,000).
    #[arg(long)]
    rows: Option<u64>,
    /// Run only these measurements (comma-separated: ceiling, relay, shards,
    /// sink, sink-cluster, members, peers, growth, latency, engine-latency,
    /// kafka-cluster; debezium is the Debezium part of peers alone). The
    /// sink loads what the relay run published; kafka-cluster starts three
    /// brokers and runs relay and sink there.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/bench/results.json")]
    json: std::path::PathBuf,
}

/// The relay and the sink on three brokers (replication factor 3,
/// `min.insync.replicas=2`, the relay's `acks=all`): the same backlog and
/// measurements as `relay` and `sink`, beside the single node's.
async fn on_three_brokers(
    admin: &str,
    clickhouse: &str,
    rows: u64,
) -> anyhow::Result<(Vec<scenarios::Figure>, setup::Bench)> {
    let kafka = tokio::task::spawn_blocking(cluster::Cluster::three).await??;
    let bench =
        setup::Bench::start("outbox_bench_cluster", admin, clickhouse, kafka, 8, rows).await?;
    scenarios::backlog(&bench, rows).await?;
    let mut figures = scenarios::relay_throughput(
        &bench,
        rows,
        "relay on three brokers (RF 3, acks=all): backlog drained into Kafka",
    )
    .await?;
    figures.extend(
        scenarios::sink_throughput(&bench, rows, "sink.", "sink on three brokers (RF 3)").await?,
    );
    Ok((figures, bench))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rows = cli
        .rows
        .unwrap_or(if cli.smoke { 20_000 } else { 1_000_000 });
    let latency_secs = if cli.smoke { 3 } else { 30 };
    let admin = std::env::var("BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let clickhouse =
        std::env::var("BENCH_CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".into());
    if !cli.only.is_empty() && cli.only.iter().all(|o| o == "kafka-cluster") {
        // Alone: the single node and its database are not touched.
        eprintln!("kafka-cluster");
        let (figures, bench) = on_three_brokers(&admin, &clickhouse, rows).await?;
        return report(&cli, rows, &figures, &bench.ch(), bench.kafka.label()).await;
    }
    let kafka = cluster::Cluster::from_env()?;
    // The mock keeps ~5 MiB per partition: enough partitions for the backlog,
    // with room for keys hashing unevenly (checked before the sink run). A
    // broker keeps everything: 8.
    let partitions = match std::env::var("BENCH_PARTITIONS") {
        Ok(p) => p.parse()?,
        Err(_) if kafka.is_mock() => ((rows * 160 * 3 / (4 * 1024 * 1024)) as i32 + 8).max(8),
        Err(_) => 8,
    };
    let bench = setup::Bench::start(
        setup::database(),
        &admin,
        &clickhouse,
        kafka,
        partitions,
        rows,
    )
    .await?;

    let run = |name: &str| {
        let wanted = cli.only.is_empty() || cli.only.iter().any(|o| o == name);
        if wanted {
            eprintln!("{name}");
        }
        wanted
    };
    let mut figures = Vec::new();
    eprintln!("backlog of {rows} rows");
    scenarios::backlog(&bench, rows).await?;
    if run("ceiling") {
        figures.extend(scenarios::ceiling(&bench, rows, 10_000).await?);
    }
    if run("relay") {
        scenarios::reset_pending(&bench).await?;
        figures.extend(
            scenarios::relay_throughput(&bench, rows, "relay: backlog drained into Kafka").await?,
        );
    }
    if run("shards") {
        for shards in [1, 2, 4] {
            figures.extend(scale::relay_shards(&bench, rows, shards).await?);
        }
    }
    if run("sink") {
        figures.push(scenarios::consume_ceiling(&bench, rows).await?);
        figures.extend(scenarios::sink_throughput(&bench, rows, "sink.", "sink").await?);
    }
    if run("sink-cluster") {
        if !run("relay") {
            // Run alone: the relay publishes the backlog first (no figures).
            scenarios::relay_throughput(&bench, rows, "relay").await?;
        }
        figures.extend(ch_cluster::sink_into_cluster(&bench, rows).await?);
    }
    if run("members") {
        for members in [1, 2] {
            figures.push(scale::sink_members(&bench, rows, members).await?);
        }
    }
    let peers = run("peers");
    if peers {
        let budget = std::time::Duration::from_secs(if cli.smoke { 2 } else { 10 });
        figures.push(peers::row_by_row_relay(&bench, budget).await?);
        figures.push(peers::row_by_row_sink(&bench, budget).await?);
        // The messages of the relay run, through the Kafka engine.
        let engine_budget = std::time::Duration::from_secs(if cli.smoke { 20 } else { 120 });
        let topic = bench.topic("user_events");
        figures.push(
            peers::kafka_engine_sink(
                &bench,
                bench.kafka.bootstrap_servers(),
                bench.kafka.label(),
                &topic,
                rows,
                engine_budget,
            )
            .await?,
        );
    }
    if peers || run("debezium") {
        // Debezium on the same Postgres, table and broker; the relay's
        // commit → in Kafka beside its own.
        figures.extend(debezium::peers(&bench, rows, latency_secs).await?);
    }
    if run("growth") {
        let sent = if cli.smoke { 10 * rows } else { 10_000_000 };
        figures.extend(scenarios::growth(&bench, rows, sent).await?);
    }
    if run("latency") {
        // Default settings: single rows on an idle pipeline, then steady
        // 1,000 and 10,000 rows/s.
        for rate in [5, 1_000, 10_000] {
            let loader = scenarios::Loader::Sink { flush_ms: None };
            figures.extend(scenarios::latency(&bench, rate, latency_secs, loader).await?);
        }
    }
    if run("kafka-cluster") {
        figures.extend(on_three_brokers(&admin, &clickhouse, rows).await?.0);
    }
    if run("engine-latency") {
        let label = bench.kafka.label().to_owned();
        let loader = scenarios::Loader::KafkaEngine {
            brokers: bench.kafka.bootstrap_servers(),
        };
        match scenarios::latency(&bench, 1000, latency_secs, loader).await {
            Ok(f) => figures.extend(f),
            // The measurement that says why the row is empty.
            Err(e) => figures.push(scenarios::figure(
                &format!("peer, ClickHouse Kafka engine: end-to-end latency, on {label}"),
                f64::NAN,
                "ms",
                format!("not measured: {e:#}"),
            )),
        }
    }

    let ch = bench.ch();
    report(&cli, rows, &figures, &ch, bench.kafka.label()).await
}

/// The machine line, the table on stdout, the JSON.
async fn report(
    cli: &Cli,
    rows: u64,
    figures: &[scenarios::Figure],
    ch: &clickhouse::Client,
    kafka: &str,
) -> anyhow::Result<()> {
    let machine = format!(
        "{} cores, {} GiB; PostgreSQL, ClickHouse {} and {} on the same machine",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| m
                .lines()
                .next()?
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok())
            .map_or(0, |kib| kib / 1024 / 1024),
        ch.query("SELECT version()")
            .fetch_one::<String>()
            .await
            .unwrap_or_default(),
        kafka
    );
    println!("Machine: {machine}\n");
    println!("| measure | value | unit | notes |\n|---|---|---|---|");
    for f in figures {
        println!(
            "| {} | {:.1} | {} | {} |",
            f.measure, f.value, f.unit, f.note
        );
    }
    if let Some(dir) = cli.json.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        &cli.json,
        serde_json::to_string_pretty(
            &serde_json::json!({"machine": machine, "rows": rows, "figures": figures}),
        )?,
    )?;
    Ok(())
}
