//! Messages that cannot be loaded go to `<topic><suffix>` (default
//! `<topic>.dlq`) with the reason and their origin in headers, before the
//! offsets past them are committed: nothing is skipped silently.

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

#[derive(Clone, Debug)]
pub struct DeadLetter {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub error: String,
}

pub struct DeadLetterQueue {
    producer: FutureProducer,
    suffix: String,
}

const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Dead letters carry at most this much of the original payload, so that a
/// letter fits Kafka's default 1 MB message limit; a cut letter has a
/// `payload_truncated` header with the original size (the whole message
/// stays in the source topic at `source_partition`/`source_offset`).
pub const MAX_LETTER_PAYLOAD: usize = 900 * 1024;

impl DeadLetterQueue {
    pub fn new(kafka: &flows::kafka::KafkaEndpoint, suffix: &str) -> Result<Self, KafkaError> {
        let producer = kafka
            .client_config()
            .set("client.id", "outbox-sink-dlq")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "message.timeout.ms",
                DELIVERY_TIMEOUT.as_millis().to_string(),
            )
            .create()?;
        Ok(Self {
            producer,
            suffix: suffix.to_owned(),
        })
    }

    pub fn topic_for(&self, topic: &str) -> String {
        format!("{topic}{}", self.suffix)
    }

    /// Publishes every letter and waits until Kafka acknowledged each.
    pub async fn publish(&self, letters: &[DeadLetter]) -> Result<(), KafkaError> {
        let mut deliveries = Vec::with_capacity(letters.len());
        for letter in letters {
            let partition = letter.partition.to_string();
            let offset = letter.offset.to_string();
            let original = letter.payload.as_ref().map_or(0, Vec::len).to_string();
            let mut headers = OwnedHeaders::new_with_capacity(5)
                .insert(Header {
                    key: "error",
                    value: Some(letter.error.as_bytes()),
                })
                .insert(Header {
                    key: "source_topic",
                    value: Some(letter.topic.as_bytes()),
                })
                .insert(Header {
                    key: "source_partition",
                    value: Some(partition.as_bytes()),
                })
                .insert(Header {
                    key: "source_offset",
                    value: Some(offset.as_bytes()),
                });
            if letter
                .payload
                .as_ref()
                .is_some_and(|p| p.len() > MAX_LETTER_PAYLOAD)
            {
                headers = headers.insert(Header {
                    key: "payload_truncated",
                    value: Some(original.as_bytes()),
                });
            }
            let topic = self.topic_for(&letter.topic);
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&topic).headers(headers);
            if let Some(key) = &letter.key {
                record = record.key(key.as_slice());
            }
            if let Some(payload) = &letter.payload {
                record = record.payload(&payload[..payload.len().min(MAX_LETTER_PAYLOAD)]);
            }
            deliveries.push(self.producer.send_result(record).map_err(|(e, _)| e)?);
        }
        for delivery in deliveries {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(e),
                Err(_) => return Err(KafkaError::Canceled),
            }
        }
        Ok(())
    }
}
