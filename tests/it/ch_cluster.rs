//! The sink on a ClickHouse cluster of 2 shards × 2 replicas with
//! ZooKeeper (`scripts/ch-cluster.sh`; `scripts/ch-cluster-test.sh` starts
//! it and runs this module, one test at a time): `sink migrate` renders the
//! demo's tables for the cluster (`ON CLUSTER`, a Replicated table per
//! shard behind a `Distributed` table of the table's name), the sink writes
//! each row straight into its shard's table as the `Distributed` table
//! would route it, a replica killed under load is left for the other one
//! and taken back, ZooKeeper lost holds the sink not ready until it is
//! back; every row once under `FINAL` through the `Distributed` tables.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use daemon::metrics::Metrics;
use outbox_tests::ch_cluster::ChCluster;
use outbox_tests::daemon::{run_for_output, run_to_exit};
use outbox_tests::faults::{Load, long_mode, verify};
use outbox_tests::http::{free_addr, get};
use outbox_tests::wait::wait_for;
use outbox_tests::{TestStack, wait_until};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// The tests kill and restart the one cluster's servers: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const LOAD_ROWS_PER_SEC: u64 = 600;
const SETTLE: Duration = Duration::from_secs(90);
/// The fault suite's flows' target tables.
const TARGETS: [&str; 3] = ["user_logins", "sales", "stock_movements"];

/// `outbox-demo generate --flow F` inserting `total` rows, as a user does.
async fn generate(stack: &TestStack, flow: &str, total: u32) -> anyhow::Result<()> {
    let env = stack.daemon_env();
    let flow = flow.to_owned();
    let (code, stderr) = tokio::task::spawn_blocking(move || {
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let total = total.to_string();
        run_to_exit(
            "outbox-demo",
            &[
                "generate", "--flow", &flow, "--rate", "2000", "--total", &total,
            ],
            &pairs,
        )
    })
    .await?;
    anyhow::ensure!(code == Some(0), "outbox-demo generate: {stderr}");
    Ok(())
}

async fn pg_count(stack: &TestStack, table: &str) -> anyhow::Result<u64> {
    let n: i64 = stack
        .pg()
        .await?
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await?
        .get(0);
    Ok(n as u64)
}

/// Every demo flow (the relay, the sink and the etl stage running) into
/// the cluster: each table's rows land once under `FINAL` through its
/// `Distributed` table; each shard's local table holds exactly the rows
/// whose `intHash64(id) % 2` names it — what the `Distributed` table
/// itself does with rows inserted through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_demo_flow_lands_once_through_the_distributed_tables() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let cluster = ChCluster::from_env()?;
    let stack = cluster
        .stack("c_flows", "user_logins,my_table,router,sales,etl")
        .await?;
    let metrics = Metrics::default();
    let running = [
        stack.spawn_relay(&metrics)?,
        stack.spawn_sink(&metrics)?,
        stack.spawn_stage(&metrics)?,
    ];
    for flow in ["user_logins", "my_table", "router", "sales", "etl"] {
        generate(&stack, flow, 300).await?;
    }
    let router = ["user_clicks", "page_views", "orders"];
    let mut routed = 0;
    for table in router {
        routed += pg_count(&stack, table).await?;
    }
    // (ClickHouse table, its key, the rows it must hold)
    let expected = [
        ("user_logins", "id", pg_count(&stack, "user_logins").await?),
        ("my_table", "id", pg_count(&stack, "my_table").await?),
        ("events", "event_id", pg_count(&stack, "my_table").await?),
        ("clicks_table", "id", pg_count(&stack, "user_clicks").await?),
        ("views_table", "id", pg_count(&stack, "page_views").await?),
        ("orders_table", "id", pg_count(&stack, "orders").await?),
        ("sales", "id", pg_count(&stack, "sales").await?),
        (
            "stock_movements",
            "id",
            pg_count(&stack, "warehouse").await?,
        ),
        ("events_processed", "source_id", routed),
    ];
    wait_for("every table loaded", SETTLE, || async {
        for (table, _, rows) in expected {
            let now = stack.ch_count_final(table).await?;
            if now != rows {
                return Ok(Err(format!("{table}: {now} of {rows}")));
            }
        }
        Ok(Ok(()))
    })
    .await;
    let ch = stack.ch();
    for (table, key, rows) in expected {
        assert!(rows > 0, "{table}: rows generated");
        // The etl's events of the three topics share source ids.
        let identity = match table {
            "events_processed" => "(event_type, source_id)".to_owned(),
            _ => key.to_owned(),
        };
        let (all, distinct): (u64, u64) = ch
            .query(&format!(
                "SELECT count(), uniqExact({identity}) FROM {table} FINAL"
            ))
            .fetch_one()
            .await?;
        assert_eq!((all, distinct), (rows, rows), "{table}: each row once");
    }
    cluster
        .wait_replicas_agree(
            &stack.name,
            &expected.iter().map(|(t, _, _)| *t).collect::<Vec<_>>(),
        )
        .await;
    for (table, key, _) in expected {
        assert_rows_on_their_shards(&cluster, &stack.name, table, key, "1").await?;
    }
    // The engine agrees: rows inserted through the Distributed table
    // (synchronously, so that they are on the shards when it answers)
    // land by the same rule.
    ch.query("INSERT INTO user_logins (id, username) SELECT number + 1000000000, 'via-distributed' FROM system.numbers LIMIT 200")
        .with_setting("insert_distributed_sync", "1")
        .execute()
        .await?;
    // Stored on one replica of each shard: the other fetches them.
    cluster
        .wait_replicas_agree(&stack.name, &["user_logins"])
        .await;
    assert_rows_on_their_shards(
        &cluster,
        &stack.name,
        "user_logins",
        "id",
        "username = 'via-distributed'",
    )
    .await?;
    for daemon in running {
        daemon.stop().await?;
    }
    Ok(())
}

/// On one replica of each shard: the rows of `table`'s local table that
/// match `filter` are there, and every one of them belongs to that shard
/// by `intHash64(key) % 2`.
async fn assert_rows_on_their_shards(
    cluster: &ChCluster,
    database: &str,
    table: &str,
    key: &str,
    filter: &str,
) -> anyhow::Result<()> {
    for node in [1, 3] {
        let shard = ChCluster::shard_of_node(node);
        let (rows, elsewhere): (u64, u64) = cluster
            .node(node, database)
            .query(&format!(
                "SELECT count(), countIf(intHash64({key}) % 2 != {}) FROM {table}_local WHERE {filter}",
                shard - 1
            ))
            .fetch_one()
            .await?;
        assert!(rows > 0, "{table} ({filter}): shard {shard} holds rows");
        assert_eq!(
            elsewhere, 0,
            "{table} ({filter}): rows of another shard on shard {shard}"
        );
    }
    Ok(())
}

/// What server `n` was sent of `table` (its `<table>_arrivals_here`).
async fn sent_to(cluster: &ChCluster, stack: &TestStack, n: usize, table: &str) -> u64 {
    cluster
        .node(n, &stack.name)
        .query(&format!("SELECT count() FROM {table}_arrivals_here"))
        .fetch_one()
        .await
        .unwrap_or(0)
}

/// Server 1 — the replica of shard 1 the sink writes to first — killed -9
/// under load and started again after a while: the sink leaves it for
/// server 2 at once (`sink_clickhouse_replica_left` = 1, server 2 sent
/// rows), takes it back once it is up (server 1 sent rows again), the
/// restarted replica catches up with the other, and every source row is
/// in ClickHouse once under `FINAL`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_under_load_and_restarted_loses_and_doubles_nothing() -> anyhow::Result<()>
{
    let _serial = SERIAL.lock().await;
    let cluster = ChCluster::from_env()?;
    let stack = cluster.stack("c_replica", "user_logins,sales").await?;
    cluster.record_arrivals(&stack, &TARGETS).await?;
    let metrics = Metrics::default();
    let relay = stack.spawn_relay(&metrics)?;
    let sink = stack.spawn_sink(&metrics)?;
    let load = Load::start(&stack, LOAD_ROWS_PER_SEC);
    let left = |metrics: &Metrics| {
        metrics.value(
            "sink_clickhouse_replica_left",
            &[("endpoint", cluster.urls[0].as_str())],
        )
    };
    wait_until("rows stored through server 1", SETTLE, || async {
        Ok(sent_to(&cluster, &stack, 1, "user_logins").await > 0)
    })
    .await;
    let on_two = sent_to(&cluster, &stack, 2, "user_logins").await;
    cluster.kill(1)?;
    wait_until("server 1 left for server 2", SETTLE, || async {
        Ok(left(&metrics) == 1 && sent_to(&cluster, &stack, 2, "user_logins").await > on_two)
    })
    .await;
    let down = Duration::from_secs(if long_mode() { 20 } else { 4 });
    tokio::time::sleep(down).await;
    cluster.start(1).await?;
    let restarted = Instant::now();
    let on_one = sent_to(&cluster, &stack, 1, "user_logins").await;
    wait_until("server 1 taken back", SETTLE, || async {
        Ok(left(&metrics) == 0 && sent_to(&cluster, &stack, 1, "user_logins").await > on_one)
    })
    .await;
    let taken_back = restarted.elapsed();
    load.stop().await;
    cluster.wait_replicas_agree(&stack.name, &TARGETS).await;
    let failovers = metrics.value(
        "sink_clickhouse_failovers_total",
        &[("endpoint", cluster.urls[0].as_str())],
    );
    let report = verify(
        &stack,
        "ClickHouse cluster (2 shards × 2 replicas): a replica killed -9 under load, restarted",
        1,
        restarted,
        &format!(
            "down {} s; its writes went to the other replica of its shard at once, and back to it {:.1} s after its restart ({failovers} failover); it caught up by replication",
            down.as_secs(),
            taken_back.as_secs_f64()
        ),
    )
    .await;
    assert!(report.rows_sent > 0);
    relay.stop().await?;
    sink.stop().await?;
    Ok(())
}

/// Changes of the group's committed offsets on `topic` while `stop` is
/// unset (each partition's first reading counts as one).
fn watch_committed(
    brokers: &str,
    group: &str,
    topic: &str,
    stop: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<u64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut partitions = rdkafka::TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            partitions.add_partition(topic, p.id());
        }
    }
    let mut seen: BTreeMap<i32, i64> = BTreeMap::new();
    let mut changes = 0;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let committed = consumer.committed_offsets(partitions.clone(), Duration::from_secs(10))?;
        for e in committed.elements() {
            if let rdkafka::Offset::Offset(at) = e.offset()
                && seen.insert(e.partition(), at) != Some(at)
            {
                changes += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(changes)
}

/// ZooKeeper killed -9 under load: every replica's table turns read-only,
/// the sink holds — `/readyz` 503 naming the replicas that refuse writes,
/// no offset committed while it holds — and once ZooKeeper is back it
/// resumes by itself; every source row in ClickHouse once under `FINAL`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_lost_holds_the_sink_not_ready_and_it_resumes_by_itself() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let cluster = ChCluster::from_env()?;
    let mut stack = cluster.stack("c_zookeeper", "user_logins,sales").await?;
    cluster.record_arrivals(&stack, &TARGETS).await?;
    let addr = free_addr()?;
    stack
        .overrides
        .push(("SINK_METRICS_ADDR".into(), addr.clone()));
    let metrics = Metrics::default();
    let relay = stack.spawn_relay(&metrics)?;
    let sink = stack.spawn_sink(&metrics)?;
    let load = Load::start(&stack, LOAD_ROWS_PER_SEC);
    wait_until("rows loaded", SETTLE, || async {
        Ok(stack.ch_count_final("user_logins").await? > 0)
    })
    .await;
    cluster.kill_zookeeper()?;
    let lost = Instant::now();
    wait_until(
        "/readyz naming the replicas that refuse writes",
        SETTLE,
        || async {
            let (status, body) = get(&addr, "/readyz").await?;
            let held = status == 503
                && body
                    .contains("ClickHouse cannot store rows for user_logins: no replica of shard")
                && body.contains("ZooKeeper");
            Ok(held)
        },
    )
    .await;
    let noticed = lost.elapsed();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (brokers, group, topic) = (
            stack.kafka_brokers.clone(),
            format!("{}.user-logins-consumer", stack.name),
            stack.topic("user_events"),
        );
        let stop = stop.clone();
        tokio::task::spawn_blocking(move || watch_committed(&brokers, &group, &topic, &stop))
    };
    let outage = Duration::from_secs(if long_mode() { 30 } else { 6 });
    let held_since = Instant::now();
    wait_until("held a while", SETTLE, || async {
        let (status, _) = get(&addr, "/readyz").await?;
        Ok(held_since.elapsed() >= outage && status == 503)
    })
    .await;
    let (_, reason) = get(&addr, "/readyz").await?;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let changes = watcher.await??;
    let partitions = 4;
    assert!(
        changes <= partitions,
        "no offset committed while held ({changes} changes)"
    );
    cluster.start_zookeeper().await?;
    let back = Instant::now();
    wait_until("/readyz ready again", SETTLE, || async {
        Ok(get(&addr, "/readyz").await?.0 == 200)
    })
    .await;
    let resumed = back.elapsed();
    load.stop().await;
    cluster.wait_replicas_agree(&stack.name, &TARGETS).await;
    let reason = reason
        .lines()
        .find(|l| l.contains("user_logins"))
        .unwrap_or("")
        .to_owned();
    verify(
        &stack,
        "ClickHouse cluster (2 shards × 2 replicas): ZooKeeper killed -9 under load, restarted",
        1,
        back,
        &format!(
            "not ready {:.1} s after ZooKeeper died, held {} s with no offset committed, ready again {:.1} s after its restart; /readyz said: {}",
            noticed.as_secs_f64(),
            outage.as_secs(),
            resumed.as_secs_f64(),
            reason.chars().take(200).collect::<String>()
        ),
    )
    .await;
    relay.stop().await?;
    sink.stop().await?;
    Ok(())
}

/// A migration adding a column (`ALTER TABLE user_logins ADD COLUMN …`,
/// written for one server) applied by `sink migrate` to the cluster — the
/// column on every server's local table and on the `Distributed` table —
/// while the sink runs: the sink adopts it without a restart, the rows
/// written with the column carry it, those before read NULL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_added_by_a_migration_on_the_cluster_is_loaded_without_a_restart()
-> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let cluster = ChCluster::from_env()?;
    let mut stack = cluster.stack("c_schema", "user_logins").await?;
    stack
        .overrides
        .push(("SINK_SCHEMA_CHECK_MS".into(), "300".into()));
    let metrics = Metrics::default();
    let relay = stack.spawn_relay(&metrics)?;
    let sink = stack.spawn_sink(&metrics)?;
    let pg = stack.pg().await?;
    let insert = |device: bool| {
        let sql = match device {
            true => {
                "INSERT INTO user_logins (username, event_type, event_time, device) SELECT 'u' || g, 'login', now(), 'phone' FROM generate_series(1, 50) g"
            }
            false => {
                "INSERT INTO user_logins (username, event_type, event_time) SELECT 'u' || g, 'login', now() FROM generate_series(1, 50) g"
            }
        };
        pg.execute(sql, &[])
    };
    insert(false).await?;
    wait_until("50 rows loaded", SETTLE, || async {
        Ok(stack.ch_count_final("user_logins").await? == 50)
    })
    .await;
    let dir = std::env::temp_dir().join(format!("{}-migrations", stack.name));
    std::fs::create_dir_all(dir.join("clickhouse"))?;
    std::fs::write(
        dir.join("clickhouse/0100_device.sql"),
        "ALTER TABLE user_logins ADD COLUMN device Nullable(String);\n",
    )?;
    let cfg = sink::config::clickhouse_config(&flows::Env::from_pairs(stack.daemon_env()))?;
    let migrations =
        flows::migrations::all("clickhouse", &[outbox_demo::migrations_dir(), dir.clone()])?;
    let applied = sink::migrate_with_retry(
        &cfg,
        &migrations,
        &tokio_util::sync::CancellationToken::new(),
    )
    .await?;
    assert_eq!(applied, ["user/0100_device"]);
    for n in 1..=cluster.urls.len() {
        for table in ["user_logins_local", "user_logins"] {
            let ty: Vec<String> = cluster
                .node(n, &stack.name)
                .query("SELECT type FROM system.columns WHERE database = ? AND table = ? AND name = 'device'")
                .bind(&stack.name)
                .bind(table)
                .fetch_all()
                .await?;
            assert_eq!(ty, ["Nullable(String)"], "{table} on server {n}");
        }
    }
    wait_until("the sink adopting the new column", SETTLE, || async {
        Ok(metrics.value(
            "sink_schema_changes_total",
            &[("flow", "user_logins"), ("table", "user_logins")],
        ) == 1)
    })
    .await;
    pg.batch_execute("ALTER TABLE user_logins ADD COLUMN device text")
        .await?;
    stack.use_flows_file(
        r#"[[flows]]
name = "user_logins"
consumer_group = "user-logins-consumer"

[[flows.sources]]
table = "user_logins"
topic = "user_events"
key = "username"
columns = ["id", "username", "event_type", "event_time", "device"]

[[flows.targets]]
topic = "user_events"
table = "user_logins"
"#,
    )?;
    relay.stop().await?;
    let relay = stack.spawn_relay(&Metrics::default())?;
    insert(true).await?;
    wait_until("100 rows loaded", SETTLE, || async {
        Ok(stack.ch_count_final("user_logins").await? == 100)
    })
    .await;
    let (phones, nulls): (u64, u64) = stack
        .ch()
        // (18.16's countIf of a Nullable condition is Nullable(UInt64).)
        .query("SELECT countIf(ifNull(device, '') = 'phone'), countIf(device IS NULL) FROM user_logins FINAL")
        .fetch_one()
        .await?;
    assert_eq!(
        (phones, nulls),
        (50, 50),
        "the column where written, NULL before"
    );
    relay.stop().await?;
    sink.stop().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// A cluster the servers do not have, or tables of the other mode, are
/// settings to fix: `sink migrate` and `sink run` exit 2 naming
/// `CLICKHOUSE_CLUSTER` and saying why (the clusters the servers have; a
/// `Distributed` table the sink would write to without it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_the_servers_lack_or_tables_of_the_other_mode_exit_2() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let cluster = ChCluster::from_env()?;
    let stack = cluster.stack("c_settings", "user_logins").await?;
    let run = |command: &'static str, set: Option<&'static str>| {
        let mut env = stack.daemon_env();
        env.retain(|(k, _)| k != "CLICKHOUSE_CLUSTER");
        if let Some(name) = set {
            env.push(("CLICKHOUSE_CLUSTER".into(), name.into()));
        }
        tokio::task::spawn_blocking(move || {
            let pairs: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            run_for_output("sink", &[command], &pairs)
        })
    };
    for command in ["migrate", "run"] {
        let (code, _, stderr) = run(command, Some("nope")).await?;
        assert_eq!(code, Some(2), "sink {command}: {stderr}");
        assert!(
            stderr.contains("CLICKHOUSE_CLUSTER")
                && stderr.contains("no cluster nope")
                && stderr.contains(&cluster.name),
            "sink {command}: {stderr}"
        );
    }
    let (code, _, stderr) = run("run", None).await?;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("CLICKHOUSE_CLUSTER")
            && stderr.contains("user_logins: it is a Distributed table"),
        "{stderr}"
    );
    Ok(())
}
