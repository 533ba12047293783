//! Running the daemons for years: systemd's notify protocol (readiness,
//! watchdog, stopping) and `/readyz`, which must not call a stalled pipeline
//! ready.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use daemon::metrics::Metrics;
use outbox_tests::daemon::run_for_output;
use outbox_tests::http::{free_addr, get};
use outbox_tests::{Daemon, TestStack, wait_until};

/// Pending rows held by a user's transaction: after `RELAY_STALL_AFTER_MS`
/// `/readyz` says 503 "stalled, backlog 5" while `/healthz` stays 200;
/// `relay status` shows the active relay and 5 pending; once the rows move,
/// 200 again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_flow_is_not_ready_until_its_rows_move() -> anyhow::Result<()> {
    let mut stack = TestStack::start("readyz").await?;
    let addr = free_addr()?;
    stack.overrides.extend([
        ("RELAY_METRICS_ADDR".to_owned(), addr.clone()),
        ("RELAY_STALL_AFTER_MS".to_owned(), "2000".to_owned()),
    ]);
    stack.migrate().await?;
    // Pending rows that a user's open transaction holds: the relay skips
    // locked rows, so nothing can move while it lasts.
    let pg = stack.pg().await?;
    pg.batch_execute(
        "INSERT INTO user_logins (username, event_type, event_time)
         SELECT 'held' || g, 'login', now() FROM generate_series(1, 5) g",
    )
    .await?;
    let holder = stack.pg().await?;
    holder
        .batch_execute("BEGIN; SELECT id FROM user_logins FOR UPDATE")
        .await?;

    let metrics = Metrics::default();
    let relay = stack.spawn_relay(&metrics)?;
    wait_until(
        "/readyz to report the stall",
        Duration::from_secs(30),
        || async {
            let (status, body) = get(&addr, "/readyz").await?;
            Ok(status == 503 && body.contains("flow=user_logins not ready: stalled, backlog 5"))
        },
    )
    .await;
    assert_eq!(
        metrics.value(
            "relay_backlog_rows",
            &[("flow", "user_logins"), ("table", "user_logins")]
        ),
        5
    );
    let (live, _) = get(&addr, "/healthz").await?;
    assert_eq!(live, 200, "a stalled daemon is still alive");

    // `relay status` sees the same: this relay active, 5 rows pending.
    let env = stack.daemon_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (code, out, err) = run_for_output("relay", &["status"], &env);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(&format!("daemon={addr} reachable")), "{out}");
    assert!(out.contains("flow=user_logins active_relay=pid "), "{out}");
    assert!(
        out.contains("flow=user_logins table=user_logins pending=5 oldest_pending_id=1"),
        "{out}"
    );
    assert!(out.contains("flow=user_logins last_publish=never"), "{out}");

    // The transaction ends: rows move, the flow is ready again.
    holder.batch_execute("ROLLBACK").await?;
    wait_until(
        "rows sent and /readyz ready",
        Duration::from_secs(30),
        || async {
            let (status, body) = get(&addr, "/readyz").await?;
            Ok(stack.pending("user_logins").await? == 0
                && status == 200
                && body.contains("flow=user_logins ready"))
        },
    )
    .await;
    let (_, out, _) = run_for_output("relay", &["status"], &env);
    assert!(out.contains("pending=0 oldest_pending_id=none"), "{out}");
    assert!(
        out.contains(" UTC") && !out.contains("last_publish=never"),
        "{out}"
    );
    relay.stop().await?;
    Ok(())
}

/// Receives one datagram within `timeout`.
fn receive(socket: &UnixDatagram, timeout: Duration) -> anyhow::Result<String> {
    socket.set_read_timeout(Some(timeout))?;
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// The `relay` binary on a notify socket: `READY=1`, then `WATCHDOG=1` at
/// half of `WATCHDOG_USEC`, then `STOPPING=1` on SIGTERM, exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_systemd_the_relay_reports_ready_feeds_the_watchdog_and_says_stopping()
-> anyhow::Result<()> {
    let stack = TestStack::migrated("notify").await?;
    let dir = std::env::temp_dir().join(&stack.name);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path)?;
    let mut env = stack.daemon_env();
    env.push(("RELAY_METRICS_ADDR".into(), "off".into()));
    env.push(("NOTIFY_SOCKET".into(), path.display().to_string()));
    env.push(("WATCHDOG_USEC".into(), "400000".into()));
    let mut relay = Daemon::spawn("relay", &["run"], &env, &format!("{}-relay", stack.name));

    let socket = std::sync::Arc::new(socket);
    let s = std::sync::Arc::clone(&socket);
    let first = tokio::task::spawn_blocking(move || receive(&s, Duration::from_secs(30))).await??;
    assert_eq!(first, "READY=1");
    // Pings at half of WATCHDOG_USEC: two within a second.
    let s = std::sync::Arc::clone(&socket);
    let started = Instant::now();
    let pings = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<String>> {
        Ok(vec![
            receive(&s, Duration::from_secs(2))?,
            receive(&s, Duration::from_secs(2))?,
        ])
    })
    .await??;
    assert_eq!(pings, ["WATCHDOG=1", "WATCHDOG=1"]);
    assert!(started.elapsed() < Duration::from_secs(2));

    let status = relay.terminate(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "relay exited {status:?}"
    );
    let s = std::sync::Arc::clone(&socket);
    let last = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
        // Skip pings that raced with the signal.
        loop {
            let m = receive(&s, Duration::from_secs(2))?;
            if m != "WATCHDOG=1" {
                return Ok(m);
            }
        }
    })
    .await??;
    assert_eq!(last, "STOPPING=1");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// A flow loop that stops turning while the process lives (crash point
/// `relay-before-kafka-commit=hang` blocks the publishing thread for ever):
/// after `RELAY_STUCK_AFTER_MS` the relay stops feeding the watchdog and
/// says which flow is stuck, so systemd restarts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_flow_loop_stops_the_watchdog_pings() -> anyhow::Result<()> {
    let stack = TestStack::migrated("stuck").await?;
    let dir = std::env::temp_dir().join(&stack.name);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("notify.sock");
    let socket = std::sync::Arc::new(UnixDatagram::bind(&path)?);
    let mut env = stack.daemon_env();
    for (k, v) in [
        ("RELAY_METRICS_ADDR", "off".to_owned()),
        ("NOTIFY_SOCKET", path.display().to_string()),
        ("WATCHDOG_USEC", "400000".to_owned()),
        ("RELAY_QUERY_TIMEOUT_MS", "1000".to_owned()),
        ("RELAY_STUCK_AFTER_MS", "2000".to_owned()),
        ("KAFKA_COMMIT_TIMEOUT_MS", "600".to_owned()),
        (
            "OUTBOX_FAILPOINTS",
            "relay-before-kafka-commit=hang".to_owned(),
        ),
    ] {
        if !v.is_empty() {
            env.push((k.into(), v));
        }
    }
    let mut relay = Daemon::spawn("relay", &["run"], &env, &format!("{}-relay", stack.name));
    let s = std::sync::Arc::clone(&socket);
    let first = tokio::task::spawn_blocking(move || receive(&s, Duration::from_secs(30))).await??;
    assert_eq!(first, "READY=1");
    stack
        .pg()
        .await?
        .execute(
            "INSERT INTO user_logins (username, event_type, event_time) VALUES ('u', 'login', now())",
            &[],
        )
        .await?;
    let log = relay.log.clone();
    wait_until("the flow loop hanging", Duration::from_secs(30), || async {
        Ok(std::fs::read_to_string(&log)?.contains("failpoint relay-before-kafka-commit: hanging"))
    })
    .await;
    // Pings go on until the loop has been quiet for RELAY_STUCK_AFTER_MS,
    // then stop for good.
    let s = std::sync::Arc::clone(&socket);
    let silence = tokio::task::spawn_blocking(move || -> anyhow::Result<Duration> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last_ping = Instant::now();
        while Instant::now() < deadline {
            match receive(&s, Duration::from_secs(3)) {
                Ok(m) if m == "WATCHDOG=1" => last_ping = Instant::now(),
                Ok(_) => {}
                Err(_) => return Ok(last_ping.elapsed()),
            }
        }
        anyhow::bail!("the watchdog was still fed 20 s after the loop hung")
    })
    .await??;
    assert!(silence >= Duration::from_secs(3), "no ping for {silence:?}");
    assert!(relay.is_running(), "the process itself lives on");
    assert!(
        std::fs::read_to_string(&relay.log)?
            .contains("flow loop stuck; no longer feeding the systemd watchdog"),
        "the relay says why"
    );
    relay.kill9();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// After a load, `sink status` shows lag 0 per partition, the rows in
/// ClickHouse and the last insert; `sink reconcile` finds both sides equal
/// (exit 0), then reports a row flagged sent that never travelled and a
/// stray stored row, with their ids (exit 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_status_and_reconcile_report_what_is_stored() -> anyhow::Result<()> {
    let mut stack = TestStack::start("sinkstatus").await?;
    let addr = free_addr()?;
    stack
        .overrides
        .push(("SINK_METRICS_ADDR".to_owned(), addr.clone()));
    stack.migrate().await?;
    let metrics = Metrics::default();
    let relay = stack.spawn_relay(&metrics)?;
    let sink = stack.spawn_sink(&metrics)?;
    let pg = stack.pg().await?;
    pg.batch_execute(
        "INSERT INTO user_logins (username, event_type, event_time)
         SELECT 'u' || g, 'login', now() FROM generate_series(1, 40) g",
    )
    .await?;
    wait_until("40 rows in ClickHouse", Duration::from_secs(30), || async {
        Ok(stack.ch_count_final("user_logins").await? == 40)
    })
    .await;
    let env = stack.daemon_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    // Offsets are committed right after the insert: wait for lag 0.
    let mut out = String::new();
    wait_until(
        "sink status to show no lag",
        Duration::from_secs(30),
        || {
            let (code, o, err) = run_for_output("sink", &["status"], &env);
            out = o;
            let done = code == Some(0) && out.contains("topic=") && out.contains(" lag=0\n");
            async move {
                anyhow::ensure!(code == Some(0), "sink status failed: {err}");
                Ok(done)
            }
        },
    )
    .await;
    let topic = stack.topic("user_events");
    let group = stack.group("user-logins-consumer");
    assert!(out.contains(&format!("daemon={addr} reachable")), "{out}");
    assert!(
        out.contains(&format!(
            "flow=user_logins group={group} topic={topic} lag=0"
        )),
        "{out}"
    );
    assert!(
        out.contains("flow=user_logins table=user_logins rows=40"),
        "{out}"
    );
    assert!(
        out.contains("last_insert=") && !out.contains("last_insert=never"),
        "{out}"
    );

    // Reconcile: the same 40 rows on both sides…
    let (code, out, err) = run_for_output("sink", &["reconcile"], &env);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("flow=user_logins source=user_logins target=user_logins sent=40 stored_distinct=40 missing=0 unexpected=0"),
        "{out}"
    );
    // …then a row flagged sent that never travelled, and a stored row no
    // source row explains: both reported, with their ids, exit 1.
    relay.stop().await?;
    sink.stop().await?;
    let ghost: i64 = pg
        .query_one(
            "INSERT INTO user_logins (username, event_type, event_time, sent_to_kafka)
             VALUES ('ghost', 'login', now(), TRUE) RETURNING id::int8",
            &[],
        )
        .await?
        .get(0);
    stack
        .ch()
        .query("INSERT INTO user_logins (id, username) VALUES (1000000, 'stray')")
        .execute()
        .await?;
    let (code, out, _) = run_for_output("sink", &["reconcile"], &env);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "sent=41 stored_distinct=41 missing=1 unexpected=1 missing_sample={ghost} unexpected_sample=1000000"
        )),
        "{out}"
    );
    Ok(())
}

/// The pooled sessions (status, replay, reconcile, the probe …): a Postgres
/// that accepts the connection and never answers makes `relay status` and
/// `sink reconcile` give up after `POSTGRES_CONNECT_TIMEOUT_MS` (exit 1,
/// saying so) instead of hanging; a pooled session carries
/// `POSTGRES_STATEMENT_TIMEOUT_MS` as its `statement_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_sessions_time_out_on_a_silent_server_and_carry_the_statement_timeout()
-> anyhow::Result<()> {
    let silent = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = silent.local_addr()?.port();
    // Accepts (the kernel's backlog does) and never answers.
    let url: &'static str = Box::leak(
        format!("postgres://u:pw-secret@127.0.0.1:{port}/db?sslmode=disable").into_boxed_str(),
    );
    let flows_file: &'static str = Box::leak(outbox_tests::stack::demo_files().0.into_boxed_str());
    let env = [
        ("DATABASE_URL", url),
        ("FLOWS_FILE", flows_file),
        ("KAFKA_BROKERS", "127.0.0.1:9"),
        ("CLICKHOUSE_URL", "http://127.0.0.1:9"),
        ("POSTGRES_CONNECT_TIMEOUT_MS", "1000"),
        ("RELAY_METRICS_ADDR", "off"),
        ("SINK_METRICS_ADDR", "off"),
    ];
    for (binary, command) in [("relay", "status"), ("sink", "reconcile")] {
        let started = Instant::now();
        let env = env.to_vec();
        let (code, out, err) =
            tokio::task::spawn_blocking(move || run_for_output(binary, &[command], &env)).await?;
        let took = started.elapsed();
        assert_eq!(code, Some(1), "{binary} {command}: {out}{err}");
        assert!(
            err.contains("no answer within 1s"),
            "{binary} {command}: {err}"
        );
        assert!(!err.contains("pw-secret"), "{err}");
        assert!(
            took < Duration::from_secs(15),
            "{binary} {command} took {took:?}"
        );
    }
    drop(silent);

    let stack = TestStack::start("pool").await?;
    let config = connections::pg_pool::PoolConfig::from_env(&flows::Env::from_pairs([(
        "POSTGRES_STATEMENT_TIMEOUT_MS",
        "700",
    )]))?;
    let pool = connections::pg_pool::Pool::new(&stack.database_url, &config)?;
    let session = pool.get().await?;
    let shown: String = session
        .query_one("SHOW statement_timeout", &[])
        .await?
        .get(0);
    assert_eq!(shown, "700ms");
    let slow = session.execute("SELECT pg_sleep(3)", &[]).await;
    assert!(
        slow.as_ref()
            .err()
            .and_then(|e| e.as_db_error())
            .is_some_and(|db| db.message().contains("statement timeout")),
        "{slow:?}"
    );
    Ok(())
}

/// A bug in a worker (crash point `…=panic`) ends each daemon with exit
/// code 101 and the panic in its log: a daemon never runs on without one of
/// its workers (the stage used to drop the panicked flow and go on; the
/// relay caught a panic in its publishing thread and reconnected).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_worker_ends_every_daemon_with_exit_101() -> anyhow::Result<()> {
    let stack = TestStack::migrated_for("panics", "user_logins,router,etl").await?;
    let pg = stack.pg().await?;
    pg.batch_execute(
        "INSERT INTO user_logins (username, event_type, event_time)
           SELECT 'u' || g, 'login', now() FROM generate_series(1, 20) g;
         INSERT INTO user_clicks (\"timestamp\", user_id, ip_address, url, element_id)
           SELECT now(), gen_random_uuid(), '10.1.1.1', '/p/' || g, 'btn' FROM generate_series(1, 20) g",
    )
    .await?;
    let run = |name: &str, point: &str| {
        let mut env = stack.daemon_env();
        env.push(("OUTBOX_FAILPOINTS".into(), format!("{point}=panic")));
        let mut daemon = Daemon::spawn(name, &["run"], &env, &format!("{}-{name}", stack.name));
        let status = daemon.wait_exit(Duration::from_secs(60));
        let log = std::fs::read_to_string(&daemon.log).unwrap_or_default();
        let hits = log
            .matches(&format!("failpoint {point}: panicking"))
            .count();
        let seen = format!(
            "{name}: {} after {hits} panic(s) at {point}",
            match status {
                Some(s) => s.to_string(),
                None => "still running 60 s".to_owned(),
            }
        );
        (status.and_then(|s| s.code()), hits, seen)
    };
    let mut outcomes = vec![run("relay", "relay-before-kafka-commit")];
    // The sink and the stage need the rows in Kafka: a relay without crash
    // points publishes them.
    let relay = stack.spawn_relay(&Metrics::default())?;
    wait_until("every row published", Duration::from_secs(60), || async {
        Ok(stack.pending("user_logins").await? == 0 && stack.pending("user_clicks").await? == 0)
    })
    .await;
    outcomes.push(run("sink", "sink-after-insert"));
    outcomes.push(run("stage", "stage-before-commit"));
    relay.stop().await?;
    let seen: Vec<&str> = outcomes.iter().map(|(_, _, s)| s.as_str()).collect();
    for (code, hits, _) in &outcomes {
        assert!(*hits >= 1, "every crash point was reached: {seen:?}");
        assert_eq!(*code, Some(101), "{seen:?}");
    }
    Ok(())
}

/// `RELAY_SWEEP_INTERVAL_MS` paced a sweep that is gone: still accepted (old
/// deployments start), and named in one warning when the relay starts. No
/// service needed: the warning comes before the relay reaches anything.
#[tokio::test]
async fn a_setting_no_longer_used_is_named_in_one_warning_at_start_up() -> anyhow::Result<()> {
    let (flows_file, _) = outbox_tests::stack::demo_files();
    let env: Vec<(String, String)> = [
        ("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none"),
        ("FLOWS_FILE", flows_file.as_str()),
        ("KAFKA_BROKERS", "127.0.0.1:1"),
        ("RELAY_METRICS_ADDR", "off"),
        ("RELAY_SWEEP_INTERVAL_MS", "500"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let label = format!(
        "sweep-interval-warning-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
    );
    let mut relay = Daemon::spawn("relay", &["run"], &env, &label);
    let log = relay.log.clone();
    let warning = "RELAY_SWEEP_INTERVAL_MS is no longer used";
    wait_until("the relay's warning", Duration::from_secs(30), || {
        let log = log.clone();
        async move { Ok(std::fs::read_to_string(&log)?.contains(warning)) }
    })
    .await;
    relay.terminate(Duration::from_secs(30));
    let text = std::fs::read_to_string(&log)?;
    let lines: Vec<&str> = text.lines().filter(|l| l.contains(warning)).collect();
    assert_eq!(lines.len(), 1, "one warning: {text}");
    assert!(
        lines[0].contains("WARN") && lines[0].contains("sweep it paced is gone"),
        "{text}"
    );
    Ok(())
}

/// A release build has no crash points: the `OUTBOX_FAILPOINTS` that makes
/// the test build's relay panic at its first Kafka transaction (exit 101,
/// nothing flagged) leaves a release relay delivering every row, saying in
/// its log that the variable is ignored. Needs `target/release/relay`, so
/// `cargo test` skips it: scripts/release-check.sh runs it after `cargo
/// build --release --bins` (CI's .ci/run does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a release build: scripts/release-check.sh"]
async fn a_release_build_ignores_crash_points() -> anyhow::Result<()> {
    let release = outbox_tests::daemon::release_binary("relay");
    let stack = TestStack::start("release").await?;
    stack.migrate().await?;
    stack
        .pg()
        .await?
        .batch_execute(
            "INSERT INTO user_logins (username, event_type, event_time)
             SELECT 'r' || g, 'login', now() FROM generate_series(1, 20) g",
        )
        .await?;
    let mut env = stack.daemon_env();
    env.push((
        "OUTBOX_FAILPOINTS".into(),
        "relay-before-kafka-commit=panic,relay-after-kafka-commit=panic,relay-before-flag=panic"
            .into(),
    ));

    // The test build: armed, it panics at the first batch and exits 101.
    let mut armed = Daemon::spawn(
        "relay",
        &["run"],
        &env,
        &format!("{}-test-build", stack.name),
    );
    let status = armed.wait_exit(Duration::from_secs(60));
    let log = std::fs::read_to_string(&armed.log)?;
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(101),
        "the test build's relay panics at the armed point: {log}"
    );
    assert!(
        log.contains("failpoint relay-before-kafka-commit: panicking"),
        "{log}"
    );
    assert_eq!(stack.pending("user_logins").await?, 20, "nothing flagged");

    // The release build, same settings: every row delivered, still running.
    let mut relay =
        Daemon::spawn_binary(&release, &["run"], &env, &format!("{}-release", stack.name));
    wait_until(
        "the release relay to flag every row",
        Duration::from_secs(60),
        || async { Ok(stack.pending("user_logins").await? == 0) },
    )
    .await;
    assert!(relay.is_running(), "the release relay runs on");
    let log = std::fs::read_to_string(&relay.log)?;
    assert!(
        log.contains("OUTBOX_FAILPOINTS is set but ignored") && !log.contains("failpoint relay-"),
        "the release relay ignores the crash points and says so: {log}"
    );
    let status = relay.terminate(Duration::from_secs(15));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{log}");
    Ok(())
}
