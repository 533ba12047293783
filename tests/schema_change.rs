//! Schema changes without a stop, on the real broker: a column added to a
//! flow under load (ClickHouse, then Postgres, then the flow's source
//! columns with a relay restart) lands for the rows that carry it and NULL
//! for the rows before, with the sink never restarted; a column the sink
//! fills dropped from ClickHouse holds the flow not ready with the reason,
//! and putting it back loads everything held.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outbox_tests::http::{free_addr, get};
use outbox_tests::{Daemon, TestStack, wait_until};

const SETTLE: Duration = Duration::from_secs(60);

/// Inserts rows until `stop`, with `device` once `with_device` is set;
/// counts the rows committed with and without it.
async fn writer(
    url: String,
    stop: Arc<AtomicBool>,
    with_device: Arc<AtomicBool>,
    written: Arc<Mutex<(u64, u64)>>,
) -> anyhow::Result<()> {
    let (pg, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    while !stop.load(Ordering::SeqCst) {
        let device = with_device.load(Ordering::SeqCst);
        if device {
            pg.execute(
                "INSERT INTO user_logins (username, event_type, event_time, device)
                 SELECT 'u' || g, 'login', now(), 'phone' FROM generate_series(1, 5) g",
                &[],
            )
            .await?;
        } else {
            pg.execute(
                "INSERT INTO user_logins (username, event_type, event_time)
                 SELECT 'u' || g, 'login', now() FROM generate_series(1, 5) g",
                &[],
            )
            .await?;
        }
        {
            let mut w = written.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            if device {
                w.1 += 5;
            } else {
                w.0 += 5;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

fn log_of(daemon: &Daemon) -> String {
    std::fs::read_to_string(&daemon.log).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_added_under_load_lands_without_a_sink_restart() -> anyhow::Result<()> {
    let stack = TestStack::start("schema_add").await?;
    stack.migrate().await?;
    let pg = stack.pg().await?;
    let ch = stack.ch();
    let addr = free_addr()?;
    let mut env = stack.daemon_env();
    env.retain(|(k, _)| k != "SINK_METRICS_ADDR");
    env.extend([
        ("SINK_SCHEMA_CHECK_MS".into(), "300".into()),
        ("SINK_METRICS_ADDR".into(), addr.clone()),
    ]);
    let mut relay = Daemon::spawn("relay", &["run"], &env, &format!("{}-relay", stack.name));
    let sink = Daemon::spawn("sink", &["run"], &env, &format!("{}-sink", stack.name));

    let (stop, with_device) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let written: Arc<Mutex<(u64, u64)>> = Arc::default();
    let load = tokio::spawn(writer(
        stack.database_url.clone(),
        Arc::clone(&stop),
        Arc::clone(&with_device),
        Arc::clone(&written),
    ));
    wait_until("rows loading", SETTLE, || async {
        Ok(stack.ch_count_raw("user_logins").await? > 100)
    })
    .await;

    // 1. ClickHouse first, Nullable: the sink adopts it by itself.
    ch.query("ALTER TABLE user_logins ADD COLUMN device Nullable(String)")
        .execute()
        .await?;
    wait_until("the sink adopting the new column", SETTLE, || async {
        Ok(log_of(&sink).contains("target table changed"))
    })
    .await;
    // 2. Postgres, 3. the flow's source columns: the relay restarted with
    // them (a standby would take over meanwhile; rows wait in Postgres).
    pg.batch_execute("ALTER TABLE user_logins ADD COLUMN device text")
        .await?;
    let flows = std::env::temp_dir().join(format!("{}-flows.toml", stack.name));
    std::fs::write(
        &flows,
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
    relay.terminate(Duration::from_secs(15));
    let mut relay_env = env.clone();
    relay_env.push(("FLOWS_FILE".into(), flows.display().to_string()));
    let relay = Daemon::spawn(
        "relay",
        &["run"],
        &relay_env,
        &format!("{}-relay-2", stack.name),
    );
    wait_until("the relay leading with the new column", SETTLE, || async {
        Ok(log_of(&relay).contains("active relay for this flow"))
    })
    .await;
    // 4. The application writes the column.
    with_device.store(true, Ordering::SeqCst);
    wait_until("rows with the column loading", SETTLE, || async {
        Ok(written.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.1 > 200)
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    load.await??;
    let (without, with) = *written.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    wait_until("every row loaded", SETTLE, || async {
        Ok(stack.ch_count_final("user_logins").await? == without + with)
    })
    .await;
    let phones: u64 = ch
        .query("SELECT count() FROM user_logins FINAL WHERE device = 'phone'")
        .fetch_one()
        .await?;
    let nulls: u64 = ch
        .query("SELECT count() FROM user_logins FINAL WHERE device IS NULL")
        .fetch_one()
        .await?;
    assert_eq!(
        (phones, nulls),
        (with, without),
        "the column's value where written, NULL before"
    );
    assert!(
        !log_of(&sink).contains("dead-lettered"),
        "no message dead-lettered"
    );
    let metrics = get(&addr, "/metrics").await?.1;
    assert_eq!(
        daemon::http::metric_value(
            &metrics,
            "sink_schema_changes_total",
            &[("flow", "user_logins"), ("table", "user_logins")]
        ),
        Some(1.0),
        "{metrics}"
    );
    let _ = std::fs::remove_file(&flows);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filled_column_dropped_holds_the_flow_until_it_is_back() -> anyhow::Result<()> {
    let stack = TestStack::start("schema_drop").await?;
    stack.migrate().await?;
    let pg = stack.pg().await?;
    let ch = stack.ch();
    let addr = free_addr()?;
    let mut env = stack.daemon_env();
    env.retain(|(k, _)| k != "SINK_METRICS_ADDR");
    env.extend([
        ("SINK_SCHEMA_CHECK_MS".into(), "300".into()),
        ("SINK_METRICS_ADDR".into(), addr.clone()),
    ]);
    let _relay = Daemon::spawn("relay", &["run"], &env, &format!("{}-relay", stack.name));
    let _sink = Daemon::spawn("sink", &["run"], &env, &format!("{}-sink", stack.name));
    let insert = |n: i64| {
        let pg = &pg;
        async move {
            pg.execute(
                "INSERT INTO user_logins (username, event_type, event_time)
                 SELECT 'u' || g, 'login', now() FROM generate_series(1, $1::int8) g",
                &[&n],
            )
            .await
        }
    };
    insert(20).await?;
    wait_until("the first rows loaded", SETTLE, || async {
        Ok(stack.ch_count_final("user_logins").await? == 20)
    })
    .await;

    ch.query("ALTER TABLE user_logins DROP COLUMN event_type")
        .execute()
        .await?;
    insert(30).await?;
    wait_until("the flow not ready, naming the column", SETTLE, || async {
        let (code, body) = get(&addr, "/readyz").await?;
        Ok(code == 503 && body.contains("user_logins.event_type was dropped"))
    })
    .await;
    assert_eq!(
        stack.ch_count_final("user_logins").await?,
        20,
        "nothing loaded without it"
    );

    ch.query("ALTER TABLE user_logins ADD COLUMN event_type Nullable(String)")
        .execute()
        .await?;
    wait_until("ready again", SETTLE, || async {
        Ok(get(&addr, "/readyz").await?.0 == 200)
    })
    .await;
    wait_until("the held rows loaded, with the column", SETTLE, || async {
        let filled: u64 = ch
            .query("SELECT count() FROM user_logins FINAL WHERE event_type = 'login'")
            .fetch_one()
            .await?;
        Ok(filled == 30)
    })
    .await;
    assert_eq!(stack.ch_count_final("user_logins").await?, 50);
    Ok(())
}
