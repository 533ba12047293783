-- shared/FLOWS.md §1 (seed 003). Every demo table is an outbox source table
-- made the way README's "Adding your own flow" says: an `id` key and a
-- `sent_to_kafka` flag, the trigger that wakes the relay, then the product's
-- outbox_tune_source (the `outbox_txid` column and index the relay reads by,
-- HOT flag flips) and outbox_protect_pending (pending rows immutable). Each
-- statement is idempotent: a database migrated before the demo moved out of
-- the product (when these tables came from its migrations 0002–0005) runs
-- this file again without change.
CREATE TABLE IF NOT EXISTS user_logins (
    id SERIAL PRIMARY KEY,
    username TEXT,
    event_type TEXT,
    event_time TIMESTAMP,
    sent_to_kafka BOOLEAN DEFAULT FALSE
);

DROP TRIGGER IF EXISTS user_logins_outbox_notify ON user_logins;
CREATE TRIGGER user_logins_outbox_notify
    AFTER INSERT ON user_logins
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

SELECT outbox_tune_source('user_logins');
SELECT outbox_protect_pending('user_logins');
