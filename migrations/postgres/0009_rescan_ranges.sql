-- `relay resend`: a range of ids to look into again (ids id..last_id), set
-- pending again by the command in the same transaction. A single id (the
-- rows `relay replay` puts back) leaves last_id NULL. A range is addressed
-- to one scan: source_table is the table's name for a flow not split, or a
-- shard's `<table>/shard-k-of-N` (one row per shard).
ALTER TABLE outbox_scan_rescans ADD COLUMN IF NOT EXISTS last_id bigint;
