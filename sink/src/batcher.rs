//! Buffers encoded rows per target table until the flush policy says go,
//! together with what must happen once they are stored: dead letters to
//! publish and consumer offsets to commit.

use std::collections::BTreeMap;
use std::time::Instant;

use bytes::BytesMut;
use serde_json::{Map, Value};

use crate::clickhouse::encode::{EncodeError, encode_row};
use crate::clickhouse::schema::TablePlan;
use crate::config::FlushPolicy;
use crate::dead_letter::DeadLetter;

/// Where a consumed message came from.
#[derive(Clone)]
pub struct Origin<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    /// Looked at only when a target takes a column from a header.
    pub headers: Option<&'a rdkafka::message::BorrowedHeaders>,
    /// The row's commit time, Unix ms, when its freshness is measured (the
    /// relay's `committed_at` header; from an older relay, the record's
    /// timestamp).
    pub timestamp: Option<i64>,
}

/// Rows, dead letters and offsets accumulated since the last flush.
pub struct PendingBatch {
    pub tables: Vec<BytesMut>,
    pub rows_per_table: Vec<usize>,
    /// Per table, the timestamps of its rows (freshness, see `flow_sink`).
    pub stamps: Vec<Vec<i64>>,
    pub dead_letters: Vec<DeadLetter>,
    /// topic → partition → next offset to commit.
    offsets: BTreeMap<String, BTreeMap<i32, i64>>,
    rows: usize,
    bytes: usize,
    oldest: Option<Instant>,
    /// The consumer had nothing more queued after the last message taken.
    quiet: bool,
    max_message_bytes: usize,
}

impl PendingBatch {
    /// `max_message_bytes`: larger messages are dead-lettered unread.
    pub fn new(tables: usize, max_message_bytes: usize) -> Self {
        Self {
            tables: (0..tables).map(|_| BytesMut::new()).collect(),
            rows_per_table: vec![0; tables],
            stamps: vec![Vec::new(); tables],
            dead_letters: Vec::new(),
            offsets: BTreeMap::new(),
            rows: 0,
            bytes: 0,
            oldest: None,
            quiet: false,
            max_message_bytes,
        }
    }

    /// Decodes one message into every table fed by its topic (`targets` are
    /// indexes into `plans`), or into a dead letter when it does not fit any
    /// of them. Either way its offset becomes committable with this batch.
    pub fn add_message(
        &mut self,
        plans: &[TablePlan],
        targets: &[usize],
        origin: Origin<'_>,
        payload: Option<&[u8]>,
    ) {
        if self.oldest.is_none() {
            self.oldest = Some(Instant::now());
        }
        let next = origin.offset + 1;
        // Looked up by &str: no allocation per message.
        let partitions = match self.offsets.get_mut(origin.topic) {
            Some(p) => p,
            None => self.offsets.entry(origin.topic.to_owned()).or_default(),
        };
        let o = partitions.entry(origin.partition).or_insert(next);
        *o = (*o).max(next);
        let encoded = self.encode(plans, targets, payload, origin.headers);
        if let (Ok(()), Some(stamp)) = (&encoded, origin.timestamp) {
            for &t in targets {
                self.stamps[t].push(stamp);
            }
        }
        if let Err(reason) = encoded {
            self.bytes += payload.map_or(0, <[u8]>::len);
            self.dead_letters.push(DeadLetter {
                topic: origin.topic.to_owned(),
                partition: origin.partition,
                offset: origin.offset,
                key: origin.key.map(<[u8]>::to_vec),
                payload: payload.map(<[u8]>::to_vec),
                error: reason,
                without_payload: false,
            });
        }
    }

    fn encode(
        &mut self,
        plans: &[TablePlan],
        targets: &[usize],
        payload: Option<&[u8]>,
        headers: Option<&rdkafka::message::BorrowedHeaders>,
    ) -> Result<(), String> {
        let payload = payload.ok_or_else(|| "empty message (no payload)".to_owned())?;
        if payload.len() > self.max_message_bytes {
            return Err(format!(
                "message of {} bytes exceeds SINK_MAX_MESSAGE_BYTES ({})",
                payload.len(),
                self.max_message_bytes
            ));
        }
        let mut message: Map<String, Value> = match serde_json::from_slice(payload) {
            Ok(Value::Object(map)) => map,
            Ok(_) => return Err("message is JSON but not an object".to_owned()),
            Err(e) => return Err(format!("malformed JSON: {e}")),
        };
        for &t in targets {
            for name in &plans[t].headers {
                let value = headers.and_then(|h| {
                    use rdkafka::message::Headers;
                    h.iter()
                        .find(|header| header.key == name.as_str())
                        .and_then(|header| header.value)
                });
                let value = match value.map(std::str::from_utf8) {
                    Some(Ok(text)) => Value::String(text.to_owned()),
                    Some(Err(_)) => return Err(format!("header {name} is not UTF-8")),
                    None => Value::Null,
                };
                message.insert(crate::clickhouse::schema::header_field(name), value);
            }
        }
        let marks: Vec<usize> = targets.iter().map(|&t| self.tables[t].len()).collect();
        for &t in targets {
            if let Err(EncodeError { column, reason }) =
                encode_row(&plans[t].columns, &message, &mut self.tables[t])
            {
                // Keep all-or-nothing across the tables this message feeds.
                for (&t, &mark) in targets.iter().zip(&marks) {
                    self.tables[t].truncate(mark);
                }
                return Err(format!(
                    "table {}: column {column}: {reason}",
                    plans[t].table
                ));
            }
        }
        for (&t, &mark) in targets.iter().zip(&marks) {
            self.rows_per_table[t] += 1;
            self.bytes += self.tables[t].len() - mark;
        }
        self.rows += 1;
        Ok(())
    }

    /// Rows whose freshness is measured so far.
    pub fn stamped(&self) -> usize {
        self.stamps.iter().map(Vec::len).sum()
    }

    /// The oldest row timestamp in the batch, Unix ms.
    pub fn oldest_stamp(&self) -> Option<i64> {
        self.stamps.iter().flatten().min().copied()
    }

    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// (topic, partition, next offset to commit) of everything taken in.
    pub fn offsets(&self) -> impl Iterator<Item = (&str, i32, i64)> {
        self.offsets
            .iter()
            .flat_map(|(t, parts)| parts.iter().map(move |(p, o)| (t.as_str(), *p, *o)))
    }

    /// Messages taken in (rows plus dead letters).
    pub fn messages(&self) -> usize {
        self.rows + self.dead_letters.len()
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The flush decision: rows, bytes or age, whichever limit comes first
    /// — or, when the consumer had nothing more queued (`quiet`), at once,
    /// though not sooner than `policy.min_interval` after the flow's last
    /// insert (`last_flush`): a lone row does not wait out the age limit,
    /// and a busy stream still makes few, large inserts.
    pub fn should_flush(
        &self,
        policy: &FlushPolicy,
        now: Instant,
        last_flush: Option<Instant>,
    ) -> bool {
        self.is_full(policy) || self.deadline(policy, last_flush).is_some_and(|d| now >= d)
    }

    /// The consumer had (`true`) nothing more queued after this batch's
    /// last message.
    pub fn set_quiet(&mut self, quiet: bool) {
        self.quiet = quiet;
    }

    /// The row or byte limit is reached (no clock read).
    pub fn is_full(&self, policy: &FlushPolicy) -> bool {
        self.messages() >= policy.max_rows || self.bytes >= policy.max_bytes
    }

    /// How long since the first message of this batch arrived.
    pub fn age(&self, now: Instant) -> std::time::Duration {
        self.oldest
            .map_or_else(Default::default, |t| now.saturating_duration_since(t))
    }

    /// When the batch is due, if anything is buffered: its age limit, or,
    /// quiet, the floor after the last insert (see [`Self::should_flush`]).
    pub fn deadline(&self, policy: &FlushPolicy, last_flush: Option<Instant>) -> Option<Instant> {
        let oldest = self.oldest?;
        let by_age = oldest + policy.max_age;
        if !self.quiet {
            return Some(by_age);
        }
        // Quiet: as soon as the floor after the last insert allows.
        let by_quiet = last_flush.map_or(oldest, |t| (t + policy.min_interval).max(oldest));
        Some(by_quiet.min(by_age))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clickhouse::encode::ColumnPlan;
    use crate::clickhouse::types::ChType;
    use std::time::Duration;

    fn plans() -> Vec<TablePlan> {
        let col = |c: &str, t: ChType| ColumnPlan {
            column: c.into(),
            field: c.into(),
            type_name: t.to_string(),
            ty: t,
            constant: None,
        };
        vec![
            TablePlan::new(
                "a".into(),
                "a",
                "t".into(),
                vec![col("id", ChType::UInt64)],
                Vec::new(),
            ),
            TablePlan::new(
                "b".into(),
                "b",
                "t".into(),
                vec![col("id", ChType::UInt64), col("v", ChType::String)],
                Vec::new(),
            ),
        ]
    }

    fn origin(offset: i64) -> Origin<'static> {
        Origin {
            topic: "t",
            partition: 0,
            offset,
            key: None,
            headers: None,
            timestamp: None,
        }
    }

    #[test]
    fn good_rows_bad_rows_and_offsets() {
        let plans = plans();
        let mut batch = PendingBatch::new(2, 1 << 20);
        batch.add_message(&plans, &[0, 1], origin(5), Some(br#"{"id": 1, "v": "x"}"#));
        // Fits table a but not b: nothing of it may stay in a.
        batch.add_message(&plans, &[0, 1], origin(6), Some(br#"{"id": 2}"#));
        batch.add_message(&plans, &[0, 1], origin(7), Some(b"{not json"));
        batch.add_message(&plans, &[0, 1], origin(8), None);
        assert_eq!(batch.rows(), 1);
        assert_eq!(batch.rows_per_table, vec![1, 1]);
        assert_eq!(batch.tables[0].len(), 8);
        assert_eq!(batch.dead_letters.len(), 3);
        assert!(
            batch.dead_letters[0]
                .error
                .contains("column v: missing required field")
        );
        assert!(batch.dead_letters[1].error.contains("malformed JSON"));
        assert_eq!(batch.offsets().collect::<Vec<_>>(), vec![("t", 0, 9)]);

        let mut small = PendingBatch::new(2, 10);
        small.add_message(
            &plans,
            &[0],
            origin(9),
            Some(br#"{"id": 1, "padding": "xxxxxxxx"}"#),
        );
        assert!(
            small.dead_letters[0]
                .error
                .contains("exceeds SINK_MAX_MESSAGE_BYTES")
        );
    }

    #[test]
    fn flushes_on_rows_bytes_or_age() {
        let plans = plans();
        let policy = FlushPolicy {
            max_rows: 2,
            max_bytes: 1 << 20,
            max_age: Duration::from_millis(50),
            min_interval: Duration::from_millis(20),
        };
        let mut batch = PendingBatch::new(2, 1 << 20);
        let now = Instant::now();
        assert!(
            !batch.should_flush(&policy, now, None),
            "an empty batch never flushes"
        );
        batch.add_message(&plans, &[0], origin(0), Some(br#"{"id": 1}"#));
        assert!(!batch.should_flush(&policy, Instant::now(), None));
        assert!(
            batch.should_flush(&policy, Instant::now() + Duration::from_millis(60), None),
            "age"
        );
        batch.add_message(&plans, &[0], origin(1), Some(br#"{"id": 2}"#));
        assert!(batch.should_flush(&policy, Instant::now(), None), "rows");
        let bytes = FlushPolicy {
            max_rows: 100,
            max_bytes: 8,
            max_age: Duration::from_secs(60),
            min_interval: Duration::ZERO,
        };
        let mut small = PendingBatch::new(2, 1 << 20);
        small.add_message(&plans, &[0], origin(0), Some(br#"{"id": 1}"#));
        assert!(small.should_flush(&bytes, Instant::now(), None), "bytes");
    }

    #[test]
    fn a_quiet_stream_flushes_at_once_but_not_sooner_than_the_floor_after_the_last_insert() {
        let plans = plans();
        let policy = FlushPolicy {
            max_rows: 100,
            max_bytes: 1 << 20,
            max_age: Duration::from_millis(100),
            min_interval: Duration::from_millis(20),
        };
        let mut batch = PendingBatch::new(2, 1 << 20);
        batch.add_message(&plans, &[0], origin(0), Some(br#"{"id": 1}"#));
        let now = Instant::now();
        assert!(
            !batch.should_flush(&policy, now, None),
            "more may be queued: wait for the age limit"
        );
        batch.set_quiet(true);
        assert!(
            batch.should_flush(&policy, now, None),
            "nothing queued, no insert before: at once"
        );
        let just_now = Some(now);
        assert!(
            !batch.should_flush(&policy, now + Duration::from_millis(5), just_now),
            "the last insert 5 ms ago: the floor holds it"
        );
        assert!(batch.should_flush(&policy, now + Duration::from_millis(21), just_now));
        assert_eq!(
            batch.deadline(&policy, just_now),
            Some(now + Duration::from_millis(20)),
            "due at the floor"
        );
        let long_ago = Some(now - Duration::from_secs(1));
        assert!(batch.should_flush(&policy, now, long_ago));
    }
}
