//! A Postgres outbox table: pending rows are taken window by window (see
//! `window`) and flagged sent by the statement that fetches them as text
//! columns, written as JSON by the relay (`row_json`); the flags become
//! durable when the lane's transaction commits, once Kafka committed them.
//!
//! `schema` checks a source's definition against the live table and plans
//! what its fetch selects; `statements` builds its SQL; `message` is what a
//! row becomes.

mod message;
mod schema;
mod statements;

use flows::SourceTable;
use tokio_postgres::{Client, GenericClient};

pub use message::{OutboxBatch, OutboxMessage};
pub use schema::SourceError;

use crate::row_json::{self, Field};
use crate::shard::Shard;
use crate::window::Bounds;
use message::Shape;
use statements::Statements;

/// A source table whose definition was checked against the live table.
#[derive(Clone, Debug)]
pub struct OutboxSource {
    pub table: String,
    pub topic: String,
    /// The shard of the table this relays (every row: `Shard::WHOLE`).
    pub shard: Shard,
    /// Its row in `outbox_scan_positions`.
    pub position_key: String,
    /// What a message is made of besides the row's object (see [`Shape`]).
    shape: Shape,
    statements: Statements,
    /// The message's fields, in the order the fetch selects them after the
    /// id and the key (and before the extras and `outbox_txid`).
    fields: Vec<Field>,
}

/// Whether `table` refuses updates that leave a pending row pending (the
/// `outbox_pending_immutable` trigger that `outbox_protect_pending` makes).
pub async fn pending_rows_protected(
    client: &Client,
    table: &flows::ident::Ident,
) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass($1) \
             AND tgname = 'outbox_pending_immutable' AND tgenabled <> 'D')",
            &[&table.pg()],
        )
        .await?;
    Ok(row.get(0))
}

/// What `table` lacks of what `outbox_tune_source` gives a source table
/// (`outbox_source_missing`, migration `0010_txid_windows`): nothing, or
/// e.g. "the (outbox_txid, id) index".
pub async fn source_missing(
    client: &Client,
    table: &flows::ident::Ident,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT outbox_source_missing(to_regclass($1))",
            &[&table.pg()],
        )
        .await?;
    Ok(row.get::<_, Option<Vec<String>>>(0).unwrap_or_default())
}

/// Runs `work` (a future not yet polled, on `client`) between BEGIN and
/// COMMIT, rolling back when it fails. For sessions shared by reference
/// (the lanes), where `Client::transaction`'s `&mut` is not at hand.
async fn in_transaction<T>(
    client: &Client,
    work: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, tokio_postgres::Error> {
    client.batch_execute("BEGIN").await?;
    match work.await {
        Ok(done) => {
            client.batch_execute("COMMIT").await?;
            Ok(done)
        }
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

impl OutboxSource {
    /// Checks `source` against the table in the database and prepares its SQL.
    pub async fn inspect(
        client: &Client,
        flow: &str,
        source: &SourceTable,
        shard: Shard,
    ) -> Result<Self, SourceError> {
        let selected = schema::check(client, flow, source).await?;
        let key = flows::ident::Ident::new(source.key_column())
            .map(|k| k.pg())
            .unwrap_or_else(|_| "\"id\"".into());
        let table = source.table.as_str();
        Ok(Self {
            table: table.into(),
            topic: source.topic.clone(),
            shard,
            position_key: shard.position_key(table),
            statements: Statements::build(&source.table.pg(), &key, shard, &selected.exprs),
            shape: selected.shape,
            fields: selected.fields,
        })
    }

    /// Takes up to `limit` pending rows of a window after its cursor and
    /// flags them sent, in the caller's transaction (its commit makes the
    /// flags durable, its rollback undoes them); in (`outbox_txid`, id)
    /// order.
    pub async fn fetch_pending(
        &self,
        tx: &impl GenericClient,
        limit: u32,
        bounds: &Bounds,
    ) -> Result<OutboxBatch, tokio_postgres::Error> {
        let rows = tx
            .query(
                &self.statements.fetch,
                &[
                    &bounds.after.0,
                    &bounds.after.1,
                    &bounds.below,
                    &bounds.from,
                    &bounds.late,
                    &bounds.running,
                    &i64::from(limit),
                ],
            )
            .await?;
        let mut batch = self.batch_of(&rows);
        batch.messages.sort_unstable_by_key(|m| (m.txid, m.id));
        Ok(batch)
    }

    /// The pending-id-index design's statement: pending rows through an
    /// index on the flag. Kept as the benchmark's reference (its old-SQL
    /// row).
    pub async fn fetch_pending_by_flag(
        &self,
        tx: &impl GenericClient,
        limit: u32,
    ) -> Result<OutboxBatch, tokio_postgres::Error> {
        let rows = tx
            .query(&self.statements.by_flag, &[&i64::from(limit)])
            .await?;
        Ok(self.batch_of(&rows))
    }

    fn batch_of(&self, rows: &[tokio_postgres::Row]) -> OutboxBatch {
        let mut messages = Vec::with_capacity(rows.len());
        let extras = 2 + self.fields.len();
        let end = extras + self.shape.extras;
        for row in rows {
            let extra = |i: usize| row.get::<_, Option<&str>>(extras + i);
            let payload = if self.shape.body {
                extra(0).unwrap_or("null").to_owned()
            } else {
                let mut payload = String::with_capacity(64 * self.fields.len());
                let values = (2..extras).map(|i| row.get::<_, Option<&str>>(i));
                row_json::write_object(&mut payload, &self.fields, values);
                payload
            };
            let topic = (!self.shape.route.is_empty()).then(|| self.shape.topic(&extra));
            let headers = self
                .shape
                .headers
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    (
                        name.clone(),
                        extra(self.shape.headers_at + i).map(str::to_owned),
                    )
                })
                .collect();
            messages.push(OutboxMessage {
                id: row.get(0),
                txid: row.get::<_, Option<i64>>(end).unwrap_or_default(),
                key: row.get(1),
                payload,
                topic,
                headers,
                stamp: row
                    .get::<_, Option<std::time::SystemTime>>(extras + self.shape.stamp_at)
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_millis() as i64),
            });
        }
        OutboxBatch { messages }
    }

    /// Flags the rows of `batch` by probing the key for each id: the
    /// statement of the pending-id-index design, kept with
    /// [`Self::fetch_pending_by_flag`] as the benchmark's reference.
    pub async fn mark_sent_by_ids(
        &self,
        tx: &impl GenericClient,
        batch: &OutboxBatch,
    ) -> Result<u64, tokio_postgres::Error> {
        tx.execute(&self.statements.mark, &[&batch.ids()]).await
    }

    /// Moves rows Kafka refused for good to `outbox_dead_rows` with their
    /// payload and error, and flags them so the flow moves on. One
    /// transaction.
    pub async fn set_aside(
        &self,
        client: &Client,
        flow: &str,
        rows: &[(i64, &str, &str)],
    ) -> Result<(), tokio_postgres::Error> {
        in_transaction(client, async {
            for (id, payload, error) in rows {
                client
                    .execute(
                        "INSERT INTO outbox_dead_rows (flow, source_table, source_id, payload, error) VALUES ($1, $2, $3, $4, $5)
                         ON CONFLICT (source_table, source_id) DO UPDATE
                         SET payload = EXCLUDED.payload, error = EXCLUDED.error, set_aside_at = now()",
                        &[&flow, &self.table, id, payload, error],
                    )
                    .await?;
            }
            let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
            client.execute(&self.statements.mark, &[&ids]).await?;
            Ok(())
        })
        .await
    }
}
