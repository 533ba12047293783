//! What the relay makes of a source row: a message (key, JSON payload,
//! topic, headers, commit time), a batch of them, and the shape a source's
//! messages take besides the row's object (body, route, headers).

/// One pending row, ready to publish.
#[derive(Clone, Debug)]
pub struct OutboxMessage {
    pub id: i64,
    /// The transaction that wrote it (`outbox_txid`, see `window`).
    pub txid: i64,
    pub key: Option<String>,
    pub payload: String,
    /// The topic chosen from the row's columns (a routed source), or why
    /// none could be: the row is then set aside. `None`: the source's topic.
    pub topic: Option<Result<String, String>>,
    /// Columns sent as headers: (name, text value).
    pub headers: Vec<(String, Option<String>)>,
    /// The record's timestamp, Unix ms: the row's commit time, or when the
    /// relay read it (see `OutboxSource::inspect`).
    pub stamp: Option<i64>,
}

/// The rows one transaction publishes, in (`outbox_txid`, id) order.
#[derive(Debug, Default)]
pub struct OutboxBatch {
    pub messages: Vec<OutboxMessage>,
}

impl OutboxBatch {
    pub fn ids(&self) -> Vec<i64> {
        self.messages.iter().map(|m| m.id).collect()
    }
    pub fn len(&self) -> usize {
        self.messages.len()
    }
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }
    /// The last row's (`outbox_txid`, id): where the window's cursor stands
    /// once it is locked.
    pub fn end(&self) -> Option<(i64, i64)> {
        self.messages.last().map(|m| (m.txid, m.id))
    }
    /// The topics its messages go to: `fixed` (the source's) for those not
    /// routed, the routed ones; not a row that makes no topic.
    pub fn topics<'a>(&'a self, fixed: &'a str) -> Vec<&'a str> {
        let mut topics: Vec<&str> = self
            .messages
            .iter()
            .filter_map(|m| match &m.topic {
                None => Some(fixed),
                Some(Ok(routed)) => Some(routed.as_str()),
                Some(Err(_)) => None,
            })
            .collect();
        topics.sort_unstable();
        topics.dedup();
        topics
    }

    /// The ids of the rows routed to `topic`.
    pub fn routed_to(&self, topic: &str) -> Vec<i64> {
        self.messages
            .iter()
            .filter(|m| matches!(&m.topic, Some(Ok(t)) if t == topic))
            .map(|m| m.id)
            .collect()
    }

    /// The ids as runs, `1-5,9,12-14` (in batch order): for debug logs.
    pub fn id_runs(&self) -> String {
        let mut runs: Vec<(i64, i64)> = Vec::new();
        for id in self.messages.iter().map(|m| m.id) {
            match runs.last_mut() {
                Some((_, hi)) if *hi + 1 == id => *hi = id,
                _ => runs.push((id, id)),
            }
        }
        runs.iter()
            .map(|&(lo, hi)| {
                if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo}-{hi}")
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A piece of a routed source's topic: text, or the value of the select's
/// extra column at this index.
#[derive(Clone, Debug)]
pub(super) enum RoutePart {
    Text(String),
    Column(usize),
}

/// How a source's messages are made besides the row's object: its body
/// from one column, its topic from columns, headers from columns. Their
/// values are extra text columns after the object's fields.
#[derive(Clone, Debug, Default)]
pub(super) struct Shape {
    /// The body is extra column 0.
    pub(super) body: bool,
    pub(super) route: Vec<RoutePart>,
    pub(super) headers: Vec<String>,
    /// Extra column of the first header.
    pub(super) headers_at: usize,
    /// Extra column of the message's timestamp (Unix ms).
    pub(super) stamp_at: usize,
    pub(super) extras: usize,
}

impl Shape {
    /// The row's topic, or why it has none: a NULL or a value outside the
    /// topic alphabet (letters, digits, `.`, `_`, `-`) in a routed column.
    pub(super) fn topic<'a>(
        &self,
        extra: &impl Fn(usize) -> Option<&'a str>,
    ) -> Result<String, String> {
        let mut topic = String::new();
        for part in &self.route {
            match part {
                RoutePart::Text(text) => topic.push_str(text),
                RoutePart::Column(i) => {
                    let value = extra(*i).ok_or("the topic column is NULL")?;
                    if value.is_empty()
                        || !value
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
                    {
                        return Err(format!(
                            "`{value}` makes no topic name (letters, digits, `.`, `_`, `-` only)"
                        ));
                    }
                    topic.push_str(value);
                }
            }
        }
        if topic.len() > 249 {
            return Err(format!("topic `{topic}` is longer than 249 characters"));
        }
        Ok(topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: i64, topic: Option<Result<&str, &str>>) -> OutboxMessage {
        OutboxMessage {
            id,
            txid: 1,
            key: None,
            payload: "{}".into(),
            topic: topic.map(|t| t.map(str::to_owned).map_err(str::to_owned)),
            headers: Vec::new(),
            stamp: None,
        }
    }

    #[test]
    fn a_batch_names_each_topic_it_goes_to_once() {
        let batch = OutboxBatch {
            messages: vec![
                message(1, Some(Ok("events.order"))),
                message(2, Some(Ok("events.customer"))),
                message(3, Some(Err("the topic column is NULL"))),
                message(4, Some(Ok("events.order"))),
            ],
        };
        assert_eq!(
            batch.topics("unused"),
            vec!["events.customer", "events.order"]
        );
        assert_eq!(batch.routed_to("events.order"), vec![1, 4]);
        let plain = OutboxBatch {
            messages: vec![message(1, None), message(2, None)],
        };
        assert_eq!(plain.topics("user_events"), vec!["user_events"]);
    }
}
