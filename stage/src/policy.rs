//! What an error means to the stage — decided here, in one place (as the
//! relay's `error::classify` and the sink's `policy`), sorted as
//! Materialize's Kafka sink sorts transaction errors.
//!
//! Every recovery ends the session: the open transaction is aborted (or
//! fenced) and the consumer dropped, so the next session resumes from the
//! committed offsets with a new producer — the only state that is certain
//! after a failed transaction. What differs is whether someone must act.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::stage_loop::StageError;

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

fn refused(code: RDKafkaErrorCode) -> Option<&'static str> {
    Some(match code {
        RDKafkaErrorCode::TopicAuthorizationFailed => "Kafka refuses the stage a topic",
        RDKafkaErrorCode::GroupAuthorizationFailed => "Kafka refuses the stage its consumer group",
        RDKafkaErrorCode::TransactionalIdAuthorizationFailed => {
            "Kafka refuses the stage its transactional id"
        }
        RDKafkaErrorCode::ClusterAuthorizationFailed => "Kafka refuses the stage idempotent writes",
        RDKafkaErrorCode::SaslAuthenticationFailed | RDKafkaErrorCode::Authentication => {
            "Kafka refuses the stage's credentials"
        }
        _ => return None,
    })
}

pub fn classify(error: &StageError) -> Recovery {
    let code = match error {
        StageError::Kafka(KafkaError::Transaction(e)) => Some(e.code()),
        StageError::Kafka(e) => e.rdkafka_error_code(),
        StageError::NoGroupMetadata | StageError::Task | StageError::Fatal(_) => None,
    };
    match code.and_then(refused) {
        Some(what) => Recovery::Hold(format!("{what}: {error}")),
        None => Recovery::Restart,
    }
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
            (kafka(RDKafkaErrorCode::NotEnoughReplicas), false),
            (kafka(RDKafkaErrorCode::RequestTimedOut), false),
            (kafka(RDKafkaErrorCode::ProducerFenced), false),
            (kafka(RDKafkaErrorCode::InvalidProducerEpoch), false),
            (StageError::NoGroupMetadata, false),
            (StageError::Task, false),
            (StageError::Fatal("FencedInstanceId".into()), false),
        ];
        for (error, holds) in table {
            let recovery = classify(&error);
            assert_eq!(
                matches!(recovery, Recovery::Hold(_)),
                holds,
                "{error}: {recovery:?}"
            );
        }
    }
}
