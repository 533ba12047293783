-- Least privilege in ClickHouse for the sink (servers with SQL access
-- control, 20.5 and later: the compose image). Run as an admin after
-- `sink migrate` (as the admin):
--   clickhouse-client --multiquery < deploy/grants/clickhouse.sql
-- then give the sink CLICKHOUSE_USER=outbox_sink and its password.
-- The sink reads its tables' columns (system.columns, filtered to what it
-- may see), inserts batches and reads back for `sink status`, `sink
-- reconcile` and `sink dashboard`; `sink migrate` as this user runs no DDL
-- once the migrations are applied.
CREATE USER IF NOT EXISTS outbox_sink IDENTIFIED WITH sha256_password BY 'change-me';
GRANT SELECT, INSERT ON outbox.* TO outbox_sink;
