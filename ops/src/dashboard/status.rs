//! Each flow's pipeline status as the dashboard shows it: what the relay
//! and the sink report on their endpoints (readiness, backlog, oldest
//! pending age, lag, last publish and insert) and the rows in ClickHouse.

use std::collections::BTreeMap;

use daemon::http::{DaemonView, fetch, metric_sum};
use serde_json::{Value, json};

use super::DashboardConfig;

/// What one daemon's endpoint said.
struct DaemonReport<'a> {
    name: &'static str,
    addr: Option<&'a str>,
    view: DaemonView,
    /// `/readyz` body (one line per flow) when the daemon answered.
    readiness: Option<String>,
}

impl<'a> DaemonReport<'a> {
    async fn read(name: &'static str, addr: Option<&'a str>) -> Self {
        let view = DaemonView::fetch(addr, "status").await;
        let readiness = match addr {
            Some(a) => fetch(a, "/readyz").await.map(|(_, body)| body),
            None => None,
        };
        Self {
            name,
            addr,
            view,
            readiness,
        }
    }

    fn summary(&self) -> Value {
        json!({
            "name": self.name,
            "addr": self.addr,
            "reachable": self.view.metrics.is_some(),
        })
    }

    /// `ready`, `not ready: …`, or why it is unknown.
    fn flow_state(&self, flow: &str) -> String {
        let Some(report) = &self.readiness else {
            return match self.addr {
                Some(a) => format!("{} not reachable at {a}", self.name),
                None => format!("{} endpoint off", self.name),
            };
        };
        let prefix = format!("flow={flow} ");
        report
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or_else(|| format!("not run by this {}", self.name), str::to_owned)
    }

    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric_sum(self.view.metrics.as_deref()?, name, labels)
    }

    /// A Unix-time gauge of `flow` as text ("never …" while 0); none when
    /// the daemon did not answer.
    fn time(&self, name: &str, flow: &str) -> Option<String> {
        self.view.time(name, &[("flow", flow)])
    }
}

pub struct Status {
    pub daemons: Value,
    pub flows: Value,
}

/// Rows per table of the configured database (active parts, before merges:
/// a cheap figure; `sink reconcile` counts distinct rows).
async fn table_rows(
    client: &clickhouse::Client,
) -> Result<BTreeMap<String, u64>, clickhouse::error::Error> {
    let rows: Vec<(String, u64)> = client
        .query(
            "SELECT table, sum(rows) FROM system.parts \
             WHERE database = currentDatabase() AND active GROUP BY table",
        )
        .fetch_all()
        .await?;
    Ok(rows.into_iter().collect())
}

pub async fn flows(
    config: &DashboardConfig,
    client: &clickhouse::Client,
    recent: &super::freshness::Recent,
) -> Status {
    let (relay, sink, rows) = tokio::join!(
        DaemonReport::read("relay", config.relay_metrics.as_deref()),
        DaemonReport::read("sink", config.sink_metrics.as_deref()),
        table_rows(client),
    );
    let rows_error = rows.as_ref().err().map(|e| e.to_string());
    let names: Vec<&str> = config.flows.iter().map(|f| f.name.as_str()).collect();
    let freshness = recent.observe(sink.view.metrics.as_deref(), &names);
    let rows = rows.unwrap_or_default();
    let flows = config
        .flows
        .iter()
        .map(|flow| {
            let name = flow.name.as_str();
            let f = [("flow", name)];
            let mut entry = json!({ "name": name });
            if !flow.sources.is_empty() {
                entry["relay"] = json!({
                    "state": relay.flow_state(name),
                    "backlog": relay.sum("relay_backlog_rows", &f),
                    "oldest_pending_age_seconds": flow
                        .sources
                        .iter()
                        .filter_map(|s| relay.sum("relay_oldest_pending_age_seconds", &[("flow", name), ("table", s.table.as_str())]))
                        .reduce(f64::max),
                    "published": relay.sum("relay_rows_published_total", &f),
                    "last_publish": relay.time("relay_last_publish_timestamp_seconds", name),
                });
            }
            if !flow.targets.is_empty() {
                let mut tables: Vec<&str> = flow.targets.iter().map(|t| t.table.as_str()).collect();
                tables.dedup();
                entry["sink"] = json!({
                    "state": sink.flow_state(name),
                    "lag": sink.sum("sink_consumer_lag", &f),
                    "inserted": sink.sum("sink_rows_inserted_total", &f),
                    "dead_letters": sink.sum("sink_dead_letters_total", &f),
                    "last_insert": sink.time("sink_last_insert_timestamp_seconds", name),
                    "freshness": freshness.get(name).map(|f| json!({
                        "rows": f.rows,
                        "p50_ms": f.p50_ms.filter(|v| v.is_finite()),
                        "p99_ms": f.p99_ms.filter(|v| v.is_finite()),
                        "over_60s": f.p99_ms.is_some_and(f64::is_infinite),
                        "window_s": f.window_s,
                    })),
                    "tables": tables
                        .iter()
                        .map(|t| json!({ "table": t, "rows": rows.get(*t).copied().unwrap_or(0) }))
                        .collect::<Vec<_>>(),
                    "tables_error": rows_error,
                });
            }
            entry
        })
        .collect();
    Status {
        daemons: json!([relay.summary(), sink.summary()]),
        flows: Value::Array(flows),
    }
}
