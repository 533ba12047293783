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
        .set("bootstrap.servers", bench.kafka.bootstrap_servers())
        .set("acks", "all")
        .set("linger.ms", "0")
        .create()?;
    let topic = bench.topic("peer.user_events");
    bench.kafka.create_topic(&topic, bench.partitions).await?;
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
                FutureRecord::to(&topic).key(&key).payload(&payload),
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
        .set("bootstrap.servers", bench.kafka.bootstrap_servers())
        .set("group.id", bench.topic("peer.user-logins-consumer"))
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[&bench.topic("peer.user_events")])?;
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

/// Attaches ClickHouse's Kafka table engine to `topic` on `brokers` in a new
/// consumer group `group`, with a materialized view into `peer_engine_rows`
/// (the columns of `user_logins`), in the peer's own ClickHouse `ch` (see
/// `Bench::peer_ch`). ClickHouse 18.16's engine starts a new group at the
/// latest offset, so messages must arrive after this.
pub async fn attach_kafka_engine(
    ch: &clickhouse::Client,
    brokers: &str,
    topic: &str,
    group: &str,
) -> anyhow::Result<()> {
    for ddl in [
        "CREATE TABLE IF NOT EXISTS peer_engine_rows (id UInt64, username Nullable(String), \
         event_type Nullable(String), event_time Nullable(DateTime)) \
         ENGINE = ReplacingMergeTree ORDER BY id"
            .to_owned(),
        format!(
            "CREATE TABLE peer_engine_queue_{n} (id UInt64, username Nullable(String), \
             event_type Nullable(String), event_time Float64) \
             ENGINE = Kafka('{brokers}', '{topic}', '{group}', 'JSONEachRow')",
            n = suffix(group)
        ),
        format!(
            "CREATE MATERIALIZED VIEW peer_engine_view_{n} TO peer_engine_rows AS \
             SELECT id, username, event_type, \
             CAST(toDateTime(toUInt32(event_time)) AS Nullable(DateTime)) AS event_time \
             FROM peer_engine_queue_{n}",
            n = suffix(group)
        ),
    ] {
        ch.query(&ddl).execute().await?;
    }
    Ok(())
}

/// Table-name suffix for a group: its last dot-separated part.
fn suffix(group: &str) -> String {
    group
        .rsplit('.')
        .next()
        .unwrap_or("0")
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect()
}

/// Rows the engine stored with ids in `ids`.
async fn stored(
    ch: &clickhouse::Client,
    ids: std::ops::RangeInclusive<u64>,
) -> anyhow::Result<u64> {
    Ok(ch
        .query("SELECT count() FROM peer_engine_rows WHERE id BETWEEN ? AND ?")
        .bind(*ids.start())
        .bind(*ids.end())
        .fetch_one()
        .await?)
}

/// ClickHouse's own Kafka table engine with a materialized view (the demos'
/// approach) loading the `n` messages the relay published to `source` (on
/// the measured broker): the engine is attached to a new topic on `brokers`
/// first (it starts at the latest offset) and given [`ENGINE_JOIN`] to join,
/// then the messages are copied there; the rate is from the copy's
/// start to the last row stored, within `budget`. Dropping a Kafka table
/// kills an 18.16 server, so nothing is detached: the peer's ClickHouse is
/// thrown away after the run (scripts/bench.sh).
pub async fn kafka_engine_sink(
    bench: &Bench,
    brokers: &str,
    broker_label: &str,
    source: &str,
    n: u64,
    budget: Duration,
) -> anyhow::Result<Figure> {
    let measure = format!("peer, ClickHouse Kafka engine + materialized view, on {broker_label}");
    let ch = bench.peer_ch().await?;
    let run = rand_suffix();
    let topic = bench.topic(&format!("engine.{run}.user_events"));
    crate::cluster::create_topic(brokers, &topic, bench.partitions).await?;
    attach_kafka_engine(&ch, brokers, &topic, &bench.topic(&format!("engine.{run}"))).await?;
    // The engine starts a new group at the latest offset, and a trickle of
    // warm-up messages does not get it streaming (measured: with one message
    // a second it stored none in 120 s, on Kafka 4.1 and 3.9 alike), so it
    // gets a fixed time to join before the load starts.
    tokio::time::sleep(ENGINE_JOIN).await;
    let first = bench.backlog_ids();
    let before = stored(&ch, first.clone()).await?;
    let start = Instant::now();
    let (from, to, src, dst) = (
        bench.kafka.bootstrap_servers().to_owned(),
        brokers.to_owned(),
        source.to_owned(),
        topic.clone(),
    );
    let copy = tokio::task::spawn_blocking(move || copy_topic(&from, &src, &to, &dst, n));
    let mut count = before;
    while start.elapsed() < budget && count < before + n {
        tokio::time::sleep(Duration::from_millis(20)).await;
        count = stored(&ch, first.clone()).await?;
    }
    let secs = start.elapsed().as_secs_f64();
    let copied = copy.await??;
    let loaded = count - before;
    let note = if loaded >= n {
        format!(
            "{n} rows in {secs:.1} s from the first message sent ({copied} copied from the relay's topic; the engine attached {} s before)",
            ENGINE_JOIN.as_secs()
        )
    } else {
        format!("only {loaded} of {n} rows after {secs:.0} s ({copied} copied)")
    };
    Ok(figure(&measure, loaded as f64 / secs, "rows/s", note))
}

/// How long a freshly attached engine gets to join its group.
pub const ENGINE_JOIN: Duration = Duration::from_secs(10);

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Copies `n` messages of `from_topic` on `from` (read_committed) to
/// `to_topic` on `to`, same partitions and keys. Returns how many. Blocking.
pub fn copy_topic(
    from: &str,
    from_topic: &str,
    to: &str,
    to_topic: &str,
    n: u64,
) -> anyhow::Result<u64> {
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", from)
        .set("group.id", format!("bench-copy-{}", rand_suffix()))
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[from_topic])?;
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", to)
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let mut copied = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    while copied < n && Instant::now() < deadline {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message?;
        let mut pending = BaseRecord::<[u8], [u8]>::to(to_topic)
            .payload(message.payload().unwrap_or_default())
            .partition(message.partition());
        if let Some(key) = message.key() {
            pending = pending.key(key);
        }
        loop {
            match producer.send(pending) {
                Ok(()) => break,
                Err((_, back)) => {
                    std::thread::sleep(Duration::from_millis(5));
                    pending = back;
                }
            }
        }
        copied += 1;
    }
    producer.flush(Duration::from_secs(60))?;
    Ok(copied)
}
