//! `sink rewind`: moves a flow's consumer-group offsets back (to the start
//! of each partition, or to the first message at or after a time), so the
//! sink reads the topics again and ClickHouse can be rebuilt from them.
//! Refused while the group has members, like Kafka's own offset reset: a
//! running sink would commit over the new offsets. Blocking.

use std::time::{Duration, SystemTime};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

/// Where to move the offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum To {
    /// Each partition's first message still in the log.
    Earliest,
    /// Each partition's first message with a timestamp at or after this
    /// (its end when there is none).
    Time(SystemTime),
}

impl To {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.trim() == "earliest" {
            return Ok(To::Earliest);
        }
        flows::parse_time(text)
            .map(To::Time)
            .map_err(|e| format!("{e}, or `earliest`"))
    }
}

/// One partition's move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    pub topic: String,
    pub partition: i32,
    /// The committed offset before (`None`: none committed).
    pub from: Option<i64>,
    pub to: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum RewindError {
    #[error(
        "consumer group {group} has {members} active member(s) (a sink is running): stop the flow's sinks, then rewind"
    )]
    Active { group: String, members: usize },
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

/// Commits `to` for every partition of `topics` in `group`, once the group
/// has no members. Returns each partition's move.
pub fn rewind(
    kafka: &connections::kafka::KafkaEndpoint,
    group: &str,
    topics: &[String],
    to: To,
) -> Result<Vec<Moved>, RewindError> {
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    let groups = consumer.fetch_group_list(Some(group), KAFKA_TIMEOUT)?;
    let members = groups
        .groups()
        .iter()
        .filter(|g| g.name() == group)
        .map(|g| g.members().len())
        .sum::<usize>();
    if members > 0 {
        return Err(RewindError::Active {
            group: group.to_owned(),
            members,
        });
    }
    let mut partitions = TopicPartitionList::new();
    for topic in topics {
        crate::sink_status::add_partitions(&consumer, topic, &mut partitions)?;
    }
    let committed = consumer.committed_offsets(partitions.clone(), KAFKA_TIMEOUT)?;
    let by_time = match to {
        To::Earliest => None,
        To::Time(at) => {
            let ms = at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            let mut asked = TopicPartitionList::new();
            for e in partitions.elements() {
                asked.add_partition_offset(e.topic(), e.partition(), Offset::Offset(ms))?;
            }
            Some(consumer.offsets_for_times(asked, KAFKA_TIMEOUT)?)
        }
    };
    let mut target = TopicPartitionList::new();
    let mut moved = Vec::new();
    for e in partitions.elements() {
        let (topic, partition) = (e.topic(), e.partition());
        let (low, high) = consumer.fetch_watermarks(topic, partition, KAFKA_TIMEOUT)?;
        let offset = match &by_time {
            None => low,
            Some(found) => match found.find_partition(topic, partition).map(|f| f.offset()) {
                Some(Offset::Offset(o)) if o >= 0 => o,
                // No message at or after the time: the end.
                _ => high,
            },
        };
        target.add_partition_offset(topic, partition, Offset::Offset(offset))?;
        let from = committed
            .find_partition(topic, partition)
            .and_then(|c| match c.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            });
        moved.push(Moved {
            topic: topic.to_owned(),
            partition,
            from,
            to: offset,
        });
    }
    // A sink that joined since the check makes this commit fail (Kafka
    // refuses commits from outside a group that has members).
    consumer.commit(&target, CommitMode::Sync)?;
    moved.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::To;

    #[test]
    fn targets_parse_and_bad_ones_say_why() {
        assert_eq!(To::parse("earliest"), Ok(To::Earliest));
        assert!(matches!(To::parse("2026-11-23T10:00:00Z"), Ok(To::Time(_))));
        assert!(matches!(To::parse("2h"), Ok(To::Time(_))));
        let err = To::parse("yesterday").err().unwrap_or_default();
        assert!(err.contains("earliest") && err.contains("2h"), "{err}");
    }
}
