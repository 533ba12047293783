//! Scale-out: a flow's relay work split into shards, one relay process per
//! shard (as N machines would run it, here all on this one), against one
//! Postgres; and the sink's consumer group with one and two members.

use std::time::Duration;

use crate::scenarios::{Figure, any_pending, figure, reset_pending};
use crate::setup::{Bench, CpuMeter, Daemon, cpu_seconds, free_addr, time_until};

/// `user_logins` split in `shards`, publishing to its own topic (the main
/// topic keeps exactly the relay run's messages for the sink and peers).
fn flows_file(shards: u16) -> anyhow::Result<std::path::PathBuf> {
    let path = std::env::temp_dir().join(format!("outbox-bench-flows-{shards}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"[[flows]]
name = "user_logins"
consumer_group = "user-logins-consumer"
shards = {shards}

[[flows.sources]]
table = "user_logins"
topic = "{SHARDED_TOPIC}"
key = "username"
columns = ["id", "username", "event_type", "event_time"]
"#
        ),
    )?;
    Ok(path)
}

const SHARDED_TOPIC: &str = "user_events_sharded";

/// The backlog drained by `shards` relay processes, each preferring one
/// shard (`RELAY_SHARDS=i`).
pub async fn relay_shards(bench: &Bench, n: u64, shards: u16) -> anyhow::Result<Vec<Figure>> {
    bench
        .kafka
        .create_topic(&bench.topic(SHARDED_TOPIC), bench.partitions)
        .await?;
    reset_pending(bench).await?;
    let flows = flows_file(shards)?;
    let pg = bench.pg().await?;
    let from = pg
        .query_one(
            "SELECT coalesce(min(id), 0)::int8 FROM user_logins WHERE sent_to_kafka IS NOT TRUE",
            &[],
        )
        .await?
        .get::<_, i64>(0);
    let mut relays = Vec::new();
    for shard in 0..shards {
        let mut env = bench.env("relay.");
        env.push(("FLOWS_FILE".into(), flows.display().to_string()));
        env.push(("RELAY_SHARDS".into(), shard.to_string()));
        env.push(("RELAY_METRICS_ADDR".into(), free_addr()?));
        relays.push(Daemon::spawn("relay", &env)?);
    }
    // Per process (see CpuMeter): a session that ends during the run must
    // not take its earlier CPU off Postgres's total (it made the column
    // negative).
    let meter = CpuMeter::start_all(
        relays.iter().map(Daemon::pid).collect(),
        "postgres",
        bench.kafka.pids(),
    );
    let from = std::cell::Cell::new(from);
    let took = time_until(
        Duration::from_secs(900),
        Duration::from_millis(20),
        || async {
            let mut first = from.get();
            let pending = any_pending(&pg, &mut first).await?;
            from.set(first);
            Ok(!pending)
        },
    )
    .await?;
    let cpu = meter.used();
    for relay in relays {
        relay.stop();
    }
    let _ = std::fs::remove_file(&flows);
    let secs = took.as_secs_f64();
    let per_100k = |s: f64| s * 100_000.0 / n as f64;
    Ok(vec![figure(
        &format!("relay, {shards} shard(s): backlog drained by {shards} relay process(es)"),
        n as f64 / secs,
        "rows/s",
        format!(
            "{n} rows in {secs:.1} s (process start included); CPU-s per 100k rows: relays {:.2}, postgres {:.2}, broker {:.2}",
            per_100k(cpu[0]),
            per_100k(cpu[1]),
            per_100k(cpu[2])
        ),
    )])
}

/// The relay run's topic loaded by a consumer group of `members` sinks.
pub async fn sink_members(bench: &Bench, n: u64, members: usize) -> anyhow::Result<Figure> {
    let ch = bench.ch();
    ch.query("TRUNCATE TABLE user_logins").execute().await?;
    let group = format!("sink{members}x.");
    let mut sinks = Vec::new();
    for _ in 0..members {
        sinks.push(Daemon::spawn("sink", &bench.env(&group))?);
    }
    let count = || async {
        let c: u64 = ch
            .query("SELECT count() FROM user_logins")
            .fetch_one()
            .await?;
        anyhow::Ok(c)
    };
    let started = std::time::Instant::now();
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
    let steady = (started.elapsed() - to_first).as_secs_f64();
    let cpu: f64 = sinks.iter().map(|s| cpu_seconds(s.pid())).sum();
    for sink in sinks {
        sink.stop();
    }
    Ok(figure(
        &format!(
            "sink, {members} member(s) in the consumer group: topic preloaded into ClickHouse"
        ),
        (n - first) as f64 / steady,
        "rows/s",
        format!(
            "{n} messages in {} partitions; rate from the first batch stored to the last; sinks' CPU-s per 100k rows {:.2}",
            bench.partitions,
            cpu * 100_000.0 / n as f64
        ),
    ))
}
