//! The measurements. Each returns figures; none asserts a target (targets
//! are read off the table, not enforced by a timed test).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::setup::{Bench, CpuMeter, Daemon, free_addr, histogram_means, time_until};

#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub measure: String,
    pub value: f64,
    pub unit: &'static str,
    pub note: String,
}

pub fn figure(measure: &str, value: f64, unit: &'static str, note: impl Into<String>) -> Figure {
    Figure {
        measure: measure.into(),
        value,
        unit,
        note: note.into(),
    }
}

/// `n` pending user_logins rows (plain SQL, as users insert), vacuumed.
pub async fn backlog(bench: &Bench, n: u64) -> anyhow::Result<()> {
    let pg = bench.pg().await?;
    pg.execute(
        "INSERT INTO user_logins (username, event_type, event_time)
         SELECT 'user' || (g % 1000), (ARRAY['login','registration','purchase'])[1 + g % 3], now() - make_interval(secs => g % 86400)
         FROM generate_series(1, $1::int) g",
        &[&(n as i32)],
    )
    .await?;
    // Rewritten as if inserted: setting the rows back to pending gave each
    // a new version (a new `outbox_txid`, so not HOT) that filled the pages
    // the fillfactor leaves free for flag flips; a backlog an application
    // inserts has that room.
    pg.batch_execute("VACUUM FULL ANALYZE user_logins").await?;
    Ok(())
}

/// The backlog's rows (ids 1..=n of the fresh table) pending again, and
/// vacuumed, so each run starts alike; rows added later stay as they are.
/// The relay's saved floor goes too, so each run starts alike (the rows set
/// back are in its next window either way: see `relay/src/window.rs`).
pub async fn reset_pending(bench: &Bench) -> anyhow::Result<()> {
    let pg = bench.pg().await?;
    pg.execute(
        "UPDATE user_logins SET sent_to_kafka = FALSE WHERE id <= $1 AND sent_to_kafka",
        &[&(bench.backlog as i32)],
    )
    .await?;
    pg.execute(
        "DELETE FROM outbox_scan_positions WHERE source_table = 'user_logins' OR source_table LIKE 'user\\_logins/shard-%'",
        &[],
    )
    .await?;
    pg.batch_execute("VACUUM ANALYZE user_logins").await?;
    Ok(())
}

/// Whether any row at or after `from` is pending, moving `from` to the first
/// pending id: a primary-key walk over what was flagged since the last
/// call, on a held connection, so watching costs the measured run next to
/// nothing. (The backlog is flagged in id order; no row behind `from`
/// becomes pending again during a run.)
pub async fn any_pending(pg: &tokio_postgres::Client, from: &mut i64) -> anyhow::Result<bool> {
    let first = pg
        .query_opt(
            "SELECT id::int8 FROM user_logins WHERE id >= $1::int8 AND sent_to_kafka IS NOT TRUE ORDER BY id LIMIT 1",
            &[&*from],
        )
        .await?;
    Ok(match first {
        Some(row) => {
            *from = row.get(0);
            true
        }
        None => false,
    })
}

/// Scenario 1: The relay's own SQL loop — lock a batch of pending rows (building their
///    JSON, as the relay does), flag them, commit — with no Kafka at all:
///    the relay's window fetch on the tuned table (migration 0010, HOT flag
///    flips), and for reference the statements of a pending-id index on a
///    copy of the table as it was before 0008 (that index, pages filled).
pub async fn ceiling(bench: &Bench, n: u64, batch: u32) -> anyhow::Result<Vec<Figure>> {
    let pg = bench.pg().await?;
    let flow = flows::FlowCatalog::load(&[outbox_demo::flows_file()])?
        .select(Some(&["user_logins".to_owned()]))?
        .remove(0);
    pg.batch_execute(
        "DROP TABLE IF EXISTS bench_old_sql;
         CREATE TABLE bench_old_sql (LIKE user_logins INCLUDING DEFAULTS INCLUDING INDEXES);
         CREATE INDEX bench_old_sql_pending ON bench_old_sql (id) WHERE sent_to_kafka IS NOT TRUE;",
    )
    .await?;
    pg.execute(
        "INSERT INTO bench_old_sql SELECT * FROM user_logins WHERE id <= $1",
        &[&(bench.backlog as i32)],
    )
    .await?;
    pg.execute("UPDATE bench_old_sql SET sent_to_kafka = FALSE", &[])
        .await?;
    pg.batch_execute("VACUUM ANALYZE bench_old_sql").await?;
    let mut old = flow.sources[0].clone();
    old.table = flows::ident::Ident::new("bench_old_sql")?;
    let old = relay::source::OutboxSource::inspect(&pg, "bench", &old, relay::shard::Shard::WHOLE)
        .await?;
    let start = Instant::now();
    let mut done = 0u64;
    loop {
        pg.batch_execute("BEGIN").await?;
        let rows = old.fetch_pending_by_flag(&pg, batch).await?;
        if rows.is_empty() {
            pg.batch_execute("COMMIT").await?;
            break;
        }
        old.mark_sent_by_ids(&pg, &rows).await?;
        pg.batch_execute("COMMIT").await?;
        done += rows.len() as u64;
    }
    let old_secs = start.elapsed().as_secs_f64();
    anyhow::ensure!(done == n, "old-SQL ceiling flagged {done} of {n}");
    pg.batch_execute("DROP TABLE bench_old_sql").await?;

    reset_pending(bench).await?;
    let source = relay::source::OutboxSource::inspect(
        &pg,
        "user_logins",
        &flow.sources[0],
        relay::shard::Shard::WHOLE,
    )
    .await?;
    let start = Instant::now();
    let mut done = 0u64;
    let mut scan = relay::window::Scan::from_floor(relay::window::Snapshot::nothing());
    scan.needs_window();
    scan.open(relay::positions::current_snapshot(&pg).await?);
    while let Some(bounds) = scan.next() {
        pg.batch_execute("BEGIN").await?;
        let rows = source.fetch_pending(&pg, batch, &bounds).await?;
        scan.locked(rows.end(), rows.len() >= batch as usize);
        // The fetch flagged them: the commit makes it durable.
        pg.batch_execute("COMMIT").await?;
        if let Some(end) = rows.end() {
            scan.committed(end);
        }
        done += rows.len() as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    anyhow::ensure!(done == n, "ceiling flagged {done} of {n}");
    Ok(vec![
        figure(
            "ceiling, old SQL (reference): pending-id index, flags flipped outside HOT",
            n as f64 / old_secs,
            "rows/s",
            format!(
                "{n} rows, batch {batch}, {old_secs:.1} s; pending rows in id order through an index on the flag"
            ),
        ),
        figure(
            "ceiling: relay SQL loop without Kafka (transaction-id windows, HOT flag flips)",
            n as f64 / secs,
            "rows/s",
            format!(
                "{n} rows, batch {batch}, {secs:.1} s; {:.2}x the old SQL",
                old_secs / secs
            ),
        ),
    ])
}

/// Scenario 2: The relay draining a backlog into Kafka (committed), and its peak RSS.
/// From the first pending row on (see [`any_pending`]).
pub async fn relay_throughput(bench: &Bench, n: u64, measure: &str) -> anyhow::Result<Vec<Figure>> {
    let pg = bench.pg().await?;
    let from = std::cell::Cell::new(
        pg.query_one(
            "SELECT coalesce(min(id), 0)::int8 FROM user_logins WHERE sent_to_kafka IS NOT TRUE",
            &[],
        )
        .await?
        .get::<_, i64>(0),
    );
    let metrics_addr = free_addr()?;
    let mut env = bench.env("relay.");
    env.push(("RELAY_METRICS_ADDR".into(), metrics_addr.clone()));
    let relay = Daemon::spawn("relay", &env)?;
    let cpu = CpuMeter::start(relay.pid(), "postgres", bench.kafka.pid());
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
    let rss = relay.peak_rss_mib();
    let used = cpu.used();
    let scraped = daemon::http::fetch_metrics(&metrics_addr)
        .await
        .unwrap_or_default();
    relay.stop();
    let secs = took.as_secs_f64();
    let mut figures = vec![
        figure(
            measure,
            n as f64 / secs,
            "rows/s",
            format!("{n} rows drained and committed in {secs:.1} s (process start included)"),
        ),
        figure(&format!("{measure}: relay peak RSS"), rss, "MiB", ""),
    ];
    figures.extend(cpu_figures(
        measure,
        n,
        &used,
        ["relay", "postgres", kafka_name(bench)],
    ));
    // Where a batch's time goes (the relay's own histograms). Phases overlap:
    // Kafka works on one batch while Postgres flags the one before and locks
    // the next.
    figures.extend(phase_figures(
        measure,
        &scraped,
        "relay_batch_phase_seconds",
    ));
    Ok(figures)
}

/// Mean time per batch of each phase of a daemon's phase histogram.
fn phase_figures(measure: &str, scraped: &str, histogram: &str) -> Vec<Figure> {
    histogram_means(scraped, histogram, "phase")
        .into_iter()
        .filter(|(_, _, count)| *count > 0.0)
        .map(|(phase, sum, count)| {
            figure(
                &format!("{measure}: mean {phase} per batch"),
                sum / count * 1000.0,
                "ms",
                format!("{count} batches"),
            )
        })
        .collect()
}

/// Scenario 7: Growth: `sent` more rows already flagged sent — history a relay
/// published earlier, its position saved after them — then a new backlog
/// of `n` rows after them, drained.
pub async fn growth(bench: &Bench, n: u64, sent: u64) -> anyhow::Result<Vec<Figure>> {
    let pg = bench.pg().await?;
    let start = Instant::now();
    pg.execute(
        "INSERT INTO user_logins (username, event_type, event_time, sent_to_kafka)
         SELECT 'old' || (g % 1000), 'login', now() - make_interval(secs => g % 86400), TRUE
         FROM generate_series(1, $1::int) g",
        &[&(sent as i32)],
    )
    .await?;
    pg.execute(
        "UPDATE user_logins SET sent_to_kafka = TRUE WHERE id <= $1 AND sent_to_kafka IS NOT TRUE",
        &[&(bench.backlog as i32)],
    )
    .await?;
    // The relay published that history: its saved floor sees it.
    pg.execute(
        "INSERT INTO outbox_scan_positions (source_table, flow, published) \
         VALUES ('user_logins', 'user_logins', pg_current_snapshot()::text) \
         ON CONFLICT (source_table) DO UPDATE SET published = EXCLUDED.published",
        &[],
    )
    .await?;
    backlog(bench, n).await?;
    eprintln!(
        "  {sent} sent rows and a new backlog added in {:.0} s",
        start.elapsed().as_secs_f64()
    );
    let measure = format!("relay with {sent} rows already sent");
    relay_throughput(bench, n, &measure).await
}

/// Scenario 3: The sink loading the topic the relay filled (a new consumer group, so
/// from the start), and its peak RSS.
pub async fn sink_throughput(
    bench: &Bench,
    n: u64,
    group_prefix: &str,
) -> anyhow::Result<Vec<Figure>> {
    let held = topic_messages(
        bench.kafka.bootstrap_servers(),
        &bench.topic("user_events"),
        bench.partitions,
    )?;
    anyhow::ensure!(
        held >= n as i64,
        "the topic holds only {held} of {n} messages (the mock drops data past ~5 MiB per partition: use more partitions)"
    );
    let ch = bench.ch();
    ch.query("TRUNCATE TABLE user_logins").execute().await?;
    let metrics_addr = free_addr()?;
    let mut env = bench.env(group_prefix);
    env.push(("SINK_METRICS_ADDR".into(), metrics_addr.clone()));
    let sink = Daemon::spawn("sink", &env)?;
    let cpu = CpuMeter::start(sink.pid(), "clickhouse-serv", bench.kafka.pid());
    let count = || async {
        let c: u64 = ch
            .query("SELECT count() FROM user_logins")
            .fetch_one()
            .await?;
        anyhow::Ok(c)
    };
    let started = Instant::now();
    // The first flushed batch: process start and group join are behind us.
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
    let steady = (took - to_first).as_secs_f64();
    let rss = sink.peak_rss_mib();
    let used = cpu.used();
    let scraped = daemon::http::fetch_metrics(&metrics_addr)
        .await
        .unwrap_or_default();
    sink.stop();
    let secs = took.as_secs_f64();
    let mut figures = cpu_figures("sink", n, &used, ["sink", "clickhouse", kafka_name(bench)]);
    figures.splice(0..0, [
        figure(
            "sink: topic preloaded into ClickHouse",
            (n - first) as f64 / steady,
            "rows/s",
            format!(
                "{n} messages in {} partitions; rate from the first batch stored to the last",
                bench.partitions
            ),
        ),
        figure(
            "sink: topic preloaded into ClickHouse, process start included",
            n as f64 / secs,
            "rows/s",
            format!(
                "{secs:.1} s in all, of which {:.1} s from process start (group join included) to the first batch stored",
                to_first.as_secs_f64()
            ),
        ),
        figure("sink: peak RSS", rss, "MiB", ""),
    ]);
    figures.extend(phase_figures("sink", &scraped, "sink_batch_phase_seconds"));
    Ok(figures)
}

fn kafka_name(bench: &Bench) -> &'static str {
    if bench.kafka.is_mock() {
        "mock Kafka (bench process)"
    } else {
        "Kafka broker"
    }
}

/// Where the CPU went, per 100,000 rows, and the rate the machine's cores
/// would allow if that were the only limit.
fn cpu_figures(measure: &str, rows: u64, used: &[f64; 3], names: [&str; 3]) -> Vec<Figure> {
    let per = |s: f64| s / rows as f64 * 100_000.0;
    let total: f64 = used.iter().sum();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    vec![
        figure(
            &format!("{measure}: CPU per 100k rows"),
            per(total),
            "s",
            format!(
                "{} {:.2} s, {} {:.2} s, {} {:.2} s",
                names[0],
                per(used[0]),
                names[1],
                per(used[1]),
                names[2],
                per(used[2])
            ),
        ),
        figure(
            &format!("{measure}: CPU-bound limit on {cores} cores"),
            rows as f64 / total * cores,
            "rows/s",
            "rows per CPU-second of all parties × cores",
        ),
    ]
}

/// The sink's ceiling here: the sink's own consumer settings reading the
/// preloaded topic with no processing at all (no decoding, no ClickHouse),
/// from the first message to the last — what the Kafka side can deliver.
pub async fn consume_ceiling(bench: &Bench, n: u64) -> anyhow::Result<Figure> {
    let brokers = bench.kafka.bootstrap_servers().to_owned();
    let topic = bench.topic("user_events");
    let group = bench.topic("consume-ceiling");
    let (secs, seen) = tokio::task::spawn_blocking(move || -> anyhow::Result<(f64, u64)> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let kafka = connections::kafka::KafkaEndpoint::plaintext(&brokers);
        let consumer: BaseConsumer =
            connections::kafka::consumer_config(&kafka, &group, "bench").create()?;
        consumer.subscribe(&[&topic])?;
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut seen = 0u64;
        let mut first: Option<Instant> = None;
        while seen < n && Instant::now() < deadline {
            if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                message?;
                first.get_or_insert_with(Instant::now);
                seen += 1;
            }
        }
        let secs = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
        Ok((secs, seen))
    })
    .await??;
    Ok(figure(
        "sink ceiling: the topic consumed with the sink's settings, no processing",
        seen as f64 / secs,
        "rows/s",
        format!("{seen} messages, first to last, {secs:.1} s"),
    ))
}

/// Messages a topic holds now (sum of high − low watermarks).
fn topic_messages(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let mut total = 0;
    for p in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        total += high - low;
    }
    Ok(total)
}

/// What loads the latency run's topic into ClickHouse.
pub enum Loader<'a> {
    /// The product's sink (into `user_logins`), with its flush interval
    /// (`SINK_FLUSH_INTERVAL_MS`) set when given.
    Sink { flush_ms: Option<u64> },
    /// ClickHouse's Kafka table engine + materialized view on the brokers
    /// given (into `peer_engine_rows`), the relay publishing there too.
    KafkaEngine { brokers: &'a str },
}

/// Scenario 4: End-to-end latency at a steady `rate` rows/s for `secs`: from the
/// inserting transaction's commit to the row being visible in ClickHouse.
/// Below 100 rows/s one row per transaction, `rate` a second (5: single
/// rows on an otherwise idle pipeline); from 100, `rate / 100` rows every
/// 10 ms. Beside the percentiles: the sink's inserts a second and the
/// target table's active parts at the end (what the flush rule costs
/// ClickHouse).
pub async fn latency(
    bench: &Bench,
    rate: u64,
    secs: u64,
    loader: Loader<'_>,
) -> anyhow::Result<Vec<Figure>> {
    let run = match loader {
        Loader::Sink { flush_ms: None } => "latency.",
        Loader::Sink { flush_ms: Some(_) } => "latency-tuned.",
        Loader::KafkaEngine { .. } => "engine-latency.",
    };
    let mut env = bench.env(run);
    let prefix = bench.topic(run);
    env.retain(|(k, _)| k != "KAFKA_TOPIC_PREFIX");
    env.push(("KAFKA_TOPIC_PREFIX".into(), prefix.clone()));
    let topic = format!("{prefix}user_events");
    let relay_metrics = free_addr()?;
    let sink_metrics = free_addr()?;
    env.push(("RELAY_METRICS_ADDR".into(), relay_metrics.clone()));
    env.push(("SINK_METRICS_ADDR".into(), sink_metrics.clone()));
    let ch = match loader {
        Loader::Sink { .. } => bench.ch(),
        Loader::KafkaEngine { .. } => bench.peer_ch().await?,
    };
    let (table, sink, label) = match loader {
        Loader::Sink { flush_ms } => {
            bench.kafka.create_topic(&topic, 4).await?;
            let mut label = if rate < 100 {
                "end-to-end latency, single rows on an idle pipeline".to_owned()
            } else {
                "end-to-end latency".to_owned()
            };
            if let Some(ms) = flush_ms {
                env.retain(|(k, _)| k != "SINK_FLUSH_INTERVAL_MS");
                env.push(("SINK_FLUSH_INTERVAL_MS".into(), ms.to_string()));
                label = format!("end-to-end latency with SINK_FLUSH_INTERVAL_MS={ms}");
            }
            ("user_logins", Some(Daemon::spawn("sink", &env)?), label)
        }
        Loader::KafkaEngine { brokers } => {
            env.retain(|(k, _)| k != "KAFKA_BROKERS");
            env.push(("KAFKA_BROKERS".into(), brokers.to_owned()));
            crate::cluster::create_topic(brokers, &topic, 4).await?;
            crate::peers::attach_kafka_engine(&ch, brokers, &topic, &bench.topic("engine-latency"))
                .await?;
            (
                "peer_engine_rows",
                None,
                "peer, ClickHouse Kafka engine: end-to-end latency".to_owned(),
            )
        }
    };
    // Only rows inserted from now on travel (earlier measurements may have
    // left rows pending).
    bench
        .pg()
        .await?
        .execute(
            "UPDATE user_logins SET sent_to_kafka = TRUE WHERE NOT sent_to_kafka",
            &[],
        )
        .await?;
    let relay = Daemon::spawn("relay", &env)?;
    let max_id = format!("SELECT max(id) FROM {table} WHERE id > ?");
    // The engine's table is shared with the throughput peer: ids above the
    // source's current maximum are this run's.
    let start_id: u64 = bench
        .pg()
        .await?
        .query_one("SELECT coalesce(max(id), 0)::int8 FROM user_logins", &[])
        .await?
        .get::<_, i64>(0) as u64;
    // Warm up, so group joins and producer set-up are not measured: the sink
    // gets one row through; the Kafka engine, which starts a new group at
    // the latest offset and does not stream a trickle of rows, gets a fixed
    // time to join (see `peers::ENGINE_JOIN`).
    let pg = bench.pg().await?;
    let warm_up = Instant::now();
    if sink.is_some() {
        pg.execute("INSERT INTO user_logins (username, event_type, event_time) VALUES ('warm-up', 'login', now())", &[]).await?;
        time_until(
            Duration::from_secs(60),
            Duration::from_millis(5),
            || async {
                let m: u64 = ch.query(&max_id).bind(start_id).fetch_one().await?;
                Ok(m > start_id)
            },
        )
        .await?;
    } else {
        tokio::time::sleep(crate::peers::ENGINE_JOIN).await;
    }
    let warmed = warm_up.elapsed();
    let commits: Arc<std::sync::Mutex<Vec<(u64, Instant)>>> = Arc::default();
    let inserter = tokio::spawn({
        let commits = Arc::clone(&commits);
        let url = bench.database_url.clone();
        async move {
            let (pg, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            let (per_tick, every) = if rate < 100 {
                (1, Duration::from_millis(1000 / rate.max(1)))
            } else {
                ((rate / 100) as i32, Duration::from_millis(10))
            };
            let mut tick = tokio::time::interval(every);
            let end = Instant::now() + Duration::from_secs(secs);
            while Instant::now() < end {
                tick.tick().await;
                let row = pg
                    .query_one(
                        "WITH ins AS (INSERT INTO user_logins (username, event_type, event_time)
                           SELECT 'lat', 'login', now() FROM generate_series(1, $1::int) RETURNING id)
                         SELECT max(id)::int8 FROM ins",
                        &[&per_tick],
                    )
                    .await?;
                let committed = Instant::now();
                let last: i64 = row.get(0);
                if let Ok(mut c) = commits.lock() {
                    c.push((last as u64, committed));
                }
            }
            anyhow::Ok(())
        }
    });
    // Polls read only the new rows (the table is ordered by id), so
    // watching costs ClickHouse next to nothing.
    let mut latencies = Vec::new();
    let mut next = 0usize;
    let poll_end = Instant::now() + Duration::from_secs(secs + 30);
    loop {
        let visible: u64 = ch.query(&max_id).bind(start_id).fetch_one().await?;
        let now = Instant::now();
        let pending: Vec<(u64, Instant)> = commits
            .lock()
            .map(|c| c[next..].to_vec())
            .unwrap_or_default();
        for (last, committed) in &pending {
            if *last <= visible {
                latencies.push(now.duration_since(*committed).as_secs_f64() * 1000.0);
                next += 1;
            } else {
                break;
            }
        }
        if inserter.is_finished() && commits.lock().map(|c| next >= c.len()).unwrap_or(true)
            || now > poll_end
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    inserter.await??;
    // Where the time goes: each daemon's own phase histograms over the run.
    let relay_phases = daemon::http::fetch_metrics(&relay_metrics)
        .await
        .unwrap_or_default();
    let sink_phases = match loader {
        Loader::Sink { .. } => daemon::http::fetch_metrics(&sink_metrics)
            .await
            .unwrap_or_default(),
        Loader::KafkaEngine { .. } => String::new(),
    };
    let relay_rss = relay.peak_rss_mib();
    relay.stop();
    let sink_rss = sink.map(|sink| {
        let rss = sink.peak_rss_mib();
        sink.stop();
        rss
    });
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    let cadence = if rate < 100 {
        format!("1 row every {} ms", 1000 / rate.max(1))
    } else {
        format!("batches of {} rows every 10 ms", rate / 100)
    };
    let note = format!(
        "{} of {} transactions seen ({cadence} for {secs} s); ClickHouse polled every 2 ms; warm-up {:.0} s",
        latencies.len(),
        commits.lock().map_or(0, |c| c.len()),
        warmed.as_secs_f64()
    );
    let mut figures = vec![
        figure(
            &format!("{label} p50 at {rate} rows/s"),
            pct(0.50),
            "ms",
            note,
        ),
        figure(
            &format!("{label} p95 at {rate} rows/s"),
            pct(0.95),
            "ms",
            "",
        ),
        figure(
            &format!("{label} p99 at {rate} rows/s"),
            pct(0.99),
            "ms",
            "",
        ),
    ];
    if sink_rss.is_some() {
        let flushes = daemon::http::metric_value(
            &sink_phases,
            "sink_flushes_total",
            &[("flow", "user_logins")],
        )
        .unwrap_or(0.0);
        figures.push(figure(
            &format!("{label} at {rate} rows/s: inserts a second into {table}"),
            flushes / secs as f64,
            "1/s",
            "the sink's flushes over the run (one insert per table each)",
        ));
        let parts: u64 = ch
            .query("SELECT count() FROM system.parts WHERE database = currentDatabase() AND table = ? AND active")
            .bind(table)
            .fetch_one()
            .await
            .unwrap_or_default();
        figures.push(figure(
            &format!("{label} at {rate} rows/s: active parts of {table} at the end"),
            parts as f64,
            "parts",
            "system.parts, right after the run",
        ));
    }
    if let Some(sink_rss) = sink_rss {
        figures.push(figure(
            &format!("{label}: relay peak RSS"),
            relay_rss,
            "MiB",
            "",
        ));
        figures.push(figure(
            &format!("{label}: sink peak RSS"),
            sink_rss,
            "MiB",
            "",
        ));
    }
    // The product's own figure beside the outside one: the sink's
    // `sink_freshness_seconds` (commit time stamped by the relay to
    // ClickHouse accepting the row), warm-up row included.
    if let Some((_, sum, count)) =
        crate::setup::histogram_means(&sink_phases, "sink_freshness_seconds", "table")
            .into_iter()
            .find(|(_, _, count)| *count > 0.0)
    {
        figures.push(figure(
            &format!("{label}: the sink's own freshness, mean"),
            sum / count * 1000.0,
            "ms",
            format!("{count} rows, from sink_freshness_seconds"),
        ));
        let buckets = daemon::http::histogram_buckets(&sink_phases, "sink_freshness_seconds", &[]);
        for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
            if let Some(le) = daemon::http::bucket_quantile(&buckets, q) {
                figures.push(figure(
                    &format!("{label}: the sink's own freshness, {name} (bucket bound)"),
                    le * 1000.0,
                    "ms",
                    "",
                ));
            }
        }
    }
    let stage = |side: &str| format!("{label}, stage: {side}");
    figures.extend(phase_figures(
        &stage("relay"),
        &relay_phases,
        "relay_batch_phase_seconds",
    ));
    figures.extend(phase_figures(
        &stage("sink"),
        &sink_phases,
        "sink_batch_phase_seconds",
    ));
    Ok(figures)
}
