//! Every demo flow (shared/FLOWS.md) end to end through the real relay and
//! sink: rows inserted in Postgres are found, exactly and correctly typed, in
//! their ClickHouse tables (the demo's flows reach the daemons as a user's
//! do: FLOWS_FILE and MIGRATIONS_DIR). Also a user's own flow from config
//! and SQL alone, without the demo, and flows that contradict their tables.

use std::time::Duration;

use daemon::metrics::Metrics;
use outbox_tests::daemon::run_to_exit;
use outbox_tests::{TestStack, repo_path, wait_until};

const ARRIVAL: Duration = Duration::from_secs(30);

async fn wait_rows(stack: &TestStack, table: &str, n: u64) {
    wait_until(&format!("{n} rows in {table}"), ARRIVAL, || async {
        Ok(stack.ch_count_final(table).await? == n)
    })
    .await;
}

async fn start(
    test: &str,
    flows: &str,
) -> anyhow::Result<(TestStack, Metrics, Vec<outbox_tests::stack::Running>)> {
    let mut stack = TestStack::start(test).await?;
    stack.flows = flows.into();
    stack.migrate().await?;
    let metrics = Metrics::default();
    let sink = stack.spawn_sink(&metrics)?;
    let relay = stack.spawn_relay(&metrics)?;
    Ok((stack, metrics, vec![relay, sink]))
}

async fn stop(running: Vec<outbox_tests::stack::Running>) -> anyhow::Result<()> {
    for r in running {
        r.stop().await?;
    }
    Ok(())
}

/// Objects land in `my_table`, one `INSERTED` journal entry each in
/// `events`; the demo's `outbox-demo watch` prints them and then each new
/// one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn my_table_objects_and_their_journal() -> anyhow::Result<()> {
    let (stack, _, running) = start("my_table", "my_table").await?;
    let pg = stack.pg().await?;
    pg.execute(
        "INSERT INTO my_table (value) SELECT 'value ' || g || ' ✓' FROM generate_series(1, 50) g",
        &[],
    )
    .await?;
    wait_rows(&stack, "my_table", 50).await;
    wait_rows(&stack, "events", 50).await;

    let objects: Vec<(u64, String)> = stack
        .ch()
        .query("SELECT id, value FROM my_table FINAL ORDER BY id")
        .fetch_all()
        .await?;
    let expected: Vec<(u64, String)> = (1..=50).map(|i| (i, format!("value {i} ✓"))).collect();
    assert_eq!(objects, expected);

    let journal: Vec<(u64, u64, String, String)> = stack
        .ch()
        .query(
            "SELECT event_id, my_table_id, value, event_type FROM events FINAL ORDER BY event_id",
        )
        .fetch_all()
        .await?;
    assert_eq!(journal.len(), 50, "one journal entry per object");
    for (i, (event_id, object, value, kind)) in journal.iter().enumerate() {
        assert_eq!((*event_id, *object), (i as u64 + 1, i as u64 + 1));
        assert_eq!(value, &expected[i].1);
        assert_eq!(kind, "INSERTED");
    }
    let fresh: u8 = stack
        .ch()
        .query("SELECT min(created_at) > now() - 600 FROM events FINAL")
        .fetch_one()
        .await?;
    assert_eq!(fresh, 1, "created_at filled by the server default");

    // The demo's events watcher prints the journal, then each new entry.
    let mut watcher = outbox_tests::Daemon::spawn(
        "outbox-demo",
        &["watch", "--interval-secs", "1", "--from-start"],
        &stack.daemon_env(),
        &format!("{}-watch", stack.name),
    );
    let log = watcher.log.clone();
    let printed = |needle: String| {
        let log = log.clone();
        move || {
            let log = log.clone();
            let needle = needle.clone();
            async move {
                Ok::<usize, anyhow::Error>(std::fs::read_to_string(&log)?.matches(&needle).count())
            }
        }
    };
    let count = printed("type=INSERTED".into());
    wait_until("the watcher printing the 50 entries", ARRIVAL, || async {
        Ok(count().await? == 50)
    })
    .await;
    pg.execute("INSERT INTO my_table (value) VALUES ('late arrival')", &[])
        .await?;
    let late = printed("my_table_id=51 type=INSERTED value=\"late arrival\"".into());
    wait_until("the watcher printing the new entry", ARRIVAL, || async {
        Ok(late().await? == 1)
    })
    .await;
    assert!(watcher.is_running());
    stop(running).await
}

/// Clicks, views, orders each in their typed table; IPv4 type where the
/// server has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_routes_each_topic_to_its_typed_table() -> anyhow::Result<()> {
    let (stack, _, running) = start("router", "router").await?;
    let pg = stack.pg().await?;
    pg.batch_execute(
        "INSERT INTO user_clicks (\"timestamp\", user_id, ip_address, url, element_id)
           SELECT '2024-05-06 07:08:09'::timestamp + make_interval(secs => g),
                  ('6f1c2d4e-0000-4000-8000-00000000000' || (g % 10))::uuid, ('10.0.' || g || '.1')::inet,
                  'https://shop.example/p/' || g, 'btn-' || (1 + g % 20)
           FROM generate_series(1, 20) g;
         INSERT INTO page_views (\"timestamp\", user_id, ip_address, url, duration_seconds)
           SELECT '2024-05-06 07:08:09'::timestamp, '6f1c2d4e-0000-4000-8000-000000000001',
                  ('192.168.1.' || g)::inet, 'https://shop.example/' || g, 5 + g
           FROM generate_series(1, 15) g;
         INSERT INTO orders (\"timestamp\", order_id, user_id, ip_address, amount)
           SELECT '2024-05-06 07:08:09', ('0000000' || g || '-1111-4111-8111-111111111111')::uuid,
                  '6f1c2d4e-0000-4000-8000-000000000002', ('203.0.113.' || g)::inet, 9.99 * g
           FROM generate_series(1, 9) g;",
    )
    .await?;
    wait_rows(&stack, "clicks_table", 20).await;
    wait_rows(&stack, "views_table", 15).await;
    wait_rows(&stack, "orders_table", 9).await;

    let click: (u32, String, String, String, String) = stack
        .ch()
        .query("SELECT toUInt32(timestamp), user_id, toString(ip_address), url, element_id FROM clicks_table FINAL WHERE id = 3")
        .fetch_one()
        .await?;
    assert_eq!(
        click,
        (
            1_714_979_292,
            "6f1c2d4e-0000-4000-8000-000000000003".into(),
            "10.0.3.1".into(),
            "https://shop.example/p/3".into(),
            "btn-4".into()
        )
    );
    let durations: Vec<u32> = stack
        .ch()
        .query("SELECT duration_seconds FROM views_table FINAL ORDER BY id")
        .fetch_all()
        .await?;
    assert_eq!(durations, (6..=20).collect::<Vec<u32>>());
    let order: (String, String, f64) = stack
        .ch()
        .query("SELECT order_id, toString(ip_address), amount FROM orders_table FINAL WHERE id = 7")
        .fetch_one()
        .await?;
    assert_eq!(
        order,
        (
            "00000007-1111-4111-8111-111111111111".into(),
            "203.0.113.7".into(),
            69.93
        )
    );
    let ip_type: String = stack
        .ch()
        .query("SELECT type FROM system.columns WHERE database = currentDatabase() AND table = 'clicks_table' AND name = 'ip_address'")
        .fetch_one()
        .await?;
    let version: String = stack.ch().query("SELECT version()").fetch_one().await?;
    let expected_ip = if version.starts_with("18.") {
        "String"
    } else {
        "IPv4"
    };
    assert_eq!(ip_type, expected_ip, "IPv4 where the server has the type");
    stop(running).await
}

/// Exact Decimal money, times written three ways land as one instant,
/// `processing_time` filled, monthly partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sales_and_warehouse_with_decimal_money_and_best_effort_times() -> anyhow::Result<()> {
    let (stack, _, running) = start("sales", "sales").await?;
    let pg = stack.pg().await?;
    pg.batch_execute(
        "INSERT INTO sales (event_time, product_id, product_name, category, quantity, price, discount, total, store_id, cashier_id, customer_id) VALUES
           ('2024-03-01 10:00:00', 101, 'Чайник', 'kitchen', 2, 19.99, 0.00, 39.98, 1, 7, 'c-1'),
           ('2024-03-01T10:00:00Z', 102, 'Kettle \"pro\"', 'kitchen', 1, 999.99, 100.00, 899.99, 2, 8, 'c-2'),
           ('2024-03-01T12:00:00+02:00', 103, 'Mug', 'kitchen', 3, 0.10, 0.01, 0.29, 3, 9, 'c-3');
         INSERT INTO warehouse (event_time, product_id, product_name, category, warehouse, quantity, movement_type, source, responsible) VALUES
           ('2024-03-02 08:30:00', 101, 'Чайник', 'kitchen', 'Москва', 50, 'supply', 'factory', 'Иванов'),
           ('2024-03-02 09:00:00', 102, 'Kettle', 'kitchen', 'Казань', -5, 'write_off', 'store 2', 'Petrov');",
    )
    .await?;
    wait_rows(&stack, "sales", 3).await;
    wait_rows(&stack, "stock_movements", 2).await;

    // Money compared in cents: exact, and independent of how the server
    // version prints decimals.
    let sales: Vec<(u32, u64, i64, i64, i64, String, u32)> = stack
        .ch()
        .query("SELECT toUInt32(event_time), product_id, toInt64(price * 100), toInt64(discount * 100), toInt64(total * 100), product_name, quantity FROM sales FINAL ORDER BY id")
        .fetch_all()
        .await?;
    let instant = 1_709_287_200; // 2024-03-01 10:00:00 UTC, whichever way it was written
    assert_eq!(sales[0], (instant, 101, 1999, 0, 3998, "Чайник".into(), 2));
    assert_eq!(
        sales[1],
        (
            instant,
            102,
            99999,
            10000,
            89999,
            "Kettle \"pro\"".into(),
            1
        )
    );
    assert_eq!(
        (sales[2].0, sales[2].2, sales[2].3, sales[2].4),
        (instant, 10, 1, 29)
    );
    let price_type: String = stack
        .ch()
        .query("SELECT type FROM system.columns WHERE database = currentDatabase() AND table = 'sales' AND name = 'price'")
        .fetch_one()
        .await?;
    assert_eq!(price_type, "Decimal(9, 2)");
    let filled: u8 = stack
        .ch()
        .query("SELECT min(processing_time) > now() - 600 FROM sales FINAL")
        .fetch_one()
        .await?;
    assert_eq!(filled, 1, "processing_time filled at insert");

    let moves: Vec<(String, i32, String)> = stack
        .ch()
        .query("SELECT warehouse, quantity, movement_type FROM stock_movements FINAL ORDER BY id")
        .fetch_all()
        .await?;
    assert_eq!(
        moves,
        vec![
            ("Москва".into(), 50, "supply".into()),
            ("Казань".into(), -5, "write_off".into())
        ]
    );
    let partition: String = stack
        .ch()
        .query("SELECT any(partition) FROM system.parts WHERE database = currentDatabase() AND table = 'stock_movements' AND active")
        .fetch_one()
        .await?;
    assert_eq!(partition, "202403", "partitioned by month");
    stop(running).await
}

/// `examples/sixth-flow` (a TOML entry and two SQL files) runs end to end,
/// without the demo's flows or tables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sixth_flow_from_config_and_sql_alone() -> anyhow::Result<()> {
    let mut stack = TestStack::start("sixth").await?;
    stack.flows = "app_errors".into();
    let example = repo_path("examples/sixth-flow");
    stack.overrides.push((
        "FLOWS_FILE".into(),
        example.join("flows.toml").display().to_string(),
    ));
    stack.migrate_with(&example.join("migrations")).await?;
    let metrics = Metrics::default();
    let running = vec![stack.spawn_relay(&metrics)?, stack.spawn_sink(&metrics)?];
    let pg = stack.pg().await?;
    pg.batch_execute(
        "INSERT INTO app_errors (service, level, message, occurred_at) VALUES
           ('billing', 'error', 'card declined: \"insufficient funds\"', '2024-01-01 00:00:00+00'),
           ('search', 'warn', 'slow query', '2024-01-01 01:00:00+01')",
    )
    .await?;
    wait_rows(&stack, "app_errors", 2).await;
    let rows: Vec<(u64, String, String, u32)> = stack
        .ch()
        .query(
            "SELECT id, service, message, toUInt32(occurred_at) FROM app_errors FINAL ORDER BY id",
        )
        .fetch_all()
        .await?;
    assert_eq!(
        rows[0],
        (
            1,
            "billing".into(),
            "card declined: \"insufficient funds\"".into(),
            1_704_067_200
        )
    );
    assert_eq!(rows[1].3, 1_704_067_200, "timestamptz keeps the instant");
    stop(running).await
}

/// Missing Postgres column, missing ClickHouse column, a column no source
/// field fills: exit 2 naming flow and column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_contradicting_its_tables_is_refused_naming_flow_and_column() -> anyhow::Result<()> {
    let stack = TestStack::migrated("contradiction").await?;
    // A table of its own: a source table belongs to one flow.
    stack
        .pg()
        .await?
        .batch_execute(
            "CREATE TABLE broken_source (id BIGSERIAL PRIMARY KEY, username TEXT, \
             sent_to_kafka BOOLEAN DEFAULT FALSE)",
        )
        .await?;
    let dir = std::env::temp_dir().join(&stack.name);
    std::fs::create_dir_all(&dir)?;
    let write = |name: &str, text: &str| -> anyhow::Result<String> {
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        Ok(path.display().to_string())
    };
    let relay_side = write(
        "relay.toml",
        "[[flows]]\nname = \"broken\"\nconsumer_group = \"g\"\n[[flows.sources]]\ntable = \"broken_source\"\ntopic = \"t\"\ncolumns = [\"id\", \"nickname\"]\n",
    )?;
    let sink_side = write(
        "sink.toml",
        "[[flows]]\nname = \"broken\"\nconsumer_group = \"g\"\n[[flows.targets]]\ntopic = \"t\"\ntable = \"user_logins\"\ncolumns = { colour = \"x\" }\n",
    )?;
    let wrong_field = write(
        "field.toml",
        "[[flows]]\nname = \"broken\"\nconsumer_group = \"g\"\n[[flows.sources]]\ntable = \"broken_source\"\ntopic = \"t\"\ncolumns = [\"id\", \"username\"]\n[[flows.targets]]\ntopic = \"t\"\ntable = \"user_logins\"\n",
    )?;
    let env = stack.daemon_env();
    let with = |file: &str| -> Vec<(String, String)> {
        let mut e: Vec<(String, String)> =
            env.iter().filter(|(k, _)| k != "FLOWS").cloned().collect();
        e.push(("FLOWS_FILE".into(), file.into()));
        e.push(("FLOWS".into(), "broken".into()));
        e
    };
    for (binary, file, column) in [
        ("relay", &relay_side, "nickname"),
        ("sink", &sink_side, "colour"),
        ("sink", &wrong_field, "event_type"),
    ] {
        let env = with(file);
        let (code, stderr) = tokio::task::spawn_blocking(move || {
            let pairs: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            run_to_exit(binary, &["run"], &pairs)
        })
        .await?;
        assert_eq!(code, Some(2), "{binary}: {stderr}");
        assert!(
            stderr.contains("flow `broken`") && stderr.contains(column),
            "{binary} names flow and column: {stderr}"
        );
    }
    Ok(())
}

/// `outbox-demo generate --flow sales` inserts ~70/30 sales/warehouse with
/// consistent totals; all arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generator_feeds_a_flow_with_the_demo_mix() -> anyhow::Result<()> {
    let (stack, _, running) = start("generator", "sales").await?;
    let env = stack.daemon_env();
    let (code, stderr) = tokio::task::spawn_blocking(move || {
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run_to_exit(
            "outbox-demo",
            &[
                "generate", "--flow", "sales", "--rate", "1000", "--total", "1000",
            ],
            &pairs,
        )
    })
    .await?;
    assert_eq!(code, Some(0), "{stderr}");
    let pg = stack.pg().await?;
    let sales: i64 = pg
        .query_one("SELECT count(*) FROM sales", &[])
        .await?
        .get(0);
    let moves: i64 = pg
        .query_one("SELECT count(*) FROM warehouse", &[])
        .await?
        .get(0);
    assert_eq!(sales + moves, 1000);
    assert!((600..=800).contains(&sales), "about 70% sales: {sales}");
    wait_until("generated rows in ClickHouse", ARRIVAL, || async {
        Ok(
            stack.ch_count_final("sales").await? + stack.ch_count_final("stock_movements").await?
                == 1000,
        )
    })
    .await;
    let consistent: u8 = stack
        .ch()
        .query("SELECT countIf(toInt64(total * 100) = toInt64(price * 100) * quantity - toInt64(discount * 100)) = count() FROM sales FINAL")
        .fetch_one()
        .await?;
    assert_eq!(consistent, 1, "total = price × quantity − discount");
    stop(running).await
}

/// A pending row updated between a crash and its re-delivery would reach
/// `sales` (ordered by `event_time, product_id, id`) twice with different
/// sort keys, and FINAL would show both. Pending outbox rows are immutable:
/// the update is refused, the re-delivery carries the same values, and the
/// id appears once. Rows already sent can still be changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_row_cannot_change_between_a_crash_and_its_redelivery() -> anyhow::Result<()> {
    let stack = TestStack::migrated_for("immutable", "sales").await?;
    let pg = stack.pg().await?;
    let id: i64 = pg
        .query_one(
            "INSERT INTO sales (event_time, product_id, product_name, category, quantity, price, discount, total, store_id, cashier_id, customer_id)
             VALUES ('2024-03-01 10:00:00', 7, 'Mug', 'kitchen', 1, 1.00, 0, 1.00, 1, 1, 'c') RETURNING id",
            &[],
        )
        .await?
        .get(0);
    // The relay crashes after the Kafka commit, before flagging the row.
    let mut env = stack.daemon_env();
    env.push((
        "OUTBOX_FAILPOINTS".into(),
        "relay-after-kafka-commit=1".into(),
    ));
    let mut crashed = outbox_tests::Daemon::spawn(
        "relay",
        &["run"],
        &env,
        &format!("{}-crashing-relay", stack.name),
    );
    let status = crashed.wait_exit(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| !s.success()),
        "the relay crashed at the crash point: {status:?}"
    );
    assert_eq!(stack.pending("sales").await?, 1, "the row is still pending");
    let update = pg
        .execute(
            "UPDATE sales SET event_time = '2024-04-01 10:00:00' WHERE id = $1",
            &[&id],
        )
        .await;
    let err = update.expect_err("an update of a pending outbox row is refused");
    assert!(
        err.as_db_error()
            .is_some_and(|db| db.message().contains("pending delivery")),
        "{err:?}"
    );
    // An update that changes nothing (a blanket "reset to pending") passes.
    pg.execute(
        "UPDATE sales SET sent_to_kafka = FALSE WHERE id = $1",
        &[&id],
    )
    .await?;
    let metrics = Metrics::default();
    let running = vec![stack.spawn_sink(&metrics)?, stack.spawn_relay(&metrics)?];
    wait_until("the row flagged sent", ARRIVAL, || async {
        Ok(stack.pending("sales").await? == 0)
    })
    .await;
    wait_rows(&stack, "sales", 1).await;
    // Kafka holds the row twice, with the same values; FINAL shows it once.
    let (brokers, topic) = (stack.kafka_brokers.clone(), stack.topic("sales"));
    let records = tokio::task::spawn_blocking(move || {
        outbox_tests::topic::read_all(
            &brokers,
            &[topic],
            outbox_tests::topic::Isolation::Committed,
        )
    })
    .await??;
    let copies: std::collections::BTreeSet<Vec<u8>> = records
        .iter()
        .filter(|r| r.id() == Some(id))
        .map(|r| r.payload.clone())
        .collect();
    let deliveries = records.iter().filter(|r| r.id() == Some(id)).count();
    assert_eq!((deliveries, copies.len()), (2, 1), "published twice, alike");
    let in_view: u64 = stack
        .ch()
        .query("SELECT count() FROM sales FINAL WHERE id = ?")
        .bind(id)
        .fetch_one()
        .await?;
    assert_eq!(in_view, 1);
    // Sent rows may change (a set-aside row fixed before `relay replay`).
    pg.execute("UPDATE sales SET quantity = 2 WHERE id = $1", &[&id])
        .await?;
    // The relay warns about a source table without the guard.
    pg.batch_execute("DROP TRIGGER outbox_pending_immutable ON warehouse")
        .await?;
    let ident = |t: &str| flows::ident::Ident::new(t).map_err(anyhow::Error::msg);
    assert!(relay::source::pending_rows_protected(&pg, &ident("sales")?).await?);
    assert!(!relay::source::pending_rows_protected(&pg, &ident("warehouse")?).await?);
    stop(running).await
}

/// The migrations of `kind` as the product embedded them before the demo
/// moved out (`tests/fixtures/migrations-with-the-demo`), under the names
/// databases recorded them by.
fn migrations_with_the_demo(kind: &str) -> anyhow::Result<Vec<flows::migrations::Migration>> {
    let dir = repo_path("tests/fixtures/migrations-with-the-demo").join(kind);
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|x| x == "sql"));
    files.sort();
    files
        .into_iter()
        .map(|path| {
            Ok(flows::migrations::Migration {
                name: path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                sql: std::fs::read_to_string(&path)?,
            })
        })
        .collect()
}

/// What a fresh install and an upgraded database must share: every table's
/// columns, indexes, triggers, storage options and the functions, in
/// Postgres; every table's definition in ClickHouse (the database's name
/// left out).
async fn schema(stack: &TestStack) -> anyhow::Result<Vec<String>> {
    let pg = stack.pg().await?;
    let mut lines = Vec::new();
    for query in [
        "SELECT format('column %s.%s %s %s null=%s', table_name, column_name, data_type,
                coalesce(column_default, '-'), is_nullable)
         FROM information_schema.columns WHERE table_schema = 'public'
         ORDER BY table_name, ordinal_position",
        "SELECT format('index %s %s', tablename, indexdef) FROM pg_indexes
         WHERE schemaname = 'public' ORDER BY tablename, indexname",
        "SELECT format('trigger %s', pg_get_triggerdef(t.oid)) FROM pg_trigger t
         WHERE NOT t.tgisinternal ORDER BY t.tgrelid::regclass::text, t.tgname",
        "SELECT format('table %s %s', c.relname, coalesce(c.reloptions::text, '-'))
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') ORDER BY c.relname",
        "SELECT format('function %s', pg_get_functiondef(p.oid)) FROM pg_proc p
         JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = 'public' ORDER BY p.proname",
    ] {
        for row in pg.query(query, &[]).await? {
            lines.push(row.get::<_, String>(0));
        }
    }
    let tables: Vec<(String, String)> = stack
        .ch()
        .query(
            "SELECT name, create_table_query FROM system.tables
             WHERE database = currentDatabase() ORDER BY name",
        )
        .fetch_all()
        .await?;
    for (name, create) in tables {
        lines.push(format!(
            "clickhouse {name} {}",
            create.replace(&stack.name, "DB")
        ));
    }
    Ok(lines)
}

/// A database migrated while the demo's tables were the product's own
/// migrations (0002–0005 in Postgres, all of ClickHouse's) upgrades
/// cleanly: today's product migrations find nothing to do (their names are
/// recorded; their content changed only by what the demo's files now do),
/// the demo's folder (MIGRATIONS_DIR) runs over the existing tables without
/// harm, and the schema is then exactly a fresh install's; rows written
/// before the upgrade — one pending — travel on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_migrated_with_the_demo_inside_upgrades_to_a_fresh_install() -> anyhow::Result<()>
{
    let fresh = TestStack::migrated("fresh_install").await?;
    let old = TestStack::start("upgraded").await?;
    let mut pg = old.pg().await?;
    relay::migrate::migrate(&mut pg, &migrations_with_the_demo("postgres")?).await?;
    let ch_config = sink::config::clickhouse_config(&flows::Env::from_pairs(old.daemon_env()))?;
    let cancel = tokio_util::sync::CancellationToken::new();
    sink::migrate_with_retry(
        &ch_config,
        &migrations_with_the_demo("clickhouse")?,
        &cancel,
    )
    .await?;
    pg.batch_execute(
        "INSERT INTO user_logins (username, event_type, event_time)
         SELECT 'before-' || g, 'login', now() FROM generate_series(1, 3) g;
         UPDATE user_logins SET sent_to_kafka = TRUE WHERE id = 1;",
    )
    .await?;

    // Today's sequence, as `relay migrate` and `sink migrate` run it with
    // MIGRATIONS_DIR=demo/migrations.
    let demo = [outbox_demo::migrations_dir()];
    let applied =
        relay::migrate::migrate(&mut pg, &flows::migrations::all("postgres", &demo)?).await?;
    assert_eq!(
        applied,
        [
            "user/0001_user_logins",
            "user/0002_my_table",
            "user/0003_router",
            "user/0004_sales"
        ],
        "only the demo's files are new"
    );
    let applied = sink::migrate_with_retry(
        &ch_config,
        &flows::migrations::all("clickhouse", &demo)?,
        &cancel,
    )
    .await?;
    assert_eq!(applied.len(), 5, "the demo's ClickHouse files: {applied:?}");
    let (upgraded, installed) = (schema(&old).await?, schema(&fresh).await?);
    let only = |a: &[String], b: &[String]| -> Vec<String> {
        a.iter().filter(|l| !b.contains(l)).cloned().collect()
    };
    assert!(
        upgraded == installed,
        "upgraded and fresh schemas differ:\nonly upgraded: {:#?}\nonly fresh: {:#?}",
        only(&upgraded, &installed),
        only(&installed, &upgraded)
    );
    assert!(installed.len() > 100, "the schema was read: {installed:#?}");
    let unready: Vec<String> = pg
        .query(
            "SELECT t || ': ' || array_to_string(outbox_source_missing(t::regclass), ', ')
             FROM unnest(ARRAY['user_logins', 'my_table', 'user_clicks', 'page_views', 'orders',
                               'sales', 'warehouse']) AS t
             WHERE cardinality(outbox_source_missing(t::regclass)) > 0",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        unready.is_empty(),
        "every demo table a ready source: {unready:?}"
    );
    // A second run of either has nothing to do.
    let again =
        relay::migrate::migrate(&mut pg, &flows::migrations::all("postgres", &demo)?).await?;
    assert!(again.is_empty(), "{again:?}");

    // The rows from before the upgrade: the pending ones travel.
    assert_eq!(old.pending("user_logins").await?, 2);
    let metrics = Metrics::default();
    let running = vec![old.spawn_sink(&metrics)?, old.spawn_relay(&metrics)?];
    wait_rows(&old, "user_logins", 2).await;
    assert_eq!(old.pending("user_logins").await?, 0);
    stop(running).await
}
