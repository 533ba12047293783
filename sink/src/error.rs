//! What can go wrong in the sink, and what to do about it — decided here,
//! in one place (as the relay's `error::classify`). The loop's steps ask
//! [`classify`] and do what it says.

use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::clickhouse::schema::SchemaError;

/// Why the sink stopped (`sink::run`).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A flow's definition contradicts its ClickHouse tables.
    #[error(transparent)]
    Schema(SchemaError),
    /// `CLICKHOUSE_CLUSTER` names no cluster of the servers.
    #[error("{0}")]
    Cluster(String),
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// A worker panicked (a bug): the sink stops, exit code 101.
    #[error(transparent)]
    Panicked(daemon::workers::Panic),
}

/// Something one flow's sink could not do.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Building the flow's consumer or dead-letter producer, or subscribing.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// A consumer error librdkafka recovers from by itself (a broker gone
    /// away, a topic that does not exist yet).
    #[error("kafka consumer: {0}")]
    Consumer(KafkaError),
    /// librdkafka stopped the consumer for good (e.g. this static member was
    /// fenced by another process with the same `SINK_GROUP_INSTANCE_ID`):
    /// the daemon exits non-zero with the reason rather than looking alive
    /// while consuming nothing. Kafka's own clients treat it the same way.
    #[error("kafka consumer failed for good: {0}")]
    ConsumerFailed(String),
    /// ClickHouse did not accept an insert into `table`.
    #[error("{error}")]
    Insert { table: String, error: InsertError },
    /// The table's columns could not be read right before an insert (where
    /// the server does not check the types an insert declares).
    #[error("{error}")]
    ColumnsUnread {
        table: String,
        error: clickhouse::error::Error,
    },
    /// A column's type changed while a batch went in (read before and
    /// after the insert, where the server does not check the types an
    /// insert declares, `schema::retyped`): its rows may have been read as
    /// the new type, so the batch goes in again once it fits. The table
    /// keeps the last insert of a key.
    #[error("column {table}.{column} changed type during an insert; inserting the batch again")]
    ChangedDuringInsert { table: String, column: String },
    /// A batch does not fit its table's columns as they are now
    /// (`schema::fit`): a column it fills is gone or narrowed.
    #[error("a batch for {table} is held (nothing committed): {reason}")]
    Unfit { table: String, reason: String },
    /// Kafka did not acknowledge dead letters (`topics`: where they go).
    #[error("dead-letter topic {topics} cannot be written ({waiting} letters waiting): {error}")]
    DeadLetters {
        topics: String,
        waiting: usize,
        error: DeadLetterError,
    },
    /// The offsets of a stored batch were not committed.
    #[error("offset commit: {0}")]
    OffsetCommit(KafkaError),
}

/// Why dead letters were not written: Kafka did not acknowledge them, or
/// their topic could not be created (nothing was sent then).
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// Boxed: it would make every `SinkError` larger.
    #[error(transparent)]
    Topic(Box<connections::topics::TopicError>),
}

impl From<connections::topics::TopicError> for DeadLetterError {
    fn from(error: connections::topics::TopicError) -> Self {
        Self::Topic(Box::new(error))
    }
}

impl SinkError {
    /// A consumer error; `fatal` is the client's fatal error, if it has one.
    pub fn from_consumer(error: KafkaError, fatal: Option<(RDKafkaErrorCode, String)>) -> Self {
        let Some((code, reason)) = fatal else {
            return Self::Consumer(error);
        };
        let hint = if code == RDKafkaErrorCode::FencedInstanceId {
            " (another sink runs with the same SINK_GROUP_INSTANCE_ID)"
        } else {
            ""
        };
        Self::ConsumerFailed(format!("{code:?}: {reason}{hint}"))
    }
}

/// ClickHouse's answer to an INSERT that failed, sorted where it arrives
/// (`ClickHouseWriter::insert`) by the code in its text.
#[derive(Debug, thiserror::Error)]
pub enum InsertError {
    /// No retry cures it until someone changes the table or the grants
    /// ([`FOR_GOOD`]). Connection errors and server overload are not
    /// refusals.
    #[error("{error}")]
    Refused {
        code: u32,
        what: &'static str,
        error: clickhouse::error::Error,
    },
    /// The types the block declares are not the table's (code 117, "Type of
    /// 'c' must be T, not U"): the table changed since the block was
    /// encoded. Nothing of it is stored.
    #[error("{0}")]
    TypesDiffer(clickhouse::error::Error),
    /// Anything else: the network, a timeout, the server overloaded or
    /// restarting.
    #[error("{0}")]
    Transient(clickhouse::error::Error),
    /// No replica of a shard takes the rows: each is unreachable or
    /// refuses writes ([`ReplicaFault`]), at least one refuses (with all
    /// unreachable the error is [`InsertError::Transient`], as for one
    /// server down). `shard`: `of shard N ` in cluster mode, else empty.
    #[error("no replica {shard}takes writes: {detail}")]
    NoReplica { shard: String, detail: String },
    /// The rows cannot be sent to their shards (no endpoint of a shard in
    /// `CLICKHOUSE_URL`, the sharding key's column not filled).
    #[error("{0}")]
    Unroutable(String),
}

/// Why one replica is left for another of its shard (`clickhouse::replicas`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaFault {
    /// Not reached, or the connection broke: the server is down,
    /// restarting, or cut off.
    Unreachable,
    /// It answers but cannot store rows now — the same insert may go
    /// through on another replica of its shard.
    RefusesWrites(&'static str),
}

/// The ClickHouse codes with which one replica refuses writes that
/// another replica of its shard may take: its Replicated table lost
/// ZooKeeper (read-only until the session is back), or ZooKeeper failed
/// during the insert (the block may or may not be stored: sent again, a
/// repeat the table absorbs).
const REFUSES_WRITES: &[(u32, &str)] = &[
    (
        242,
        "its table is read-only (the replica lost its ZooKeeper session)",
    ),
    (225, "it has no ZooKeeper"),
    (319, "ZooKeeper failed during the insert"),
    (999, "its ZooKeeper request failed"),
];

/// The code in a ClickHouse error's text (`Code: 60, …` or `Code: 60. …`).
fn code_of(text: &str) -> Option<u32> {
    text.split_once("Code: ").and_then(|(_, rest)| {
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok()
    })
}

/// Whether an insert's failure is this replica's — another replica of the
/// shard may take the rows — rather than the table's or the rows' own.
pub fn replica_fault(error: &clickhouse::error::Error) -> Option<ReplicaFault> {
    use clickhouse::error::Error;
    match error {
        Error::Network(_) | Error::TimedOut => Some(ReplicaFault::Unreachable),
        Error::BadResponse(text) => code_of(text)
            .and_then(|code| REFUSES_WRITES.iter().find(|(c, _)| *c == code))
            .map(|&(_, what)| ReplicaFault::RefusesWrites(what)),
        _ => None,
    }
}

/// The ClickHouse codes that refuse an INSERT until someone changes the
/// table (or the grants): the table or database is gone, a column is
/// missing or of another type, the user may not write.
const FOR_GOOD: &[(u32, &str)] = &[
    (10, "a column is missing"),
    (16, "a column is missing"),
    (20, "the number of columns differs"),
    (33, "the columns differ"),
    (44, "a column's type differs"),
    (47, "a column is missing"),
    (53, "a column's type differs"),
    (60, "the table does not exist"),
    (81, "the database does not exist"),
    (164, "the server is read-only"),
    (192, "ClickHouse does not know the user"),
    (193, "ClickHouse refuses the password"),
    (194, "ClickHouse requires a password"),
    (497, "the user may not insert"),
    (516, "ClickHouse refuses the credentials"),
];

impl From<clickhouse::error::Error> for InsertError {
    fn from(error: clickhouse::error::Error) -> Self {
        let text = error.to_string();
        if text.contains("Code: 117") && text.contains("Type of '") {
            return Self::TypesDiffer(error);
        }
        match code_of(&text).and_then(|code| FOR_GOOD.iter().find(|(c, _)| *c == code)) {
            Some(&(code, what)) => Self::Refused { code, what, error },
            None => Self::Transient(error),
        }
    }
}

impl InsertError {
    /// The start of ClickHouse's answer, for a reason `/readyz` shows.
    pub fn detail(&self) -> String {
        self.to_string().chars().take(300).collect()
    }
}

/// The next step after an error. Nothing is committed past a failed step:
/// the offsets of a batch are committed only once it is stored and its
/// dead letters written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// Back off and try the same step again (network, overload, a broker
    /// restarting).
    Retry,
    /// Back off and try again, but the flow is not ready, with this reason,
    /// until the step succeeds: someone must act (a table gone, a column of
    /// another type, credentials or grants refused, a dead-letter topic that
    /// refuses writes).
    Hold(String),
    /// Read the target table's columns and judge the batch against them
    /// (`schema::fit`: hold it, or convert it to a widened column) before
    /// trying again. Nothing was stored.
    Refit,
    /// Go on: the rows are stored and only their offsets were not committed;
    /// they are read again and the tables absorb the repeat.
    Carry,
    /// The flow cannot go on: the daemon exits non-zero with the error.
    Fatal,
}

pub fn classify(error: &SinkError) -> Recovery {
    match error {
        // Kafka refused to build or subscribe the flow's clients: a setting
        // no retry changes.
        SinkError::Kafka(_) => Recovery::Fatal,
        // librdkafka retries these by itself; the loop goes on receiving.
        SinkError::Consumer(_) => Recovery::Retry,
        // A consumer fenced or failed for good consumes nothing any more.
        SinkError::ConsumerFailed(_) => Recovery::Fatal,
        SinkError::Insert {
            table,
            error: refused @ InsertError::Refused { code, what, .. },
        } => Recovery::Hold(format!(
            "ClickHouse refuses inserts into {table}: {what} (ClickHouse code {code}: {})",
            refused.detail()
        )),
        // The table changed since the batch was encoded: compare first.
        SinkError::Insert {
            error: InsertError::TypesDiffer(_),
            ..
        } => Recovery::Refit,
        SinkError::Insert {
            error: InsertError::Transient(_),
            ..
        } => Recovery::Retry,
        // Every replica of a shard down or refusing writes (ZooKeeper
        // lost): nothing of the shard's rows is stored until one takes
        // them again, which needs no one to act but may need a while.
        SinkError::Insert {
            table,
            error: error @ InsertError::NoReplica { .. },
        } => Recovery::Hold(format!("ClickHouse cannot store rows for {table}: {error}")),
        // The endpoints or the table do not match the cluster.
        SinkError::Insert {
            table,
            error: InsertError::Unroutable(why),
        } => Recovery::Hold(format!(
            "the rows for {table} cannot be sent to their shards: {why}"
        )),
        // The read before the insert is part of it: as a transient failure.
        SinkError::ColumnsUnread { .. } => Recovery::Retry,
        // Fitted to the table as it is now on the next attempt.
        SinkError::ChangedDuringInsert { .. } => Recovery::Retry,
        // Only a change of the table (back, or wider) lets it in.
        SinkError::Unfit { .. } => Recovery::Hold(error.to_string()),
        // The stream stops here rather than skip the letters.
        SinkError::DeadLetters { .. } => Recovery::Hold(error.to_string()),
        // The rows are stored; an uncommitted offset only means they are
        // read again (e.g. after a rebalance) and absorbed by the table.
        SinkError::OffsetCommit(_) => Recovery::Carry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(text: &str) -> clickhouse::error::Error {
        clickhouse::error::Error::BadResponse(text.into())
    }

    fn insert(error: clickhouse::error::Error) -> SinkError {
        SinkError::Insert {
            table: "t.x".into(),
            error: error.into(),
        }
    }

    fn kafka() -> KafkaError {
        KafkaError::MessageProduction(RDKafkaErrorCode::TopicAuthorizationFailed)
    }

    #[test]
    fn what_clickhouse_answers_to_an_insert() {
        let table: Vec<(clickhouse::error::Error, Option<&str>)> = vec![
            // (error, the refusal it is, if one)
            (
                ch(
                    "Code: 60, e.displayText() = DB::Exception: Table t.x doesn't exist., e.what() = DB::Exception",
                ),
                Some("the table does not exist"),
            ),
            (
                ch(
                    "Code: 16. DB::Exception: No such column y in table t.x. (NO_SUCH_COLUMN_IN_TABLE)",
                ),
                Some("a column is missing"),
            ),
            (
                ch("Code: 53. DB::Exception: Type mismatch (TYPE_MISMATCH)"),
                Some("a column's type differs"),
            ),
            (
                ch(
                    "Code: 516. DB::Exception: default: Authentication failed (AUTHENTICATION_FAILED)",
                ),
                Some("ClickHouse refuses the credentials"),
            ),
            (
                ch("Code: 193, e.displayText() = DB::Exception: Wrong password for user default"),
                Some("ClickHouse refuses the password"),
            ),
            (
                ch("Code: 497. DB::Exception: u: Not enough privileges. (ACCESS_DENIED)"),
                Some("the user may not insert"),
            ),
            (
                ch(
                    "Code: 202. DB::Exception: Too many simultaneous queries. (TOO_MANY_SIMULTANEOUS_QUERIES)",
                ),
                None,
            ),
            (
                ch("Code: 241. DB::Exception: Memory limit (total) exceeded"),
                None,
            ),
            (
                ch(
                    "Code: 252. DB::Exception: Too many parts (300). Merges are processing significantly slower than inserts",
                ),
                None,
            ),
            (
                ch(
                    "Code: 117. DB::Exception: Unexpected NULL value of not Nullable type String. (INCORRECT_DATA)",
                ),
                None,
            ),
            (clickhouse::error::Error::TimedOut, None),
        ];
        for (error, refusal) in table {
            let text = error.to_string();
            match (InsertError::from(error), refusal) {
                (InsertError::Refused { what, .. }, Some(expected)) => {
                    assert_eq!(what, expected, "{text}")
                }
                (InsertError::Transient(_), None) => {}
                (other, _) => panic!("{text}: {other:?}, expected refusal {refusal:?}"),
            }
        }
    }

    /// As chdb 4.4 (ClickHouse 26.9) answers a RowBinaryWithNamesAndTypes
    /// block declaring Decimal(9, 2) for a Decimal(9, 4) column.
    #[test]
    fn a_block_of_other_types_is_told_from_other_errors() {
        let differ = ch(
            "Code: 117. DB::Exception: Type of 'price' must be Decimal(9, 4), not Decimal(9, 2): (while reading header): While executing BinaryRowInputFormat. (INCORRECT_DATA) (version 26.9.2.1)",
        );
        assert!(matches!(
            InsertError::from(differ),
            InsertError::TypesDiffer(_)
        ));
    }

    #[test]
    fn which_failures_are_one_replicas() {
        let cases: Vec<(clickhouse::error::Error, Option<ReplicaFault>)> = vec![
            (
                clickhouse::error::Error::Network("connection refused".into()),
                Some(ReplicaFault::Unreachable),
            ),
            (
                clickhouse::error::Error::TimedOut,
                Some(ReplicaFault::Unreachable),
            ),
            (
                ch(
                    "Code: 242, e.displayText() = DB::Exception: Table is in readonly mode, e.what() = DB::Exception",
                ),
                Some(ReplicaFault::RefusesWrites(
                    "its table is read-only (the replica lost its ZooKeeper session)",
                )),
            ),
            (
                ch(
                    "Code: 999, e.displayText() = Coordination::Exception: Connection loss, path: /clickhouse/tables/1/t/t_local/blocks",
                ),
                Some(ReplicaFault::RefusesWrites("its ZooKeeper request failed")),
            ),
            (
                ch(
                    "Code: 319, e.displayText() = DB::Exception: Unknown status, client must retry. Reason: Connection loss",
                ),
                Some(ReplicaFault::RefusesWrites(
                    "ZooKeeper failed during the insert",
                )),
            ),
            // The table's or the rows' own: the same on every replica.
            (
                ch("Code: 60. DB::Exception: Table t.x does not exist. (UNKNOWN_TABLE)"),
                None,
            ),
            (
                ch("Code: 164. DB::Exception: Cannot insert: readonly mode"),
                None,
            ),
        ];
        for (error, fault) in cases {
            assert_eq!(replica_fault(&error), fault, "{error}");
        }
    }

    /// One row per arm of [`classify`].
    #[test]
    fn the_policy_table() {
        let refused = insert(ch(
            "Code: 60. DB::Exception: Table t.x does not exist. (UNKNOWN_TABLE)",
        ));
        let recovery = classify(&refused);
        assert!(
            matches!(&recovery, Recovery::Hold(r) if r.starts_with("ClickHouse refuses inserts into t.x: the table does not exist (ClickHouse code 60: ")),
            "{recovery:?}"
        );
        let differ = insert(ch(
            "Code: 117. DB::Exception: Type of 'price' must be Decimal(9, 4), not Decimal(9, 2): (while reading header). (INCORRECT_DATA)",
        ));
        assert_eq!(classify(&differ), Recovery::Refit);
        let busy = insert(ch(
            "Code: 202. DB::Exception: Too many simultaneous queries.",
        ));
        assert_eq!(classify(&busy), Recovery::Retry);
        let no_replica = SinkError::Insert {
            table: "t.x".into(),
            error: InsertError::NoReplica {
                shard: "of shard 2 ".into(),
                detail: "http://h:1: its table is read-only (…)".into(),
            },
        };
        assert_eq!(
            classify(&no_replica),
            Recovery::Hold(
                "ClickHouse cannot store rows for t.x: no replica of shard 2 takes writes: http://h:1: its table is read-only (…)".into()
            )
        );
        let unroutable = SinkError::Insert {
            table: "t.x".into(),
            error: InsertError::Unroutable(
                "no endpoint of CLICKHOUSE_URL is a replica of shard 2 of cluster c".into(),
            ),
        };
        assert!(matches!(
            classify(&unroutable),
            Recovery::Hold(r) if r.starts_with("the rows for t.x cannot be sent to their shards: no endpoint")
        ));
        let unread = SinkError::ColumnsUnread {
            table: "t.x".into(),
            error: clickhouse::error::Error::TimedOut,
        };
        assert_eq!(classify(&unread), Recovery::Retry);
        let unfit = SinkError::Unfit {
            table: "t.x".into(),
            reason: "column t.x.y was dropped".into(),
        };
        assert_eq!(
            classify(&unfit),
            Recovery::Hold(
                "a batch for t.x is held (nothing committed): column t.x.y was dropped".into()
            )
        );
        let letters = SinkError::DeadLetters {
            topics: "t.dlq".into(),
            waiting: 3,
            error: kafka().into(),
        };
        assert!(matches!(
            classify(&letters),
            Recovery::Hold(r) if r.starts_with("dead-letter topic t.dlq cannot be written (3 letters waiting): ")
        ));
        assert_eq!(classify(&SinkError::OffsetCommit(kafka())), Recovery::Carry);
        assert_eq!(classify(&SinkError::Kafka(kafka())), Recovery::Fatal);
        let passing = SinkError::from_consumer(kafka(), None);
        assert!(matches!(passing, SinkError::Consumer(_)));
        assert_eq!(classify(&passing), Recovery::Retry);
        let fenced = SinkError::from_consumer(
            kafka(),
            Some((RDKafkaErrorCode::FencedInstanceId, "fenced".into())),
        );
        assert!(
            fenced.to_string().contains("SINK_GROUP_INSTANCE_ID"),
            "{fenced}"
        );
        assert_eq!(classify(&fenced), Recovery::Fatal);
    }
}
