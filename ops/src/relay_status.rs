//! `relay status`: per flow, which relay is active (from Postgres' own view
//! of the advisory locks), pending rows and the oldest pending id per source
//! table; and, when the local daemon's endpoint answers, the age of the
//! oldest pending row and the time of the last publish.

use std::fmt::Write;
use std::net::SocketAddr;

use daemon::http::{DaemonView, metric_value};
use flows::Flow;
use tokio_postgres::Client;

use relay::probe;

/// The report, one `key=value` line per fact.
pub async fn report(
    client: &Client,
    flows: &[Flow],
    daemon: Option<SocketAddr>,
) -> Result<String, tokio_postgres::Error> {
    let daemon = DaemonView::fetch(daemon, "age and last publish").await;
    let mut out = String::new();
    if let Some(header) = &daemon.header {
        let _ = writeln!(out, "{header}");
    }
    for flow in flows.iter().filter(|f| !f.sources.is_empty()) {
        let name = flow.name.as_str();
        for shard in relay::shard::Shard::all(flow.shards) {
            let key = shard.lane_key(name, 0);
            let active = active_relay(client, &key).await?;
            let _ = match shard.is_whole() {
                true => writeln!(out, "flow={name} active_relay={active}"),
                false => writeln!(
                    out,
                    "flow={name} shard={}/{} active_relay={active}",
                    shard.index, shard.count
                ),
            };
        }
        for source in &flow.sources {
            let table = source.table.as_str();
            let pending = probe::pending(client, table, flow.shards).await?;
            let rows = if pending.rows >= probe::BACKLOG_COUNT_CAP {
                format!("{}+", pending.rows)
            } else {
                pending.rows.to_string()
            };
            let oldest = pending
                .oldest_id
                .map_or_else(|| "none".to_owned(), |id| id.to_string());
            let mut line =
                format!("flow={name} table={table} pending={rows} oldest_pending_id={oldest}");
            if let Some(text) = &daemon.metrics {
                let labels = [("flow", name), ("table", table)];
                if let Some(age) = metric_value(text, "relay_oldest_pending_age_seconds", &labels) {
                    let _ = write!(line, " oldest_pending_age_s={age}");
                }
            }
            let _ = writeln!(out, "{line}");
        }
        if let Some(last) = daemon.time("relay_last_publish_timestamp_seconds", &[("flow", name)]) {
            let _ = writeln!(out, "flow={name} last_publish={last}");
        }
        if let Some(verdict) = daemon.verdict(name) {
            let _ = writeln!(out, "flow={name} {verdict}");
        }
    }
    Ok(out)
}

/// "pid N from ADDR since TIME", or "none", from a flow's (shard's)
/// first-lane lock, `key`.
async fn active_relay(client: &Client, key: &str) -> Result<String, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT a.pid, coalesce(host(a.client_addr), 'local'), \
                    to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') \
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
               AND ((l.classid::int8 << 32) | l.objid::int8) = hashtextextended($1, 0) \
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[&key],
        )
        .await?;
    Ok(match row {
        Some(r) => format!(
            "pid {} from {} since {} UTC",
            r.get::<_, i32>(0),
            r.get::<_, String>(1),
            r.get::<_, String>(2)
        ),
        None => "none".to_owned(),
    })
}
