//! Retention of sent rows (`retention` in a flow, `relay prune`): old sent
//! rows go, pending rows stay whatever their age, inserts and the relay run
//! on meanwhile, and the table's space comes back.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outbox_tests::daemon::run_for_output;
use outbox_tests::http::{free_addr, get};
use outbox_tests::topic::{Isolation, read_all};
use outbox_tests::{Daemon, TestStack, wait_until};

const SETTLE: Duration = Duration::from_secs(60);

/// `user_logins` keeping sent rows a week, by `event_time`.
fn retention_flows_file(dir: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::temp_dir().join(format!("{dir}-flows.toml"));
    std::fs::write(
        &path,
        r#"[[flows]]
name = "user_logins"
consumer_group = "user-logins-consumer"
retention = "7d"

[[flows.sources]]
table = "user_logins"
topic = "user_events"
key = "username"
columns = ["id", "username", "event_type", "event_time"]
time_column = "event_time"

[[flows.targets]]
topic = "user_events"
table = "user_logins"
"#,
    )?;
    Ok(path)
}

fn env_with(
    stack: &TestStack,
    flows: &std::path::Path,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let mut env = stack.daemon_env();
    env.push(("FLOWS_FILE".into(), flows.display().to_string()));
    for (k, v) in extra {
        env.retain(|(name, _)| name != k);
        env.push(((*k).into(), (*v).into()));
    }
    env
}

fn relay_cli(env: &[(String, String)], args: &[&str]) -> (Option<i32>, String, String) {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    run_for_output("relay", args, &env)
}

/// `rows` rows `age_days` old, sent or pending, in one statement.
async fn insert_aged(
    pg: &tokio_postgres::Client,
    rows: i64,
    age_days: i32,
    sent: bool,
    who: &str,
) -> anyhow::Result<()> {
    pg.execute(
        "INSERT INTO user_logins (username, event_type, event_time, sent_to_kafka)
         SELECT $4 || '-' || (g % 100), 'login', now() - make_interval(days => $2), $3
         FROM generate_series(1, $1::int8) AS g",
        &[&rows, &age_days, &sent, &who],
    )
    .await?;
    Ok(())
}

async fn count(pg: &tokio_postgres::Client, filter: &str) -> anyhow::Result<i64> {
    Ok(pg
        .query_one(
            &format!("SELECT count(*) FROM user_logins WHERE {filter}"),
            &[],
        )
        .await?
        .get(0))
}

/// `relay prune` deletes only sent rows older than the age; pending rows
/// stay however old, young sent rows stay; `--dry-run` counts and deletes
/// nothing; a flow without retention needs `--older-than` (exit 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_prune_deletes_old_sent_rows_and_never_a_pending_one() -> anyhow::Result<()> {
    let stack = TestStack::migrated("r_prune").await?;
    let pg = stack.pg().await?;
    // In id order: old sent, old pending, young sent, old sent again.
    insert_aged(&pg, 12_000, 30, true, "old").await?;
    insert_aged(&pg, 200, 30, false, "old-pending").await?;
    insert_aged(&pg, 100, 1, true, "young").await?;
    insert_aged(&pg, 20_000, 30, true, "old-late").await?;
    let flows = retention_flows_file(&stack.name)?;
    let env = env_with(&stack, &flows, &[]);
    let figure = |out: &str, name: &str| -> i64 {
        out.split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
            .unwrap_or(-1)
    };

    let (code, out, err) = relay_cli(&env, &["prune", "--flow", "user_logins", "--dry-run"]);
    assert_eq!(code, Some(0), "{err}");
    let would = figure(&out, "would_prune");
    assert_eq!(
        count(&pg, "true").await?,
        32_300,
        "a dry run deletes nothing"
    );

    let (code, out, err) = relay_cli(&env, &["prune", "--flow", "user_logins"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(figure(&out, "pruned"), would, "the dry run's count: {out}");
    assert_eq!(
        count(&pg, "username LIKE 'old-%' AND username NOT LIKE 'old-pending-%' AND username NOT LIKE 'old-late-%'").await?,
        0,
        "every old sent row before the young ones"
    );
    assert_eq!(
        count(&pg, "username LIKE 'old-pending-%'").await?,
        200,
        "pending rows stay"
    );
    assert_eq!(
        count(&pg, "username LIKE 'young-%'").await?,
        100,
        "young rows stay"
    );
    let late = count(&pg, "username LIKE 'old-late-%'").await?;
    assert!(
        late > 0 && would == 12_000 + 20_000 - late,
        "the walk stops soon after the first young row: {late} old rows after it left for later, {would} pruned"
    );

    // Once the young rows age past a shorter window, the rest goes; the
    // pending rows still stay.
    let (code, out, err) = relay_cli(
        &env,
        &["prune", "--flow", "user_logins", "--older-than", "12h"],
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(figure(&out, "pruned"), late + 100, "{out}");
    assert_eq!(count(&pg, "true").await?, 200, "only the pending rows left");

    // A flow without retention: the age must be given.
    let (code, _, err) = relay_cli(&stack.daemon_env(), &["prune", "--flow", "user_logins"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--older-than"), "{err}");
    let (code, _, err) = relay_cli(
        &env,
        &["prune", "--flow", "user_logins", "--older-than", "soon"],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--older-than"), "{err}");
    let _ = std::fs::remove_file(&flows);
    Ok(())
}

/// The active relay prunes a flow with `retention` on its own schedule
/// while a writer keeps inserting and a sink loads ClickHouse: every old
/// sent row goes, the old pending rows are published (once) before they
/// are pruned, and every row written meanwhile reaches ClickHouse once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_active_relay_prunes_a_flow_with_retention() -> anyhow::Result<()> {
    let stack = TestStack::migrated("r_relay").await?;
    outbox_tests::faults::record_arrivals_into(&stack, &["user_logins"]).await?;
    let pg = stack.pg().await?;
    insert_aged(&pg, 1_000, 30, true, "old").await?;
    insert_aged(&pg, 10, 30, false, "old-pending").await?;
    let flows = retention_flows_file(&stack.name)?;
    let addr = free_addr()?;
    let env = env_with(
        &stack,
        &flows,
        &[
            ("RELAY_PRUNE_INTERVAL_MS", "500"),
            ("RELAY_METRICS_ADDR", addr.as_str()),
        ],
    );
    let mut relay = Daemon::spawn("relay", &["run"], &env, &format!("{}-relay", stack.name));
    let mut sink = Daemon::spawn("sink", &["run"], &env, &format!("{}-sink", stack.name));
    let writing = Arc::new(AtomicU8::new(0));
    let writer = {
        let (url, writing) = (stack.database_url.clone(), Arc::clone(&writing));
        tokio::spawn(async move {
            let (pg, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            let mut written = 0i64;
            while writing.load(Ordering::SeqCst) == 0 {
                pg.execute(
                    "INSERT INTO user_logins (username, event_type, event_time) VALUES ('live', 'login', now())",
                    &[],
                )
                .await?;
                written += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            anyhow::Ok(written)
        })
    };
    wait_until("every old row pruned", SETTLE, || async {
        Ok(count(&pg, "event_time < now() - interval '7 days'").await? == 0)
    })
    .await;
    writing.store(1, Ordering::SeqCst);
    let written = writer.await??;
    let metrics = get(&addr, "/metrics").await?.1;
    let pruned = daemon::http::metric_value(
        &metrics,
        "relay_pruned_rows_total",
        &[("flow", "user_logins"), ("table", "user_logins")],
    );
    assert_eq!(pruned, Some(1_010.0), "{metrics}");
    let last = daemon::http::metric_value(
        &metrics,
        "relay_last_prune_timestamp_seconds",
        &[("flow", "user_logins")],
    )
    .unwrap_or(0.0);
    assert!(last > 1.7e9, "last prune time: {last}");
    assert!(
        written > 20,
        "a writer ran through the prune: {written} rows"
    );
    let expected = 10 + written as u64;
    wait_until("every published row in ClickHouse", SETTLE, || async {
        Ok(stack.pending("user_logins").await? == 0
            && stack.ch_count_arrived("user_logins").await? >= expected)
    })
    .await;
    relay.terminate(Duration::from_secs(15));
    sink.terminate(Duration::from_secs(15));
    assert_eq!(
        stack.ch_count_final("user_logins").await?,
        expected,
        "the old pending rows and every row written meanwhile, once"
    );

    let brokers = stack.kafka_brokers.clone();
    let topics = vec![stack.topic("user_events")];
    let records =
        tokio::task::spawn_blocking(move || read_all(&brokers, &topics, Isolation::Committed))
            .await??;
    let ids: BTreeSet<i64> = records.iter().filter_map(|r| r.id()).collect();
    assert_eq!(
        records.len() as u64,
        expected,
        "each published row once on the topic"
    );
    assert_eq!(ids.len() as u64, expected);
    let _ = std::fs::remove_file(&flows);
    Ok(())
}

/// Inserts one row per statement until told to stop, recording each
/// insert's latency under the phase it started in.
async fn inserter(
    url: String,
    phase: Arc<AtomicU8>,
    latencies: Arc<Mutex<[Vec<Duration>; 2]>>,
    ids: Arc<Mutex<BTreeSet<i64>>>,
) -> anyhow::Result<()> {
    let (pg, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    loop {
        let now = phase.load(Ordering::SeqCst);
        if now > 1 {
            return Ok(());
        }
        let start = Instant::now();
        let id: i64 = pg
            .query_one(
                "INSERT INTO user_logins (username, event_type, event_time)
                 VALUES ('live', 'login', now()) RETURNING id::int8",
                &[],
            )
            .await?
            .get(0);
        let took = start.elapsed();
        latencies.lock().map_err(|_| anyhow::anyhow!("poisoned"))?[now as usize].push(took);
        ids.lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .insert(id);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn p99(samples: &mut [Duration]) -> Duration {
    samples.sort_unstable();
    samples
        .get(samples.len().saturating_sub(1) * 99 / 100)
        .copied()
        .unwrap_or_default()
}

/// A million sent rows pruned (`relay prune`) while a steady inserter and
/// the relay run: the inserts' p99 latency is recorded before and during,
/// every live row is published, and after a VACUUM FULL the table is back
/// to a fraction of its size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_sent_rows_pruned_while_inserts_and_the_relay_run() -> anyhow::Result<()> {
    let stack = TestStack::migrated("r_million").await?;
    let pg = stack.pg().await?;
    insert_aged(&pg, 1_000_000, 30, true, "old").await?;
    pg.batch_execute("VACUUM ANALYZE user_logins").await?;
    let size = || async {
        anyhow::Ok(
            pg.query_one("SELECT pg_total_relation_size('user_logins')", &[])
                .await?
                .get::<_, i64>(0),
        )
    };
    let before_size = size().await?;
    let flows = retention_flows_file(&stack.name)?;
    // The relay's own prune out of the way: the command does it here.
    let env = env_with(&stack, &flows, &[("RELAY_PRUNE_INTERVAL_MS", "3600000")]);
    let mut relay = Daemon::spawn("relay", &["run"], &env, &format!("{}-relay", stack.name));

    let phase = Arc::new(AtomicU8::new(0));
    let latencies: Arc<Mutex<[Vec<Duration>; 2]>> = Arc::default();
    let live: Arc<Mutex<BTreeSet<i64>>> = Arc::default();
    let writer = tokio::spawn(inserter(
        stack.database_url.clone(),
        Arc::clone(&phase),
        Arc::clone(&latencies),
        Arc::clone(&live),
    ));
    wait_until("a baseline of inserts", SETTLE, || async {
        Ok(latencies.lock().map_err(|_| anyhow::anyhow!("poisoned"))?[0].len() >= 500)
    })
    .await;
    phase.store(1, Ordering::SeqCst);
    let started = Instant::now();
    let prune_env = env.clone();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        relay_cli(&prune_env, &["prune", "--flow", "user_logins"])
    })
    .await?;
    let took = started.elapsed();
    phase.store(2, Ordering::SeqCst);
    writer.await??;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("pruned=1000000"), "{out}");

    wait_until("every live row published", SETTLE, || async {
        Ok(stack.pending("user_logins").await? == 0)
    })
    .await;
    relay.terminate(Duration::from_secs(15));
    let live: BTreeSet<i64> = live
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    assert_eq!(
        count(&pg, "username = 'live'").await?,
        live.len() as i64,
        "no live row deleted"
    );
    assert_eq!(count(&pg, "username <> 'live'").await?, 0);
    let brokers = stack.kafka_brokers.clone();
    let topics = vec![stack.topic("user_events")];
    let records =
        tokio::task::spawn_blocking(move || read_all(&brokers, &topics, Isolation::Committed))
            .await??;
    let published: BTreeSet<i64> = records.iter().filter_map(|r| r.id()).collect();
    assert_eq!(published, live, "every live row published");

    pg.batch_execute("VACUUM FULL user_logins").await?;
    let after_size = size().await?;
    let (mut before, mut during) = {
        let l = latencies.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        (l[0].clone(), l[1].clone())
    };
    let (p99_before, p99_during) = (p99(&mut before), p99(&mut during));
    eprintln!(
        "retention: 1,000,000 rows pruned in {:.1} s; insert p99 {:.1} ms before ({} inserts), {:.1} ms during ({}); table {} MB -> {} MB after VACUUM FULL",
        took.as_secs_f64(),
        p99_before.as_secs_f64() * 1e3,
        before.len(),
        p99_during.as_secs_f64() * 1e3,
        during.len(),
        before_size >> 20,
        after_size >> 20
    );
    assert!(
        during.len() > 50,
        "inserts went on during the prune: {}",
        during.len()
    );
    // No insert waited on a lock the prune held (a wait would last the
    // whole prune, seconds); the ratio is the benchmark's business.
    assert!(
        p99_during < Duration::from_secs(1),
        "insert p99 during the prune: {p99_during:?}"
    );
    assert!(
        after_size * 4 < before_size,
        "the table's space back: {before_size} -> {after_size} bytes"
    );
    let _ = std::fs::remove_file(&flows);
    Ok(())
}

/// A source table partitioned by its time column: a partition wholly
/// before the cutoff holding only sent rows is dropped whole; one holding a
/// pending row is not (its sent rows go row by row), nor the current one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_partitions_holding_only_sent_rows_are_dropped_whole() -> anyhow::Result<()> {
    let stack = TestStack::migrated("r_partitions").await?;
    let pg = stack.pg().await?;
    pg.batch_execute(
        "CREATE TABLE events_p (
             id bigserial, username text NOT NULL, event_time timestamptz NOT NULL,
             sent_to_kafka boolean NOT NULL DEFAULT false, PRIMARY KEY (id, event_time)
         ) PARTITION BY RANGE (event_time);
         CREATE TABLE events_p_b PARTITION OF events_p
             FOR VALUES FROM (now() - interval '90 days') TO (now() - interval '60 days');
         CREATE TABLE events_p_a PARTITION OF events_p
             FOR VALUES FROM (now() - interval '60 days') TO (now() - interval '30 days');
         CREATE TABLE events_p_now PARTITION OF events_p
             FOR VALUES FROM (now() - interval '30 days') TO (now() + interval '30 days');
         INSERT INTO events_p (username, event_time, sent_to_kafka)
             SELECT 'b', now() - interval '75 days', g > 1 FROM generate_series(1, 101) g;
         INSERT INTO events_p (username, event_time, sent_to_kafka)
             SELECT 'a', now() - interval '45 days', true FROM generate_series(1, 1000);
         INSERT INTO events_p (username, event_time, sent_to_kafka)
             SELECT 'now-old', now() - interval '10 days', true FROM generate_series(1, 10);
         INSERT INTO events_p (username, event_time, sent_to_kafka)
             SELECT 'young', now() - interval '1 day', true FROM generate_series(1, 5);",
    )
    .await?;
    let flows = std::env::temp_dir().join(format!("{}-flows.toml", stack.name));
    std::fs::write(
        &flows,
        r#"[[flows]]
name = "events_p"
consumer_group = "events-p"
retention = "7d"

[[flows.sources]]
table = "events_p"
topic = "events_p"
columns = ["id", "username", "event_time"]
time_column = "event_time"
"#,
    )?;
    let env = env_with(&stack, &flows, &[]);
    let (code, out, err) = relay_cli(&env, &["prune", "--flow", "events_p", "--dry-run"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("would_prune=1110 partitions=1"), "{out}");
    let (code, out, err) = relay_cli(&env, &["prune", "--flow", "events_p"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("pruned=1110 partitions=1"), "{out}");
    let left: Vec<(String, i64)> = pg
        .query(
            "SELECT username, count(*) FROM events_p GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        left,
        vec![("b".to_owned(), 1), ("young".to_owned(), 5)],
        "the pending row and the young ones"
    );
    let partitions: Vec<String> = pg
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'events_p'::regclass ORDER BY 1",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(partitions, vec!["events_p_b", "events_p_now"]);
    let gone: Option<String> = pg
        .query_one("SELECT to_regclass('events_p_a')::text", &[])
        .await?
        .get(0);
    assert_eq!(gone, None, "the detached partition dropped");
    let _ = std::fs::remove_file(&flows);
    Ok(())
}

/// `events_p`, partitioned by `event_time` and tuned as a source: `_a`
/// (60 to 30 days ago) holding only old sent rows, `_now` the rest; its
/// flow keeps a week.
async fn partitioned_source(stack: &TestStack) -> anyhow::Result<PathBuf> {
    stack
        .pg()
        .await?
        .batch_execute(
            "CREATE TABLE events_p (
                 id bigserial, username text NOT NULL, event_time timestamptz NOT NULL,
                 sent_to_kafka boolean NOT NULL DEFAULT false, PRIMARY KEY (id, event_time)
             ) PARTITION BY RANGE (event_time);
             CREATE TABLE events_p_a PARTITION OF events_p
                 FOR VALUES FROM (now() - interval '60 days') TO (now() - interval '30 days');
             CREATE TABLE events_p_now PARTITION OF events_p
                 FOR VALUES FROM (now() - interval '30 days') TO (now() + interval '30 days');
             CREATE TRIGGER events_p_outbox_notify AFTER INSERT ON events_p
                 FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
             SELECT outbox_tune_source('events_p');
             INSERT INTO events_p (username, event_time, sent_to_kafka)
                 SELECT 'a', now() - interval '45 days', true FROM generate_series(1, 1000);
             INSERT INTO events_p (username, event_time, sent_to_kafka)
                 SELECT 'young', now() - interval '1 day', true FROM generate_series(1, 5);",
        )
        .await?;
    let flows = std::env::temp_dir().join(format!("{}-flows.toml", stack.name));
    std::fs::write(
        &flows,
        r#"[[flows]]
name = "events_p"
consumer_group = "events-p"
retention = "7d"

[[flows.sources]]
table = "events_p"
topic = "events_p"
key = "username"
columns = ["id", "username", "event_time"]
time_column = "event_time"
"#,
    )?;
    Ok(flows)
}

/// A transaction writing an old-dated pending row into `events_p_a`, left
/// open; its row's id.
async fn open_late_writer(stack: &TestStack) -> anyhow::Result<(tokio_postgres::Client, i64)> {
    let writer = stack.pg().await?;
    writer.batch_execute("BEGIN").await?;
    let id: i64 = writer
        .query_one(
            "INSERT INTO events_p (username, event_time) VALUES ('late', now() - interval '40 days') RETURNING id",
            &[],
        )
        .await?
        .get(0);
    Ok((writer, id))
}

/// Waits until a session's `ALTER TABLE … DETACH PARTITION` waits on a lock
/// (its second step waits for every transaction that may see the
/// partition).
async fn detach_waiting(pg: &tokio_postgres::Client) {
    wait_until(
        "the prune's detach waiting for the open writer",
        SETTLE,
        || async {
            Ok(pg
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND query LIKE 'ALTER TABLE%DETACH PARTITION%' AND wait_event_type = 'Lock'",
                    &[],
                )
                .await?
                .get::<_, i64>(0)
                > 0)
        },
    )
    .await;
}

/// The relay publishes every pending row of `events_p`, `late` among them,
/// each once on the topic; recorded as a row of the fault table.
async fn late_row_published(
    stack: &TestStack,
    env: &[(String, String)],
    late: i64,
    fault: &str,
    since: Instant,
) -> anyhow::Result<()> {
    let mut env = env.to_vec();
    env.retain(|(k, _)| k != "FLOWS");
    env.push(("FLOWS".into(), "events_p".into()));
    let mut relay = Daemon::spawn("relay", &["run"], &env, &format!("{}-relay", stack.name));
    let pg = stack.pg().await?;
    wait_until("the late row published", SETTLE, || async {
        let row = pg
            .query_opt("SELECT sent_to_kafka FROM events_p WHERE id = $1", &[&late])
            .await?;
        Ok(row.is_some_and(|r| r.get::<_, bool>(0)))
    })
    .await;
    relay.terminate(Duration::from_secs(15));
    let brokers = stack.kafka_brokers.clone();
    let topics = vec![stack.topic("events_p")];
    let records =
        tokio::task::spawn_blocking(move || read_all(&brokers, &topics, Isolation::Committed))
            .await??;
    let ids: Vec<i64> = records.iter().filter_map(|r| r.id()).collect();
    let copies = ids.iter().filter(|&&id| id == late).count() as u64;
    outbox_tests::faults::record_checked(outbox_tests::faults::FaultReport {
        fault: fault.into(),
        injected: 1,
        rows_sent: 1,
        rows_lost: u64::from(copies == 0),
        doubled_in_view: copies.saturating_sub(1),
        raw_duplicates: 0,
        recovery_ms: since.elapsed().as_millis() as u64,
        note: "the late pending row on the topic (read_committed, to its end); the partition attached again, not dropped".into(),
    });
    assert_eq!(ids, vec![late], "the late row on the topic, once");
    Ok(())
}

/// A row written into an old partition by a transaction that commits while
/// the prune detaches that partition (the detach waits for it): the prune
/// sees it once the partition is detached and attaches the partition again
/// instead of dropping the row with it; the relay publishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_written_into_a_partition_being_detached_is_not_dropped() -> anyhow::Result<()> {
    let stack = TestStack::migrated("r_detach_race").await?;
    let flows = partitioned_source(&stack).await?;
    let env = env_with(&stack, &flows, &[]);
    let pg = stack.pg().await?;
    let (writer, late) = open_late_writer(&stack).await?;
    let prune_env = env.clone();
    let prune = tokio::task::spawn_blocking(move || {
        relay_cli(&prune_env, &["prune", "--flow", "events_p"])
    });
    detach_waiting(&pg).await;
    writer.batch_execute("COMMIT").await?;
    let committed = Instant::now();
    let (code, out, err) = prune.await?;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("partitions=0"),
        "nothing dropped whole: {out} {err}"
    );
    let left: i64 = pg
        .query_one(
            "SELECT count(*) FROM events_p WHERE id = $1 AND sent_to_kafka IS NOT TRUE",
            &[&late],
        )
        .await?
        .get(0);
    assert_eq!(left, 1, "the late pending row is still in the table");
    late_row_published(
        &stack,
        &env,
        late,
        "Retention: a pending row written into a partition while the prune detached it",
        committed,
    )
    .await?;
    let _ = std::fs::remove_file(&flows);
    Ok(())
}

/// A detach cut short — by the statement timeout while it waits for a
/// writer, or by a crash right after it — leaves the partition pending
/// detach or detached, hidden from the relay; the next prune settles it:
/// attached again when a pending row was written into it meanwhile (then
/// published), dropped when it holds only sent rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detach_cut_short_is_settled_by_the_next_prune() -> anyhow::Result<()> {
    let stack = TestStack::migrated("r_detach_cut").await?;
    let flows = partitioned_source(&stack).await?;
    let env = env_with(&stack, &flows, &[]);
    let pg = stack.pg().await?;

    // Cut short by the statement timeout, a pending row written meanwhile.
    let (writer, late) = open_late_writer(&stack).await?;
    let short = env_with(&stack, &flows, &[("POSTGRES_STATEMENT_TIMEOUT_MS", "1500")]);
    let prune =
        tokio::task::spawn_blocking(move || relay_cli(&short, &["prune", "--flow", "events_p"]));
    detach_waiting(&pg).await;
    let (_, out, err) = prune.await?;
    writer.batch_execute("COMMIT").await?;
    let committed = Instant::now();
    let pending_detach: bool = pg
        .query_one(
            "SELECT coalesce((SELECT inhdetachpending FROM pg_inherits WHERE inhrelid = 'events_p_a'::regclass), false)",
            &[],
        )
        .await?
        .get(0);
    assert!(
        pending_detach,
        "the timed-out detach left the partition pending detach: {out} {err}"
    );
    let (code, out, err) = relay_cli(&env, &["prune", "--flow", "events_p"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("partitions=0"), "{out}");
    let attached: bool = pg
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = 'events_p_a'::regclass AND NOT inhdetachpending)",
            &[],
        )
        .await?
        .get(0);
    assert!(
        attached,
        "the partition holding a pending row is attached again"
    );
    late_row_published(
        &stack,
        &env,
        late,
        "Retention: a detach cut short by the statement timeout, a pending row written meanwhile",
        committed,
    )
    .await?;

    // Cut short by a crash right after the detach: the next prune drops it
    // (only sent rows now: the late one, published; the old ones went row
    // by row in the prune that attached the partition again).
    let crashing = env_with(
        &stack,
        &flows,
        &[("OUTBOX_FAILPOINTS", "relay-prune-after-detach=1")],
    );
    let (code, _, err) = relay_cli(&crashing, &["prune", "--flow", "events_p"]);
    assert_ne!(code, Some(0), "the prune died at the crash point: {err}");
    let detached: bool = pg
        .query_one(
            "SELECT to_regclass('events_p_a') IS NOT NULL \
             AND NOT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = 'events_p_a'::regclass)",
            &[],
        )
        .await?
        .get(0);
    assert!(detached, "the crash left the partition detached: {err}");
    let (code, out, err) = relay_cli(&env, &["prune", "--flow", "events_p"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("pruned=1 "),
        "the detached partition's row dropped with it: {out} {err}"
    );
    let gone: Option<String> = pg
        .query_one("SELECT to_regclass('events_p_a')::text", &[])
        .await?
        .get(0);
    assert_eq!(gone, None, "the partition dropped");
    let records: i64 = pg
        .query_one("SELECT count(*) FROM outbox_partition_detaches", &[])
        .await?
        .get(0);
    assert_eq!(records, 0, "nothing left to settle");
    let _ = std::fs::remove_file(&flows);
    Ok(())
}
