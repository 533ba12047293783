-- shared/FLOWS.md §1 (seed 003).
CREATE TABLE IF NOT EXISTS user_logins (
    id SERIAL PRIMARY KEY,
    username TEXT,
    event_type TEXT,
    event_time TIMESTAMP,
    sent_to_kafka BOOLEAN DEFAULT FALSE
);

-- The relay reads pending rows in id order through this index only.
CREATE INDEX IF NOT EXISTS user_logins_pending
    ON user_logins (id) WHERE sent_to_kafka IS NOT TRUE;

DROP TRIGGER IF EXISTS user_logins_outbox_notify ON user_logins;
CREATE TRIGGER user_logins_outbox_notify
    AFTER INSERT ON user_logins
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
