//! The demos' own approaches on the same data, for comparison.
//!
//! Seed 003 (`producer.py` / `consumer.py`): a script that reads the pending
//! rows, sends each one to Kafka, waits for it, flags it; and a consumer that
//! inserts every message into ClickHouse as it arrives. Re-implemented here
//! row for row (no Python on the path: what is measured is the approach, one
//! round trip per row, not the language).

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::scenarios::{Figure, figure};
use crate::setup::Bench;

/// The seed 003 producer for up to `budget`: one row at a time — send, wait
/// for the broker's acknowledgement, flag the row — as its script does.
pub async fn row_by_row_relay(bench: &Bench, budget: Duration) -> anyhow::Result<Figure> {
    crate::scenarios::reset_pending(bench).await?;
    let pg = bench.pg().await?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bench.mock.bootstrap_servers())
        .set("acks", "all")
        .set("linger.ms", "0")
        .create()?;
    bench
        .mock
        .create_topic("peer.user_events", bench.partitions)?;
    let rows = pg
        .query(
            "SELECT id::int8, username, event_type, date_part('epoch', event_time AT TIME ZONE 'UTC')
             FROM user_logins WHERE sent_to_kafka = FALSE ORDER BY id",
            &[],
        )
        .await?;
    let start = Instant::now();
    let mut sent = 0u64;
    for row in &rows {
        if start.elapsed() >= budget {
            break;
        }
        let id: i64 = row.get(0);
        let payload = serde_json::json!({
            "id": id,
            "username": row.get::<_, Option<String>>(1),
            "event_type": row.get::<_, Option<String>>(2),
            "event_time": row.get::<_, Option<f64>>(3),
        })
        .to_string();
        let key = id.to_string();
        // Sent and acknowledged before the row is flagged (as the script's
        // send-then-flush does).
        producer
            .send(
                FutureRecord::to("peer.user_events")
                    .key(&key)
                    .payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?;
        pg.execute(
            "UPDATE user_logins SET sent_to_kafka = TRUE WHERE id = $1::int8",
            &[&id],
        )
        .await?;
        sent += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(figure(
        "peer, seed 003 producer: row by row into Kafka",
        sent as f64 / secs,
        "rows/s",
        format!(
            "{sent} rows in {secs:.1} s (stopped after {} s)",
            budget.as_secs()
        ),
    ))
}

/// The seed 003 consumer for up to `budget`: one INSERT per message, read
/// from the topic the seed 003 producer filled (run that first).
pub async fn row_by_row_sink(bench: &Bench, budget: Duration) -> anyhow::Result<Figure> {
    let ch = bench.ch();
    ch.query("CREATE TABLE IF NOT EXISTS peer_user_logins AS user_logins")
        .execute()
        .await?;
    ch.query("TRUNCATE TABLE peer_user_logins")
        .execute()
        .await?;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bench.mock.bootstrap_servers())
        .set("group.id", "peer.user-logins-consumer")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&["peer.user_events"])?;
    let start = Instant::now();
    let mut inserted = 0u64;
    while start.elapsed() < budget {
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message?;
        let Some(payload) = message.payload() else {
            continue;
        };
        let row: serde_json::Value = serde_json::from_slice(payload)?;
        let line = serde_json::json!({
            "id": row["id"],
            "username": row["username"],
            "event_type": row["event_type"],
            "event_time": row["event_time"].as_f64().map(|t| t as u64),
        });
        ch.query(&format!(
            "INSERT INTO peer_user_logins FORMAT JSONEachRow {line}"
        ))
        .execute()
        .await?;
        inserted += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(figure(
        "peer, seed 003 consumer: one INSERT per message",
        inserted as f64 / secs,
        "rows/s",
        format!(
            "{inserted} rows in {secs:.1} s (stopped after {} s; group join included)",
            budget.as_secs()
        ),
    ))
}

/// ClickHouse's own Kafka table engine with a materialized view (the demos'
/// approach) reading the topic the relay filled, in a new consumer group;
/// waits up to `budget` for all `n` rows. The server must start new groups
/// at the earliest offset (`scripts/lib.sh` starts it with
/// `kafka.auto_offset_reset=smallest`).
pub async fn kafka_engine_sink(bench: &Bench, n: u64, budget: Duration) -> anyhow::Result<Figure> {
    let ch = bench.ch();
    for ddl in [
        "DROP TABLE IF EXISTS peer_engine_view",
        "DROP TABLE IF EXISTS peer_engine_queue",
        "DROP TABLE IF EXISTS peer_engine_rows",
        "CREATE TABLE peer_engine_rows AS user_logins",
    ] {
        ch.query(ddl).execute().await?;
    }
    ch.query(&format!(
        "CREATE TABLE peer_engine_queue (id UInt64, username Nullable(String), \
         event_type Nullable(String), event_time Float64) \
         ENGINE = Kafka('{}', 'user_events', 'peer.ch-kafka-engine', 'JSONEachRow')",
        bench.mock.bootstrap_servers()
    ))
    .execute()
    .await?;
    let start = Instant::now();
    ch.query(
        "CREATE MATERIALIZED VIEW peer_engine_view TO peer_engine_rows AS \
         SELECT id, username, event_type, toDateTime(toUInt32(event_time)) AS event_time \
         FROM peer_engine_queue",
    )
    .execute()
    .await?;
    let mut stored = 0u64;
    while start.elapsed() < budget && stored < n {
        tokio::time::sleep(Duration::from_millis(20)).await;
        stored = ch
            .query("SELECT count() FROM peer_engine_rows")
            .fetch_one()
            .await?;
    }
    let secs = start.elapsed().as_secs_f64();
    // Stop the engine's consumer before the next scenario.
    ch.query("DROP TABLE IF EXISTS peer_engine_view")
        .execute()
        .await?;
    ch.query("DROP TABLE IF EXISTS peer_engine_queue")
        .execute()
        .await?;
    let note = if stored >= n {
        format!("{n} rows in {secs:.1} s from attaching the view (flushes every 7.5 s by default)")
    } else {
        format!("only {stored} of {n} rows after {secs:.0} s")
    };
    Ok(figure(
        "peer, ClickHouse Kafka engine + materialized view",
        stored as f64 / secs,
        "rows/s",
        note,
    ))
}
