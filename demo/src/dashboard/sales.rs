//! The seed 002 dashboard, read from the `sales` flow's tables: sales per
//! hour over the last 24 h (quantity and revenue), the products with the
//! most stock movements, the latest sales and the row counts. Every query
//! reads `FINAL`, so a row delivered twice is counted once.

use serde_json::{Value, json};

/// Hours shown in the charts.
const HOURS: i64 = 24;
/// Rows in the two lists.
const LIST_ROWS: u32 = 10;

pub async fn dashboard(client: &clickhouse::Client) -> anyhow::Result<Value> {
    let hourly: Vec<(u32, u64, f64)> = client
        .query(&format!(
            "SELECT toUInt32(toStartOfHour(event_time)) AS hour, sum(quantity), toFloat64(sum(total)) \
             FROM sales FINAL WHERE event_time >= now() - {} GROUP BY hour ORDER BY hour",
            HOURS * 3600
        ))
        .fetch_all()
        .await?;
    let top_movements: Vec<(String, u64, i64)> = client
        .query(&format!(
            "SELECT product_name, count() AS movements, sum(quantity) \
             FROM stock_movements FINAL GROUP BY product_name \
             ORDER BY movements DESC, product_name LIMIT {LIST_ROWS}"
        ))
        .fetch_all()
        .await?;
    let latest: Vec<(u64, u32, String, String, u32, String, u32)> = client
        .query(&format!(
            "SELECT id, toUInt32(event_time), product_name, category, quantity, toString(total), store_id \
             FROM sales FINAL ORDER BY event_time DESC, id DESC LIMIT {LIST_ROWS}"
        ))
        .fetch_all()
        .await?;
    let sales: u64 = client
        .query("SELECT count() FROM sales FINAL")
        .fetch_one()
        .await?;
    let movements: u64 = client
        .query("SELECT count() FROM stock_movements FINAL")
        .fetch_one()
        .await?;
    let time = |t: u32| daemon::time::format_utc(i64::from(t));
    Ok(json!({
        "hours": HOURS,
        "hourly": hourly
            .iter()
            .map(|(hour, quantity, revenue)| json!({
                "hour": hour,
                "label": time(*hour).map(|t| t[11..16].to_owned()),
                "quantity": quantity,
                "revenue": (revenue * 100.0).round() / 100.0,
            }))
            .collect::<Vec<_>>(),
        "top_movements": top_movements
            .iter()
            .map(|(product, movements, quantity)| json!({
                "product_name": product, "movements": movements, "quantity": quantity,
            }))
            .collect::<Vec<_>>(),
        "latest_sales": latest
            .iter()
            .map(|(id, at, product, category, quantity, total, store)| json!({
                "id": id, "event_time": time(*at), "product_name": product,
                "category": category, "quantity": quantity, "total": total, "store_id": store,
            }))
            .collect::<Vec<_>>(),
        "counts": { "sales": sales, "stock_movements": movements },
    }))
}
