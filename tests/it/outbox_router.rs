//! The classic outbox table (`examples/outbox-router`), on the real broker:
//! one table routed by `aggregatetype` to a topic per type, keyed by
//! `aggregateid`, the `payload` jsonb as the body as is, `id` and `type` as
//! headers; the sink loads each topic into its table taking the outbox id
//! and event type from the headers. A row whose type makes no topic name
//! is set aside with its reason, and the rest go on.

use std::collections::BTreeMap;
use std::time::Duration;

use outbox_tests::topic::{Isolation, read_all};
use outbox_tests::{Daemon, TestStack, repo_path, wait_until};

const SETTLE: Duration = Duration::from_secs(60);

/// The classic outbox table (`examples/outbox-router`): each row's topic
/// from a column, its body one column as is, other columns as headers; each
/// topic's rows land in their typed table, an unroutable row set aside with
/// its reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_outbox_table_routed_to_topics_by_column_and_loaded() -> anyhow::Result<()> {
    let mut stack = TestStack::start("router_col").await?;
    stack.flows = "outbox_events".into();
    let example = repo_path("examples/outbox-router");
    stack.overrides.push((
        "FLOWS_FILE".into(),
        example.join("flows.toml").display().to_string(),
    ));
    stack.migrate_with(&example.join("migrations")).await?;
    let env = stack.daemon_env();
    let _relay = Daemon::spawn("relay", &["run"], &env, &format!("{}-relay", stack.name));
    let _sink = Daemon::spawn("sink", &["run"], &env, &format!("{}-sink", stack.name));

    let pg = stack.pg().await?;
    pg.batch_execute(
        r#"BEGIN;
           INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES
             ('order', 'o-1', 'OrderCreated', '{"order_id": "o-1", "total": "19.90", "status": "new"}'),
             ('customer', 'c-7', 'CustomerRegistered', '{"customer_id": "c-7", "name": "Zoë \"Z\" Doe", "email": null}'),
             ('order', 'o-1', 'OrderPaid', '{"order_id": "o-1", "total": 19.9, "status": "paid"}'),
             ('bad type!', 'x-1', 'Oops', '{"x": 1}'),
             ('customer', 'c-8', 'CustomerRegistered', '{"customer_id": "c-8", "name": "Ann", "email": "ann@example.com"}');
           COMMIT;"#,
    )
    .await?;
    wait_until("both tables loaded", SETTLE, || async {
        Ok(stack.ch_count_final("order_events").await? == 2
            && stack.ch_count_final("customer_events").await? == 2)
    })
    .await;
    wait_until("the unroutable row set aside", SETTLE, || async {
        let n: i64 = pg
            .query_one(
                "SELECT count(*) FROM outbox_dead_rows WHERE source_table = 'outbox' AND error LIKE '%bad type!%'",
                &[],
            )
            .await?
            .get(0);
        Ok(n == 1)
    })
    .await;

    // The topics: one per type, keyed by aggregateid, the payload as is,
    // id and type as headers.
    let brokers = stack.kafka_brokers.clone();
    let topics = vec![
        stack.topic("outbox.event.order"),
        stack.topic("outbox.event.customer"),
    ];
    let records =
        tokio::task::spawn_blocking(move || read_all(&brokers, &topics, Isolation::Committed))
            .await??;
    let mut by_topic: BTreeMap<String, Vec<(String, String, String)>> = BTreeMap::new();
    for r in &records {
        let key = String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned();
        let header = |name: &str| {
            r.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let body = String::from_utf8_lossy(&r.payload).into_owned();
        by_topic
            .entry(r.topic.clone())
            .or_default()
            .push((key, header("type"), body));
        assert!(!header("id").is_empty(), "the id header");
    }
    let orders = &by_topic[&stack.topic("outbox.event.order")];
    assert_eq!(orders.len(), 2);
    assert_eq!(
        (orders[0].0.as_str(), orders[0].1.as_str()),
        ("o-1", "OrderCreated")
    );
    assert_eq!(
        orders[0].2, r#"{"total": "19.90", "status": "new", "order_id": "o-1"}"#,
        "jsonb's own text, not wrapped or re-escaped"
    );
    assert_eq!(by_topic[&stack.topic("outbox.event.customer")].len(), 2);

    let orders: Vec<(u64, String, String, u32)> = stack
        .ch()
        .query("SELECT outbox_id, event_type, status, toUInt32(total * 100) FROM order_events FINAL ORDER BY outbox_id")
        .fetch_all()
        .await?;
    assert_eq!(
        orders,
        vec![
            (1, "OrderCreated".into(), "new".into(), 1990),
            (3, "OrderPaid".into(), "paid".into(), 1990),
        ]
    );
    let customers: Vec<(u64, String, Option<String>)> = stack
        .ch()
        .query("SELECT outbox_id, name, email FROM customer_events FINAL ORDER BY outbox_id")
        .fetch_all()
        .await?;
    assert_eq!(
        customers,
        vec![
            (2, "Zoë \"Z\" Doe".into(), None),
            (5, "Ann".into(), Some("ann@example.com".into())),
        ]
    );
    Ok(())
}
