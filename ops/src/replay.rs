//! `relay replay`: puts rows set aside in `outbox_dead_rows` back in their
//! flow (after the operator fixed the row or raised Kafka's limit).

use flows::Flow;
use tokio_postgres::Client;

/// Deletes the flow's set-aside rows (only `source_id` if given) and the
/// notes that they changed since (`outbox_changed_rows`: a fixed row is
/// what its first delivery carries), flags their
/// source rows pending again (the `outbox_pending_again` trigger puts them in
/// the relay's next window: `relay/src/window.rs`) and wakes it. Returns how
/// many rows.
pub async fn replay(
    client: &mut Client,
    flow: &Flow,
    source_id: Option<i64>,
) -> Result<u64, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let mut total = 0;
    for source in &flow.sources {
        let sql = format!(
            "WITH d AS (DELETE FROM outbox_dead_rows WHERE flow = $1 AND source_table = $2 \
             AND ($3::int8 IS NULL OR source_id = $3) RETURNING source_id), \
             noted AS (DELETE FROM outbox_changed_rows WHERE source_table = $2 \
             AND source_id IN (SELECT source_id FROM d)) \
             UPDATE {} SET sent_to_kafka = FALSE WHERE \"id\" IN (SELECT source_id FROM d)",
            source.table.pg()
        );
        let n = tx
            .execute(
                &sql,
                &[&flow.name.as_str(), &source.table.as_str(), &source_id],
            )
            .await?;
        if n > 0 {
            tx.execute(
                "SELECT pg_notify($1, $2)",
                &[&relay::CHANNEL, &source.table.as_str()],
            )
            .await?;
        }
        total += n;
    }
    tx.commit().await?;
    Ok(total)
}
