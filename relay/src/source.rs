//! A Postgres outbox table: pending rows are locked in id order, fetched as
//! text columns and written as JSON by the relay (`row_json`), and flagged
//! sent once Kafka committed them.

use flows::SourceTable;
use tokio_postgres::{Client, GenericClient};

use crate::row_json::{self, Field};

/// One pending row, ready to publish.
#[derive(Clone, Debug)]
pub struct OutboxMessage {
    pub id: i64,
    pub key: Option<String>,
    pub payload: String,
}

/// The rows one transaction publishes, in id order.
#[derive(Debug, Default)]
pub struct OutboxBatch {
    pub messages: Vec<OutboxMessage>,
}

impl OutboxBatch {
    pub fn ids(&self) -> Vec<i64> {
        self.messages.iter().map(|m| m.id).collect()
    }
    pub fn len(&self) -> usize {
        self.messages.len()
    }
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }
}

/// A source table whose definition was checked against the live table.
#[derive(Clone, Debug)]
pub struct OutboxSource {
    pub table: String,
    pub topic: String,
    fetch_sql: String,
    mark_sql: String,
    /// The message's fields, in the order `fetch_sql` selects them after
    /// the id and the key.
    fields: Vec<Field>,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("flow `{flow}`: source table {table} does not exist")]
    MissingTable { flow: String, table: String },
    #[error("flow `{flow}`: source table {table} has no column {column}")]
    MissingColumn {
        flow: String,
        table: String,
        column: String,
    },
    #[error("flow `{flow}`: column {table}.{column} must be {expected}, found {found}")]
    WrongType {
        flow: String,
        table: String,
        column: String,
        expected: &'static str,
        found: String,
    },
    #[error("flow `{flow}`: source table {table} has {count} columns, at most 50 are supported")]
    TooManyColumns {
        flow: String,
        table: String,
        count: usize,
    },
    #[error("postgres: {}", connections::pg::detail(.0))]
    Postgres(#[from] tokio_postgres::Error),
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

impl OutboxSource {
    /// Checks `source` against the table in the database and prepares its SQL.
    pub async fn inspect(
        client: &Client,
        flow: &str,
        source: &SourceTable,
    ) -> Result<Self, SourceError> {
        let table = source.table.as_str();
        let rows = client
            .query(
                "SELECT column_name::text, data_type::text FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name = $1",
                &[&table],
            )
            .await?;
        if rows.is_empty() {
            return Err(SourceError::MissingTable {
                flow: flow.into(),
                table: table.into(),
            });
        }
        let columns: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let type_of = |name: &str| {
            columns
                .iter()
                .find(|(c, _)| c == name)
                .map(|(_, t)| t.as_str())
        };
        let expect =
            |column: &str, expected: &'static str, ok: &[&str]| -> Result<(), SourceError> {
                match type_of(column) {
                    None => Err(SourceError::MissingColumn {
                        flow: flow.into(),
                        table: table.into(),
                        column: column.into(),
                    }),
                    Some(found) if !ok.is_empty() && !ok.contains(&found) => {
                        Err(SourceError::WrongType {
                            flow: flow.into(),
                            table: table.into(),
                            column: column.into(),
                            expected,
                            found: found.into(),
                        })
                    }
                    Some(_) => Ok(()),
                }
            };
        expect("id", "an integer", &["integer", "bigint", "smallint"])?;
        expect("sent_to_kafka", "boolean", &["boolean"])?;
        if source.columns.len() > 50 {
            return Err(SourceError::TooManyColumns {
                flow: flow.into(),
                table: table.into(),
                count: source.columns.len(),
            });
        }
        let mut fields = Vec::with_capacity(source.columns.len());
        let mut exprs = Vec::with_capacity(source.columns.len());
        for column in &source.columns {
            expect(column.as_str(), "", &[])?;
            let data_type = type_of(column.as_str()).unwrap_or_default();
            let (expr, kind) =
                row_json::select(&format!("src.{}", column.pg()), data_type, source.times);
            exprs.push(expr);
            fields.push(Field::new(column.as_str(), kind));
        }
        let key = flows::ident::Ident::new(source.key_column())
            .map(|k| k.pg())
            .unwrap_or_else(|_| "\"id\"".into());
        let t = source.table.pg();
        // The partial index on pending ids (migrations) keeps this an index
        // scan however many rows were already sent.
        let fetch_sql = format!(
            "SELECT src.\"id\"::int8 AS outbox_id, (src.{key})::text AS outbox_key, {} FROM {t} AS src \
             WHERE src.sent_to_kafka IS NOT TRUE ORDER BY src.\"id\" LIMIT $1 FOR UPDATE SKIP LOCKED",
            exprs.join(", ")
        );
        let mark_sql =
            format!("UPDATE {t} SET sent_to_kafka = TRUE WHERE \"id\" = ANY($1::int8[])");
        Ok(Self {
            table: table.into(),
            topic: source.topic.clone(),
            fetch_sql,
            mark_sql,
            fields,
        })
    }

    /// Locks up to `limit` pending rows in id order (call inside a
    /// transaction); rows locked by another transaction are skipped.
    pub async fn fetch_pending(
        &self,
        tx: &impl GenericClient,
        limit: u32,
    ) -> Result<OutboxBatch, tokio_postgres::Error> {
        let rows = tx.query(&self.fetch_sql, &[&i64::from(limit)]).await?;
        let mut messages = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut payload = String::with_capacity(64 * self.fields.len());
            let values = (2..row.len()).map(|i| row.get::<_, Option<&str>>(i));
            row_json::write_object(&mut payload, &self.fields, values);
            messages.push(OutboxMessage {
                id: row.get(0),
                key: row.get(1),
                payload,
            });
        }
        Ok(OutboxBatch { messages })
    }

    /// Flags exactly the rows of `batch` sent, in the transaction that
    /// locked them. Called only after Kafka committed them.
    pub async fn mark_sent(
        &self,
        tx: &impl GenericClient,
        batch: &OutboxBatch,
    ) -> Result<u64, tokio_postgres::Error> {
        tx.execute(&self.mark_sql, &[&batch.ids()]).await
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
        client.batch_execute("BEGIN").await?;
        let result = async {
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
            client.execute(&self.mark_sql, &[&ids]).await?;
            Ok::<(), tokio_postgres::Error>(())
        }
        .await;
        match result {
            Ok(()) => client.batch_execute("COMMIT").await,
            Err(e) => {
                let _ = client.batch_execute("ROLLBACK").await;
                Err(e)
            }
        }
    }
}
