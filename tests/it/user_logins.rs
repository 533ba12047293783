//! The reference flow end to end (shared/FLOWS.md §1): rows inserted in
//! Postgres `user_logins` reach ClickHouse `user_logins` through the real
//! relay and sink, once, whatever fails.

use std::time::Duration;

use anyhow::Context;

use daemon::metrics::Metrics;
use outbox_tests::daemon::run_to_exit;
use outbox_tests::proxy::Proxy;
use outbox_tests::{Daemon, TestStack, wait_until};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

const ARRIVAL: Duration = Duration::from_secs(30);

#[derive(clickhouse::Row, serde::Deserialize, Debug, PartialEq)]
struct ChLogin {
    id: u64,
    username: Option<String>,
    event_type: Option<String>,
    event_time: Option<u32>,
}

async fn source_rows(stack: &TestStack) -> anyhow::Result<Vec<ChLogin>> {
    let pg = stack.pg().await?;
    let rows = pg
        .query(
            "SELECT id::int8, username, event_type, floor(extract(epoch from event_time))::int8 \
             FROM user_logins ORDER BY id",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| ChLogin {
            id: r.get::<_, i64>(0) as u64,
            username: r.get(1),
            event_type: r.get(2),
            event_time: r.get::<_, Option<i64>>(3).map(|t| t as u32),
        })
        .collect())
}

async fn clickhouse_rows(stack: &TestStack) -> anyhow::Result<Vec<ChLogin>> {
    Ok(stack
        .ch()
        .query("SELECT id, username, event_type, toUInt32(event_time) AS event_time FROM user_logins FINAL ORDER BY id")
        .fetch_all()
        .await?)
}

async fn insert_logins(stack: &TestStack, n: usize, tag: &str) -> anyhow::Result<()> {
    let pg = stack.pg().await?;
    pg.execute(
        "INSERT INTO user_logins (username, event_type, event_time) \
         SELECT $1 || '-' || g, (ARRAY['login','registration','purchase'])[1 + g % 3], \
                now() - make_interval(secs => g) FROM generate_series(1, $2::int) g",
        &[&tag, &(n as i32)],
    )
    .await?;
    Ok(())
}

/// Waits until ClickHouse holds exactly the source rows, then checks content
/// and flags: deduplicated count = source count, every row identical, nothing
/// pending.
async fn assert_delivered_exactly(stack: &TestStack) {
    let expected = source_rows(stack).await.unwrap_or_else(|e| panic!("{e:#}"));
    let n = expected.len() as u64;
    wait_until("every source row in ClickHouse", ARRIVAL, || async {
        Ok(stack.ch_count_final("user_logins").await? >= n
            && stack.pending("user_logins").await? == 0)
    })
    .await;
    let stored = clickhouse_rows(stack)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(stored.len(), expected.len(), "deduplicated row count");
    assert_eq!(stored, expected, "row content");
    assert_eq!(stack.pending("user_logins").await.ok(), Some(0));
}

/// Unicode, quotes, backslashes, tabs, empty strings and NULLs arrive
/// unchanged; `event_time` is the same instant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_arrive_identical() -> anyhow::Result<()> {
    let stack = TestStack::migrated("identical").await?;
    let metrics = Metrics::default();
    let sink = stack.spawn_sink(&metrics)?;
    let relay = stack.spawn_relay(&metrics)?;

    let pg = stack.pg().await?;
    pg.batch_execute(
        "INSERT INTO user_logins (username, event_type, event_time) VALUES
           ('алиса', 'login', '2024-02-29 23:59:59'),
           ('o''brien \"quoted\" \\ back', 'registration', '1970-01-01 00:00:01'),
           ('emoji 🚀 tab	end', 'purchase', '2038-01-19 03:14:07'),
           (NULL, NULL, NULL),
           ('', '', '2024-06-01 12:00:00.999999')",
    )
    .await?;
    assert_delivered_exactly(&stack).await;

    let stored = clickhouse_rows(&stack).await?;
    assert_eq!(stored[0].username.as_deref(), Some("алиса"));
    assert_eq!(
        stored[0].event_time,
        Some(1_709_251_199),
        "the same instant, as Unix seconds"
    );
    assert_eq!(
        stored[1].username.as_deref(),
        Some("o'brien \"quoted\" \\ back")
    );
    assert_eq!(
        stored[3],
        ChLogin {
            id: 4,
            username: None,
            event_type: None,
            event_time: None
        }
    );
    assert_eq!(
        stored[4].event_time,
        Some(1_717_243_200),
        "sub-second part truncated, not rounded up"
    );

    relay.stop().await?;
    sink.stop().await?;
    Ok(())
}

/// On the mock cluster: a broker cannot be told to refuse every produce
/// request on demand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_kafka_transaction_failure_flips_nothing_and_rows_arrive_after_recovery()
-> anyhow::Result<()> {
    let stack = TestStack::start_on_mock("kafka_fail").await?;
    let mock = stack.mock.clone().context("the mock cluster")?;
    stack.migrate().await?;
    let metrics = Metrics::default();
    let sink = stack.spawn_sink(&metrics)?;
    let relay = stack.spawn_relay(&metrics)?;
    insert_logins(&stack, 1, "warm-up").await?;
    assert_delivered_exactly(&stack).await;

    // Every produce request fails with a non-retriable error until cleared.
    mock.push_request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 500],
    );
    insert_logins(&stack, 200, "during-failure").await?;
    let failed = || metrics.value("relay_batches_failed_total", &[("flow", "user_logins")]);
    wait_until("two failed relay batches", ARRIVAL, || async {
        Ok(failed() >= 2)
    })
    .await;
    assert_eq!(
        stack.pending("user_logins").await?,
        200,
        "a failed Kafka transaction flips no flag"
    );
    assert_eq!(
        stack.ch_count_final("user_logins").await?,
        1,
        "nothing of the failed batches loaded"
    );

    mock.clear_request_errors(RDKafkaApiKey::Produce);
    assert_delivered_exactly(&stack).await;
    assert_eq!(stack.ch_count_final("user_logins").await?, 201);

    relay.stop().await?;
    sink.stop().await?;
    Ok(())
}

/// ClickHouse unreachable mid-stream (a cut TCP proxy); the sink retries,
/// then loads exactly the source rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_outage_mid_stream_loses_nothing() -> anyhow::Result<()> {
    let mut stack = TestStack::start("ch_outage").await?;
    stack.migrate().await?;
    let upstream = stack.clickhouse_url.trim_start_matches("http://").parse()?;
    let proxy = Proxy::start(upstream).await?;
    stack
        .overrides
        .push(("CLICKHOUSE_URL".into(), format!("http://{}", proxy.addr)));
    let metrics = Metrics::default();
    let sink = stack.spawn_sink(&metrics)?;
    let relay = stack.spawn_relay(&metrics)?;

    insert_logins(&stack, 100, "before").await?;
    wait_until("first rows loaded", ARRIVAL, || async {
        Ok(stack.ch_count_final("user_logins").await? > 0)
    })
    .await;

    proxy.cut();
    for i in 0..10 {
        insert_logins(&stack, 50, &format!("outage-{i}")).await?;
    }
    let failures = || metrics.value("sink_insert_failures_total", &[("flow", "user_logins")]);
    wait_until("the sink to hit the outage", ARRIVAL, || async {
        Ok(failures() >= 2)
    })
    .await;
    let loaded_during_outage = stack.ch_count_final("user_logins").await?;
    assert!(
        loaded_during_outage < 600,
        "the outage must have held rows back"
    );

    proxy.restore();
    insert_logins(&stack, 100, "after").await?;
    assert_delivered_exactly(&stack).await;
    assert_eq!(stack.ch_count_final("user_logins").await?, 700);

    relay.stop().await?;
    sink.stop().await?;
    Ok(())
}

/// Kill -9 of relay and sink under load, restarts, SIGTERM exits 0:
/// deduplicated count = source count, content identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_and_restart_of_either_daemon_duplicates_nothing() -> anyhow::Result<()> {
    let stack = TestStack::migrated("restart").await?;
    let env = stack.daemon_env();
    let label = |d: &str, i: usize| format!("{}-{d}-{i}", stack.name);
    let mut relay = Daemon::spawn("relay", &["run"], &env, &label("relay", 0));
    let mut sink = Daemon::spawn("sink", &["run"], &env, &label("sink", 0));

    let mut inserted = 0usize;
    for round in 1..=4 {
        insert_logins(&stack, 300, &format!("round-{round}")).await?;
        inserted += 300;
        let target = inserted as u64 / 2;
        wait_until("progress before the crash", ARRIVAL, || async {
            Ok(stack.ch_count_final("user_logins").await? >= target)
        })
        .await;
        insert_logins(&stack, 300, &format!("round-{round}-b")).await?;
        inserted += 300;
        if round % 2 == 1 {
            relay.kill9();
            relay = Daemon::spawn("relay", &["run"], &env, &label("relay", round));
        } else {
            sink.kill9();
            sink = Daemon::spawn("sink", &["run"], &env, &label("sink", round));
        }
    }
    assert_delivered_exactly(&stack).await;
    assert_eq!(stack.ch_count_final("user_logins").await?, inserted as u64);

    // SIGTERM: both stop cleanly, quickly, with exit code 0.
    insert_logins(&stack, 200, "at-shutdown").await?;
    for daemon in [&mut relay, &mut sink] {
        let status = daemon.terminate(Duration::from_secs(10));
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(0),
            "{} exit status (log: {})",
            daemon.name,
            daemon.log.display()
        );
    }
    // Whatever was flagged before shutdown is in Kafka; a new pair finishes.
    let _relay = Daemon::spawn("relay", &["run"], &env, &label("relay", 9));
    let _sink = Daemon::spawn("sink", &["run"], &env, &label("sink", 9));
    assert_delivered_exactly(&stack).await;
    Ok(())
}

/// A second relay stands by; kill -9 of the active one, the standby
/// publishes within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_relay_takes_over_when_the_active_one_dies() -> anyhow::Result<()> {
    let stack = TestStack::migrated("standby").await?;
    let env = stack.daemon_env();
    let metrics = Metrics::default();
    let sink = stack.spawn_sink(&metrics)?;
    let mut first = Daemon::spawn("relay", &["run"], &env, &format!("{}-relay-a", stack.name));
    insert_logins(&stack, 100, "first").await?;
    assert_delivered_exactly(&stack).await;

    let mut second = Daemon::spawn("relay", &["run"], &env, &format!("{}-relay-b", stack.name));
    let log = second.log.clone();
    wait_until("second relay standing by", ARRIVAL, || async {
        Ok(std::fs::read_to_string(&log)?.contains("standing by"))
    })
    .await;
    first.kill9();
    insert_logins(&stack, 100, "second").await?;
    wait_until(
        "standby took over and published",
        Duration::from_secs(10),
        || async { Ok(stack.pending("user_logins").await? == 0) },
    )
    .await;
    assert_delivered_exactly(&stack).await;
    assert!(second.is_running());
    sink.stop().await?;
    Ok(())
}

/// Missing/malformed/misspelt settings — `FLOWS_FILE` among them, the
/// product shipping no flow — exit 2, one line, the variable named, no
/// password echoed.
#[test]
fn bad_settings_exit_2_naming_the_setting_without_secrets() {
    let pg = "postgres://relay:hunter2@127.0.0.1:5432/x";
    let cases: &[(&str, &[(&str, &str)], &str)] = &[
        ("relay", &[("KAFKA_BROKERS", "h:1")], "DATABASE_URL"),
        (
            "relay",
            &[
                ("DATABASE_URL", "mysql://u:hunter2@h/db"),
                ("KAFKA_BROKERS", "h:1"),
            ],
            "DATABASE_URL",
        ),
        ("relay", &[("DATABASE_URL", pg)], "KAFKA_BROKERS"),
        (
            "relay",
            &[
                ("DATABASE_URL", pg),
                ("KAFKA_BROKERS", "h:1"),
                ("RELAY_BATCH_SIZE", "many"),
            ],
            "RELAY_BATCH_SIZE",
        ),
        (
            "relay",
            &[
                ("DATABASE_URL", pg),
                ("KAFKA_BROKERS", "h:1"),
                ("RELAY_BATCH_SIZ", "5"),
            ],
            "RELAY_BATCH_SIZ",
        ),
        (
            "relay",
            &[
                ("DATABASE_URL", pg),
                ("KAFKA_BROKERS", "h:1"),
                ("FLOWS", "nope"),
            ],
            "FLOWS",
        ),
        (
            "relay",
            &[
                ("DATABASE_URL", pg),
                ("KAFKA_BROKERS", "h:1"),
                ("LOG_FORMAT", "xml"),
            ],
            "LOG_FORMAT",
        ),
        ("sink", &[("KAFKA_BROKERS", "h:1")], "CLICKHOUSE_URL"),
        (
            "sink",
            &[
                ("CLICKHOUSE_URL", "ftp://u:hunter2@h"),
                ("KAFKA_BROKERS", "h:1"),
            ],
            "CLICKHOUSE_URL",
        ),
        (
            "sink",
            &[
                ("CLICKHOUSE_URL", "http://h:8123"),
                ("CLICKHOUSE_PASSWORD", "hunter2"),
                ("KAFKA_BROKERS", "h:1"),
                ("SINK_FLUSH_INTERVAL_MS", "-1"),
            ],
            "SINK_FLUSH_INTERVAL_MS",
        ),
        (
            "sink",
            &[
                ("CLICKHOUSE_URL", "http://h:8123"),
                ("KAFKA_BROKERS", "h:1"),
                ("CLICKHOUSE_DATABASE", "a;b"),
            ],
            "CLICKHOUSE_DATABASE",
        ),
    ];
    let broken_toml =
        std::env::temp_dir().join(format!("broken-flows-{}.toml", std::process::id()));
    let _ = std::fs::write(
        &broken_toml,
        "[[flows]]\nname = \"x\"\nconsumer_group = \"g\"\ncolour = \"red\"\n",
    );
    let broken = broken_toml.display().to_string();
    // A second flow on user_logins would split its rows with the first.
    let shared_toml =
        std::env::temp_dir().join(format!("shared-source-flows-{}.toml", std::process::id()));
    let _ = std::fs::write(
        &shared_toml,
        "[[flows]]\nname = \"audit\"\nconsumer_group = \"a\"\n[[flows.sources]]\ntable = \"user_logins\"\ntopic = \"audit\"\ncolumns = [\"id\"]\n",
    );
    let (demo_flows, _) = outbox_tests::stack::demo_files();
    // The demo's file, then one adding a flow on its user_logins table.
    let shared = format!("{demo_flows},{}", shared_toml.display());
    let more: Vec<(&str, Vec<(&str, &str)>, &str)> = vec![
        (
            "relay",
            vec![
                ("DATABASE_URL", pg),
                ("KAFKA_BROKERS", "h:1"),
                ("FLOWS_FILE", "/nonexistent/flows.toml"),
            ],
            "FLOWS_FILE",
        ),
        (
            "sink",
            vec![
                ("CLICKHOUSE_URL", "http://h:8123"),
                ("KAFKA_BROKERS", "h:1"),
                ("FLOWS_FILE", &broken),
            ],
            "colour",
        ),
        (
            "sink",
            vec![
                ("CLICKHOUSE_URL", "http://h:8123"),
                ("KAFKA_BROKERS", "h:1"),
                ("SINK_METRICS_ADDR", "everywhere"),
            ],
            "SINK_METRICS_ADDR",
        ),
        (
            "relay",
            vec![
                ("DATABASE_URL", pg),
                ("KAFKA_BROKERS", "h:1"),
                ("FLOWS_FILE", &shared),
            ],
            "source table user_logins is also a source of flow `user_logins`",
        ),
        (
            "sink",
            vec![
                ("CLICKHOUSE_URL", "http://h:8123"),
                ("KAFKA_BROKERS", "h:1"),
                ("SINK_MAX_MESSAGE_BYTES", "0"),
            ],
            "SINK_MAX_MESSAGE_BYTES",
        ),
        (
            "relay",
            vec![
                ("DATABASE_URL", pg),
                ("KAFKA_BROKERS", "h:1"),
                ("KAFKA_ACKS", "1"),
            ],
            "KAFKA_ACKS",
        ),
        (
            "stage",
            vec![("KAFKA_BROKERS", "h:1"), ("FLOWS", "user_logins")],
            "FLOWS",
        ),
        // The product ships no flow: without FLOWS_FILE there is none to run.
        (
            "relay",
            vec![
                ("DATABASE_URL", pg),
                ("KAFKA_BROKERS", "h:1"),
                ("FLOWS_FILE", ""),
            ],
            "FLOWS_FILE",
        ),
        ("stage", vec![("FLOWS", "etl")], "KAFKA_BROKERS"),
        (
            "stage",
            vec![("KAFKA_BROKERS", "h:1"), ("STAGE_BATCH_SIZE", "x")],
            "STAGE_BATCH_SIZE",
        ),
    ];
    let all: Vec<(&str, &[(&str, &str)], &str)> = cases
        .iter()
        .map(|(b, e, s)| (*b, *e, *s))
        .chain(more.iter().map(|(b, e, s)| (*b, e.as_slice(), *s)))
        .collect();
    // Every case reads the demo's flows unless it names its own FLOWS_FILE.
    let with_flows = |env: &[(&'static str, &str)]| -> Vec<(&'static str, String)> {
        let mut env: Vec<(&str, String)> = env.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        if !env.iter().any(|(k, _)| *k == "FLOWS_FILE") {
            env.push(("FLOWS_FILE", demo_flows.clone()));
        }
        env
    };
    for (binary, env, setting) in &all {
        let env = with_flows(env);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (code, stderr) = run_to_exit(binary, &["run"], &env);
        assert_eq!(code, Some(2), "{binary} with {env:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line for {binary} {env:?}: {stderr}");
        assert!(lines[0].contains(setting), "names {setting}: {stderr}");
        assert!(!stderr.contains("hunter2"), "no secret echoed: {stderr}");
    }
    let (code, stderr) = run_to_exit("relay", &["migrate"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("DATABASE_URL"));

    // A URL or broker list that cannot be parsed is a setting to fix, not
    // a server to wait for: every command that reads it exits 2 at once.
    let bad_pg = "postgres://u:hunter2@host:notaport/db";
    let bad_ch = "http://u:hunter2@host:notaport";
    let ok_ch = "http://h:8123";
    let url_cases: Vec<(&str, &str, Vec<(&str, &str)>, &str)> = vec![
        (
            "relay",
            "run",
            vec![("DATABASE_URL", bad_pg), ("KAFKA_BROKERS", "h:1")],
            "DATABASE_URL",
        ),
        (
            "relay",
            "migrate",
            vec![("DATABASE_URL", bad_pg)],
            "DATABASE_URL",
        ),
        (
            "relay",
            "status",
            vec![("DATABASE_URL", bad_pg)],
            "DATABASE_URL",
        ),
        (
            "relay",
            "run",
            vec![
                ("DATABASE_URL", "postgres://u:hunter2@h/db?colour=red"),
                ("KAFKA_BROKERS", "h:1"),
            ],
            "DATABASE_URL",
        ),
        (
            "sink",
            "run",
            vec![("CLICKHOUSE_URL", bad_ch), ("KAFKA_BROKERS", "h:1")],
            "CLICKHOUSE_URL",
        ),
        (
            "sink",
            "migrate",
            vec![("CLICKHOUSE_URL", bad_ch)],
            "CLICKHOUSE_URL",
        ),
        (
            "sink",
            "reconcile",
            vec![
                ("CLICKHOUSE_URL", ok_ch),
                ("KAFKA_BROKERS", "h:1"),
                ("DATABASE_URL", bad_pg),
            ],
            "DATABASE_URL",
        ),
        (
            "relay",
            "run",
            vec![("DATABASE_URL", pg), ("KAFKA_BROKERS", "h:notaport")],
            "KAFKA_BROKERS",
        ),
        (
            "sink",
            "run",
            vec![("CLICKHOUSE_URL", ok_ch), ("KAFKA_BROKERS", "h:1,,h:2")],
            "KAFKA_BROKERS",
        ),
        (
            "stage",
            "run",
            vec![("KAFKA_BROKERS", "h:99999"), ("FLOWS", "etl")],
            "KAFKA_BROKERS",
        ),
    ];
    for (binary, command, env, setting) in &url_cases {
        let env = with_flows(env);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        // Before the check, these retried for ever (no exit at all).
        let (code, stderr) = run_to_exit(binary, &[command], &env);
        assert_eq!(code, Some(2), "{binary} {command} with {env:?}: {stderr}");
        let last = stderr.lines().last().unwrap_or_default();
        assert!(
            last.contains(&format!("invalid setting {setting}")),
            "{binary} {command} names {setting}: {stderr}"
        );
        assert!(!stderr.contains("hunter2"), "no secret echoed: {stderr}");
    }
    let (code, stdout_or_err) = run_to_exit("sink", &["--help"], &[]);
    assert_eq!(code, Some(0), "{stdout_or_err}");
}
