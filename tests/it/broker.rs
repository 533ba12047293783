//! What only a real Kafka broker can show (librdkafka's mock shows aborted
//! records to read_committed readers and accepts fenced producers): an
//! aborted relay batch is invisible, a frozen relay is fenced when it wakes
//! up after a standby took over, and an idle pipeline's lag is 0.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use daemon::metrics::Metrics;
use outbox_tests::topic::{Isolation, Record, read_all};
use outbox_tests::{Daemon, TestStack, wait_until};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const ARRIVAL: Duration = Duration::from_secs(40);
/// Rows per relay batch in the zombie test.
const BATCH: usize = 100;

async fn stack(test: &str) -> anyhow::Result<TestStack> {
    let stack = TestStack::migrated(test).await?;
    Ok(stack)
}

async fn insert_logins(stack: &TestStack, n: i32) -> anyhow::Result<()> {
    stack
        .pg()
        .await?
        .execute(
            "INSERT INTO user_logins (username, event_type, event_time)
             SELECT 'user-' || (g % 7), 'login', now() FROM generate_series(1, $1::int) g",
            &[&n],
        )
        .await?;
    Ok(())
}

async fn read(stack: &TestStack, isolation: Isolation) -> anyhow::Result<Vec<Record>> {
    let brokers = stack.kafka_brokers.clone();
    let topics = vec![stack.topic("user_events")];
    tokio::task::spawn_blocking(move || read_all(&brokers, &topics, isolation)).await?
}

/// How many times each source id appears.
fn id_counts(records: &[Record]) -> BTreeMap<i64, usize> {
    let mut counts = BTreeMap::new();
    for r in records {
        *counts.entry(r.id().unwrap_or(-1)).or_default() += 1;
    }
    counts
}

fn with(env: &[(String, String)], extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = env.to_vec();
    for (k, v) in extra {
        env.retain(|(name, _)| name != k);
        env.push(((*k).to_owned(), (*v).to_owned()));
    }
    env
}

/// Claim 1: a batch produced and then aborted — the relay dies after the
/// produce, before the commit (crash point `relay-before-kafka-commit`) — is
/// never seen by a read_committed reader; the rows stay pending, are
/// published again by the restarted relay and are flagged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_relay_batch_is_invisible_and_its_rows_are_published_again() -> anyhow::Result<()>
{
    let stack = stack("b_abort").await?;
    let rows = 500;
    insert_logins(&stack, rows).await?;
    let env = stack.daemon_env();
    let mut crashing = Daemon::spawn(
        "relay",
        &["run"],
        &with(
            &env,
            &[("OUTBOX_FAILPOINTS", "relay-before-kafka-commit=1")],
        ),
        &format!("{}-relay-crash", stack.name),
    );
    let status = crashing.wait_exit(ARRIVAL);
    assert!(
        status.is_some_and(|s| !s.success()),
        "the relay aborted at its crash point: {status:?}"
    );
    let hits = crashing
        .log_text()
        .matches("failpoint relay-before-kafka-commit: aborting")
        .count();
    assert_eq!(hits, 1, "the crash point was hit once");
    assert_eq!(
        stack.pending("user_logins").await?,
        i64::from(rows),
        "nothing flagged by the aborted batch"
    );

    let mut relay = Daemon::spawn("relay", &["run"], &env, &format!("{}-relay", stack.name));
    wait_until("every row flagged", ARRIVAL, || async {
        Ok(stack.pending("user_logins").await? == 0)
    })
    .await;
    relay.terminate(Duration::from_secs(15));

    let committed = read(&stack, Isolation::Committed).await?;
    let counts = id_counts(&committed);
    assert_eq!(counts.len(), rows as usize, "every row visible");
    assert!(
        counts.values().all(|&n| n == 1),
        "no row visible twice: {:?}",
        counts
            .iter()
            .filter(|(_, n)| **n > 1)
            .take(5)
            .collect::<Vec<_>>()
    );
    // The aborted batch is in the log: a read_uncommitted reader sees it.
    let uncommitted = read(&stack, Isolation::Uncommitted).await?;
    assert!(
        uncommitted.len() > committed.len(),
        "the aborted records are in the log ({} read_uncommitted vs {} read_committed)",
        uncommitted.len(),
        committed.len()
    );
    Ok(())
}

/// Claim 2: the active relay frozen mid-transaction (crash point
/// `relay-before-kafka-commit=pause`: SIGSTOP after producing, before
/// committing) loses its Postgres session to the server's idle timeout, the
/// standby takes over; resumed, the zombie's commit fails as fenced and it
/// steps down without flagging anything. A read_committed reader sees every
/// row exactly once; the zombie's batch is in the log, aborted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_relay_is_fenced_when_it_wakes_and_steps_down() -> anyhow::Result<()> {
    let stack = stack("b_zombie").await?;
    let batch = BATCH.to_string();
    insert_logins(&stack, 300).await?;
    let env = with(
        &stack.daemon_env(),
        &[
            ("RELAY_SESSION_TIMEOUT_MS", "3000"),
            ("RELAY_BATCH_SIZE", batch.as_str()),
        ],
    );
    let mut zombie = Daemon::spawn(
        "relay",
        &["run"],
        &with(
            &env,
            &[("OUTBOX_FAILPOINTS", "relay-before-kafka-commit=pause")],
        ),
        &format!("{}-relay-zombie", stack.name),
    );
    wait_until(
        "the active relay frozen mid-transaction",
        ARRIVAL,
        || async { Ok(zombie.paused_at("relay-before-kafka-commit")) },
    )
    .await;
    let frozen = Instant::now();
    let mut standby = Daemon::spawn(
        "relay",
        &["run"],
        &env,
        &format!("{}-relay-standby", stack.name),
    );
    wait_until("the standby published everything", ARRIVAL, || async {
        Ok(stack.pending("user_logins").await? == 0)
    })
    .await;
    let takeover = frozen.elapsed();
    insert_logins(&stack, 100).await?;
    wait_until("the standby keeps publishing", ARRIVAL, || async {
        Ok(stack.pending("user_logins").await? == 0)
    })
    .await;

    zombie.resume()?;
    wait_until("the zombie fenced and standing by", ARRIVAL, || async {
        let log = zombie.log_text();
        Ok(log.contains("fenced") && log.contains("standing by"))
    })
    .await;
    insert_logins(&stack, 100).await?;
    wait_until("every row flagged", ARRIVAL, || async {
        Ok(stack.pending("user_logins").await? == 0)
    })
    .await;
    assert!(
        zombie.is_running(),
        "the zombie stands by, it does not exit"
    );
    let standby_log = standby.log_text();
    assert_eq!(
        standby_log.matches("active relay for this flow").count(),
        1,
        "the standby stayed active"
    );
    assert!(
        !standby_log.contains("fenced"),
        "the zombie stepped down instead of fencing the active relay back"
    );
    zombie.terminate(Duration::from_secs(15));
    standby.terminate(Duration::from_secs(15));

    let committed = read(&stack, Isolation::Committed).await?;
    let counts = id_counts(&committed);
    assert_eq!(counts.len(), 500, "every row visible");
    // The zombie's frozen batch is in the log but aborted: what a
    // read_uncommitted reader sees beyond the committed records.
    let visible: BTreeSet<(i32, i64)> = committed.iter().map(|r| (r.partition, r.offset)).collect();
    let uncommitted = read(&stack, Isolation::Uncommitted).await?;
    let aborted: BTreeSet<i64> = uncommitted
        .iter()
        .filter(|r| !visible.contains(&(r.partition, r.offset)))
        .map(|r| r.id().unwrap_or(-1))
        .collect();
    assert!(
        aborted.len() >= BATCH,
        "the zombie's frozen batch is in the log, aborted: {} records",
        aborted.len()
    );
    let twice: Vec<&i64> = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id)
        .collect();
    assert!(
        twice.is_empty(),
        "every row exactly once, none of the zombie's batch: {} rows seen twice, e.g. {:?}",
        twice.len(),
        twice.first()
    );
    eprintln!(
        "standby took over {} ms after the freeze; the zombie's batch ({} records) aborted",
        takeover.as_millis(),
        aborted.len()
    );
    Ok(())
}

/// The group's committed offsets against the partitions' ends.
fn group_lag(brokers: &str, group: &str, topic: &str) -> anyhow::Result<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("isolation.level", "read_committed")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            tpl.add_partition(topic, p.id());
        }
    }
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(10))?;
    let mut lag = 0;
    for e in committed.elements() {
        let (low, high) =
            consumer.fetch_watermarks(topic, e.partition(), Duration::from_secs(10))?;
        let at = match e.offset() {
            Offset::Offset(o) => o,
            _ => low,
        };
        lag += high - at;
    }
    Ok(lag)
}

/// Claim 5: transaction markers occupy offsets, so a sink committing "last
/// offset + 1" would show lag 1 per partition for ever once idle. After the
/// last transaction the group's lag reaches 0 and stays there, and the
/// sink's own gauge and readiness agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_pipeline_reaches_lag_0_and_stays_ready() -> anyhow::Result<()> {
    let stack = stack("b_idle").await?;
    let metrics = Metrics::default();
    let relay = stack.spawn_relay(&metrics)?;
    let sink = stack.spawn_sink(&metrics)?;
    for _ in 0..5 {
        insert_logins(&stack, 40).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_until("rows loaded", ARRIVAL, || async {
        Ok(stack.ch_count_final("user_logins").await? == 200)
    })
    .await;
    let brokers = stack.kafka_brokers.clone();
    let group = stack.group("user-logins-consumer");
    let topic = stack.topic("user_events");
    let lag = || {
        let (b, g, t) = (brokers.clone(), group.clone(), topic.clone());
        async move { tokio::task::spawn_blocking(move || group_lag(&b, &g, &t)).await? }
    };
    wait_until("the group's lag reaches 0", ARRIVAL, || async {
        Ok(lag().await? == 0)
    })
    .await;
    let gauge_total = || {
        (0..4)
            .map(|p| {
                metrics.value(
                    "sink_consumer_lag",
                    &[
                        ("flow", "user_logins"),
                        ("topic", &topic),
                        ("partition", &p.to_string()),
                    ],
                )
            })
            .sum::<i64>()
    };
    wait_until("the sink's lag gauge reaches 0", ARRIVAL, || async {
        Ok(gauge_total() == 0)
    })
    .await;
    // Idle for a while: it stays there.
    let idle_until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < idle_until {
        assert_eq!(lag().await?, 0, "lag stays 0 while idle");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(gauge_total(), 0);
    relay.stop().await?;
    sink.stop().await?;
    Ok(())
}

/// Static membership on a real group coordinator: a second sink started
/// with the same `SINK_GROUP_INSTANCE_ID` takes the member's place and the
/// first is fenced (librdkafka stops its consumer for good). The fenced sink
/// exits non-zero naming the setting instead of running on, consuming
/// nothing; the other one delivers every row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_fenced_by_a_twin_instance_id_exits_naming_the_setting() -> anyhow::Result<()> {
    let stack = stack("b_twin").await?;
    let metrics = Metrics::default();
    let relay = stack.spawn_relay(&metrics)?;
    let env = with(&stack.daemon_env(), &[("SINK_GROUP_INSTANCE_ID", "sink-a")]);
    insert_logins(&stack, 50).await?;
    let mut first = Daemon::spawn(
        "sink",
        &["run"],
        &env,
        &format!("{}-sink-first", stack.name),
    );
    wait_until("the first sink loads the rows", ARRIVAL, || async {
        Ok(stack.ch_count_final("user_logins").await? >= 50)
    })
    .await;
    let mut second = Daemon::spawn(
        "sink",
        &["run"],
        &env,
        &format!("{}-sink-second", stack.name),
    );
    let status = first.wait_exit(ARRIVAL);
    let log = first.log_text();
    assert!(
        status.is_some_and(|s| !s.success()),
        "the fenced sink exits non-zero (status {status:?}); log:\n{log}"
    );
    assert!(
        log.contains("SINK_GROUP_INSTANCE_ID"),
        "the fenced sink names the setting; log:\n{log}"
    );
    insert_logins(&stack, 50).await?;
    wait_until("the second sink loads the new rows", ARRIVAL, || async {
        Ok(stack.ch_count_final("user_logins").await? >= 100)
    })
    .await;
    assert!(second.is_running(), "the sink that took the place runs on");
    relay.stop().await?;
    Ok(())
}

/// A backlog committed before the relay started, published into a topic
/// that refuses records stamped more than 5 s in the past
/// (`message.timestamp.before.max.ms`) and keeps a minute
/// (`retention.ms`): every row is accepted and loaded, none set aside —
/// the record's timestamp is its publication — and the sink's freshness
/// still measures from each row's commit (the `committed_at` header).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_older_than_the_topics_time_limits_is_published_and_loaded() -> anyhow::Result<()>
{
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let stack = stack("old_stamps").await?;
    outbox_tests::faults::record_arrivals_into(&stack, &["user_logins"]).await?;
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka_brokers)
        .create()?;
    for result in admin
        .create_topics(
            &[
                NewTopic::new(&stack.topic("user_events"), 2, TopicReplication::Fixed(1))
                    .set("retention.ms", "60000")
                    .set("message.timestamp.before.max.ms", "5000"),
            ],
            &AdminOptions::new(),
        )
        .await?
    {
        result.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }
    insert_logins(&stack, 50).await?;
    let committed = Instant::now();
    wait_until(
        "the backlog's commits older than the topic accepts",
        ARRIVAL,
        || async { Ok(committed.elapsed() > Duration::from_secs(7)) },
    )
    .await;
    let addr = outbox_tests::http::free_addr()?;
    let mut env = stack.daemon_env();
    env.retain(|(k, _)| k != "SINK_METRICS_ADDR");
    env.push(("SINK_METRICS_ADDR".into(), addr.clone()));
    let mut relay = Daemon::spawn("relay", &["run"], &env, &format!("{}-relay", stack.name));
    let mut sink = Daemon::spawn("sink", &["run"], &env, &format!("{}-sink", stack.name));
    let pg = stack.pg().await?;
    let labels = [("flow", "user_logins"), ("table", "user_logins")];
    wait_until("the backlog flagged and loaded", ARRIVAL, || async {
        let aside: i64 = pg
            .query_one("SELECT count(*) FROM outbox_dead_rows", &[])
            .await?
            .get(0);
        anyhow::ensure!(aside == 0, "{aside} rows set aside: Kafka refused them");
        // The sink measures a batch's freshness just after ClickHouse takes
        // it: the rows can be seen there a moment before the metric is.
        let metrics = outbox_tests::http::get(&addr, "/metrics").await?.1;
        let measured =
            daemon::http::metric_value(&metrics, "sink_freshness_seconds_count", &labels);
        Ok(stack.pending("user_logins").await? == 0
            && stack.ch_count_final("user_logins").await? == 50
            && measured >= Some(50.0))
    })
    .await;
    let metrics = outbox_tests::http::get(&addr, "/metrics").await?.1;
    let count = daemon::http::metric_value(&metrics, "sink_freshness_seconds_count", &labels);
    let sum =
        daemon::http::metric_value(&metrics, "sink_freshness_seconds_sum", &labels).unwrap_or(0.0);
    relay.terminate(Duration::from_secs(15));
    sink.terminate(Duration::from_secs(15));
    let (in_view, distinct): (u64, u64) = stack
        .ch()
        .query("SELECT count(), uniqExact(id) FROM user_logins FINAL")
        .fetch_one()
        .await?;
    let raw = stack.ch_count_arrived("user_logins").await?;
    outbox_tests::faults::record_checked(outbox_tests::faults::FaultReport {
        fault: "A backlog older than the topic's timestamp limit (message.timestamp.before.max.ms 5 s, retention.ms 60 s)".into(),
        injected: 1,
        rows_sent: 50,
        rows_lost: 50u64.saturating_sub(distinct),
        doubled_in_view: in_view - distinct,
        raw_duplicates: raw - distinct,
        recovery_ms: committed.elapsed().as_millis() as u64,
        note: "rows committed 7 s before the relay started; records stamped at publication, none set aside; freshness measured from the commit (committed_at header)".into(),
    });
    assert_eq!(count, Some(50.0), "each row's freshness measured");
    assert!(
        sum / 50.0 >= 7.0,
        "measured from the commit, not the publication: mean {} s",
        sum / 50.0
    );
    let records = read(&stack, Isolation::Committed).await?;
    assert_eq!(records.len(), 50, "each row once on the topic");
    Ok(())
}

async fn insert_sales(stack: &TestStack, n: i32) -> anyhow::Result<()> {
    stack
        .pg()
        .await?
        .execute(
            "INSERT INTO sales (event_time, product_id, product_name, category, quantity, price, discount, total, store_id, cashier_id, customer_id)
             SELECT '2024-01-01 00:00:00', g, 'p', 'c', 1, 1.50, 0, 1.50, 1, 1, 'x' FROM generate_series(1, $1::int) g",
            &[&n],
        )
        .await?;
    Ok(())
}

async fn insert_movements(stack: &TestStack, n: i32) -> anyhow::Result<()> {
    stack
        .pg()
        .await?
        .execute(
            "INSERT INTO warehouse (event_time, product_id, product_name, category, warehouse, quantity, movement_type, source, responsible)
             SELECT '2024-01-01 00:00:00', g, 'p', 'c', 'w', 1, 'supply', 's', 'r' FROM generate_series(1, $1::int) g",
            &[&n],
        )
        .await?;
    Ok(())
}

/// The CI failure of `faults.rs: sink_kill_9_…` (`stock_movements: 0 in
/// ClickHouse`), made deterministic. A static member of the `sales` group
/// joined while the `warehouse` topic did not exist yet, so the group's
/// assignment holds `sales` only, and it was killed before its next
/// metadata refresh showed `warehouse`. Its restart (same
/// `SINK_GROUP_INSTANCE_ID`, within the session timeout) takes its place
/// without a rebalance — the broker hands back the stored assignment —
/// and, since `warehouse` already exists when it starts, librdkafka never
/// sees the topic "appear" and never rejoins: `warehouse` is consumed by
/// no one, for good. The first member is played by a plain consumer that
/// saw `sales` only, so that the kill cannot come too late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_sink_restarted_after_its_topic_appeared_consumes_it() -> anyhow::Result<()> {
    let stack = TestStack::migrated_for("b_static_new_topic", "sales").await?;
    let metrics = Metrics::default();
    let relay = stack.spawn_relay(&metrics)?;
    insert_sales(&stack, 10).await?;
    wait_until("the sales rows published", ARRIVAL, || async {
        Ok(stack.pending("sales").await? == 0)
    })
    .await;
    let (group, sales, warehouse) = (
        stack.group("clickhouse_sales_consumer"),
        stack.topic("sales"),
        stack.topic("warehouse"),
    );
    // The first instance: joins while only `sales` exists, then dies
    // without leaving (a static member never sends LeaveGroup).
    let (brokers, g, s) = (stack.kafka_brokers.clone(), group.clone(), sales.clone());
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let first: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", &g)
            .set("group.instance.id", "sink-a.sales")
            .set("session.timeout.ms", "45000")
            .set("enable.auto.commit", "false")
            .create()?;
        first.subscribe(&[&s])?;
        let deadline = Instant::now() + ARRIVAL;
        while first.assignment()?.count() == 0 {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the first instance got no partitions"
            );
            first.poll(Duration::from_millis(100));
        }
        Ok(())
    })
    .await??;
    // `warehouse` appears (the relay creates it), then the member restarts.
    insert_movements(&stack, 10).await?;
    wait_until("the movements published", ARRIVAL, || async {
        Ok(stack.pending("warehouse").await? == 0)
    })
    .await;
    let env = with(&stack.daemon_env(), &[("SINK_GROUP_INSTANCE_ID", "sink-a")]);
    let _sink = Daemon::spawn("sink", &["run"], &env, &format!("{}-sink", stack.name));
    wait_until("the sales rows loaded", ARRIVAL, || async {
        Ok(stack.ch_count_final("sales").await? == 10)
    })
    .await;
    let loaded = Instant::now();
    outbox_tests::wait::wait_for(
        "the restarted member to consume the topic that appeared",
        Duration::from_secs(30),
        || async {
            let stored = stack.ch_count_final("stock_movements").await?;
            Ok(if stored == 10 {
                Ok(())
            } else {
                Err(format!("stock_movements: {stored} of 10 in ClickHouse ({warehouse} assigned to no member of {group}?)"))
            })
        },
    )
    .await;
    eprintln!("warehouse loaded {:?} after sales", loaded.elapsed());
    relay.stop().await?;
    Ok(())
}

/// How long after `published()` holds `loaded()` does (polled every 50 ms).
async fn arrival<P, PF, L, LF>(what: &str, published: P, loaded: L) -> Duration
where
    P: FnMut() -> PF,
    PF: std::future::Future<Output = anyhow::Result<bool>>,
    L: FnMut() -> LF,
    LF: std::future::Future<Output = anyhow::Result<bool>>,
{
    wait_until(&format!("{what} published"), ARRIVAL, published).await;
    let at = Instant::now();
    wait_until(&format!("{what} loaded"), ARRIVAL, loaded).await;
    at.elapsed()
}

/// A sink started before its topics exist waits for them without an
/// ERROR line, and consumes each topic soon after it is created: the
/// first (nothing to consume before it) and one created while the sink
/// already consumes the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_started_before_its_topics_exist_consumes_each_soon_after_it_appears()
-> anyhow::Result<()> {
    let stack = TestStack::migrated_for("b_topics_later", "sales").await?;
    let relay = stack.spawn_relay(&Metrics::default())?;
    let sink = Daemon::spawn(
        "sink",
        &["run"],
        &stack.daemon_env(),
        &format!("{}-sink", stack.name),
    );
    let log = sink.log.clone();
    wait_until("the sink subscribed", ARRIVAL, || async {
        Ok(std::fs::read_to_string(&log)?.contains("sink consuming"))
    })
    .await;
    insert_sales(&stack, 10).await?;
    let first = arrival(
        "sales",
        || async { Ok(stack.pending("sales").await? == 0) },
        || async { Ok(stack.ch_count_final("sales").await? == 10) },
    )
    .await;
    // Right after a subscribed topic is reported missing librdkafka asks
    // for it again quickly; later only its metadata refresh finds a new
    // topic. The second topic comes in that steady state.
    let steady = Instant::now();
    wait_until("the consumer in its steady state", ARRIVAL, || async {
        Ok(steady.elapsed() > Duration::from_secs(3))
    })
    .await;
    insert_movements(&stack, 10).await?;
    let second = arrival(
        "warehouse",
        || async { Ok(stack.pending("warehouse").await? == 0) },
        || async { Ok(stack.ch_count_final("stock_movements").await? == 10) },
    )
    .await;
    eprintln!("loaded after publishing: sales {first:?}, warehouse {second:?}");
    let errors: Vec<String> = std::fs::read_to_string(&log)?
        .lines()
        .filter(|l| l.contains("ERROR"))
        .map(str::to_owned)
        .collect();
    assert!(
        errors.is_empty(),
        "ERROR lines while waiting for topics: {errors:#?}"
    );
    // About a second (librdkafka's metadata refresh, then a rebalance and a
    // flush); 3 s leaves room for a loaded test machine.
    let bound = Duration::from_secs(3);
    assert!(
        first < bound && second < bound,
        "sales {first:?}, warehouse {second:?} after publishing"
    );
    relay.stop().await?;
    Ok(())
}
