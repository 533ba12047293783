//! Postgres failing over to a standby, as production runs Postgres (Patroni,
//! CloudNativePG, RDS): a primary and a streaming standby made by
//! `pg_basebackup -R` (tests/support/pg_pair.rs), every daemon and the load
//! given one `DATABASE_URL` naming both hosts with
//! `target_session_attrs=read-write`. The primary's postmaster is killed
//! (kill -9) under load and the standby promoted. With a synchronous standby
//! every row the new primary holds arrives in ClickHouse exactly once under
//! `FINAL`; with an asynchronous one, rows the standby never received may
//! already be in ClickHouse, and `sink reconcile` names them.
//! docs/clusters.md says what the guarantee rests on.

use std::time::{Duration, Instant};

use daemon::metrics::Metrics;
use outbox_tests::daemon::{Daemon, run_for_output};
use outbox_tests::faults::{Load, record_arrivals, rounds, verify, verify_tables};
use outbox_tests::http::{free_addr, get};
use outbox_tests::pg_pair::{PgPair, Replication};
use outbox_tests::stack::require_local;
use outbox_tests::wait::wait_for;
use outbox_tests::{TestStack, wait_until};

/// How long the relay may take to publish from a promoted standby.
const FOLLOW: Duration = Duration::from_secs(30);

/// A test's stack on a fresh primary/standby pair: migrations run through
/// the multi-host URL, arrivals recorded, flows `user_logins` and `sales`.
async fn stack_on_pair(
    test: &str,
    replication: Replication,
) -> anyhow::Result<(TestStack, PgPair)> {
    require_local("this machine's Postgres binaries to run a primary and its standby")?;
    let mut stack = TestStack::start(test).await?;
    let pair = PgPair::start(&stack.name, replication).await?;
    stack.database_url = pair.url();
    stack.flows = "user_logins,sales".into();
    stack.migrate().await?;
    record_arrivals(&stack).await?;
    Ok((stack, pair))
}

/// The relay as its own process (it is paused, killed and resumed), its
/// `/metrics` and `/readyz` at the returned address.
fn spawn_relay(
    stack: &TestStack,
    extra: &[(&str, &str)],
    label: &str,
) -> anyhow::Result<(Daemon, String)> {
    let addr = free_addr()?;
    let mut env = stack.daemon_env();
    let settings = [("RELAY_METRICS_ADDR", addr.as_str())];
    for (k, v) in settings.iter().chain(extra) {
        env.retain(|(name, _)| name != k);
        env.push(((*k).to_owned(), (*v).to_owned()));
    }
    let relay = Daemon::spawn("relay", &["run"], &env, &format!("{}-{label}", stack.name));
    Ok((relay, addr))
}

/// The largest source id of `user_logins` on the current primary.
async fn last_id(stack: &TestStack) -> anyhow::Result<i64> {
    Ok(stack
        .pg()
        .await?
        .query_one("SELECT coalesce(max(id), 0)::int8 FROM user_logins", &[])
        .await?
        .get(0))
}

/// Waits until a row written after `after` (an id) is flagged sent: the
/// relay publishes from the current primary. How long that took.
async fn publishing_after(stack: &TestStack, after: i64, since: Instant) -> Duration {
    wait_until(
        "the relay publishing from the promoted standby",
        FOLLOW,
        || async {
            let row = stack
                .pg()
                .await?
                .query_opt(
                    "SELECT 1 FROM user_logins WHERE id::int8 > $1 AND sent_to_kafka LIMIT 1",
                    &[&after],
                )
                .await?;
            Ok(row.is_some())
        },
    )
    .await;
    since.elapsed()
}

/// Inserts `rows` logins named `prefix1…` by plain SQL on the current
/// primary.
async fn insert_logins(stack: &TestStack, prefix: &str, rows: i32) -> anyhow::Result<()> {
    stack
        .pg()
        .await?
        .execute(
            "INSERT INTO user_logins (username, event_type, event_time)
               SELECT $1 || g, 'login', now() FROM generate_series(1, $2) g",
            &[&prefix, &rows],
        )
        .await?;
    Ok(())
}

/// Waits until the relay at `addr` answers `/readyz` with `status` and a
/// body holding `says`.
async fn readyz_says(what: &str, addr: &str, status: u16, says: &str) {
    wait_for(what, FOLLOW, || async {
        let (got, body) = get(addr, "/readyz").await?;
        Ok(if got == status && body.contains(says) {
            Ok(())
        } else {
            Err(format!("{got}: {body}"))
        })
    })
    .await;
}

/// Rows the relay counted as published again because their Postgres side
/// failed (`reason="postgres"`), over both flows.
async fn republished(addr: &str) -> anyhow::Result<i64> {
    let text = daemon::http::fetch_metrics(addr)
        .await
        .ok_or_else(|| anyhow::anyhow!("the relay's /metrics did not answer"))?;
    Ok(["user_logins", "sales"]
        .iter()
        .map(|flow| {
            daemon::http::metric_value(
                &text,
                "relay_rows_republished_total",
                &[("flow", flow), ("reason", "postgres")],
            )
            .unwrap_or(0.0) as i64
        })
        .sum())
}

/// Claim: with a synchronous standby, kill -9 of the primary's postmaster
/// under a steady load and the standby promoted lose and double nothing.
/// The relay is frozen between its Kafka commit and its Postgres commit
/// when the primary dies (crash point `relay-after-kafka-commit=pause`), so
/// that batch's flag flips die with the primary: resumed, the relay follows
/// `DATABASE_URL` to the new primary within 30 s, rebuilds its leadership
/// and scan position there, publishes the batch again and counts it in
/// `relay_rows_republished_total{reason="postgres"}`. Every row the new
/// primary holds is in ClickHouse once under `FINAL`. The long loop fails
/// over three times (the dead primary rebuilt as the new standby between
/// rounds), the later kills at whatever moment the relay is in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synchronous_standby_promoted_after_kill_9_of_the_primary_loses_and_doubles_nothing()
-> anyhow::Result<()> {
    let (stack, mut pair) = stack_on_pair("pgf_sync", Replication::Synchronous).await?;
    let load = Load::start(&stack, 300);
    let (mut relay, addr) = spawn_relay(
        &stack,
        &[("OUTBOX_FAILPOINTS", "relay-after-kafka-commit=pause")],
        "relay",
    )?;
    let metrics = Metrics::default();
    let sink = stack.spawn_sink(&metrics)?;
    wait_until(
        "the relay frozen between its two commits",
        FOLLOW,
        || async { Ok(relay.paused_at("relay-after-kafka-commit")) },
    )
    .await;
    let failovers = rounds(1, 3);
    let mut follow = Vec::new();
    let mut since = Instant::now();
    for round in 0..failovers {
        if round > 0 {
            pair.rebuild_standby().await?;
            let before = last_id(&stack).await?;
            publishing_after(&stack, before, Instant::now()).await;
        }
        pair.kill_primary()?;
        pair.promote().await?;
        since = Instant::now();
        if round == 0 {
            relay.resume()?;
        }
        let promoted_at = last_id(&stack).await?;
        follow.push(publishing_after(&stack, promoted_at, since).await);
    }
    let again = republished(&addr).await?;
    assert!(
        again > 0,
        "the batch whose flag flips died with the primary is counted as published again (relay_rows_republished_total{{reason=\"postgres\"}}: {again})"
    );
    assert!(
        relay.is_running(),
        "the relay followed the new primary without exiting"
    );
    load.stop().await;
    let note = format!(
        "{failovers} failover(s); publishing from the new primary {:?} after promotion; {again} rows republished (flag flips lost with the primary)",
        follow
            .iter()
            .map(|d| format!("{:.1} s", d.as_secs_f64()))
            .collect::<Vec<_>>()
    );
    verify(
        &stack,
        "Postgres: primary kill -9, synchronous standby promoted (multi-host DATABASE_URL)",
        failovers,
        since,
        &note,
    )
    .await;
    relay.terminate(Duration::from_secs(15));
    sink.stop().await?;
    Ok(())
}

/// Claim: a relay that finds only read-only hosts does not publish, is not
/// ready with the reason, and keeps retrying in-process (no crash loop):
/// one relay whose multi-host URL finds only the standby once the primary
/// is dead ("no host of DATABASE_URL takes writes"), one pointed at the
/// standby alone, without `target_session_attrs` ("takes no writes (a
/// standby …)"). Once the standby is promoted both are ready, the rows
/// written since are published, and every row is in ClickHouse once under
/// `FINAL` (a fault row).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_finding_only_read_only_hosts_is_not_ready_and_follows_the_promotion()
-> anyhow::Result<()> {
    let (stack, mut pair) = stack_on_pair("pgf_ro", Replication::Asynchronous).await?;
    let standby_url = pair.standby_url();
    let (mut multi, multi_addr) = spawn_relay(&stack, &[], "relay-multi")?;
    let (mut single, single_addr) = spawn_relay(
        &stack,
        &[("DATABASE_URL", standby_url.as_str())],
        "relay-standby-only",
    )?;
    readyz_says(
        "the relay pointed at the standby not ready, saying why",
        &single_addr,
        503,
        "takes no writes (a standby",
    )
    .await;
    insert_logins(&stack, "before-", 50).await?;
    wait_until("the rows published from the primary", FOLLOW, || async {
        Ok(stack.pending("user_logins").await? == 0)
    })
    .await;
    pair.kill_primary()?;
    readyz_says(
        "the multi-host relay not ready, saying why",
        &multi_addr,
        503,
        "no host of DATABASE_URL takes writes",
    )
    .await;
    // Several attempts later, both still run: retrying, not crash-looping.
    wait_until("the relays retried a few times", FOLLOW, || async {
        Ok(multi.log_text().matches("postgres unreachable").count() >= 3)
    })
    .await;
    assert!(multi.is_running(), "the multi-host relay keeps running");
    assert!(
        single.is_running(),
        "the relay pointed at the standby keeps running"
    );

    pair.promote().await?;
    let promoted = Instant::now();
    insert_logins(&stack, "after-", 50).await?;
    wait_until(
        "the rows written after the promotion published",
        FOLLOW,
        || async { Ok(stack.pending("user_logins").await? == 0) },
    )
    .await;
    let published = promoted.elapsed();
    for (name, addr) in [("multi-host", &multi_addr), ("standby-only", &single_addr)] {
        readyz_says(&format!("the {name} relay ready again"), addr, 200, "").await;
    }
    let sink = stack.spawn_sink(&Metrics::default())?;
    verify_tables(
        &stack,
        &[("user_logins", "user_logins")],
        "Postgres: only read-only hosts (the primary dead, the standby not yet promoted), then promoted",
        1,
        promoted,
        &format!(
            "both relays not ready meanwhile (multi-host URL, and a URL naming the standby), still running; ready again after the promotion ({:.1} s to publish the rows written since)",
            published.as_secs_f64()
        ),
    )
    .await;
    sink.stop().await?;
    multi.terminate(Duration::from_secs(15));
    single.terminate(Duration::from_secs(15));
    Ok(())
}

/// Claim: with an *asynchronous* standby the guarantee does not hold, and
/// `sink reconcile` says where. Rows committed on the primary while its
/// standby was away reach ClickHouse; the primary dies (kill -9) and the
/// standby, which never received them, is promoted: those rows are gone
/// from Postgres but stay in ClickHouse, and `sink reconcile` (exit 1)
/// names them as `unexpected`, with their ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_asynchronous_failover_sink_reconcile_names_the_rows_postgres_lost()
-> anyhow::Result<()> {
    let (mut stack, mut pair) = stack_on_pair("pgf_async", Replication::Asynchronous).await?;
    stack.flows = "user_logins".into();
    let metrics = Metrics::default();
    let relay = stack.spawn_relay(&metrics)?;
    let sink = stack.spawn_sink(&metrics)?;
    let loaded = |rows: u64| {
        let stack = &stack;
        async move {
            wait_until(&format!("{rows} rows in ClickHouse"), FOLLOW, || async {
                Ok(stack.pending("user_logins").await? == 0
                    && stack.ch_count_final("user_logins").await? == rows)
            })
            .await;
        }
    };
    insert_logins(&stack, "kept-", 100).await?;
    loaded(100).await;
    pair.wait_replayed().await?;
    pair.stop_standby()?;
    let kept = last_id(&stack).await?;
    insert_logins(&stack, "lost-", 20).await?;
    loaded(120).await;
    pair.kill_primary()?;
    pair.start_standby()?;
    pair.promote().await?;
    relay.stop().await?;
    sink.stop().await?;

    assert_eq!(
        last_id(&stack).await?,
        kept,
        "the new primary lacks the rows written without its standby"
    );
    let env = stack.daemon_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (code, stdout, stderr) = run_for_output("sink", &["reconcile"], &env);
    assert_eq!(
        code,
        Some(1),
        "reconcile finds the difference: {stdout}{stderr}"
    );
    assert!(
        stdout.contains("flow=user_logins source=user_logins target=user_logins sent=100 stored_distinct=120 missing=0 unexpected=20"),
        "{stdout}"
    );
    let sample = (kept + 1..=kept + 10)
        .map(|id| id.to_string())
        .collect::<Vec<_>>()
        .join(",");
    assert!(
        stdout.contains(&format!("unexpected_sample={sample}")),
        "{stdout}"
    );
    Ok(())
}
