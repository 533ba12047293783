-- shared/FLOWS.md §2 (seed 000): objects {id, value}. Made as 0001 says.
CREATE TABLE IF NOT EXISTS my_table (
    id SERIAL PRIMARY KEY,
    value TEXT,
    sent_to_kafka BOOLEAN DEFAULT FALSE
);
DROP TRIGGER IF EXISTS my_table_outbox_notify ON my_table;
CREATE TRIGGER my_table_outbox_notify AFTER INSERT ON my_table
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

SELECT outbox_tune_source('my_table');
SELECT outbox_protect_pending('my_table');
