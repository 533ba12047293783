//! What can go wrong while relaying a batch, and what to do about it —
//! decided here, in one place.

use crate::publisher::PublishError;
use crate::source::SourceError;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("postgres: {}", connections::pg::detail(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("kafka producer: {0}")]
    Producer(#[from] rdkafka::error::KafkaError),
    #[error("blocking task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("postgres: {0}")]
    Connect(#[from] connections::pg::PgConnectError),
    /// The session takes no writes: the server is a standby (or
    /// `default_transaction_read_only` is on). Not ready, reconnecting: a
    /// multi-host `DATABASE_URL` finds the primary once one is promoted.
    #[error(
        "postgres: the server takes no writes (a standby, or default_transaction_read_only=on); \
         the relay needs the primary: name every host in DATABASE_URL with target_session_attrs=read-write"
    )]
    ReadOnly,
    /// A worker panicked (a bug): the relay stops, exit code 101.
    #[error(transparent)]
    Panicked(daemon::workers::Panic),
    /// A Postgres query had no answer within `RELAY_QUERY_TIMEOUT_MS`.
    #[error("postgres: no answer to {what} within {after:?}")]
    Stuck {
        what: &'static str,
        after: std::time::Duration,
    },
}

/// Runs a Postgres call with a deadline: [`RelayError::Stuck`] when it has
/// no answer in time (a dead network path can hold it for ever).
pub async fn within<T, E>(
    after: std::time::Duration,
    what: &'static str,
    call: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, RelayError>
where
    RelayError: From<E>,
{
    match tokio::time::timeout(after, call).await {
        Ok(result) => result.map_err(RelayError::from),
        Err(_) => Err(RelayError::Stuck { what, after }),
    }
}

/// The next step after a failed batch. In every case nothing was flagged
/// sent: the Postgres transaction holding the rows is rolled back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Back off, build a new Kafka producer (re-initialising transactions),
    /// then retry.
    RecreateProducer,
    /// Back off, reconnect to Postgres (leadership must be won again), retry.
    Reconnect,
    /// Kafka refused some rows of the batch for good (too large, invalid):
    /// the transaction was aborted; move those rows to `outbox_dead_rows`
    /// (flagged, so the flow goes on), retry the rest at once, and build a
    /// new producer first (as after any aborted transaction).
    SetAside,
    /// Back off and retry the batch with the same producer: nothing was
    /// sent (a topic of the batch could not be created or found).
    Retry,
    /// The flow's definition contradicts the database: stop with a message.
    Fatal,
}

pub fn classify(err: &RelayError) -> Recovery {
    match err {
        // A closed connection, or a statement error (the connection was
        // terminated mid-query, a serialization failure), leaves the session
        // and its advisory lock in doubt.
        RelayError::Postgres(_) => Recovery::Reconnect,
        // No answer in time: the session is as good as dead (and the server
        // ends it by its own timeouts); its locks go to whoever asks next.
        RelayError::Stuck { .. } => Recovery::Reconnect,
        RelayError::Connect(_) => Recovery::Reconnect,
        // A standby: the next connection may reach the promoted primary.
        RelayError::ReadOnly => Recovery::Reconnect,
        // Fenced: a standby with our transactional id took over while this
        // relay was frozen. Step down: drop the sessions (the transaction is
        // rolled back, nothing flagged) and stand by for the locks again —
        // a new producer here would fence the active relay in turn.
        RelayError::Publish(PublishError::Fenced(_)) => Recovery::Reconnect,
        RelayError::Publish(PublishError::Rejected(_)) => Recovery::SetAside,
        // No transaction was begun: the producer is as good as before. A
        // cluster that refuses to create the topic (no grant, a policy, a
        // replication factor above its brokers) holds the flow, not ready
        // with the reason, until someone acts; an unreachable one until it
        // answers. Nothing is flagged meanwhile.
        RelayError::Publish(PublishError::Topic(_)) => Recovery::Retry,
        // Even a cleanly aborted transaction gets a new producer: librdkafka
        // may need an epoch bump after it (the next transaction then fails
        // with OUT_OF_ORDER_SEQUENCE_NUMBER, and its commit can hang until
        // message.timeout.ms). A fresh producer with the same transactional
        // id starts clean for the cost of one init_transactions (~50 ms).
        RelayError::Publish(_) | RelayError::Producer(_) => Recovery::RecreateProducer,
        RelayError::Source(SourceError::Postgres(_)) => Recovery::Reconnect,
        RelayError::Source(_) => Recovery::Fatal,
        RelayError::Join(_) => Recovery::RecreateProducer,
        // A bug: nothing to retry (`run` stops the process with it).
        RelayError::Panicked(_) => Recovery::Fatal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};

    #[test]
    fn the_policy_table() {
        let kafka = || KafkaError::MessageProduction(RDKafkaErrorCode::RequestTimedOut);
        let table = [
            (
                RelayError::Stuck {
                    what: "COMMIT",
                    after: std::time::Duration::from_secs(1),
                },
                Recovery::Reconnect,
            ),
            (
                RelayError::Publish(PublishError::Fenced(kafka())),
                Recovery::Reconnect,
            ),
            (
                RelayError::Publish(PublishError::Aborted(kafka())),
                Recovery::RecreateProducer,
            ),
            (
                RelayError::Publish(PublishError::Fatal(kafka())),
                Recovery::RecreateProducer,
            ),
            (
                RelayError::Publish(PublishError::CommitUnknown(kafka())),
                Recovery::RecreateProducer,
            ),
            (
                RelayError::Publish(PublishError::Rejected(vec![(1, "too large".into())])),
                Recovery::SetAside,
            ),
            (RelayError::Producer(kafka()), Recovery::RecreateProducer),
            (
                RelayError::Publish(PublishError::Topic(
                    connections::topics::TopicError::Refused {
                        topic: "t".into(),
                        code: RDKafkaErrorCode::TopicAuthorizationFailed,
                    },
                )),
                Recovery::Retry,
            ),
            (RelayError::ReadOnly, Recovery::Reconnect),
            (
                RelayError::Panicked(daemon::workers::Panic {
                    place: "flow".into(),
                    message: "bug".into(),
                }),
                Recovery::Fatal,
            ),
            (
                RelayError::Connect(connections::pg::PgConnectError::Timeout(
                    std::time::Duration::from_secs(1),
                )),
                Recovery::Reconnect,
            ),
            (
                RelayError::Source(SourceError::MissingTable {
                    flow: "f".into(),
                    table: "t".into(),
                }),
                Recovery::Fatal,
            ),
        ];
        for (error, recovery) in table {
            assert_eq!(classify(&error), recovery, "{error}");
        }
    }
}
