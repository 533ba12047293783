//! Freshness, on the real broker: `sink_freshness_seconds` has one
//! observation per row a live stream loads, each between zero and what the test
//! measures from the outside; with ClickHouse cut off, a flow held to
//! `SINK_MAX_FRESHNESS_MS` turns not ready with the figure, and recovery
//! clears it.

use std::time::{Duration, Instant};

use outbox_tests::http::{free_addr, get};
use outbox_tests::proxy::Proxy;
use outbox_tests::{Daemon, TestStack, wait_until};

const SETTLE: Duration = Duration::from_secs(60);

/// (count, sum, cumulative count per upper bound) of the user_logins
/// freshness histogram.
fn histogram(text: &str) -> (f64, f64, Vec<(f64, f64)>) {
    let labels = [("flow", "user_logins"), ("table", "user_logins")];
    let value = |name: &str| daemon::http::metric_value(text, name, &labels).unwrap_or(0.0);
    (
        value("sink_freshness_seconds_count"),
        value("sink_freshness_seconds_sum"),
        daemon::http::histogram_buckets(text, "sink_freshness_seconds", &labels),
    )
}

fn env(stack: &TestStack, addr: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = stack.daemon_env();
    env.retain(|(k, _)| k != "SINK_METRICS_ADDR");
    env.push(("SINK_METRICS_ADDR".into(), addr.into()));
    env.extend(extra.iter().map(|(k, v)| ((*k).into(), (*v).into())));
    env
}

/// Once the pipeline is live, `sink_freshness_seconds` has one observation
/// per row loaded, each between zero and what the test measures from the
/// outside (first commit to last row seen).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_freshness_histogram_counts_every_row_within_the_outside_measure() -> anyhow::Result<()>
{
    let stack = TestStack::migrated("fresh_hist").await?;
    // The topic there before the sink starts (as after `relay migrate`):
    // the first row's time is then the pipeline's, not the topic's creation
    // and the sink's discovery of it.
    stack.create_topics().await?;
    let addr = free_addr()?;
    let env = env(&stack, &addr, &[]);
    let _relay = Daemon::spawn("relay", &["run"], &env, &format!("{}-relay", stack.name));
    let _sink = Daemon::spawn("sink", &["run"], &env, &format!("{}-sink", stack.name));
    wait_until("the sink serving", SETTLE, || async {
        Ok(get(&addr, "/metrics").await.is_ok())
    })
    .await;
    let pg = stack.pg().await?;
    // The pipeline live first (the sink in its group): a live stream's
    // batches are measured whole, a backlog's only in part (see the sink's
    // `freshness_sampled`).
    pg.execute(
        "INSERT INTO user_logins (username, event_type, event_time) VALUES ('first', 'login', now())",
        &[],
    )
    .await?;
    wait_until("the first row loaded", SETTLE, || async {
        Ok(stack.ch_count_raw("user_logins").await? == 1)
    })
    .await;
    // A steady load: 20 rows every 25 ms for two seconds.
    let first_commit = Instant::now();
    let mut rows = 1u64;
    while first_commit.elapsed() < Duration::from_secs(2) {
        pg.execute(
            "INSERT INTO user_logins (username, event_type, event_time)
             SELECT 'u' || g, 'login', now() FROM generate_series(1, 20) g",
            &[],
        )
        .await?;
        rows += 20;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    wait_until("every row loaded", SETTLE, || async {
        Ok(stack.ch_count_raw("user_logins").await? == rows)
    })
    .await;
    // No row can have taken longer than from the first commit to now.
    let outside = first_commit.elapsed().as_secs_f64();
    wait_until("the histogram complete", SETTLE, || async {
        Ok(histogram(&get(&addr, "/metrics").await?.1).0 == rows as f64)
    })
    .await;
    let (count, sum, buckets) = histogram(&get(&addr, "/metrics").await?.1);
    assert_eq!(count, rows as f64, "one observation per row loaded");
    assert!(
        sum > 0.0 && sum / count <= outside,
        "mean {} s, outside bound {outside} s",
        sum / count
    );
    let within = buckets
        .iter()
        .find(|(le, _)| *le >= outside)
        .map_or(0.0, |(_, n)| *n);
    assert_eq!(
        within, count,
        "every value at most {outside} s: {buckets:?}"
    );
    eprintln!(
        "freshness: {rows} rows, mean {:.1} ms (outside bound {:.0} ms)",
        sum / count * 1e3,
        outside * 1e3
    );
    Ok(())
}

/// With `SINK_MAX_FRESHNESS_MS` set and ClickHouse cut off, the flow turns
/// not ready naming the figure; once ClickHouse is back and rows are fresh
/// again, ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_freshness_bound_makes_the_flow_not_ready_while_clickhouse_is_away() -> anyhow::Result<()>
{
    let mut stack = TestStack::start("fresh_bound").await?;
    stack.migrate().await?;
    let proxy = Proxy::start(stack.clickhouse_url.trim_start_matches("http://").parse()?).await?;
    stack
        .overrides
        .push(("CLICKHOUSE_URL".into(), format!("http://{}", proxy.addr)));
    let addr = free_addr()?;
    let env = env(
        &stack,
        &addr,
        &[
            ("SINK_MAX_FRESHNESS_MS", "300"),
            ("SINK_STALL_AFTER_MS", "1000"),
        ],
    );
    let _relay = Daemon::spawn("relay", &["run"], &env, &format!("{}-relay", stack.name));
    let _sink = Daemon::spawn("sink", &["run"], &env, &format!("{}-sink", stack.name));
    let pg = stack.pg().await?;
    let insert = || async {
        pg.execute(
            "INSERT INTO user_logins (username, event_type, event_time) VALUES ('u', 'login', now())",
            &[],
        )
        .await
    };
    insert().await?;
    wait_until("ready, rows on time", SETTLE, || async {
        Ok(get(&addr, "/readyz").await?.0 == 200 && stack.ch_count_raw("user_logins").await? == 1)
    })
    .await;

    proxy.cut();
    insert().await?;
    wait_until("not ready, with the figure", SETTLE, || async {
        let (code, body) = get(&addr, "/readyz").await?;
        Ok(code == 503 && body.contains("over SINK_MAX_FRESHNESS_MS (300 ms)"))
    })
    .await;
    proxy.restore();
    wait_until("ready again once the rows are in", SETTLE, || async {
        insert().await?;
        Ok(get(&addr, "/readyz").await?.0 == 200)
    })
    .await;
    Ok(())
}
