//! seed 004's transform (the Flink job): raw click, page-view and order events
//! become one clean shape.
//!
//! - `event_type`: the topic name upper-cased without its `user_` prefix
//!   (CLICKS, PAGE_VIEWS, ORDERS);
//! - `event_timestamp`: the parsed `timestamp`, as `YYYY-MM-DD HH:MM:SS` UTC;
//! - `user_id`;
//! - `details`: url, element_id, order_id and amount, those present, joined
//!   by ` | `;
//! - `source_id`: the raw row's `id`, so the ClickHouse side can collapse a
//!   redelivered event.

use serde_json::{Map, Value, json};

const DETAIL_FIELDS: [&str; 4] = ["url", "element_id", "order_id", "amount"];

/// A normalised event: its message key and JSON payload.
#[derive(Debug, PartialEq)]
pub struct Normalised {
    pub key: String,
    pub payload: Vec<u8>,
}

/// `topic` is the raw topic's name without any configured prefix.
pub fn normalise(topic: &str, payload: Option<&[u8]>) -> Result<Normalised, String> {
    let payload = payload.ok_or("empty message (no payload)")?;
    let raw: Map<String, Value> = match serde_json::from_slice(payload) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Err("message is JSON but not an object".into()),
        Err(e) => return Err(format!("malformed JSON: {e}")),
    };
    let event_type = topic.strip_prefix("user_").unwrap_or(topic).to_uppercase();
    let seconds = match raw.get("timestamp") {
        Some(Value::String(s)) => daemon::time::parse_time(s).map(|(secs, _)| secs),
        Some(Value::Number(n)) => n.as_f64().map(|f| f.floor() as i64),
        _ => None,
    }
    .ok_or("field timestamp: missing or not a date-time")?;
    let event_timestamp =
        daemon::time::format_utc(seconds).ok_or("field timestamp: out of range")?;
    let user_id = match raw.get("user_id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err("field user_id: missing or not a string".into()),
    };
    let source_id = raw
        .get("id")
        .and_then(Value::as_u64)
        .ok_or("field id: missing or not an unsigned integer")?;
    let details: Vec<String> = DETAIL_FIELDS
        .iter()
        .filter_map(|f| match raw.get(*f) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(Value::Bool(b)) => Some(b.to_string()),
            _ => None,
        })
        .collect();
    let out = json!({
        "event_type": event_type,
        "event_timestamp": event_timestamp,
        "user_id": user_id,
        "details": details.join(" | "),
        "source_id": source_id,
    });
    Ok(Normalised {
        key: user_id,
        payload: out.to_string().into_bytes(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(n: &Normalised) -> Value {
        serde_json::from_slice(&n.payload).unwrap_or(Value::Null)
    }

    #[test]
    fn the_three_raw_shapes() {
        let click = normalise(
            "user_clicks",
            Some(br#"{"id": 7, "timestamp": "2024-05-06 07:08:09", "user_id": "u1", "ip_address": "1.2.3.4", "url": "/p/1", "element_id": "btn-3"}"#),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            parsed(&click),
            json!({"event_type": "CLICKS", "event_timestamp": "2024-05-06 07:08:09", "user_id": "u1", "details": "/p/1 | btn-3", "source_id": 7})
        );
        assert_eq!(click.key, "u1");
        let view = normalise("page_views", Some(br#"{"id": 1, "timestamp": "2024-05-06T07:08:09Z", "user_id": "u2", "url": "/", "duration_seconds": 30}"#))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed(&view)["event_type"], "PAGE_VIEWS");
        assert_eq!(parsed(&view)["details"], "/");
        let order = normalise("orders", Some(br#"{"id": 2, "timestamp": "2024-05-06 07:08:09", "user_id": "u3", "order_id": "o-1", "amount": 9.99}"#))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed(&order)["event_type"], "ORDERS");
        assert_eq!(parsed(&order)["details"], "o-1 | 9.99");
    }

    #[test]
    fn bad_input_says_why() {
        assert!(
            normalise("orders", Some(b"not json")).is_err_and(|e| e.contains("malformed JSON"))
        );
        assert!(
            normalise("orders", Some(br#"{"id": 1, "user_id": "u"}"#))
                .is_err_and(|e| e.contains("timestamp"))
        );
        assert!(
            normalise("orders", Some(br#"{"id": 1, "timestamp": "2024-01-01"}"#))
                .is_err_and(|e| e.contains("user_id"))
        );
        assert!(normalise("orders", None).is_err());
    }
}
