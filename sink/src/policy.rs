//! What an error means to the sink — decided here, in one place (as the
//! relay's `error::classify`). `flow_sink` asks and does what it is told.

use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// What the sink does after an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Back off and try the same step again (network, overload, a broker
    /// restarting). Nothing is committed past the step meanwhile.
    Retry,
    /// Back off and try again, but the flow is not ready, with this reason,
    /// until the step succeeds: someone must act (a table gone, a column of
    /// another type, credentials or grants refused, a dead-letter topic that
    /// refuses writes). Nothing is committed past the step meanwhile.
    Hold(String),
    /// Read the target table's columns and judge the batch against them
    /// (`schema::fit`: hold it, or convert it to a widened column) before
    /// trying again: ClickHouse refused the block because the column types
    /// it declares are not the table's any more. Nothing was stored.
    Refit,
    /// Go on: the rows are stored and only their offsets were not committed;
    /// they are read again and the tables absorb the repeat.
    Carry,
    /// The consumer cannot go on (fenced by a twin instance id, another
    /// fatal client error): the daemon exits non-zero with the reason.
    Stop(String),
}

/// An INSERT ClickHouse did not accept.
pub fn insert(error: &clickhouse::error::Error) -> Action {
    if crate::clickhouse::writer::types_differ(error) {
        return Action::Refit;
    }
    match crate::clickhouse::writer::refusal(error) {
        Some(reason) => Action::Hold(reason),
        None => Action::Retry,
    }
}

/// Dead letters Kafka did not acknowledge (`topics`: where they go).
pub fn dead_letters(error: &KafkaError, topics: &str, waiting: usize) -> Action {
    Action::Hold(format!(
        "dead-letter topic {topics} cannot be written ({waiting} letters waiting): {error}"
    ))
}

/// A failed offset commit after the batch was stored.
pub fn offset_commit(_error: &KafkaError) -> Action {
    Action::Carry
}

/// A consumer error; `fatal` is the client's fatal error, if it has one
/// (librdkafka retries everything else by itself).
pub fn consumer(_error: &KafkaError, fatal: Option<(RDKafkaErrorCode, String)>) -> Action {
    match fatal {
        Some((code, reason)) => {
            let hint = if code == RDKafkaErrorCode::FencedInstanceId {
                " (another sink runs with the same SINK_GROUP_INSTANCE_ID)"
            } else {
                ""
            };
            Action::Stop(format!("{code:?}: {reason}{hint}"))
        }
        None => Action::Retry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(text: &str) -> clickhouse::error::Error {
        clickhouse::error::Error::BadResponse(text.into())
    }

    #[test]
    fn the_policy_table() {
        let table: Vec<(clickhouse::error::Error, bool)> = vec![
            // (error, holds the flow)
            (
                ch("Code: 60, e.displayText() = DB::Exception: Table t.x doesn't exist."),
                true,
            ),
            (
                ch(
                    "Code: 16. DB::Exception: No such column y in table t.x. (NO_SUCH_COLUMN_IN_TABLE)",
                ),
                true,
            ),
            (
                ch("Code: 53. DB::Exception: Type mismatch (TYPE_MISMATCH)"),
                true,
            ),
            (
                ch(
                    "Code: 516. DB::Exception: default: Authentication failed (AUTHENTICATION_FAILED)",
                ),
                true,
            ),
            (
                ch("Code: 193, e.displayText() = DB::Exception: Wrong password for user default"),
                true,
            ),
            (
                ch("Code: 497. DB::Exception: u: Not enough privileges. (ACCESS_DENIED)"),
                true,
            ),
            (
                ch("Code: 202. DB::Exception: Too many simultaneous queries."),
                false,
            ),
            (
                ch("Code: 241. DB::Exception: Memory limit (total) exceeded"),
                false,
            ),
            (
                ch(
                    "Code: 252. DB::Exception: Too many parts (300). Merges are processing significantly slower than inserts",
                ),
                false,
            ),
            (clickhouse::error::Error::TimedOut, false),
        ];
        for (error, holds) in table {
            let action = insert(&error);
            assert_eq!(
                matches!(action, Action::Hold(_)),
                holds,
                "{error}: {action:?}"
            );
            if !holds {
                assert_eq!(action, Action::Retry, "{error}");
            }
        }
        assert_eq!(
            insert(&ch(
                "Code: 117. DB::Exception: Type of 'price' must be Decimal(9, 4), not Decimal(9, 2): (while reading header). (INCORRECT_DATA)"
            )),
            Action::Refit
        );
        let kafka = KafkaError::MessageProduction(RDKafkaErrorCode::TopicAuthorizationFailed);
        assert!(matches!(
            dead_letters(&kafka, "t.dlq", 3),
            Action::Hold(r) if r.contains("t.dlq") && r.contains("3 letters")
        ));
        assert_eq!(offset_commit(&kafka), Action::Carry);
        assert_eq!(consumer(&kafka, None), Action::Retry);
        assert!(matches!(
            consumer(&kafka, Some((RDKafkaErrorCode::FencedInstanceId, "fenced".into()))),
            Action::Stop(r) if r.contains("SINK_GROUP_INSTANCE_ID")
        ));
    }
}
