//! Resend and rewind, on the real broker: `relay resend` publishes rows
//! already sent once more through the running relay (an id range, or rows
//! since a time, a sharded flow's shards each taking theirs), and `sink
//! rewind` moves a stopped sink's group back so ClickHouse is loaded from
//! the topic again — refused while the sink runs.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use outbox_tests::daemon::run_for_output;
use outbox_tests::topic::{Isolation, read_all};
use outbox_tests::wait::wait_for;
use outbox_tests::{Daemon, TestStack, wait_until};

const SETTLE: Duration = Duration::from_secs(60);

fn cli(name: &str, env: &[(String, String)], args: &[&str]) -> (Option<i32>, String, String) {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    run_for_output(name, args, &env)
}

/// `rows` rows of `user_logins`, `age_hours` old; their ids.
async fn insert(
    pg: &tokio_postgres::Client,
    rows: i64,
    age_hours: i32,
) -> anyhow::Result<Vec<i64>> {
    Ok(pg
        .query(
            "INSERT INTO user_logins (username, event_type, event_time)
             SELECT 'user-' || (g % 7), 'login', now() - make_interval(hours => $2)
             FROM generate_series(1, $1::int8) AS g RETURNING id::int8",
            &[&rows, &age_hours],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

async fn deliveries(stack: &TestStack) -> anyhow::Result<BTreeMap<i64, usize>> {
    let brokers = stack.kafka_brokers.clone();
    let topics = vec![stack.topic("user_events")];
    let records =
        tokio::task::spawn_blocking(move || read_all(&brokers, &topics, Isolation::Committed))
            .await??;
    let mut counts = BTreeMap::new();
    for r in &records {
        *counts.entry(r.id().unwrap_or(-1)).or_default() += 1;
    }
    Ok(counts)
}

/// `relay resend` of an id range and of the last day's rows through the
/// running relay of a 2-shard flow: each resent row exactly twice on the
/// topic, every other once; bad `--ids` and a `--since` without a time
/// column exit 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_resend_publishes_sent_rows_again_through_the_running_relay() -> anyhow::Result<()> {
    let mut stack = TestStack::migrated("resend").await?;
    let pg = stack.pg().await?;
    // Split in two shards, with a time column: each shard takes its rows
    // of a range back.
    let flows = stack.use_flows_file(
        r#"[[flows]]
name = "user_logins"
consumer_group = "user-logins-consumer"
shards = 2

[[flows.sources]]
table = "user_logins"
topic = "user_events"
key = "username"
columns = ["id", "username", "event_type", "event_time"]
time_column = "event_time"
"#,
    )?;
    let env = stack.daemon_env();
    let mut relay = Daemon::spawn("relay", &["run"], &env, &format!("{}-relay", stack.name));
    let old = insert(&pg, 60, 48).await?;
    let new = insert(&pg, 40, 0).await?;
    let flagged = || async { Ok(stack.pending("user_logins").await? == 0) };
    wait_until("every row published", SETTLE, flagged).await;

    let (lo, hi) = (old[10], old[29]);
    let (code, out, err) = cli(
        "relay",
        &env,
        &[
            "resend",
            "--flow",
            "user_logins",
            "--ids",
            &format!("{lo}..{hi}"),
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("table=user_logins resent=20"), "{out}");
    wait_until("the range published again", SETTLE, || async {
        Ok(deliveries(&stack).await?.values().sum::<usize>() == 120)
    })
    .await;
    let (code, out, err) = cli(
        "relay",
        &env,
        &["resend", "--flow", "user_logins", "--since", "1d"],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("resent=40"), "the rows of the last day: {out}");
    wait_until("the last day published again", SETTLE, || async {
        Ok(deliveries(&stack).await?.values().sum::<usize>() == 160)
    })
    .await;
    wait_until("every row flagged again", SETTLE, flagged).await;
    relay.terminate(Duration::from_secs(15));
    let counts = deliveries(&stack).await?;
    for id in old.iter().chain(&new) {
        let expected = if (lo..=hi).contains(id) || new.contains(id) {
            2
        } else {
            1
        };
        assert_eq!(counts.get(id), Some(&expected), "deliveries of {id}");
    }
    assert_eq!(counts.len(), 100, "nothing else");

    // Bad requests name the option (exit 2); --since needs a time column.
    let (code, _, err) = cli(
        "relay",
        &env,
        &["resend", "--flow", "user_logins", "--ids", "9..1"],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--ids"), "{err}");
    // The demo's user_logins flow has no time column.
    let (demo_flows, _) = outbox_tests::stack::demo_files();
    let demo: Vec<(String, String)> = stack
        .daemon_env()
        .into_iter()
        .map(|(k, v)| match k.as_str() {
            "FLOWS_FILE" => (k, demo_flows.clone()),
            _ => (k, v),
        })
        .collect();
    let (code, _, err) = cli(
        "relay",
        &demo,
        &["resend", "--flow", "user_logins", "--since", "1h"],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("time_column"), "{err}");
    let _ = std::fs::remove_file(&flows);
    Ok(())
}

/// (partition → committed offset) of the user_logins group, and the sum.
fn committed(stack: &TestStack) -> anyhow::Result<(Vec<Option<i64>>, i64)> {
    let kafka = connections::kafka::KafkaEndpoint::plaintext(&stack.kafka_brokers);
    let offsets = ops::sink_status::group_offsets(
        &kafka,
        &stack.group("user-logins-consumer"),
        &stack.topic("user_events"),
    )?;
    let ends = offsets.iter().map(|(_, _, end)| end).sum();
    Ok((offsets.iter().map(|(_, c, _)| *c).collect(), ends))
}

/// `sink rewind` is refused while the sink runs; after it stops, back to a
/// time (exactly the later rows loaded again) and to the start (all again);
/// FINAL and `sink reconcile` equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_rewind_is_refused_while_the_sink_runs_and_reloads_the_topic_after()
-> anyhow::Result<()> {
    let stack = TestStack::migrated("rewind").await?;
    outbox_tests::faults::record_arrivals_into(&stack, &["user_logins"]).await?;
    let pg = stack.pg().await?;
    let env = stack.daemon_env();
    let mut relay = Daemon::spawn("relay", &["run"], &env, &format!("{}-relay", stack.name));
    let mut sink = Daemon::spawn("sink", &["run"], &env, &format!("{}-sink", stack.name));
    insert(&pg, 50, 0).await?;
    wait_until("the first rows loaded", SETTLE, || async {
        Ok(stack.ch_count_arrived("user_logins").await? == 50)
    })
    .await;
    let between = SystemTime::now();
    wait_until("the clock past the first rows", SETTLE, || async {
        Ok(SystemTime::now().duration_since(between)? > Duration::from_millis(20))
    })
    .await;
    let since = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    insert(&pg, 30, 0).await?;
    wait_until("the later rows loaded", SETTLE, || async {
        Ok(stack.ch_count_arrived("user_logins").await? == 80)
    })
    .await;

    let (code, _, err) = cli(
        "sink",
        &env,
        &["rewind", "--flow", "user_logins", "--to", "earliest"],
    );
    assert_eq!(code, Some(1), "refused while the sink runs: {err}");
    assert!(err.contains("active member"), "{err}");
    sink.terminate(Duration::from_secs(15));
    let (before, end) = committed(&stack)?;
    assert_eq!(before.iter().flatten().sum::<i64>(), end, "all consumed");

    // Back to the later rows only: 30 read again.
    let (code, out, err) = cli(
        "sink",
        &env,
        &["rewind", "--flow", "user_logins", "--to", &since],
    );
    assert_eq!(code, Some(0), "{err}");
    let (after, _) = committed(&stack)?;
    assert!(
        after.iter().flatten().sum::<i64>() < end,
        "moved back: {out}"
    );
    let mut again = Daemon::spawn(
        "sink",
        &["run"],
        &env,
        &format!("{}-sink-since", stack.name),
    );
    wait_until("the later rows loaded again", SETTLE, || async {
        Ok(stack.ch_count_arrived("user_logins").await? == 110)
    })
    .await;
    again.terminate(Duration::from_secs(15));
    // Then to the start: everything again.
    let (code, out, err) = cli(
        "sink",
        &env,
        &["rewind", "--flow", "user_logins", "--to", "earliest"],
    );
    assert_eq!(code, Some(0), "{err}");
    let (after, _) = committed(&stack)?;
    assert!(after.iter().all(|c| *c == Some(0)), "{out}");
    let _sink = Daemon::spawn(
        "sink",
        &["run"],
        &env,
        &format!("{}-sink-again", stack.name),
    );
    wait_for("the topic loaded again", SETTLE, || async {
        let rows = stack.ch_count_arrived("user_logins").await?;
        Ok(if rows == 190 {
            Ok(())
        } else {
            Err(format!("{rows} rows stored"))
        })
    })
    .await;
    assert_eq!(
        stack.ch_count_final("user_logins").await?,
        80,
        "once each in FINAL"
    );
    relay.terminate(Duration::from_secs(15));
    let (code, out, err) = cli("sink", &env, &["reconcile"]);
    assert_eq!(code, Some(0), "{out}{err}");
    Ok(())
}

/// `n` sales rows at `at` (one statement); their ids.
async fn insert_sales(pg: &tokio_postgres::Client, n: i64, at: &str) -> anyhow::Result<Vec<i64>> {
    Ok(pg
        .query(
            "INSERT INTO sales (event_time, product_id, product_name, category, quantity, price, discount, total, store_id, cashier_id, customer_id)
             SELECT $2, g % 13, 'Mug', 'kitchen', 1, 1.50, 0, 1.50, 1, 1, 'c' FROM generate_series(1, $1::int8) AS g
             RETURNING id",
            &[&n, &at],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// A resend while a writer keeps inserting and a sink loads ClickHouse:
/// a row changed after it was sent — its `event_time`, part of the sales
/// table's sort key — is refused by name (a resent copy would be a second
/// row under FINAL); `--skip-changed` resends the others; afterwards every
/// id is in ClickHouse exactly once under FINAL and each resent row twice
/// on the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_under_load_never_doubles_a_row_under_final() -> anyhow::Result<()> {
    let stack = TestStack::migrated_for("resend_load", "sales").await?;
    outbox_tests::faults::record_arrivals_into(&stack, &["sales"]).await?;
    let pg = stack.pg().await?;
    let env = stack.daemon_env();
    let mut relay = Daemon::spawn("relay", &["run"], &env, &format!("{}-relay", stack.name));
    let mut sink = Daemon::spawn("sink", &["run"], &env, &format!("{}-sink", stack.name));
    let first = insert_sales(&pg, 50, "2026-11-01 10:00:00").await?;
    wait_until("the first rows in ClickHouse", SETTLE, || async {
        Ok(stack.pending("sales").await? == 0 && stack.ch_count_final("sales").await? == 50)
    })
    .await;
    let writing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = {
        let (url, writing) = (stack.database_url.clone(), std::sync::Arc::clone(&writing));
        tokio::spawn(async move {
            let (pg, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            let mut written = 0i64;
            while writing.load(std::sync::atomic::Ordering::SeqCst) {
                written += insert_sales(&pg, 3, "2026-11-02 10:00:00").await?.len() as i64;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            anyhow::Ok(written)
        })
    };
    let (lo, hi) = (first[0], first[first.len() - 1]);
    let changed = first[7];
    pg.execute(
        "UPDATE sales SET event_time = '2026-11-01 11:00:00' WHERE id = $1",
        &[&changed],
    )
    .await?;
    let ids = format!("{lo}..{hi}");
    let (code, out, err) = cli("relay", &env, &["resend", "--flow", "sales", "--ids", &ids]);
    assert_eq!(
        code,
        Some(2),
        "a changed row refuses the resend: {out} {err}"
    );
    assert!(
        err.contains(&changed.to_string()) && err.contains("--skip-changed"),
        "the refusal names the row and the way out: {err}"
    );
    let pending: i64 = pg
        .query_one(
            "SELECT count(*) FROM sales WHERE id BETWEEN $1 AND $2 AND sent_to_kafka IS NOT TRUE",
            &[&lo, &hi],
        )
        .await?
        .get(0);
    assert_eq!(pending, 0, "nothing was set pending");
    let (code, out, err) = cli(
        "relay",
        &env,
        &["resend", "--flow", "sales", "--ids", &ids, "--skip-changed"],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("table=sales resent=49"), "{out}");
    writing.store(false, std::sync::atomic::Ordering::SeqCst);
    let written = writer.await??;
    assert!(written > 0, "a writer ran through the resend");
    let expected = 50 + written as u64;
    wait_until("everything published and loaded", SETTLE, || async {
        Ok(stack.pending("sales").await? == 0
            && stack.ch_count_arrived("sales").await? >= expected + 49)
    })
    .await;
    relay.terminate(Duration::from_secs(15));
    sink.terminate(Duration::from_secs(15));
    let (in_view, distinct): (u64, u64) = stack
        .ch()
        .query("SELECT count(), uniqExact(id) FROM sales FINAL")
        .fetch_one()
        .await?;
    let raw = stack.ch_count_arrived("sales").await?;
    outbox_tests::faults::record_checked(outbox_tests::faults::FaultReport {
        fault: "relay resend of 50 rows under load, one changed since it was sent".into(),
        injected: 1,
        rows_sent: expected,
        rows_lost: expected.saturating_sub(distinct),
        doubled_in_view: in_view - distinct,
        raw_duplicates: raw - distinct,
        recovery_ms: 0,
        note: "the changed row refused by name (exit 2), then --skip-changed resent the other 49; a writer and the sink ran throughout".into(),
    });
    assert_eq!(in_view, expected, "every row once under FINAL");
    let brokers = stack.kafka_brokers.clone();
    let topics = vec![stack.topic("sales")];
    let records =
        tokio::task::spawn_blocking(move || read_all(&brokers, &topics, Isolation::Committed))
            .await??;
    let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
    for r in &records {
        *counts.entry(r.id().unwrap_or(-1)).or_default() += 1;
    }
    for id in &first {
        let expected = if *id == changed { 1 } else { 2 };
        assert_eq!(counts.get(id), Some(&expected), "row {id} on the topic");
    }
    assert_eq!(
        counts.values().sum::<usize>() as u64,
        expected + 49,
        "the rest once"
    );
    Ok(())
}

/// Waits until every row inserted so far is published, then until the
/// clock is past them; returns that moment as an RFC 3339 time for `--to`.
async fn published_then_now(stack: &TestStack) -> anyhow::Result<String> {
    wait_until("every row published", SETTLE, || async {
        Ok(stack.pending("user_logins").await? == 0)
    })
    .await;
    let published = SystemTime::now();
    wait_until("the clock past the published rows", SETTLE, || async {
        Ok(SystemTime::now().duration_since(published)? > Duration::from_millis(20))
    })
    .await;
    Ok(humantime::format_rfc3339_millis(SystemTime::now()).to_string())
}

/// Ok when ClickHouse (FINAL: once each) holds exactly the ids `expected`
/// (ascending), else what differs.
async fn missing(stack: &TestStack, expected: &[i64]) -> anyhow::Result<Result<(), String>> {
    let stored: Vec<i64> = stack
        .ch()
        .query("SELECT toInt64(id) FROM user_logins FINAL ORDER BY id")
        .fetch_all()
        .await?;
    if stored == expected {
        return Ok(Ok(()));
    }
    let absent: Vec<&i64> = expected.iter().filter(|id| !stored.contains(id)).collect();
    Ok(Err(format!(
        "{} of {} rows stored; missing ids {absent:?}",
        stored.len(),
        expected.len()
    )))
}

/// The total of a `key=N` field over the lines that have it.
fn total(out: &str, key: &str) -> i64 {
    out.split_whitespace()
        .filter_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse::<i64>().ok())
        .sum()
}

/// A stopped sink that fell behind, rewound to a time after its position,
/// keeps its offsets and then loads every row; with `--allow-forward` it
/// skips exactly the rows before the time, and says how many.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_rewind_never_moves_a_stopped_sink_forward_unless_asked() -> anyhow::Result<()> {
    let stack = TestStack::migrated("rewind_fwd").await?;
    let pg = stack.pg().await?;
    let env = stack.daemon_env();
    let mut relay = Daemon::spawn("relay", &["run"], &env, &format!("{}-relay", stack.name));
    let mut sink = Daemon::spawn("sink", &["run"], &env, &format!("{}-sink", stack.name));
    let first = insert(&pg, 50, 0).await?;
    wait_until("the first rows loaded", SETTLE, || async {
        Ok(stack.ch_count_final("user_logins").await? == 50)
    })
    .await;
    sink.terminate(Duration::from_secs(15));

    // The stopped sink falls behind: 30 rows it never stored, then a time
    // after them (ahead of its position), then 20 more.
    let behind = insert(&pg, 30, 0).await?;
    let ahead = published_then_now(&stack).await?;
    let after = insert(&pg, 20, 0).await?;
    published_then_now(&stack).await?;
    let (before, _) = committed(&stack)?;
    let (code, out, err) = cli(
        "sink",
        &env,
        &["rewind", "--flow", "user_logins", "--to", &ahead],
    );
    assert_eq!(code, Some(0), "{err}");
    let (kept, _) = committed(&stack)?;
    let mut again = Daemon::spawn("sink", &["run"], &env, &format!("{}-sink-2", stack.name));
    let everything: Vec<i64> = first.iter().chain(&behind).chain(&after).copied().collect();
    wait_for(
        "every row in ClickHouse: the rewind skipped none",
        SETTLE,
        || async { missing(&stack, &everything).await },
    )
    .await;
    // A partition with no offset committed reads from the start (0).
    let read_from = |c: &[Option<i64>]| c.iter().map(|o| o.unwrap_or(0)).collect::<Vec<_>>();
    assert_eq!(
        read_from(&kept),
        read_from(&before),
        "no partition moved forward: {out}"
    );
    assert!(
        total(&out, "kept") >= 1 && total(&out, "skipped") == 0,
        "{out}"
    );
    again.terminate(Duration::from_secs(15));

    // Asked explicitly, it skips: the 15 rows before the time are never
    // stored, and the command counts them.
    let skipped = insert(&pg, 15, 0).await?;
    let ahead = published_then_now(&stack).await?;
    let later = insert(&pg, 10, 0).await?;
    published_then_now(&stack).await?;
    let (code, out, err) = cli(
        "sink",
        &env,
        &[
            "rewind",
            "--flow",
            "user_logins",
            "--to",
            &ahead,
            "--allow-forward",
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("skipped="), "{out}");
    let _last = Daemon::spawn("sink", &["run"], &env, &format!("{}-sink-3", stack.name));
    let expected: Vec<i64> = everything.iter().chain(&later).copied().collect();
    wait_for("the rows after the time loaded", SETTLE, || async {
        missing(&stack, &expected).await
    })
    .await;
    // The summary line and the partition lines each add up to the 15.
    let summary: Vec<&str> = out.lines().filter(|l| !l.contains("partition=")).collect();
    let lines: Vec<&str> = out.lines().filter(|l| l.contains("partition=")).collect();
    assert_eq!(
        total(&summary.join("\n"), "skipped"),
        skipped.len() as i64,
        "{out}"
    );
    assert_eq!(
        total(&lines.join("\n"), "skipped"),
        skipped.len() as i64,
        "{out}"
    );
    relay.terminate(Duration::from_secs(15));
    Ok(())
}
