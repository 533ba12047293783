-- Rows Kafka refused permanently (e.g. larger than the broker accepts) are
-- set aside here, with the error, instead of blocking their flow; the source
-- row is flagged so the relay moves on. `relay replay` puts them back.
CREATE TABLE IF NOT EXISTS outbox_dead_rows (
    id BIGSERIAL PRIMARY KEY,
    flow TEXT NOT NULL,
    source_table TEXT NOT NULL,
    source_id BIGINT NOT NULL,
    payload TEXT NOT NULL,
    error TEXT NOT NULL,
    set_aside_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (source_table, source_id)
);
