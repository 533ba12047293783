CREATE TABLE IF NOT EXISTS app_errors (
    id BIGSERIAL PRIMARY KEY,
    service TEXT NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL,
    occurred_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_to_kafka BOOLEAN DEFAULT FALSE
);
DROP TRIGGER IF EXISTS app_errors_outbox_notify ON app_errors;
CREATE TRIGGER app_errors_outbox_notify AFTER INSERT ON app_errors
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
-- Pending rows are immutable (a row changed before its re-delivery could
-- appear twice in a target table sorted by the changed column).
SELECT outbox_protect_pending('app_errors');
-- Flag flips as HOT updates (no index on the flag, room on each page): the
-- relay finds pending rows through the primary key.
SELECT outbox_tune_source('app_errors');
