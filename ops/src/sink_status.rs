//! `sink status`: per flow, the consumer group's committed offset, the end
//! of each partition and the lag (asked of Kafka, so it works with no sink
//! running), the rows in each ClickHouse table, and — when the local
//! daemon's endpoint answers — the time of the last insert.

use std::fmt::Write;
use std::net::SocketAddr;
use std::time::Duration;

use daemon::http::DaemonView;
use flows::Flow;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

/// (partition, committed offset if any, end offset) of `topic` for `group`.
/// Blocking.
pub fn group_offsets(
    kafka: &connections::kafka::KafkaEndpoint,
    group: &str,
    topic: &str,
) -> Result<Vec<(i32, Option<i64>, i64)>, rdkafka::error::KafkaError> {
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    let mut partitions = TopicPartitionList::new();
    add_partitions(&consumer, topic, &mut partitions)?;
    let committed = consumer.committed_offsets(partitions, KAFKA_TIMEOUT)?;
    let mut out = Vec::new();
    for e in committed.elements() {
        let (_, high) = consumer.fetch_watermarks(topic, e.partition(), KAFKA_TIMEOUT)?;
        let offset = match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        };
        out.push((e.partition(), offset, high));
    }
    out.sort_unstable();
    Ok(out)
}

/// Adds every partition of `topic` (from the broker's metadata) to `list`.
/// Blocking.
pub fn add_partitions(
    consumer: &BaseConsumer,
    topic: &str,
    list: &mut TopicPartitionList,
) -> Result<(), rdkafka::error::KafkaError> {
    let metadata = consumer.fetch_metadata(Some(topic), KAFKA_TIMEOUT)?;
    for t in metadata.topics() {
        for p in t.partitions() {
            list.add_partition(topic, p.id());
        }
    }
    Ok(())
}

/// The report, one `key=value` line per fact.
pub async fn report(
    kafka: &connections::kafka::KafkaEndpoint,
    ch: &clickhouse::Client,
    flows: &[Flow],
    daemon: Option<SocketAddr>,
) -> anyhow::Result<String> {
    let daemon = DaemonView::fetch(daemon, "last insert").await;
    let mut out = String::new();
    if let Some(header) = &daemon.header {
        writeln!(out, "{header}")?;
    }
    for flow in flows.iter().filter(|f| !f.targets.is_empty()) {
        let name = flow.name.as_str();
        let group = flow.consumer_group.clone();
        let mut topics: Vec<&str> = flow.targets.iter().map(|t| t.topic.as_str()).collect();
        topics.sort_unstable();
        topics.dedup();
        for topic in topics {
            let (kafka, group_c, topic_c) = (kafka.clone(), group.clone(), topic.to_owned());
            let offsets =
                tokio::task::spawn_blocking(move || group_offsets(&kafka, &group_c, &topic_c))
                    .await??;
            let mut total = 0;
            for (partition, committed, end) in offsets {
                let lag = end - committed.unwrap_or(0).min(end);
                total += lag;
                let committed = committed.map_or_else(|| "none".to_owned(), |c| c.to_string());
                writeln!(
                    out,
                    "flow={name} group={group} topic={topic} partition={partition} committed={committed} end={end} lag={lag}"
                )?;
            }
            writeln!(out, "flow={name} group={group} topic={topic} lag={total}")?;
        }
        for target in &flow.targets {
            let table = target.table.as_str();
            let rows: Result<u64, _> = ch
                .query(&format!("SELECT count() FROM {}", target.table.ch()))
                .fetch_one()
                .await;
            match rows {
                Ok(rows) => writeln!(
                    out,
                    "flow={name} table={table} rows={rows} (before merges; FINAL or `sink reconcile` count distinct)"
                )?,
                // A table gone is what an operator runs status to find.
                Err(error) => writeln!(out, "flow={name} table={table} rows=unknown ({error})")?,
            }
        }
        if let Some(last) = daemon.time("sink_last_insert_timestamp_seconds", &[("flow", name)]) {
            writeln!(out, "flow={name} last_insert={last}")?;
        }
        if let Some(verdict) = daemon.verdict(name) {
            writeln!(out, "flow={name} {verdict}")?;
        }
    }
    Ok(out)
}
