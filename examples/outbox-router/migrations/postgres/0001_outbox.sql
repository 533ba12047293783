-- The outbox table as Debezium's Outbox Event Router expects it, plus the
-- relay's flag. The application inserts one row per event, in the same
-- transaction as its own changes.
CREATE TABLE IF NOT EXISTS outbox (
    id BIGSERIAL PRIMARY KEY,
    aggregatetype TEXT NOT NULL,
    aggregateid TEXT NOT NULL,
    type TEXT NOT NULL,
    payload JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_to_kafka BOOLEAN DEFAULT FALSE
);
DROP TRIGGER IF EXISTS outbox_outbox_notify ON outbox;
CREATE TRIGGER outbox_outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
SELECT outbox_protect_pending('outbox');
SELECT outbox_tune_source('outbox');
