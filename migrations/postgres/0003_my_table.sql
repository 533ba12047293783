-- shared/FLOWS.md §2 (seed 000): objects {id, value}.
CREATE TABLE IF NOT EXISTS my_table (
    id SERIAL PRIMARY KEY,
    value TEXT,
    sent_to_kafka BOOLEAN DEFAULT FALSE
);
CREATE INDEX IF NOT EXISTS my_table_pending ON my_table (id) WHERE sent_to_kafka IS NOT TRUE;
DROP TRIGGER IF EXISTS my_table_outbox_notify ON my_table;
CREATE TRIGGER my_table_outbox_notify AFTER INSERT ON my_table
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
