CREATE TABLE IF NOT EXISTS app_errors (
    id UInt64,
    service String,
    level String,
    message String,
    occurred_at DateTime
) ENGINE = ReplacingMergeTree ORDER BY id;
