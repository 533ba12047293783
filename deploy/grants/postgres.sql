-- Least privilege in PostgreSQL for the relay and for `sink reconcile`.
-- Run as the owner of the outbox tables, in the outbox database, after the
-- migrations (`relay migrate` as the owner):
--   psql -d outbox -f deploy/grants/postgres.sql
--   psql -d outbox -c "ALTER ROLE outbox_relay PASSWORD 'change-me'"
-- With your own flows, add their source tables to the two GRANT lists.

-- The relay: reads pending rows, locks them (FOR UPDATE needs UPDATE on a
-- column), flips sent_to_kafka, sets aside rows Kafka refuses and replays
-- them (`relay replay`), checks the migrations are applied (`relay migrate`
-- as this role runs no DDL once they are). LISTEN, NOTIFY, advisory locks
-- and `relay status` (pg_locks, its own sessions in pg_stat_activity) need
-- no grant.
CREATE ROLE outbox_relay LOGIN;
DO $$ BEGIN EXECUTE format('GRANT CONNECT ON DATABASE %I TO outbox_relay', current_database()); END $$;
GRANT USAGE ON SCHEMA public TO outbox_relay;
GRANT SELECT, UPDATE (sent_to_kafka)
    ON user_logins, my_table, user_clicks, page_views, orders, sales, warehouse
    TO outbox_relay;
GRANT SELECT ON outbox_schema_migrations TO outbox_relay;
GRANT SELECT, INSERT, DELETE, UPDATE (payload, error, set_aside_at) ON outbox_dead_rows TO outbox_relay;
GRANT USAGE ON SEQUENCE outbox_dead_rows_id_seq TO outbox_relay;
GRANT SELECT, INSERT, UPDATE ON outbox_scan_positions TO outbox_relay;
GRANT SELECT, INSERT, DELETE ON outbox_partition_detaches TO outbox_relay;
GRANT SELECT, DELETE ON outbox_changed_rows TO outbox_relay;
-- Flows with a `retention`: the relay deletes their old sent rows, so also
--   GRANT DELETE ON <source table> TO outbox_relay;
-- Dropping whole time partitions needs the table's owner: without it the
-- relay's prune logs the refusal and deletes those rows one by one; or run
-- `relay prune` as the owner. `relay resend` needs no more than the relay
-- (it sets sent_to_kafka back; the table's outbox_pending_again trigger
-- gives those rows their new outbox_txid).

-- `sink reconcile`: reads which ids are flagged sent, nothing else.
CREATE ROLE outbox_reconcile LOGIN;
DO $$ BEGIN EXECUTE format('GRANT CONNECT ON DATABASE %I TO outbox_reconcile', current_database()); END $$;
GRANT USAGE ON SCHEMA public TO outbox_reconcile;
GRANT SELECT (id, sent_to_kafka)
    ON user_logins, my_table, user_clicks, page_views, orders, sales, warehouse
    TO outbox_reconcile;
