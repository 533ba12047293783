//! Reading a topic back as a reader of the product's output would: every
//! partition from the beginning, read_committed (what consumers see) or
//! read_uncommitted (what the log holds, aborted records included). And the
//! topics a test writes itself, which it creates first: brokers never
//! create a topic on a client's behalf (`auto.create.topics.enable=false`).

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

/// One record as read.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl Record {
    /// The value of header `name`, if the record has it.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The source row id the relay put in the body (`"id"`).
    pub fn id(&self) -> Option<i64> {
        serde_json::from_slice::<serde_json::Value>(&self.payload)
            .ok()?
            .get("id")?
            .as_i64()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isolation {
    Committed,
    Uncommitted,
}

/// Every record of `topics`, read until each partition's position reached
/// the end the broker reported at the start (read_committed: the last stable
/// offset). Blocking; fails after 60 s.
pub fn read_all(
    brokers: &str,
    topics: &[String],
    isolation: Isolation,
) -> anyhow::Result<Vec<Record>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("reader-{}", rand::random::<u64>()))
        .set(
            "isolation.level",
            match isolation {
                Isolation::Committed => "read_committed",
                Isolation::Uncommitted => "read_uncommitted",
            },
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    let mut ends = Vec::new();
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        for t in metadata.topics() {
            for p in t.partitions() {
                let (_, high) =
                    consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
                assignment.add_partition_offset(topic, p.id(), Offset::Beginning)?;
                ends.push((topic.clone(), p.id(), high));
            }
        }
    }
    consumer.assign(&assignment)?;
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = |consumer: &BaseConsumer| -> anyhow::Result<bool> {
        let position = consumer.position()?;
        Ok(ends.iter().all(|(topic, partition, high)| {
            *high == 0
                || position
                    .find_partition(topic, *partition)
                    .is_some_and(|e| matches!(e.offset(), Offset::Offset(o) if o >= *high))
        }))
    };
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                records.push(Record {
                    topic: m.topic().to_owned(),
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    headers: m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| {
                                    (
                                        h.key.to_owned(),
                                        String::from_utf8_lossy(h.value.unwrap_or_default())
                                            .into_owned(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                });
            }
            Some(Err(e)) => anyhow::bail!("reading {topics:?}: {e}"),
            None => {}
        }
        // The position passes trailing transaction markers (and aborted
        // records) once the fetcher has read them: the read ends there, at
        // each partition's end as the broker reported it at the start —
        // never on a quiet spell, which a slow broker makes look like the
        // end.
        if done(&consumer)? {
            return Ok(records);
        }
    }
    anyhow::bail!("reading {topics:?} did not finish within 60 s")
}

/// Creates `topic` with `partitions` partitions, one replica and `config`
/// (an existing one is fine).
pub async fn create(
    brokers: &str,
    topic: &str,
    partitions: i32,
    config: &[(&str, &str)],
) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for (key, value) in config {
        new = new.set(key, value);
    }
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics(&[new], &options).await? {
        match result {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => anyhow::bail!("creating topic {name}: {code}"),
        }
    }
    Ok(())
}

/// A topic as the cluster holds it.
#[derive(Debug, Default)]
pub struct Described {
    /// 0 when it does not exist.
    pub partitions: usize,
    /// The fewest replicas of a partition.
    pub replicas: usize,
    pub config: std::collections::BTreeMap<String, String>,
}

/// `topic`'s partitions, replicas and configs (nothing created by asking).
pub async fn describe(brokers: &str, topic: &str) -> anyhow::Result<Described> {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("allow.auto.create.topics", "false")
        .create()?;
    let metadata = admin
        .inner()
        .fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let Some(t) = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
    else {
        return Ok(Described::default());
    };
    let mut described = Described {
        partitions: t.partitions().len(),
        replicas: t
            .partitions()
            .iter()
            .map(|p| p.replicas().len())
            .min()
            .unwrap_or(0),
        config: Default::default(),
    };
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    for resource in admin
        .describe_configs(&[ResourceSpecifier::Topic(topic)], &options)
        .await?
    {
        let resource = resource.map_err(|code| anyhow::anyhow!("describing {topic}: {code}"))?;
        for entry in resource.entries {
            if let Some(value) = entry.value {
                described.config.insert(entry.name, value);
            }
        }
    }
    Ok(described)
}
