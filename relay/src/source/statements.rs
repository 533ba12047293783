//! The SQL of one source table (of one shard of it), built once at start-up.

use crate::shard::Shard;

/// A source's statements, with identifiers quoted.
#[derive(Clone, Debug)]
pub(super) struct Statements {
    /// Takes a window's next rows and flags them sent (see [`Statements::build`]).
    pub fetch: String,
    /// Flags rows by id (setting rows aside; the benchmark's reference).
    pub mark: String,
    /// The pending-id-index design's fetch: the benchmark's reference.
    pub by_flag: String,
}

impl Statements {
    /// `table` and `key` quoted; `exprs` what the fetch selects after the
    /// id and the key (see `schema::Selected`).
    pub fn build(table: &str, key: &str, shard: Shard, exprs: &[String]) -> Self {
        let t = table;
        let mine = shard
            .condition("w", key)
            .map_or_else(String::new, |c| format!(" AND {c}"));
        let columns = format!(
            "src.\"id\"::int8 AS outbox_id, (src.{key})::text AS outbox_key, {}",
            exprs.join(", ")
        );
        // One window's next rows (see `window` and `window::Bounds`), taken
        // and flagged sent by one statement: the lowest rows of the window
        // in (outbox_txid, id) order, found through that index, updated by
        // their tuple ids. One write per row (the update locks the row it
        // flips); the flips become durable only when the lane's
        // transaction commits, after Kafka's commit (see `pipeline`), and
        // vanish with a rollback. A row locked by another session (a
        // writer's delete in progress) is waited for, not skipped: a row
        // skipped here would not be looked for again. RETURNING gives no
        // order: the caller sorts.
        let fetch = format!(
            "UPDATE {t} AS src SET sent_to_kafka = TRUE WHERE src.ctid = ANY(ARRAY( \
             SELECT w.ctid FROM {t} AS w \
             WHERE (w.outbox_txid, w.\"id\") > ($1::int8, $2::int8) AND w.outbox_txid < $3::int8 \
             AND (w.outbox_txid >= $4::int8 OR w.outbox_txid = ANY($5::int8[])) \
             AND w.outbox_txid <> ALL($6::int8[]) AND w.sent_to_kafka IS NOT TRUE{mine} \
             ORDER BY w.outbox_txid, w.\"id\" LIMIT $7)) AND src.sent_to_kafka IS NOT TRUE \
             RETURNING {columns}, src.outbox_txid"
        );
        let by_flag = format!(
            "SELECT {columns}, src.outbox_txid FROM {t} AS src \
             WHERE src.sent_to_kafka IS NOT TRUE ORDER BY src.\"id\" LIMIT $1 FOR UPDATE SKIP LOCKED"
        );
        let mark = format!(
            "UPDATE {t} SET sent_to_kafka = TRUE WHERE \"id\" = ANY($1::int8[]) AND sent_to_kafka IS NOT TRUE"
        );
        Self {
            fetch,
            mark,
            by_flag,
        }
    }
}
