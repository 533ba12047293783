-- shared/FLOWS.md §5 (seed 004): the normalised events. source_id (the raw
-- row's id) ends the sort key so that redelivered events collapse.
CREATE TABLE IF NOT EXISTS events_processed (
    event_type String,
    event_timestamp DateTime,
    user_id String,
    details String,
    source_id UInt64
) ENGINE = ReplacingMergeTree PARTITION BY toYYYYMM(event_timestamp) ORDER BY (event_timestamp, user_id, event_type, source_id);
