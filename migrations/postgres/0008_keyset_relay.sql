-- The relay finds pending rows by walking the primary key from where it
-- stopped (its position, kept here), not through an index on the flag, so
-- flipping `sent_to_kafka` is a HOT update: no new index entries, the new
-- row version on the same page (see README, "Source tables").

-- Below `safe_below`, every row of the table was seen sent and every
-- transaction that could still add a pending row there had ended. Written
-- by the active relay once per turn; one row per source table (a table
-- feeds one flow).
CREATE TABLE IF NOT EXISTS outbox_scan_positions (
    source_table text PRIMARY KEY,
    flow text NOT NULL,
    safe_below bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Rows set pending again behind the relay's position (`relay replay`): the
-- active relay takes them from here within a second, and its position
-- stays below them until they are sent.
CREATE TABLE IF NOT EXISTS outbox_scan_rescans (
    source_table text NOT NULL,
    id bigint NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source_table, id)
);

-- Makes a source table's flag flips HOT: drops every index whose columns
-- or predicate name `sent_to_kafka` (the old pending-id index) and leaves
-- half of each new page free for the flipped row versions. Existing pages
-- keep their fill until rewritten (VACUUM FULL or CLUSTER, when convenient).
-- Your own flows' tables: SELECT outbox_tune_source('my_events');
-- `relay run` warns about a source table that is not tuned.
CREATE OR REPLACE FUNCTION outbox_tune_source(source regclass) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    flag_index regclass;
BEGIN
    FOR flag_index IN
        SELECT i.indexrelid::regclass FROM pg_index i
        WHERE i.indrelid = source AND NOT i.indisprimary
          AND pg_get_indexdef(i.indexrelid) ~ 'sent_to_kafka'
    LOOP
        EXECUTE format('DROP INDEX %s', flag_index);
    END LOOP;
    EXECUTE format('ALTER TABLE %s SET (fillfactor = 50)', source);
END;
$$;

-- Whether a source table is tuned as above (what `relay run` checks).
CREATE OR REPLACE FUNCTION outbox_source_tuned(source regclass) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT NOT EXISTS (
        SELECT 1 FROM pg_index i
        WHERE i.indrelid = source AND pg_get_indexdef(i.indexrelid) ~ 'sent_to_kafka')
    AND EXISTS (
        SELECT 1 FROM pg_class c, pg_options_to_table(c.reloptions) o
        WHERE c.oid = source AND o.option_name = 'fillfactor' AND o.option_value::int <= 70)
$$;
