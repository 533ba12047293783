//! `outbox-demo dashboard`: the product's status page (`sink dashboard`,
//! `ops::dashboard`) with the seed 002 sales dashboard as a section below
//! it, drawn from the `sales` flow's tables when that flow is selected.

mod sales;

use ops::dashboard::{DashboardConfig, Section, SectionFuture};

/// The sales charts, lists and counts (`sales.html` draws `data.sales`).
pub const SALES: Section = Section {
    key: "sales",
    html: include_str!("sales.html"),
    read: read_sales,
};

fn read_sales<'a>(
    config: &'a DashboardConfig,
    client: &'a clickhouse::Client,
) -> SectionFuture<'a> {
    Box::pin(async move {
        if !config.flows.iter().any(|f| f.name.as_str() == "sales") {
            return serde_json::Value::Null;
        }
        sales::dashboard(client)
            .await
            .unwrap_or_else(|e| serde_json::json!({ "error": format!("{e:#}") }))
    })
}
