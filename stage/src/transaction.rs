//! The stage's transactional producer: a batch's output records and the
//! offsets past its inputs go to Kafka in one transaction (see
//! `stage_loop` for the contract).

use std::sync::Arc;
use std::time::Duration;

use connections::kafka::GroupConsumer;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::batch::ClosedBatch;
use crate::config::StageConfig;
use crate::error::StageError;
use crate::transform::OutRecord;

const TXN_TIMEOUT: Duration = Duration::from_secs(30);

/// A producer with the flow's transactional id, its transactions
/// initialised: a predecessor with the same id is fenced and its open
/// transaction aborted.
pub async fn producer(config: &StageConfig, flow: &str) -> Result<Arc<BaseProducer>, StageError> {
    let producer: Arc<BaseProducer> = Arc::new(
        config
            .kafka
            .client_config()
            .set("client.id", format!("outbox-stage-{flow}"))
            .set(
                "transactional.id",
                format!("{}.{flow}", config.transactional_id_prefix),
            )
            .set("enable.idempotence", "true")
            // Its topics are created by the stage (`connections::topics`).
            .set("allow.auto.create.topics", "false")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("transaction.timeout.ms", "60000")
            .create()?,
    );
    let init = Arc::clone(&producer);
    tokio::task::spawn_blocking(move || init.init_transactions(TXN_TIMEOUT))
        .await
        .map_err(|_| StageError::Task)??;
    Ok(producer)
}

/// Produces the batch's records and commits them together with its
/// offsets, in the consumer's group.
pub async fn commit(
    producer: &Arc<BaseProducer>,
    consumer: &GroupConsumer,
    batch: ClosedBatch,
) -> Result<(), StageError> {
    let group = consumer
        .group_metadata()
        .ok_or(StageError::NoGroupMetadata)?;
    let txn = Arc::clone(producer);
    tokio::task::spawn_blocking(move || {
        commit_blocking(&txn, &batch.records, &batch.offsets, &group)
    })
    .await
    .map_err(|_| StageError::Task)??;
    Ok(())
}

/// Produces `records` and commits them together with `offsets`; on failure
/// aborts the transaction. Blocking.
fn commit_blocking(
    producer: &BaseProducer,
    records: &[OutRecord],
    offsets: &TopicPartitionList,
    group: &rdkafka::consumer::ConsumerGroupMetadata,
) -> Result<(), KafkaError> {
    producer.begin_transaction()?;
    let result = (|| {
        for record in records {
            produce(producer, record)?;
        }
        producer.send_offsets_to_transaction(offsets, group, TXN_TIMEOUT)?;
        daemon::failpoint::hit("stage-before-commit");
        producer.commit_transaction(TXN_TIMEOUT)
    })();
    if result.is_err() {
        // Best effort: the session is dropped anyway, and a new producer with
        // the same transactional id aborts whatever is left open.
        let _ = producer.abort_transaction(Duration::from_secs(10));
    }
    result
}

/// Queues one record in the open transaction, waiting while the producer's
/// queue is full. Blocking.
fn produce(producer: &BaseProducer, r: &OutRecord) -> Result<(), KafkaError> {
    let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
    for (k, v) in &r.headers {
        headers = headers.insert(Header {
            key: k,
            value: Some(v.as_bytes()),
        });
    }
    let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&r.topic).headers(headers);
    if let Some(k) = &r.key {
        record = record.key(k.as_slice());
    }
    if let Some(p) = &r.payload {
        record = record.payload(p.as_slice());
    }
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                producer.poll(Duration::from_millis(10));
            }
            Err((e, _)) => return Err(e),
        }
    }
}
