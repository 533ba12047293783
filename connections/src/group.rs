//! A consumer group's assignment as the broker holds it, against the
//! partitions of the topics the group consumes.
//!
//! Why it is looked at: a static member (`group.instance.id`) that restarts
//! within its session timeout takes its old place without a rebalance —
//! the broker hands it the assignment stored at the group's last rebalance
//! (KIP-345), even when it is the leader. librdkafka rejoins only when the
//! topics it subscribed to change while it runs. So when a topic appeared
//! (or gained partitions) after that rebalance and the leader was restarted
//! before it noticed, the new instance finds the topic already there,
//! never sees it "appear", and its partitions stay assigned to no member
//! for good. [`coverage`] finds such partitions; the member that does
//! rejoins, and a rejoin of the leader makes the broker rebalance, which
//! assigns them.

use std::collections::HashSet;
use std::time::Duration;

use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::KafkaError;

/// What a group's stored assignment covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Coverage {
    /// Every partition of the topics is assigned to a member.
    Covered,
    /// Not known now: the group is rebalancing, empty, or an assignment
    /// could not be read. Ask again later.
    Unsettled,
    /// These partitions exist, and no member of the stable group has them.
    Uncovered(Vec<(String, i32)>),
}

/// Whether every partition of `topics` (those that exist) is assigned to a
/// member of `group`, as the broker holds it. Blocking.
pub fn coverage<X: ConsumerContext, C: Consumer<X>>(
    consumer: &C,
    group: &str,
    topics: &[String],
    timeout: Duration,
) -> Result<Coverage, KafkaError> {
    let groups = consumer.fetch_group_list(Some(group), timeout)?;
    let Some(info) = groups.groups().iter().find(|g| g.name() == group) else {
        return Ok(Coverage::Unsettled);
    };
    if info.state() != "Stable" || info.protocol_type() != "consumer" {
        return Ok(Coverage::Unsettled);
    }
    let mut assigned = HashSet::new();
    for member in info.members() {
        match assigned_partitions(member.assignment().unwrap_or_default()) {
            Some(partitions) => assigned.extend(partitions),
            None => return Ok(Coverage::Unsettled),
        }
    }
    let mut uncovered = Vec::new();
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
        // A topic not there (yet) has no partitions to miss.
        for t in metadata.topics().iter().filter(|t| t.error().is_none()) {
            for p in t.partitions() {
                let key = (t.name().to_owned(), p.id());
                if !assigned.contains(&key) {
                    uncovered.push(key);
                }
            }
        }
    }
    uncovered.sort_unstable();
    Ok(if uncovered.is_empty() {
        Coverage::Covered
    } else {
        Coverage::Uncovered(uncovered)
    })
}

/// The partitions of one member's assignment, in Kafka's consumer protocol
/// (`ConsumerProtocolAssignment` v0–v3: int16 version, an array of (string
/// topic, array of int32 partition), user data). Empty bytes: nothing
/// assigned. `None` when the bytes do not read as one.
pub fn assigned_partitions(bytes: &[u8]) -> Option<Vec<(String, i32)>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let mut r = Reader(bytes);
    let _version = r.take::<2>()?;
    let mut partitions = Vec::new();
    for _ in 0..r.count()? {
        let len = usize::try_from(i16::from_be_bytes(r.take::<2>()?)).ok()?;
        let topic = std::str::from_utf8(r.slice(len)?).ok()?.to_owned();
        for _ in 0..r.count()? {
            partitions.push((topic.clone(), i32::from_be_bytes(r.take::<4>()?)));
        }
    }
    Some(partitions)
}

/// Big-endian reads off the front of a byte slice.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn slice(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.slice(N)?.try_into().ok()
    }

    /// An array's length (a null array, -1, has no elements).
    fn count(&mut self) -> Option<usize> {
        Some(usize::try_from(i32::from_be_bytes(self.take::<4>()?)).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::assigned_partitions;

    /// `ConsumerProtocolAssignment` bytes as a member's client writes them.
    fn assignment(version: i16, topics: &[(&str, &[i32])]) -> Vec<u8> {
        let mut b = version.to_be_bytes().to_vec();
        b.extend((topics.len() as i32).to_be_bytes());
        for (topic, partitions) in topics {
            b.extend((topic.len() as i16).to_be_bytes());
            b.extend(topic.as_bytes());
            b.extend((partitions.len() as i32).to_be_bytes());
            for p in *partitions {
                b.extend(p.to_be_bytes());
            }
        }
        b.extend((-1i32).to_be_bytes()); // no user data
        b
    }

    #[test]
    fn a_members_assignment_reads_as_its_partitions() {
        let bytes = assignment(0, &[("t.sales", &[0, 2]), ("t.warehouse", &[1])]);
        assert_eq!(
            assigned_partitions(&bytes),
            Some(vec![
                ("t.sales".to_owned(), 0),
                ("t.sales".to_owned(), 2),
                ("t.warehouse".to_owned(), 1)
            ])
        );
        assert_eq!(assigned_partitions(&assignment(3, &[])), Some(Vec::new()));
        assert_eq!(assigned_partitions(&[]), Some(Vec::new()));
    }

    #[test]
    fn bytes_cut_short_read_as_none() {
        let bytes = assignment(1, &[("t.sales", &[0, 1, 2])]);
        for cut in [1, 5, 9, 20] {
            assert_eq!(assigned_partitions(&bytes[..cut]), None, "cut at {cut}");
        }
    }
}
