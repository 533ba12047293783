//! One input record → one output record: the flow's transform, or a dead
//! letter to `<input topic>.dlq` when the record does not transform (it is
//! committed in the same transaction as any other output).

use flows::definition::Transform;
use rdkafka::Message;
use rdkafka::message::BorrowedMessage;

use crate::normalise::normalise;
use crate::stage_loop::FlowStage;
use crate::stats::StageStats;

/// One record to produce in the batch's transaction.
pub struct OutRecord {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, String)>,
}

impl FlowStage {
    pub(crate) fn transform(&self, message: &BorrowedMessage<'_>, stats: &StageStats) -> OutRecord {
        let topic = message.topic();
        let name = topic
            .strip_prefix(self.config.topic_prefix.as_str())
            .unwrap_or(topic);
        let result = match self.stage.transform {
            Transform::Normalise => normalise(name, message.payload()),
        };
        match result {
            Ok(out) => OutRecord {
                topic: self.stage.output.clone(),
                key: Some(out.key.into_bytes()),
                payload: Some(out.payload),
                headers: vec![],
            },
            Err(error) => {
                stats.dead_letters(topic).inc();
                tracing::warn!(flow = %self.flow.name, topic, partition = message.partition(), offset = message.offset(), %error, "record dead-lettered");
                dead_letter(message, error)
            }
        }
    }
}

/// The record as it came, to `<topic>.dlq`, with the reason and its origin
/// in headers.
fn dead_letter(message: &BorrowedMessage<'_>, error: String) -> OutRecord {
    let topic = message.topic();
    OutRecord {
        topic: format!("{topic}.dlq"),
        key: message.key().map(<[u8]>::to_vec),
        payload: message.payload().map(<[u8]>::to_vec),
        headers: vec![
            ("error".into(), error),
            ("source_topic".into(), topic.to_owned()),
            ("source_partition".into(), message.partition().to_string()),
            ("source_offset".into(), message.offset().to_string()),
        ],
    }
}
