//! The dashboards end to end: rows inserted with SQL travel through the
//! real relay and sink, the page's JSON holds their figures, and headless
//! Chromium runs the page's scripts and draws the charts. `outbox-demo
//! dashboard` is the product's `sink dashboard` (each flow's status) with
//! the demo's sales section; the product's page has no sales.

use std::time::Duration;

use daemon::metrics::Metrics;
use flows::Env;
use outbox_tests::browser;
use outbox_tests::{TestStack, wait_until};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const ARRIVAL: Duration = Duration::from_secs(60);
/// The charts' colours in the demo's `sales.html`.
const QUANTITY_COLOR: [u8; 3] = [0x2a, 0x7a, 0xb9];
const REVENUE_COLOR: [u8; 3] = [0xe0, 0x78, 0x2f];

fn free_addr() -> anyhow::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.to_string())
}

async fn api(addr: std::net::SocketAddr) -> anyhow::Result<Value> {
    let (status, body) = daemon::http::fetch(&addr.to_string(), "/api/dashboard")
        .await
        .ok_or_else(|| anyhow::anyhow!("dashboard did not answer"))?;
    anyhow::ensure!(status == 200, "status {status}: {body}");
    Ok(serde_json::from_str(&body)?)
}

/// `outbox-demo dashboard` after sales travelled through the real relay and
/// sink: the JSON holds each flow's state (ready), backlog, lag, last
/// publish/insert, rows per table, sales per hour over 24 h (a 36 h old
/// sale left out), top movements, latest sales; headless Chromium runs the
/// page: 3 bars in each chart in the DOM, and the screenshot has the bars'
/// colours (`target/tmp/dashboard.png`). The product's `sink dashboard` on
/// the same flows shows the same status and no sales (none in its JSON, no
/// section on its page).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_each_flow_and_draws_the_sales_charts() -> anyhow::Result<()> {
    let mut stack = TestStack::start("dashboard").await?;
    stack.flows = "sales".into();
    let (relay_addr, sink_addr) = (free_addr()?, free_addr()?);
    stack.overrides.extend([
        ("RELAY_METRICS_ADDR".to_owned(), relay_addr),
        ("SINK_METRICS_ADDR".to_owned(), sink_addr),
        ("SINK_DASHBOARD_ADDR".to_owned(), "127.0.0.1:0".to_owned()),
    ]);
    stack.migrate().await?;
    let (relay_metrics, sink_metrics) = (Metrics::default(), Metrics::default());
    let relay = stack.spawn_relay(&relay_metrics)?;
    let sink = stack.spawn_sink(&sink_metrics)?;

    // Three hours with sales (now, 2 h ago, 5 h ago), one a day and a half
    // ago that the 24 h charts must leave out.
    let pg = stack.pg().await?;
    pg.batch_execute(
        "INSERT INTO sales (event_time, product_id, product_name, category, quantity, price, discount, total, store_id, cashier_id, customer_id)
         SELECT to_char(now() AT TIME ZONE 'UTC' - make_interval(hours => h), 'YYYY-MM-DD HH24:MI:SS'),
                100 + h, 'product ' || h, 'kitchen', q, 10.00, 0.00, q * 10.00, 1, 1, 'c'
         FROM (VALUES (0, 3), (0, 4), (2, 5), (5, 6), (36, 100)) AS v(h, q);
         INSERT INTO warehouse (event_time, product_id, product_name, category, warehouse, quantity, movement_type, source, responsible)
         SELECT to_char(now(), 'YYYY-MM-DD HH24:MI:SS'), 7, p, 'kitchen', 'Kazan', 10, 'supply', 'factory', 'Ivanov'
         FROM unnest(ARRAY['kettle', 'kettle', 'kettle', 'mug']) AS p;",
    )
    .await?;
    wait_until("5 sales and 4 movements in ClickHouse", ARRIVAL, || async {
        Ok(stack.ch_count_final("sales").await? == 5
            && stack.ch_count_final("stock_movements").await? == 4)
    })
    .await;

    let config = ops::dashboard::DashboardConfig::from_env(&Env::from_pairs(stack.daemon_env()))?;
    let shutdown = CancellationToken::new();
    let addr = ops::dashboard::serve_with(
        config.clone(),
        &[outbox_demo::dashboard::SALES],
        shutdown.clone(),
    )
    .await?;
    let product = ops::dashboard::serve(config, shutdown.clone()).await?;

    // The status part: both daemons answer and call the flow ready.
    wait_until("relay and sink ready in the dashboard", ARRIVAL, || async {
        let d = api(addr).await?;
        let flow = &d["flows"][0];
        let state = |daemon: &str| flow[daemon]["state"].as_str().unwrap_or("").to_owned();
        let ready = state("relay").starts_with("ready")
            && state("sink").starts_with("ready")
            && flow["relay"]["backlog"] == 0.0
            && flow["sink"]["lag"] == 0.0;
        anyhow::ensure!(ready, "not yet: {d}");
        Ok(true)
    })
    .await;
    // Rows read on each side (at least once: a retried batch reads again).
    assert!(relay_metrics.value("relay_rows_read_total", &[("flow", "sales")]) >= 9);
    assert!(sink_metrics.value("sink_messages_read_total", &[("flow", "sales")]) >= 9);
    let d = api(addr).await?;
    let flow = &d["flows"][0];
    assert_eq!(flow["name"], "sales");
    assert_eq!(flow["relay"]["published"], 9.0, "{flow}");
    assert!(flow["relay"]["last_publish"].is_string(), "{flow}");
    assert!(flow["sink"]["last_insert"].is_string(), "{flow}");
    // Freshness over the last minutes, from the sink's histogram: the 9
    // rows, with a p99 bound.
    let fresh = &flow["sink"]["freshness"];
    assert!(
        fresh["rows"].as_f64() == Some(9.0) && fresh["p99_ms"].is_number(),
        "{flow}"
    );
    let tables = flow["sink"]["tables"].to_string();
    assert!(
        tables.contains(r#"{"rows":5,"table":"sales"}"#)
            && tables.contains(r#"{"rows":4,"table":"stock_movements"}"#),
        "{tables}"
    );

    // The sales part: per hour over the last 24 h, quantity and revenue.
    let sales = &d["sales"];
    let hourly: Vec<(u64, f64)> = sales["hourly"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|h| {
                    (
                        h["quantity"].as_u64().unwrap_or(0),
                        h["revenue"].as_f64().unwrap_or(0.0),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(hourly, vec![(6, 60.0), (5, 50.0), (7, 70.0)], "{sales}");
    assert_eq!(sales["counts"]["sales"], 5);
    assert_eq!(sales["counts"]["stock_movements"], 4);
    assert_eq!(sales["top_movements"][0]["product_name"], "kettle");
    assert_eq!(sales["top_movements"][0]["movements"], 3);
    assert_eq!(sales["latest_sales"].as_array().map(Vec::len), Some(5));
    assert!(
        sales["latest_sales"][0]["product_name"] == "product 0",
        "newest first: {sales}"
    );

    // The page in a real browser: its scripts fetch the JSON and draw a bar
    // per hour with sales in each chart, and the tables.
    let url = format!("http://{addr}/");
    let dom = browser::dump_dom(&url)?;
    assert_eq!(
        dom.matches(r#"class="bar""#).count(),
        6,
        "3 bars in each of the 2 charts: {dom}"
    );
    // The 36 h old sale is in the latest sales list but in no chart.
    for expected in [
        "product 36",
        "kettle",
        r#"<span class="ok">ready"#,
        "sales: 5 rows",
    ] {
        assert!(
            dom.contains(expected),
            "{expected:?} missing from the page: {dom}"
        );
    }

    // The product's page: the same status, no sales.
    let p = api(product).await?;
    assert_eq!(p["flows"][0]["name"], "sales", "{p}");
    assert_eq!(p["flows"][0]["relay"]["published"], 9.0, "{p}");
    assert!(
        p.get("sales").is_none(),
        "no sales in the product's JSON: {p}"
    );
    let product_dom = browser::dump_dom(&format!("http://{product}/"))?;
    assert!(
        product_dom.contains(r#"<span class="ok">ready"#)
            && !product_dom.contains("sales-section")
            && !product_dom.contains(r#"class="bar""#),
        "the product's page shows the status and no sales: {product_dom}"
    );

    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    browser::screenshot(&url, &shot, 1280, 1400)?;
    let quantity = browser::count_pixels(&shot, QUANTITY_COLOR, 8)?;
    let revenue = browser::count_pixels(&shot, REVENUE_COLOR, 8)?;
    assert!(
        quantity > 500 && revenue > 500,
        "the charts' bars are drawn ({quantity} quantity and {revenue} revenue pixels in {})",
        shot.display()
    );

    shutdown.cancel();
    relay.stop().await?;
    sink.stop().await
}
