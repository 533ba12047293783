-- The relay reads a source table by transaction-id windows (see
-- relay/src/window.rs): every row carries `outbox_txid`, the id of the
-- transaction that wrote it (or last set it pending again), filled by its
-- default; the relay takes the rows of the transactions that committed
-- between two snapshots, in (outbox_txid, id) order, through an index on
-- those two columns. Whatever order a row's id was taken in (a sequence's
-- cache, ids handed out by the application, `nextval` long before the
-- insert), its transaction is in exactly one window. The index does not name
-- `sent_to_kafka`, so flag flips stay HOT.

-- Set on a row that goes from sent back to pending (`relay resend`, `relay
-- replay`, or by hand): the row joins the window of the transaction that
-- did it.
CREATE OR REPLACE FUNCTION outbox_pending_again() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.outbox_txid := pg_current_xact_id()::text::bigint;
    RETURN NEW;
END;
$$;

-- The guard of pending rows (0007) lets a change of `outbox_txid` alone
-- through: `outbox_tune_source` fills it in on pending rows written before
-- the column existed.
CREATE OR REPLACE FUNCTION outbox_refuse_pending_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF (to_jsonb(OLD) - 'outbox_txid') = (to_jsonb(NEW) - 'outbox_txid') THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'outbox row % of % is pending delivery and cannot be updated', OLD.id, TG_TABLE_NAME
        USING ERRCODE = 'object_not_in_prerequisite_state',
              HINT = 'Outbox rows are immutable until sent: insert a new row with the new values.';
END;
$$;

-- Makes a table a source the relay can read (your own flows' tables too:
-- SELECT outbox_tune_source('my_events')): the `outbox_txid` column, its
-- default and index, the trigger above; and, for HOT flag flips, no index
-- naming `sent_to_kafka` and half of each new page left free. Idempotent.
-- `relay run` refuses a source table without `outbox_txid` and warns about
-- one missing the rest.
CREATE OR REPLACE FUNCTION outbox_tune_source(source regclass) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    flag_index regclass;
    partitioned boolean;
    index_name text;
BEGIN
    FOR flag_index IN
        SELECT i.indexrelid::regclass FROM pg_index i
        WHERE i.indrelid = source AND NOT i.indisprimary
          AND pg_get_indexdef(i.indexrelid) ~ 'sent_to_kafka'
    LOOP
        EXECUTE format('DROP INDEX %s', flag_index);
    END LOOP;
    SELECT relkind = 'p' INTO partitioned FROM pg_class WHERE oid = source;
    IF NOT partitioned THEN
        EXECUTE format('ALTER TABLE %s SET (fillfactor = 50)', source);
    END IF;
    EXECUTE format('ALTER TABLE %s ADD COLUMN IF NOT EXISTS outbox_txid bigint', source);
    EXECUTE format(
        'ALTER TABLE %s ALTER COLUMN outbox_txid SET DEFAULT pg_current_xact_id()::text::bigint',
        source);
    -- Pending rows from before the column: this transaction's.
    EXECUTE format(
        'UPDATE %s SET outbox_txid = pg_current_xact_id()::text::bigint '
        'WHERE outbox_txid IS NULL AND sent_to_kafka IS NOT TRUE',
        source);
    IF NOT EXISTS (
        SELECT 1 FROM pg_index i WHERE i.indrelid = source
          AND pg_get_indexdef(i.indexrelid) ~ '\(outbox_txid, id\)')
    THEN
        SELECT left(relname, 48) || '_outbox_txid' INTO index_name FROM pg_class WHERE oid = source;
        EXECUTE format('CREATE INDEX %I ON %s (outbox_txid, id)', index_name, source);
    END IF;
    EXECUTE format('DROP TRIGGER IF EXISTS outbox_pending_again ON %s', source);
    EXECUTE format(
        'CREATE TRIGGER outbox_pending_again BEFORE UPDATE OF sent_to_kafka ON %s FOR EACH ROW '
        'WHEN (OLD.sent_to_kafka IS TRUE AND NEW.sent_to_kafka IS NOT TRUE) '
        'EXECUTE FUNCTION outbox_pending_again()',
        source);
END;
$$;

-- What `relay run` checks: which parts of the above `source` lacks (none:
-- an empty array). `outbox_txid` missing is fatal, the rest slower or less
-- safe.
CREATE OR REPLACE FUNCTION outbox_source_missing(source regclass) RETURNS text[]
LANGUAGE sql STABLE AS $$
    SELECT array_remove(ARRAY[
        CASE WHEN NOT EXISTS (
            SELECT 1 FROM pg_attribute a WHERE a.attrelid = source AND a.attname = 'outbox_txid'
              AND NOT a.attisdropped AND a.atthasdef)
        THEN 'outbox_txid' END,
        CASE WHEN NOT EXISTS (
            SELECT 1 FROM pg_index i WHERE i.indrelid = source
              AND pg_get_indexdef(i.indexrelid) ~ '\(outbox_txid, id\)')
        THEN 'the (outbox_txid, id) index' END,
        CASE WHEN NOT EXISTS (
            SELECT 1 FROM pg_trigger WHERE tgrelid = source AND tgname = 'outbox_pending_again'
              AND tgenabled <> 'D')
        THEN 'the outbox_pending_again trigger' END,
        CASE WHEN EXISTS (
            SELECT 1 FROM pg_index i WHERE i.indrelid = source
              AND pg_get_indexdef(i.indexrelid) ~ 'sent_to_kafka')
        THEN 'no index on sent_to_kafka' END,
        CASE WHEN NOT EXISTS (
            SELECT 1 FROM pg_class c WHERE c.oid = source AND (c.relkind = 'p' OR EXISTS (
                SELECT 1 FROM pg_options_to_table(c.reloptions) o
                WHERE o.option_name = 'fillfactor' AND o.option_value::int <= 70)))
        THEN 'fillfactor at most 70' END
    ], NULL)
$$;

CREATE OR REPLACE FUNCTION outbox_source_tuned(source regclass) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT cardinality(outbox_source_missing(source)) = 0
$$;

-- Where each scan stands: a snapshot (pg_snapshot text) such that every
-- transaction visible in it had its rows of the table (of the shard)
-- published. Positions by id (the keyset scan's) mean nothing any more.
DELETE FROM outbox_scan_positions;
ALTER TABLE outbox_scan_positions DROP COLUMN IF EXISTS safe_below;
ALTER TABLE outbox_scan_positions ADD COLUMN IF NOT EXISTS published text NOT NULL;

-- Rows set pending again need no list: their new transaction id puts them
-- in a window.
DROP TABLE IF EXISTS outbox_scan_rescans;
