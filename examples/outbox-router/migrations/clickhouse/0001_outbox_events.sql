-- One table per aggregate type: columns from the event's payload, the
-- outbox row's id and event type from the message headers (the payload
-- does not carry them). Keyed by the outbox id, so a redelivery collapses.
CREATE TABLE IF NOT EXISTS order_events (
    outbox_id UInt64,
    event_type String,
    order_id String,
    total Decimal(12, 2),
    status String
) ENGINE = ReplacingMergeTree ORDER BY outbox_id;

CREATE TABLE IF NOT EXISTS customer_events (
    outbox_id UInt64,
    event_type String,
    customer_id String,
    name String,
    email Nullable(String)
) ENGINE = ReplacingMergeTree ORDER BY outbox_id;
