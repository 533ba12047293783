-- shared/FLOWS.md §1 (seed 003). ReplacingMergeTree keyed by the source row id
-- absorbs redelivered rows: query with FINAL.
CREATE TABLE IF NOT EXISTS user_logins (
    id UInt64,
    username Nullable(String),
    event_type Nullable(String),
    event_time Nullable(DateTime)
) ENGINE = ReplacingMergeTree ORDER BY id;
