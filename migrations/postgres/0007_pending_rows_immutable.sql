-- An outbox row is an event: until it is delivered it must not change. A
-- batch can reach Kafka twice (a crash between the Kafka and Postgres
-- commits); if the row changed in between, the second copy carries new
-- values, and a ClickHouse table ordered by a changed column (an event
-- time, say) would keep both copies even under FINAL. So an UPDATE that changes a pending row and leaves it
-- pending is refused. Flagging (the relay), setting aside, replaying a sent
-- row, changing a row already sent and an update that changes nothing stay
-- allowed. The WHEN clause is all the relay's flag updates evaluate (its
-- first test ends it; no function call per row).
CREATE OR REPLACE FUNCTION outbox_refuse_pending_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'outbox row % of % is pending delivery and cannot be updated', OLD.id, TG_TABLE_NAME
        USING ERRCODE = 'object_not_in_prerequisite_state',
              HINT = 'Outbox rows are immutable until sent: insert a new row with the new values.';
END;
$$;

-- Installs the guard on a source table (your own flows' tables too:
-- SELECT outbox_protect_pending('my_events')). `relay run` warns about a
-- source table without it.
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
END;
$$;
