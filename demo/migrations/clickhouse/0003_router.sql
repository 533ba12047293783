-- shared/FLOWS.md §3 (seed 001): one strictly typed table per topic. The
-- source row id ends each sort key so that redelivered rows collapse.
-- {{ipv4}} is IPv4 where the server has the type (String on 18.x).
CREATE TABLE IF NOT EXISTS clicks_table (
    timestamp DateTime,
    user_id String,
    ip_address {{ipv4}},
    url String,
    element_id String,
    id UInt64
) ENGINE = ReplacingMergeTree PARTITION BY toYYYYMM(timestamp) ORDER BY (timestamp, user_id, id);

CREATE TABLE IF NOT EXISTS views_table (
    timestamp DateTime,
    user_id String,
    ip_address {{ipv4}},
    url String,
    duration_seconds UInt32,
    id UInt64
) ENGINE = ReplacingMergeTree PARTITION BY toYYYYMM(timestamp) ORDER BY (timestamp, user_id, id);

CREATE TABLE IF NOT EXISTS orders_table (
    timestamp DateTime,
    order_id String,
    user_id String,
    ip_address {{ipv4}},
    amount Float64,
    id UInt64
) ENGINE = ReplacingMergeTree ORDER BY (timestamp, order_id, id);
