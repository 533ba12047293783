//! `outbox-demo watch`: the seed 000 events watcher. Polls the `events` journal
//! every few seconds and prints the entries it has not printed yet; it talks
//! only to ClickHouse.

use std::io::Write;
use std::time::Duration;

use clickhouse::Client;
use tokio_util::sync::CancellationToken;

#[derive(clickhouse::Row, serde::Deserialize, Debug)]
struct JournalEntry {
    event_id: u64,
    my_table_id: u64,
    value: String,
    event_type: String,
    created_at: u32,
}

/// Entries after `after` (event ids grow with the objects' ids), deduplicated.
async fn entries_after(
    client: &Client,
    after: u64,
) -> Result<Vec<JournalEntry>, clickhouse::error::Error> {
    client
        .query(
            "SELECT event_id, my_table_id, value, event_type, toUInt32(created_at) AS created_at \
             FROM events FINAL WHERE event_id > ? ORDER BY event_id LIMIT 10000",
        )
        .bind(after)
        .fetch_all()
        .await
}

/// Prints new journal entries to `out` every `interval` until `shutdown`.
/// Without `from_start`, entries already present at start are skipped.
pub async fn watch(
    client: &Client,
    interval: Duration,
    from_start: bool,
    out: &mut impl Write,
    shutdown: &CancellationToken,
) -> Result<(), clickhouse::error::Error> {
    let mut last: u64 = if from_start {
        0
    } else {
        client
            .query("SELECT max(event_id) FROM events")
            .fetch_one()
            .await?
    };
    loop {
        match entries_after(client, last).await {
            Ok(entries) => {
                for e in &entries {
                    let at = daemon::time::format_utc(i64::from(e.created_at)).unwrap_or_default();
                    let _ = writeln!(
                        out,
                        "{at} event_id={} my_table_id={} type={} value={:?}",
                        e.event_id, e.my_table_id, e.event_type, e.value
                    );
                    last = last.max(e.event_id);
                }
                let _ = out.flush();
                if entries.len() == 10000 {
                    continue; // more waiting: no pause
                }
            }
            Err(error) => tracing::warn!(%error, "cannot read events; retrying"),
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = shutdown.cancelled() => return Ok(()),
        }
    }
}
