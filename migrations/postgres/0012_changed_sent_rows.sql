-- Rows changed after they were sent (allowed: e.g. a row set aside and
-- fixed before `relay replay`). Published again by `relay resend`, such a
-- row would carry other values than the copy ClickHouse holds, and a target
-- table ordered by a changed column keeps both copies even under FINAL. So
-- the change is noted here, and `relay resend` refuses those rows, naming
-- them (or leaves them out with --skip-changed). `relay replay` clears the
-- note of the rows it puts back (their first delivery is the fixed row).
CREATE TABLE IF NOT EXISTS outbox_changed_rows (
    source_table text NOT NULL,
    source_id bigint NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source_table, source_id)
);

-- Definer's rights: the writer changing the row needs no grant on the
-- notes.
CREATE OR REPLACE FUNCTION outbox_note_sent_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    INSERT INTO outbox_changed_rows (source_table, source_id) VALUES (TG_TABLE_NAME, NEW.id)
    ON CONFLICT (source_table, source_id) DO UPDATE SET changed_at = now();
    RETURN NULL;
END;
$$;

-- The guard of 0007, now with the note: pending rows cannot change, and a
-- change to a sent row is noted.
CREATE OR REPLACE FUNCTION outbox_protect_pending(source regclass) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS outbox_pending_immutable ON %s', source);
    EXECUTE format(
        'CREATE TRIGGER outbox_pending_immutable BEFORE UPDATE ON %s FOR EACH ROW '
        'WHEN (OLD.sent_to_kafka IS NOT TRUE AND NEW.sent_to_kafka IS NOT TRUE '
        'AND OLD.* IS DISTINCT FROM NEW.*) '
        'EXECUTE FUNCTION outbox_refuse_pending_update()',
        source);
    EXECUTE format('DROP TRIGGER IF EXISTS outbox_sent_changed ON %s', source);
    EXECUTE format(
        'CREATE TRIGGER outbox_sent_changed AFTER UPDATE ON %s FOR EACH ROW '
        'WHEN (OLD.sent_to_kafka IS TRUE AND NEW.sent_to_kafka IS TRUE '
        'AND OLD.* IS DISTINCT FROM NEW.*) '
        'EXECUTE FUNCTION outbox_note_sent_change()',
        source);
END;
$$;

-- Tables guarded already get the note too.
SELECT outbox_protect_pending(t.tgrelid::regclass)
FROM pg_trigger t WHERE t.tgname = 'outbox_pending_immutable';
