//! `sink rewind`: moves a flow's consumer-group offsets back (to the start
//! of each partition, or to the first message at or after a time), so the
//! sink reads the topics again and ClickHouse can be rebuilt from them.
//! Refused while the group has members, like Kafka's own offset reset: a
//! running sink would commit over the new offsets. Blocking.
//!
//! Never forward unless asked. A partition's position is its committed
//! offset; with none committed it is the start of the log, where the sink's
//! consumers begin (`auto.offset.reset=earliest`), and it is never below
//! the start (what retention deleted is gone either way). The new offset
//! is the lower of the position and the target: a stopped sink that is
//! behind the target keeps its position, because moving it there would
//! skip messages it never stored. With [`Forward::Allow`]
//! (`--allow-forward`) such a partition moves to the target, and the
//! messages it skips are counted: read as the sink reads them
//! (read_committed), so aborted records and transaction markers, which
//! occupy offsets too, are not counted.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};

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

/// Whether a partition whose position is before the target may move to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// It keeps its position (nothing is skipped).
    Keep,
    /// It moves to the target, skipping the messages in between.
    Allow,
}

/// What happened to one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Moved back to the target: the messages from there are read again.
    Back,
    /// Already at the target.
    Unchanged,
    /// The target is after the position: kept there ([`Forward::Keep`]).
    Kept,
    /// Moved forward to the target ([`Forward::Allow`]), skipping messages.
    Forward,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Back => "back",
            Action::Unchanged => "unchanged",
            Action::Kept => "kept",
            Action::Forward => "forward",
        }
    }
}

/// One partition's move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    pub topic: String,
    pub partition: i32,
    /// The committed offset before (`None`: none committed).
    pub from: Option<i64>,
    /// The partition's first offset (the position when none is committed).
    pub low: i64,
    /// Where `--to` points in this partition.
    pub target: i64,
    /// The offset committed now.
    pub to: i64,
    pub action: Action,
    /// Messages skipped by moving forward (0 unless [`Action::Forward`]).
    pub skipped: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RewindError {
    #[error(
        "consumer group {group} has {members} active member(s) (a sink is running): stop the flow's sinks, then rewind"
    )]
    Active { group: String, members: usize },
    #[error(
        "could not count the messages {topic} [{partition}] would skip: stuck at offset {at} before {target} (an open transaction?); nothing was moved"
    )]
    Count {
        topic: String,
        partition: i32,
        at: i64,
        target: i64,
    },
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
}

/// The new offset of a partition at `position` whose target is `target`,
/// and what that is.
pub fn decide(position: i64, target: i64, forward: Forward) -> (i64, Action) {
    match target.cmp(&position) {
        std::cmp::Ordering::Less => (target, Action::Back),
        std::cmp::Ordering::Equal => (position, Action::Unchanged),
        std::cmp::Ordering::Greater => match forward {
            Forward::Keep => (position, Action::Kept),
            Forward::Allow => (target, Action::Forward),
        },
    }
}

/// Commits the new offset (see the module doc) for every partition of
/// `topics` in `group`, once the group has no members. Returns each
/// partition's move, sorted.
pub fn rewind(
    kafka: &connections::kafka::KafkaEndpoint,
    group: &str,
    topics: &[String],
    to: To,
    forward: Forward,
) -> Result<Vec<Moved>, RewindError> {
    let consumer: BaseConsumer = kafka
        .client_config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    refuse_while_active(&consumer, group)?;
    let mut partitions = TopicPartitionList::new();
    for topic in topics {
        crate::sink_status::add_partitions(&consumer, topic, &mut partitions)?;
    }
    let committed = consumer.committed_offsets(partitions.clone(), KAFKA_TIMEOUT)?;
    let by_time = offsets_at(&consumer, &partitions, to)?;
    let mut target_list = TopicPartitionList::new();
    let mut moved = Vec::new();
    for e in partitions.elements() {
        let m = plan_partition(
            &consumer,
            e.topic(),
            e.partition(),
            &committed,
            by_time.as_ref(),
            forward,
        )?;
        target_list.add_partition_offset(&m.topic, m.partition, Offset::Offset(m.to))?;
        moved.push(m);
    }
    // (topic, partition, position, target) of each partition moved forward.
    let skipping: Vec<(String, i32, i64, i64)> = moved
        .iter()
        .filter(|m| m.action == Action::Forward)
        .map(|m| {
            (
                m.topic.clone(),
                m.partition,
                m.from.unwrap_or(0).max(m.low),
                m.to,
            )
        })
        .collect();
    if !skipping.is_empty() {
        let counts = count_messages(kafka, group, &skipping)?;
        for m in &mut moved {
            m.skipped = counts
                .get(&(m.topic.clone(), m.partition))
                .copied()
                .unwrap_or(0);
        }
    }
    // A sink that joined since the check makes this commit fail (Kafka
    // refuses commits from outside a group that has members).
    consumer.commit(&target_list, CommitMode::Sync)?;
    moved.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    Ok(moved)
}

/// Refused while the group has members: a running sink would commit over
/// the new offsets (the rule of Kafka's own `--reset-offsets`).
fn refuse_while_active(consumer: &BaseConsumer, group: &str) -> Result<(), RewindError> {
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
    Ok(())
}

/// Each partition's first offset at or after the time (`None`: to the
/// start).
fn offsets_at(
    consumer: &BaseConsumer,
    partitions: &TopicPartitionList,
    to: To,
) -> Result<Option<TopicPartitionList>, RewindError> {
    let To::Time(at) = to else {
        return Ok(None);
    };
    let ms = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut asked = TopicPartitionList::new();
    for e in partitions.elements() {
        asked.add_partition_offset(e.topic(), e.partition(), Offset::Offset(ms))?;
    }
    Ok(Some(consumer.offsets_for_times(asked, KAFKA_TIMEOUT)?))
}

/// Where one partition goes: its target (the start, or the first message at
/// or after the time, else the end), its position (the committed offset,
/// else the start), and the move `decide` makes of them.
fn plan_partition(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    committed: &TopicPartitionList,
    by_time: Option<&TopicPartitionList>,
    forward: Forward,
) -> Result<Moved, RewindError> {
    let (low, high) = consumer.fetch_watermarks(topic, partition, KAFKA_TIMEOUT)?;
    let target = match by_time {
        None => low,
        Some(found) => match found.find_partition(topic, partition).map(|f| f.offset()) {
            Some(Offset::Offset(o)) if o >= 0 => o,
            // No message at or after the time: the end.
            _ => high,
        },
    };
    let from = committed
        .find_partition(topic, partition)
        .and_then(|c| match c.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        });
    let position = from.unwrap_or(low).max(low);
    let (to, action) = decide(position, target, forward);
    Ok(Moved {
        topic: topic.to_owned(),
        partition,
        from,
        low,
        target,
        to,
        action,
        skipped: 0,
    })
}

/// Per (topic, partition, from, to): the messages a read_committed reader
/// gets from offset `from` up to `to` (exclusive). Fails when a partition
/// makes no progress for `KAFKA_TIMEOUT` (an open transaction holds the
/// last stable offset below `to`).
fn count_messages(
    kafka: &connections::kafka::KafkaEndpoint,
    group: &str,
    ranges: &[(String, i32, i64, i64)],
) -> Result<HashMap<(String, i32), u64>, RewindError> {
    // librdkafka assigns only with a group id; this reader never joins the
    // group, fetches no offsets and commits none.
    let reader: BaseConsumer = kafka
        .client_config()
        .set("group.id", format!("{group}.rewind-count"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "false")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    let mut counts = HashMap::new();
    let mut open: HashMap<(String, i32), (i64, i64)> = HashMap::new();
    for (topic, partition, from, to) in ranges {
        counts.insert((topic.clone(), *partition), 0u64);
        if from < to {
            assignment.add_partition_offset(topic, *partition, Offset::Offset(*from))?;
            open.insert((topic.clone(), *partition), (*from, *to));
        }
    }
    if open.is_empty() {
        return Ok(counts);
    }
    reader.assign(&assignment)?;
    let mut progress = Instant::now();
    while !open.is_empty() {
        if let Some(polled) = reader.poll(Duration::from_millis(100)) {
            let message = polled?;
            let key = (message.topic().to_owned(), message.partition());
            if let Some((_, to)) = open.get(&key)
                && message.offset() < *to
                && let Some(n) = counts.get_mut(&key)
            {
                *n += 1;
            }
            progress = Instant::now();
        }
        // The position moves past transaction markers and aborted records
        // too: a range is done when the position reached its end.
        for e in reader.position()?.elements() {
            let key = (e.topic().to_owned(), e.partition());
            if let (Offset::Offset(at), Some((seen, to))) = (e.offset(), open.get_mut(&key)) {
                if at >= *to {
                    open.remove(&key);
                } else if at > *seen {
                    *seen = at;
                    progress = Instant::now();
                }
            }
        }
        if progress.elapsed() > KAFKA_TIMEOUT
            && let Some(((topic, partition), (at, target))) = open.iter().next()
        {
            return Err(RewindError::Count {
                topic: topic.clone(),
                partition: *partition,
                at: *at,
                target: *target,
            });
        }
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::{Action, Forward, To, decide};

    #[test]
    fn targets_parse_and_bad_ones_say_why() {
        assert_eq!(To::parse("earliest"), Ok(To::Earliest));
        assert!(matches!(To::parse("2026-11-23T10:00:00Z"), Ok(To::Time(_))));
        assert!(matches!(To::parse("2h"), Ok(To::Time(_))));
        let err = To::parse("yesterday").err().unwrap_or_default();
        assert!(err.contains("earliest") && err.contains("2h"), "{err}");
    }

    #[test]
    fn a_partition_moves_forward_only_when_allowed() {
        assert_eq!(decide(50, 20, Forward::Keep), (20, Action::Back));
        assert_eq!(decide(50, 50, Forward::Keep), (50, Action::Unchanged));
        assert_eq!(decide(50, 80, Forward::Keep), (50, Action::Kept));
        assert_eq!(decide(50, 80, Forward::Allow), (80, Action::Forward));
        assert_eq!(decide(50, 20, Forward::Allow), (20, Action::Back));
    }
}
