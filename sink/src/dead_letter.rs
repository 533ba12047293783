//! Messages that cannot be loaded go to `<topic><suffix>` (default
//! `<topic>.dlq`) with the reason and their origin in headers, before the
//! offsets past them are committed: nothing is skipped silently.
//!
//! A letter is sent until Kafka acknowledged it, and only until then: a
//! retry resends the letters not yet acknowledged, never one that was (the
//! producer is idempotent, so its own retries do not repeat one either).
//! What may not fit is cut, and a header says so: the payload to
//! [`MAX_LETTER_PAYLOAD`] (or to nothing when the topic's own limit is
//! lower), the key to [`MAX_LETTER_KEY`], the reason to [`MAX_REASON`]. The
//! whole message stays in the source topic at its partition and offset.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::error::DeadLetterError;

#[derive(Clone, Debug)]
pub struct DeadLetter {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub error: String,
    /// Sent without its payload: the topic refused it as too large.
    pub without_payload: bool,
}

pub struct DeadLetterQueue {
    producer: FutureProducer,
    suffix: String,
    /// Creates a dead-letter topic before its first letter.
    topics: connections::topics::Topics,
    /// What the flow's dead-letter topics are created with.
    spec: connections::topics::TopicSpec,
}

/// Dead letters carry at most this much of the original payload, so that a
/// letter fits Kafka's default 1 MB message limit; a cut letter has a
/// `payload_truncated` header with the original size (the whole message
/// stays in the source topic at `source_partition`/`source_offset`).
pub const MAX_LETTER_PAYLOAD: usize = 900 * 1024;
/// Keys longer than this are cut (`key_truncated` header: the original size).
pub const MAX_LETTER_KEY: usize = 16 * 1024;
/// Reasons longer than this are cut.
pub const MAX_REASON: usize = 4 * 1024;

impl DeadLetterQueue {
    /// `timeout`: how long one attempt waits for Kafka to acknowledge a
    /// letter (`SINK_DLQ_TIMEOUT_MS`).
    pub fn new(
        kafka: &connections::kafka::KafkaEndpoint,
        suffix: &str,
        timeout: Duration,
        topics: connections::topics::Topics,
        spec: connections::topics::TopicSpec,
    ) -> Result<Self, KafkaError> {
        let producer = kafka
            .client_config()
            .set("client.id", "outbox-sink-dlq")
            .set("allow.auto.create.topics", "false")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", timeout.as_millis().to_string())
            .create()?;
        Ok(Self {
            producer,
            suffix: suffix.to_owned(),
            topics,
            spec,
        })
    }

    pub fn topic_for(&self, topic: &str) -> String {
        format!("{topic}{}", self.suffix)
    }

    /// Publishes `letters` and waits for Kafka's answers; the letters it
    /// acknowledged are removed, those it did not stay for the next attempt
    /// (Err: the first error). A letter refused as too large is sent next
    /// time without its payload. Their topics are created first where they
    /// do not exist.
    pub async fn publish(&self, letters: &mut Vec<DeadLetter>) -> Result<(), DeadLetterError> {
        let mut topics: Vec<String> = letters.iter().map(|l| self.topic_for(&l.topic)).collect();
        topics.sort_unstable();
        topics.dedup();
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        self.topics.ensure(&topics, &self.spec).await?;
        let mut deliveries = Vec::with_capacity(letters.len());
        for letter in letters.iter() {
            deliveries.push(self.send(letter));
        }
        let mut first_error = None;
        let mut delivered = Vec::with_capacity(letters.len());
        for (letter, delivery) in letters.iter_mut().zip(deliveries) {
            let outcome = match delivery {
                Ok(future) => match future.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => Err(e),
                    Err(_) => Err(KafkaError::Canceled),
                },
                Err(e) => Err(e),
            };
            match outcome {
                Ok(()) => delivered.push(true),
                Err(e) => {
                    if e.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge) {
                        letter.without_payload = true;
                    }
                    first_error.get_or_insert(e);
                    delivered.push(false);
                }
            }
        }
        let mut sent = delivered.into_iter();
        letters.retain(|_| !sent.next().unwrap_or(false));
        first_error.map_or(Ok(()), |e| Err(e.into()))
    }

    fn send(&self, letter: &DeadLetter) -> Result<rdkafka::producer::DeliveryFuture, KafkaError> {
        let partition = letter.partition.to_string();
        let offset = letter.offset.to_string();
        let payload_size = letter.payload.as_ref().map_or(0, Vec::len);
        let key_size = letter.key.as_ref().map_or(0, Vec::len);
        let (original_payload, original_key) = (payload_size.to_string(), key_size.to_string());
        let reason = cut(letter.error.as_bytes(), MAX_REASON);
        let mut headers = OwnedHeaders::new_with_capacity(7)
            .insert(Header {
                key: "error",
                value: Some(reason),
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
        let payload_limit = if letter.without_payload {
            0
        } else {
            MAX_LETTER_PAYLOAD
        };
        if payload_size > payload_limit {
            headers = headers.insert(Header {
                key: "payload_truncated",
                value: Some(original_payload.as_bytes()),
            });
        }
        if key_size > MAX_LETTER_KEY {
            headers = headers.insert(Header {
                key: "key_truncated",
                value: Some(original_key.as_bytes()),
            });
        }
        let topic = self.topic_for(&letter.topic);
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&topic).headers(headers);
        if let Some(key) = &letter.key {
            record = record.key(cut(key, MAX_LETTER_KEY));
        }
        if let Some(payload) = &letter.payload {
            record = record.payload(cut(payload, payload_limit));
        }
        self.producer.send_result(record).map_err(|(e, _)| e)
    }
}

fn cut(bytes: &[u8], max: usize) -> &[u8] {
    &bytes[..bytes.len().min(max)]
}
