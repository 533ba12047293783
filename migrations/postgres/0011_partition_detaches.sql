-- A prune detaching a partition to drop it records it here first (see
-- relay/src/prune.rs): a detach cut short (a statement timeout, a crash)
-- leaves the partition detached or pending detach, hidden from the relay;
-- the next prune finds it here, finishes the detach and drops it, or
-- attaches it again when it holds pending rows.
CREATE TABLE IF NOT EXISTS outbox_partition_detaches (
    partition text PRIMARY KEY,
    parent regclass NOT NULL,
    bound text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now()
);
