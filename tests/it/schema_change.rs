//! Schema changes without a stop, on the real broker: a column added to a
//! flow under load (ClickHouse, then Postgres, then the flow's source
//! columns with a relay restart) lands for the rows that carry it and NULL
//! for the rows before, with the sink never restarted; a column the sink
//! fills dropped from ClickHouse holds the flow not ready with the reason,
//! and putting it back loads everything held. A column's *type* changed
//! under load (the `sales` flow, rows arriving all along): a batch encoded
//! for the old types is never stored into the new ones — a same-width or a
//! narrowing change holds it (not ready, nothing committed) until the type
//! is back, a widening converts it — and every value in ClickHouse is the
//! one written in Postgres.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use daemon::http::metric_value;
use outbox_tests::http::{free_addr, get};
use outbox_tests::wait::wait_for;
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

/// The documented four steps of adding a column (ClickHouse, Postgres, the
/// flow, the application) under a steady load, the sink never restarted:
/// every row once, the new column exactly for the rows written with it,
/// NULL before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_added_under_load_lands_without_a_sink_restart() -> anyhow::Result<()> {
    let stack = TestStack::migrated("schema_add").await?;
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
        metric_value(
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

/// A column the sink fills dropped from ClickHouse: `/readyz` 503 naming
/// it, the rows held with nothing loaded; the column restored, every held
/// row loads with its values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filled_column_dropped_holds_the_flow_until_it_is_back() -> anyhow::Result<()> {
    let stack = TestStack::migrated("schema_drop").await?;
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
    // The schema check turns the flow not ready by itself, possibly before
    // the 30 rows reach the sink: "nothing loaded" means something only once
    // the sink has taken them in and its insert of them is held.
    wait_for(
        "the 30 rows taken in and their insert held",
        SETTLE,
        || async {
            let metrics = get(&addr, "/metrics").await?.1;
            let flow = [("flow", "user_logins")];
            let read = metric_value(&metrics, "sink_messages_read_total", &flow).unwrap_or(0.0);
            let held = metric_value(
                &metrics,
                "sink_insert_refused",
                &[("flow", "user_logins"), ("table", "user_logins")],
            );
            Ok(if read >= 50.0 && held == Some(1.0) {
                Ok(())
            } else {
                Err(format!("{read} messages read, insert held: {held:?}"))
            })
        },
    )
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

/// The `sales` flow under a steady load: relay and sink running, rows
/// inserted into Postgres every 10 ms until [`SalesLoad::finish`]. Each
/// row's quantity and money follow from its number, all different, and
/// every value fits both the columns' types and the test's changes of them
/// (quantity < 65536, money < 1000).
struct SalesLoad {
    stack: TestStack,
    metrics: String,
    sink: Daemon,
    _relay: Daemon,
    stop: Arc<AtomicBool>,
    written: Arc<Mutex<u64>>,
    load: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// Type changes made (`alter`).
    alters: std::sync::atomic::AtomicU32,
}

impl SalesLoad {
    async fn start(test: &str) -> anyhow::Result<Self> {
        let mut stack = TestStack::start(test).await?;
        stack.flows = "sales".into();
        stack.migrate().await?;
        outbox_tests::faults::record_arrivals_into(&stack, &["sales"]).await?;
        let metrics = free_addr()?;
        let mut env = stack.daemon_env();
        env.retain(|(k, _)| k != "SINK_METRICS_ADDR");
        env.extend([
            ("SINK_SCHEMA_CHECK_MS".into(), "300".into()),
            ("SINK_METRICS_ADDR".into(), metrics.clone()),
        ]);
        let relay = Daemon::spawn("relay", &["run"], &env, &format!("{}-relay", stack.name));
        let sink = Daemon::spawn("sink", &["run"], &env, &format!("{}-sink", stack.name));
        let (stop, written) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(0)));
        let load = tokio::spawn(sales_writer(
            stack.database_url.clone(),
            Arc::clone(&stop),
            Arc::clone(&written),
        ));
        let this = Self {
            stack,
            metrics,
            sink,
            _relay: relay,
            stop,
            written,
            load,
            alters: std::sync::atomic::AtomicU32::new(0),
        };
        wait_until("sales loading", SETTLE, || async {
            Ok(this.stack.ch_count_arrived("sales").await? > 100)
        })
        .await;
        Ok(this)
    }

    fn written(&self) -> anyhow::Result<u64> {
        Ok(*self
            .written
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?)
    }

    /// Lets `rows` more rows be written (and published: the relay keeps up).
    async fn more_rows(&self, rows: u64) -> anyhow::Result<()> {
        let target = self.written()? + rows;
        wait_until("more rows written", SETTLE, || async {
            Ok(self.written()? >= target && self.stack.pending("sales").await? == 0)
        })
        .await;
        Ok(())
    }

    async fn alter(&self, sql: &str) -> anyhow::Result<()> {
        self.stack.ch().query(sql).execute().await?;
        self.alters.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Waits until the sink holds a batch that does not fit the table's
    /// columns any more (`/readyz` 503 saying so, naming the `change`),
    /// then checks that nothing is stored or committed while more rows
    /// arrive.
    async fn held(&self, change: &str) -> anyhow::Result<()> {
        let reason =
            format!("a batch for sales is held (nothing committed): column sales.{change}");
        wait_for(
            "the batch held, the flow not ready saying why",
            SETTLE,
            || async {
                let (code, body) = get(&self.metrics, "/readyz").await?;
                Ok(if code == 503 && body.contains(&reason) {
                    Ok(())
                } else {
                    Err(format!("{code} {body}"))
                })
            },
        )
        .await;
        let before = (
            self.stack.ch_count_arrived("sales").await?,
            self.committed()?,
        );
        self.more_rows(200).await?;
        let after = (
            self.stack.ch_count_arrived("sales").await?,
            self.committed()?,
        );
        assert_eq!(
            after, before,
            "(rows stored, offsets committed) while the batch is held"
        );
        Ok(())
    }

    /// The sales group's committed offsets, per partition.
    fn committed(&self) -> anyhow::Result<Vec<Option<i64>>> {
        let kafka = connections::kafka::KafkaEndpoint::plaintext(&self.stack.kafka_brokers);
        let offsets = ops::sink_status::group_offsets(
            &kafka,
            &self.stack.group("clickhouse_sales_consumer"),
            &self.stack.topic("sales"),
        )?;
        Ok(offsets.iter().map(|(_, c, _)| *c).collect())
    }

    /// Stops the load, waits for every row in ClickHouse and compares each
    /// row's values with Postgres.
    /// Stops the load, waits for every row, compares every value with
    /// Postgres and records the outcome as `fault` in the fault table.
    async fn finish(self, fault: &str) -> anyhow::Result<Daemon> {
        self.stop.store(true, Ordering::SeqCst);
        let Self {
            stack,
            metrics,
            sink,
            written,
            load,
            alters,
            ..
        } = self;
        load.await??;
        let written = *written.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let (stack, metrics) = (&stack, &metrics);
        wait_for("every row loaded", SETTLE, || async {
            let loaded = stack.ch_count_final("sales").await?;
            let ready = get(metrics, "/readyz").await?;
            Ok(if loaded == written {
                Ok(())
            } else {
                Err(format!("{loaded} of {written} rows; /readyz {ready:?}"))
            })
        })
        .await;
        // Quantity and money compared exactly: integers, money in cents.
        let pg: Vec<(i64, i64, i64, i64)> = stack
            .pg()
            .await?
            .query(
                "SELECT id, quantity::int8, (price * 100)::int8, (total * 100)::int8 FROM sales ORDER BY id",
                &[],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect();
        let ch: Vec<(i64, i64, i64, i64)> = stack
            .ch()
            .query("SELECT toInt64(id), toInt64(quantity), toInt64(price * 100), toInt64(total * 100) FROM sales FINAL ORDER BY id")
            .fetch_all()
            .await?;
        let wrong: Vec<_> = pg
            .iter()
            .zip(&ch)
            .filter(|(p, c)| p != c)
            .map(|(p, c)| format!("{p:?} stored as {c:?}"))
            .collect();
        let raw = stack.ch_count_arrived("sales").await?;
        outbox_tests::faults::record(&outbox_tests::faults::FaultReport {
            fault: fault.into(),
            injected: alters.load(Ordering::SeqCst),
            rows_sent: pg.len() as u64,
            rows_lost: pg.len().saturating_sub(ch.len()) as u64,
            doubled_in_view: ch.len().saturating_sub(pg.len()) as u64,
            raw_duplicates: raw.saturating_sub(ch.len() as u64),
            recovery_ms: 0,
            note: format!(
                "the type changed and back under load, sink never restarted; every value compared with Postgres: {} stored with other values",
                wrong.len()
            ),
        });
        assert!(
            pg.len() == ch.len() && wrong.is_empty(),
            "{} rows in Postgres, {} in ClickHouse; {} stored with other values (id, quantity, price and total in cents), e.g. {:?}",
            pg.len(),
            ch.len(),
            wrong.len(),
            &wrong[..wrong.len().min(5)]
        );
        assert!(
            !log_of(&sink).contains("dead-lettered"),
            "no message dead-lettered"
        );
        Ok(sink)
    }
}

async fn sales_writer(
    url: String,
    stop: Arc<AtomicBool>,
    written: Arc<Mutex<u64>>,
) -> anyhow::Result<()> {
    let (pg, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let mut next: i64 = 1;
    while !stop.load(Ordering::SeqCst) {
        pg.execute(
            "INSERT INTO sales (event_time, product_id, product_name, category, quantity, price, discount, total, store_id, cashier_id, customer_id)
             SELECT '2024-03-01 10:00:00', g, 'p' || g, 'c', g * 37 % 60000 + 1, (g * 7919 % 99999 + 1) / 100.0, 0,
                    (g * 104729 % 99999 + 1) / 100.0, g % 50 + 1, g % 7 + 1, 'c-' || g
             FROM generate_series($1::int8, $1::int8 + 4) g",
            &[&next],
        )
        .await?;
        next += 5;
        *written.lock().map_err(|_| anyhow::anyhow!("poisoned"))? += 5;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Decimal32(2) → Decimal32(4) keeps the width: RowBinary encoded for the
/// old scale reads as numbers 100 times smaller (19.99 stored as 0.1999).
/// The sink holds the batch instead; with the type back, every row loads
/// with its value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_same_width_type_change_under_load_holds_the_batch_until_it_is_back() -> anyhow::Result<()>
{
    let sales = SalesLoad::start("types_same_width").await?;
    sales
        .alter("ALTER TABLE sales MODIFY COLUMN price Decimal32(4)")
        .await?;
    sales
        .held("price changed from Decimal32(2) to Decimal32(4), which not every value fits")
        .await?;
    sales
        .alter("ALTER TABLE sales MODIFY COLUMN price Decimal32(2)")
        .await?;
    sales.more_rows(200).await?;
    sales
        .finish("ClickHouse column type changed in place under load (Decimal32(2) to Decimal32(4), then back)")
        .await?;
    Ok(())
}

/// UInt32 → UInt16 narrows the column (and shortens the row): held until
/// the type is back, then everything loads with its value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_narrowed_column_under_load_holds_the_batch_until_it_is_back() -> anyhow::Result<()> {
    let sales = SalesLoad::start("types_narrowed").await?;
    sales
        .alter("ALTER TABLE sales MODIFY COLUMN quantity UInt16")
        .await?;
    sales
        .held("quantity changed from UInt32 to UInt16, which not every value fits")
        .await?;
    sales
        .alter("ALTER TABLE sales MODIFY COLUMN quantity UInt32")
        .await?;
    sales.more_rows(200).await?;
    sales
        .finish("ClickHouse column narrowed under load (UInt32 to UInt16, then back)")
        .await?;
    Ok(())
}

/// Decimal32(2) → Decimal64(2) widens the column: adopted without a
/// restart, and the batches encoded for the old width in the meantime are
/// converted, not misread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_widened_column_under_load_is_adopted_and_every_value_kept() -> anyhow::Result<()> {
    let sales = SalesLoad::start("types_widened").await?;
    sales
        .alter("ALTER TABLE sales MODIFY COLUMN price Decimal64(2)")
        .await?;
    sales.more_rows(300).await?;
    let metrics = sales.metrics.clone();
    let sink = sales
        .finish("ClickHouse column widened under load (Decimal32(2) to Decimal64(2))")
        .await?;
    let log = log_of(&sink);
    assert!(
        log.contains("converted to the new types"),
        "a batch encoded before the widening converted"
    );
    assert!(log.contains("target table changed"), "the widening adopted");
    let metrics = get(&metrics, "/metrics").await?.1;
    assert_eq!(
        metric_value(
            &metrics,
            "sink_schema_changes_total",
            &[("flow", "sales"), ("table", "sales")]
        ),
        Some(1.0),
        "{metrics}"
    );
    Ok(())
}
