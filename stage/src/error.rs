//! What can go wrong in a stage session, and what to do about it — decided
//! here, in one place (as the relay's and the sink's `error::classify`),
//! sorted as Materialize's Kafka sink sorts transaction errors.
//!
//! Every recovery ends the session: the open transaction is aborted (or
//! fenced) and the consumer dropped, so the next session resumes from the
//! committed offsets with a new producer — the only state that is certain
//! after a failed transaction. What differs is whether someone must act.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("the consumer has no group metadata yet")]
    NoGroupMetadata,
    #[error("a blocking kafka call panicked")]
    Task,
    /// librdkafka stopped the consumer for good: a new session takes a new one.
    #[error("kafka consumer failed for good: {0}")]
    Fatal(String),
    /// A topic the stage writes could not be created or found; nothing of
    /// the batch was sent.
    #[error(transparent)]
    Topic(#[from] connections::topics::TopicError),
}

/// What the stage does after a failed session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// Abort, back off, start a new session. A retriable or abortable
    /// transaction error, a broker going away, a fatal producer error
    /// (fenced: a new producer re-initialises the transactional id).
    Restart,
    /// As `Restart`, but the flow is not ready, with this reason, until a
    /// batch commits again: Kafka refuses the stage's credentials or
    /// grants (topic, group, transactional id), which only someone can fix.
    Hold(String),
}

pub fn classify(error: &StageError) -> Recovery {
    match error {
        // A transaction call's error carries its code inside; a refusal
        // there (the transactional id, a topic) needs someone as much as
        // anywhere else.
        StageError::Kafka(KafkaError::Transaction(e)) => by_code(e.code(), error),
        StageError::Kafka(e) => e
            .rdkafka_error_code()
            .map_or(Recovery::Restart, |code| by_code(code, error)),
        // The group's metadata comes with the consumer's first assignment:
        // the next session waits for one again.
        StageError::NoGroupMetadata => Recovery::Restart,
        // A blocking Kafka call panicked: the producer's state is unknown,
        // a new one is the only certain state.
        StageError::Task => Recovery::Restart,
        // librdkafka gave the consumer up (e.g. a twin static member fenced
        // it): the next session builds a new one, which fences the twin in
        // turn or is fenced again — either way nothing is committed twice.
        StageError::Fatal(_) => Recovery::Restart,
        // The cluster refuses to create a topic the stage writes (no grant,
        // a policy, a replication factor above its brokers): someone must
        // act. One that does not answer is waited for.
        StageError::Topic(e @ connections::topics::TopicError::Refused { .. }) => {
            Recovery::Hold(e.to_string())
        }
        StageError::Topic(connections::topics::TopicError::Unanswered { .. }) => Recovery::Restart,
    }
}

/// Kafka refusing the stage something only an operator can grant holds the
/// flow; any other code is a session restart.
fn by_code(code: RDKafkaErrorCode, error: &StageError) -> Recovery {
    let what = match code {
        RDKafkaErrorCode::TopicAuthorizationFailed => "Kafka refuses the stage a topic",
        RDKafkaErrorCode::GroupAuthorizationFailed => "Kafka refuses the stage its consumer group",
        RDKafkaErrorCode::TransactionalIdAuthorizationFailed => {
            "Kafka refuses the stage its transactional id"
        }
        RDKafkaErrorCode::ClusterAuthorizationFailed => "Kafka refuses the stage idempotent writes",
        RDKafkaErrorCode::SaslAuthenticationFailed | RDKafkaErrorCode::Authentication => {
            "Kafka refuses the stage's credentials"
        }
        _ => return Recovery::Restart,
    };
    Recovery::Hold(format!("{what}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_table() {
        let kafka = |code| StageError::Kafka(KafkaError::MessageProduction(code));
        let table = [
            (kafka(RDKafkaErrorCode::TopicAuthorizationFailed), true),
            (
                kafka(RDKafkaErrorCode::TransactionalIdAuthorizationFailed),
                true,
            ),
            (kafka(RDKafkaErrorCode::GroupAuthorizationFailed), true),
            (kafka(RDKafkaErrorCode::ClusterAuthorizationFailed), true),
            (kafka(RDKafkaErrorCode::SaslAuthenticationFailed), true),
            (kafka(RDKafkaErrorCode::NotEnoughReplicas), false),
            (kafka(RDKafkaErrorCode::RequestTimedOut), false),
            (kafka(RDKafkaErrorCode::ProducerFenced), false),
            (kafka(RDKafkaErrorCode::InvalidProducerEpoch), false),
            (StageError::Kafka(KafkaError::Canceled), false),
            (StageError::NoGroupMetadata, false),
            (StageError::Task, false),
            (StageError::Fatal("FencedInstanceId".into()), false),
            (
                StageError::Topic(connections::topics::TopicError::Refused {
                    topic: "out".into(),
                    code: RDKafkaErrorCode::PolicyViolation,
                }),
                true,
            ),
            (
                StageError::Topic(connections::topics::TopicError::Unanswered {
                    topic: "out".into(),
                    source: KafkaError::Canceled,
                }),
                false,
            ),
        ];
        for (error, holds) in table {
            let recovery = classify(&error);
            assert_eq!(
                matches!(recovery, Recovery::Hold(_)),
                holds,
                "{error}: {recovery:?}"
            );
        }
        assert!(matches!(
            classify(&kafka(RDKafkaErrorCode::TopicAuthorizationFailed)),
            Recovery::Hold(reason) if reason.starts_with("Kafka refuses the stage a topic: kafka: ")
        ));
    }

    /// A transaction call's error (built by librdkafka itself: a producer
    /// without a transactional id, no broker needed) is sorted by its code.
    #[test]
    fn a_transaction_error_is_sorted_by_its_code() {
        use rdkafka::producer::{BaseProducer, Producer};
        let producer: BaseProducer = match rdkafka::ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .create()
        {
            Ok(producer) => producer,
            Err(error) => panic!("a producer without a broker: {error}"),
        };
        let Err(error @ KafkaError::Transaction(_)) = producer.begin_transaction() else {
            panic!("begin_transaction without a transactional id must fail");
        };
        assert_eq!(classify(&StageError::Kafka(error)), Recovery::Restart);
    }
}
