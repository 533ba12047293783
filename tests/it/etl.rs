//! The `etl` flow (seed 004): the normalising stage turns the router's raw
//! topics into `processed_events` exactly once for read_committed readers, and
//! the sink loads it into `events_processed`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use daemon::metrics::Metrics;
use outbox_tests::{Daemon, TestStack, wait_until};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

const ARRIVAL: Duration = Duration::from_secs(40);

async fn insert_raw(stack: &TestStack, clicks: i32, views: i32, orders: i32) -> anyhow::Result<()> {
    let pg = stack.pg().await?;
    pg.execute(
        "INSERT INTO user_clicks (\"timestamp\", user_id, ip_address, url, element_id)
         SELECT '2024-05-06 07:00:00'::timestamp + make_interval(secs => g), gen_random_uuid(), '10.1.1.1',
                '/p/' || g, 'btn-' || (1 + g % 20) FROM generate_series(1, $1::int) g",
        &[&clicks],
    )
    .await?;
    pg.execute(
        "INSERT INTO page_views (\"timestamp\", user_id, ip_address, url, duration_seconds)
         SELECT '2024-05-06 08:00:00', gen_random_uuid(), '10.1.1.2', '/v/' || g, 5 + g FROM generate_series(1, $1::int) g",
        &[&views],
    )
    .await?;
    pg.execute(
        "INSERT INTO orders (\"timestamp\", order_id, user_id, ip_address, amount)
         SELECT '2024-05-06 09:00:00', gen_random_uuid(), gen_random_uuid(), '10.1.1.3', 1.5 * g FROM generate_series(1, $1::int) g",
        &[&orders],
    )
    .await?;
    Ok(())
}

async fn raw_count(stack: &TestStack) -> anyhow::Result<u64> {
    let pg = stack.pg().await?;
    let row = pg
        .query_one(
            "SELECT (SELECT count(*) FROM user_clicks) + (SELECT count(*) FROM page_views) + (SELECT count(*) FROM orders)",
            &[],
        )
        .await?;
    Ok(row.get::<_, i64>(0) as u64)
}

async fn etl_stack(test: &str) -> anyhow::Result<TestStack> {
    let mut stack = TestStack::start(test).await?;
    stack.flows = "router,etl".into();
    stack.migrate().await?;
    Ok(stack)
}

/// The stage turns clicks/views/orders into `processed_events`;
/// `events_processed` holds one row per raw event with the normaliser's
/// shape; the stage's `/readyz` says ready with input lag 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_events_become_one_clean_shape() -> anyhow::Result<()> {
    let mut stack = etl_stack("etl_shape").await?;
    let stage_addr = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .to_string();
    stack
        .overrides
        .push(("STAGE_METRICS_ADDR".to_owned(), stage_addr.clone()));
    let metrics = Metrics::default();
    let running = vec![
        stack.spawn_relay(&metrics)?,
        stack.spawn_sink(&metrics)?,
        stack.spawn_stage(&metrics)?,
    ];
    insert_raw(&stack, 30, 20, 10).await?;
    wait_until("60 normalised events", ARRIVAL, || async {
        Ok(stack.ch_count_final("events_processed").await? == 60)
    })
    .await;

    let kinds: Vec<(String, u64)> = stack
        .ch()
        .query("SELECT event_type, count() FROM events_processed FINAL GROUP BY event_type ORDER BY event_type")
        .fetch_all()
        .await?;
    assert_eq!(
        kinds,
        vec![
            ("CLICKS".into(), 30),
            ("ORDERS".into(), 10),
            ("PAGE_VIEWS".into(), 20)
        ]
    );
    let click: (u32, String) = stack
        .ch()
        .query("SELECT toUInt32(event_timestamp), details FROM events_processed FINAL WHERE event_type = 'CLICKS' AND source_id = 3")
        .fetch_one()
        .await?;
    assert_eq!(click, (1_714_978_803, "/p/3 | btn-4".into()));
    let order: String = stack
        .ch()
        .query("SELECT details FROM events_processed FINAL WHERE event_type = 'ORDERS' AND source_id = 2")
        .fetch_one()
        .await?;
    let pg = stack.pg().await?;
    let order_id: String = pg
        .query_one("SELECT order_id::text FROM orders WHERE id = 2", &[])
        .await?
        .get(0);
    assert_eq!(order, format!("{order_id} | 3.0"));
    let users_match: u8 = stack
        .ch()
        .query("SELECT count() = countIf(length(user_id) = 36) FROM events_processed FINAL")
        .fetch_one()
        .await?;
    assert_eq!(users_match, 1);
    // The stage's /readyz: its inputs read to the end, so ready with no
    // backlog, measured over its assigned partitions (stage_input_lag).
    wait_until("the stage ready with no input lag", ARRIVAL, || async {
        let (status, body) = daemon::http::fetch(&stage_addr, "/readyz")
            .await
            .ok_or_else(|| anyhow::anyhow!("stage endpoint did not answer"))?;
        let lag = daemon::http::fetch(&stage_addr, "/metrics")
            .await
            .and_then(|(_, text)| {
                daemon::http::metric_sum(&text, "stage_input_lag", &[("flow", "etl")])
            });
        anyhow::ensure!(
            status == 200 && body.contains("flow=etl ready: backlog 0") && lag == Some(0.0),
            "{status} {body} lag {lag:?}"
        );
        Ok(true)
    })
    .await;
    assert!(metrics.value("stage_records_total", &[("flow", "etl")]) >= 60);
    for r in running {
        r.stop().await?;
    }
    Ok(())
}

/// Every (topic, partition) of `topics` → offset after its last data record,
/// and the records themselves, read by a fresh read_committed consumer.
fn read_all(
    brokers: &str,
    topics: &[String],
    group: &str,
) -> anyhow::Result<(BTreeMap<(String, i32), i64>, Vec<Vec<u8>>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&names)?;
    let mut ends = BTreeMap::new();
    let mut payloads = Vec::new();
    let mut idle_since = std::time::Instant::now();
    while idle_since.elapsed() < Duration::from_secs(3) {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                ends.insert((m.topic().to_owned(), m.partition()), m.offset() + 1);
                payloads.push(m.payload().unwrap_or_default().to_vec());
                idle_since = std::time::Instant::now();
            }
            Some(Err(e)) => anyhow::bail!("reading {topics:?}: {e}"),
            None => {}
        }
    }
    Ok((ends, payloads))
}

/// Kill -9 of the stage 4× under load, then stages dying at the crash point
/// between produce and commit (`stage-before-commit`, hit ≥ 3 times,
/// counted in their logs): `events_processed` holds exactly the raw events,
/// the group's committed offsets reach the end of every input partition,
/// and a `read_committed` reader of `processed_events` counts each raw
/// event's result exactly once (messages counted, no `FINAL`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_stage_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    let stack = etl_stack("etl_crash").await?;
    let metrics = Metrics::default();
    let relay = stack.spawn_relay(&metrics)?;
    let sink = stack.spawn_sink(&metrics)?;
    let env = stack.daemon_env();
    let mut stage = Daemon::spawn("stage", &["run"], &env, &format!("{}-stage-0", stack.name));
    for round in 1..=4 {
        insert_raw(&stack, 200, 150, 50).await?;
        let target = 400 * round as u64 - 300;
        wait_until("stage progress", ARRIVAL, || async {
            Ok(stack.ch_count_final("events_processed").await? >= target)
        })
        .await;
        insert_raw(&stack, 50, 50, 50).await?;
        stage.kill9();
        stage = Daemon::spawn(
            "stage",
            &["run"],
            &env,
            &format!("{}-stage-{round}", stack.name),
        );
    }
    // Then crashes at the crash point between produce and commit: each
    // stage dies there with probability 0.3 per batch and is restarted.
    stage.kill9();
    let mut armed = env.clone();
    armed.push(("OUTBOX_FAILPOINTS".into(), "stage-before-commit=0.3".into()));
    let label = |i: u32| format!("{}-stage-armed-{i}", stack.name);
    let mut restarts = 0;
    stage = Daemon::spawn("stage", &["run"], &armed, &label(0));
    let prefix = format!("{}-stage-armed-", stack.name);
    let until = std::time::Instant::now() + Duration::from_secs(60);
    while outbox_tests::faults::failpoint_hits(&prefix, "stage-before-commit") < 3
        && std::time::Instant::now() < until
    {
        insert_raw(&stack, 20, 20, 20).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        if !stage.is_running() {
            restarts += 1;
            stage = Daemon::spawn("stage", &["run"], &armed, &label(restarts));
        }
    }
    let hits = outbox_tests::faults::failpoint_hits(&prefix, "stage-before-commit");
    assert!(
        hits >= 3,
        "the crash point between produce and commit was hit ({hits})"
    );
    stage.kill9();
    let _last = Daemon::spawn(
        "stage",
        &["run"],
        &env,
        &format!("{}-stage-last", stack.name),
    );
    let restarted = std::time::Instant::now();
    let total = raw_count(&stack).await?;
    wait_until("every raw event normalised once", ARRIVAL, || async {
        Ok(stack.ch_count_final("events_processed").await? == total)
    })
    .await;
    let (stored, distinct): (u64, u64) = stack
        .ch()
        .query("SELECT count(), uniqExact(event_type, source_id) FROM events_processed FINAL")
        .fetch_one()
        .await?;
    let (raw, raw_distinct): (u64, u64) = stack
        .ch()
        .query("SELECT count(), uniqExact(event_type, source_id) FROM events_processed")
        .fetch_one()
        .await?;
    assert_eq!(
        (stored, distinct),
        (total, total),
        "exactly the raw events, once each"
    );
    outbox_tests::faults::record(&outbox_tests::faults::FaultReport {
        fault: "etl stage kill -9 (consume-transform-produce)".into(),
        injected: 4 + hits as u32,
        rows_sent: total,
        rows_lost: total - distinct,
        doubled_in_view: stored - distinct,
        raw_duplicates: raw - raw_distinct,
        recovery_ms: restarted.elapsed().as_millis() as u64,
        note: format!(
            "events_processed vs raw clicks/views/orders; 4 kills at random moments, crash point stage-before-commit hit {hits} times; a read_committed reader of processed_events saw each result once"
        ),
    });
    relay.stop().await?;
    sink.stop().await?;

    // After the crashes the stage group's committed offsets reach
    // the end of every input partition, and a read_committed reader of
    // processed_events sees each raw event's result exactly once.
    let inputs: Vec<String> = ["user_clicks", "page_views", "orders"]
        .iter()
        .map(|t| stack.topic(t))
        .collect();
    let brokers = stack.kafka_brokers.clone();
    let (input_ends, _) = {
        let (b, i, g) = (
            brokers.clone(),
            inputs.clone(),
            format!("{}.verify", stack.name),
        );
        tokio::task::spawn_blocking(move || read_all(&b, &i, &g)).await??
    };
    let stage_group = stack.group("etl-normaliser");
    let partitions: Vec<(String, i32)> = input_ends.keys().cloned().collect();
    let committed = tokio::task::spawn_blocking(move || -> anyhow::Result<TopicPartitionList> {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", &stage_group)
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in &partitions {
            tpl.add_partition(topic, *partition);
        }
        Ok(c.committed_offsets(tpl, Duration::from_secs(10))?)
    })
    .await??;
    for elem in committed.elements() {
        let end = input_ends
            .get(&(elem.topic().to_owned(), elem.partition()))
            .copied()
            .unwrap_or(0);
        match elem.offset() {
            Offset::Offset(o) => assert!(
                o >= end,
                "{}[{}] committed {o} < end {end}",
                elem.topic(),
                elem.partition()
            ),
            other => panic!(
                "{}[{}]: no committed offset ({other:?})",
                elem.topic(),
                elem.partition()
            ),
        }
    }
    let output = vec![stack.topic("processed_events")];
    let (b, g) = (
        stack.kafka_brokers.clone(),
        format!("{}.verify-out", stack.name),
    );
    let (_, records) = tokio::task::spawn_blocking(move || read_all(&b, &output, &g)).await??;
    let distinct: BTreeSet<(String, u64)> = records
        .iter()
        .filter_map(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
        .map(|v| {
            (
                v["event_type"].as_str().unwrap_or_default().to_owned(),
                v["source_id"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(distinct.len() as u64, total, "every raw event normalised");
    assert_eq!(
        records.len() as u64,
        total,
        "read_committed sees each result exactly once"
    );
    Ok(())
}

/// Rebalances mid-batch: the stage keeps a batch open for 2 s
/// (`STAGE_FLUSH_INTERVAL_MS`) while a second stage joins and leaves its
/// group. A revocation restarts every reassigned partition from its
/// committed offset, so a batch taken in before it must be dropped, not
/// topped up with the same records again (they would be produced twice in
/// one transaction), and offsets of partitions now another member's are
/// not committed. A read_committed reader of processed_events sees each
/// raw event's result exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stages_joining_and_leaving_mid_batch_produce_each_result_once() -> anyhow::Result<()> {
    let stack = etl_stack("etl_rebalance").await?;
    let metrics = Metrics::default();
    let relay = stack.spawn_relay(&metrics)?;
    let sink = stack.spawn_sink(&metrics)?;
    let mut env = stack.daemon_env();
    env.push(("STAGE_FLUSH_INTERVAL_MS".into(), "2000".into()));
    let first = Daemon::spawn("stage", &["run"], &env, &format!("{}-stage-a", stack.name));
    insert_raw(&stack, 100, 100, 100).await?;
    wait_until("the first stage's output", ARRIVAL, || async {
        Ok(stack.ch_count_final("events_processed").await? > 0)
    })
    .await;
    for round in 0..3 {
        insert_raw(&stack, 60, 60, 60).await?;
        let mut joiner = Daemon::spawn(
            "stage",
            &["run"],
            &env,
            &format!("{}-stage-b{round}", stack.name),
        );
        insert_raw(&stack, 60, 60, 60).await?;
        let total = raw_count(&stack).await?;
        wait_until("both stages caught up", ARRIVAL, || async {
            Ok(stack.ch_count_final("events_processed").await? >= total)
        })
        .await;
        insert_raw(&stack, 30, 30, 30).await?;
        let status = joiner.terminate(Duration::from_secs(15));
        assert!(
            status.is_some_and(|s| s.success()),
            "the joiner left cleanly: {status:?}"
        );
    }
    let total = raw_count(&stack).await?;
    wait_until("every raw event normalised", ARRIVAL, || async {
        Ok(stack.ch_count_final("events_processed").await? >= total)
    })
    .await;
    let output = vec![stack.topic("processed_events")];
    let (b, g) = (
        stack.kafka_brokers.clone(),
        format!("{}.verify-out", stack.name),
    );
    let (_, records) = tokio::task::spawn_blocking(move || read_all(&b, &output, &g)).await??;
    let mut seen: BTreeMap<(String, u64), usize> = BTreeMap::new();
    for v in records
        .iter()
        .filter_map(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
    {
        let key = (
            v["event_type"].as_str().unwrap_or_default().to_owned(),
            v["source_id"].as_u64().unwrap_or(0),
        );
        *seen.entry(key).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert_eq!(seen.len() as u64, total, "every raw event normalised");
    assert!(
        twice.is_empty(),
        "results produced more than once ({} of {}), e.g. {twice:?}",
        seen.values().filter(|n| **n > 1).count(),
        seen.len()
    );
    let dropped = std::fs::read_to_string(&first.log)?
        .matches("partitions revoked: the open batch is dropped")
        .count();
    eprintln!(
        "{} results, each once; the first stage dropped {dropped} open batches on revocation",
        seen.len()
    );
    relay.stop().await?;
    sink.stop().await?;
    Ok(())
}
