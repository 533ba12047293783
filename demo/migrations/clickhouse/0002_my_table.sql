-- shared/FLOWS.md §2 (seed 000): the objects, and a journal with one entry
-- per object written (event_id = the object's id, so redelivery collapses).
CREATE TABLE IF NOT EXISTS my_table (
    id UInt64,
    value String
) ENGINE = ReplacingMergeTree ORDER BY id;

CREATE TABLE IF NOT EXISTS events (
    event_id UInt64,
    my_table_id UInt64,
    value String,
    event_type String,
    created_at DateTime DEFAULT now()
) ENGINE = ReplacingMergeTree ORDER BY event_id;
