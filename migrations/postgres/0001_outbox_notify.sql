-- Wakes the relay as soon as rows are inserted into an outbox table: one
-- NOTIFY per inserting statement (a row-level trigger would double bulk-insert
-- time), carrying the table name. Polling remains the safety net.
CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox_relay', TG_TABLE_NAME);
    RETURN NULL;
END;
$$;
