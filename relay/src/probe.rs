//! The relay's view of each flow's backlog, every few seconds, on its own
//! connection: pending rows (counted up to a cap, so a huge backlog costs a
//! bounded scan), the oldest pending id and how long it has been the oldest.
//! Feeds the metrics and `/readyz` (see `daemon::health`). Standbys probe too:
//! their view of the database is the same.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use daemon::health::{FlowHealth, Health};
use daemon::metrics::Metrics;
use flows::Flow;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

/// Pending rows are counted up to this many.
pub const BACKLOG_COUNT_CAP: i64 = 1_000_000;

/// What one probe saw of a source table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    pub rows: i64,
    pub oldest_id: Option<i64>,
}

/// Counts pending rows (up to [`BACKLOG_COUNT_CAP`]) and finds the oldest,
/// through the (outbox_txid, id) index from the relay's saved floor on
/// (every pending row's transaction is at or above the floor's `xmin`, see
/// `window`; a table never relayed is read whole).
pub async fn pending(
    client: &Client,
    table: &str,
    shards: u16,
) -> Result<Pending, tokio_postgres::Error> {
    let t = flows::ident::Ident::new(table)
        .map(|i| i.pg())
        .unwrap_or_else(|_| table.to_owned());
    let from = crate::positions::published_floor(client, table, shards)
        .await?
        .map_or(0, |floor| floor.xmin);
    let row = client
        .query_one(
            &format!(
                "SELECT (SELECT count(*) FROM (SELECT 1 FROM {t} WHERE outbox_txid >= $1::int8 AND sent_to_kafka IS NOT TRUE LIMIT {BACKLOG_COUNT_CAP}) p), \
                 (SELECT min(\"id\")::int8 FROM {t} WHERE outbox_txid >= $1::int8 AND sent_to_kafka IS NOT TRUE)"
            ),
            &[&from],
        )
        .await?;
    Ok(Pending {
        rows: row.get(0),
        oldest_id: row.get(1),
    })
}

struct Watched {
    flow: Flow,
    health: FlowHealth,
    /// table → (oldest pending id, when it was first seen as the oldest).
    oldest: HashMap<String, (i64, Instant)>,
}

/// Probes every flow every `every` until `shutdown`.
pub async fn run(
    flows: Vec<Flow>,
    pool: connections::pg_pool::Pool,
    metrics: Metrics,
    health: Health,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut watched: Vec<Watched> = flows
        .into_iter()
        .filter(|f| !f.sources.is_empty())
        .map(|flow| Watched {
            health: health.flow(flow.name.as_str()),
            flow,
            oldest: HashMap::new(),
        })
        .collect();
    let mut client: Option<connections::pg_pool::Session> = None;
    loop {
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = pool.get_retrying("backlog probe", &shutdown).await;
        }
        let Some(pg) = &client else { return };
        for w in &mut watched {
            probe_flow(pg, w, &metrics).await;
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

async fn probe_flow(pg: &Client, w: &mut Watched, metrics: &Metrics) {
    let flow = w.flow.name.to_string();
    let mut backlog = 0;
    let mut marker = 0i64;
    for source in &w.flow.sources {
        let table = source.table.as_str();
        let seen = match pending(pg, table, w.flow.shards).await {
            Ok(seen) => seen,
            Err(error) => {
                tracing::warn!(flow, table, %error, "backlog probe failed");
                w.health.unreachable();
                return;
            }
        };
        let labels = [("flow", flow.as_str()), ("table", table)];
        let now = Instant::now();
        let age = match seen.oldest_id {
            Some(id) => {
                let entry = w.oldest.entry(table.to_owned()).or_insert((id, now));
                if entry.0 != id {
                    *entry = (id, now);
                }
                now - entry.1
            }
            None => {
                w.oldest.remove(table);
                Duration::ZERO
            }
        };
        let gauges = crate::stats::BacklogStats::new(metrics, &flow, table);
        gauges.rows.set(seen.rows);
        gauges
            .oldest_age_s
            .set(i64::try_from(age.as_secs()).unwrap_or(i64::MAX));
        backlog += seen.rows;
        marker = marker
            .wrapping_add(seen.oldest_id.unwrap_or(0))
            .wrapping_add(metrics.value("relay_rows_published_total", &labels));
    }
    w.health.observe(backlog, marker);
}
