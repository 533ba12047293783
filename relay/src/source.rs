//! A Postgres outbox table: pending rows are taken window by window (see
//! `window`) and flagged sent by the statement that fetches them as text
//! columns, written as JSON by the relay (`row_json`); the flags become
//! durable when the lane's transaction commits, once Kafka committed them.

use flows::SourceTable;
use tokio_postgres::{Client, GenericClient};

use crate::row_json::{self, Field};
use crate::shard::Shard;
use crate::window::Bounds;

/// One pending row, ready to publish.
#[derive(Clone, Debug)]
pub struct OutboxMessage {
    pub id: i64,
    /// The transaction that wrote it (`outbox_txid`, see `window`).
    pub txid: i64,
    pub key: Option<String>,
    pub payload: String,
    /// The topic chosen from the row's columns (a routed source), or why
    /// none could be: the row is then set aside. `None`: the source's topic.
    pub topic: Option<Result<String, String>>,
    /// Columns sent as headers: (name, text value).
    pub headers: Vec<(String, Option<String>)>,
    /// The record's timestamp, Unix ms: the row's commit time, or when the
    /// relay read it (see `OutboxSource::inspect`).
    pub stamp: Option<i64>,
}

/// The rows one transaction publishes, in (`outbox_txid`, id) order.
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
    /// The last row's (`outbox_txid`, id): where the window's cursor stands
    /// once it is locked.
    pub fn end(&self) -> Option<(i64, i64)> {
        self.messages.last().map(|m| (m.txid, m.id))
    }
    /// The ids as runs, `1-5,9,12-14` (in batch order): for debug logs.
    pub fn id_runs(&self) -> String {
        let mut runs: Vec<(i64, i64)> = Vec::new();
        for id in self.messages.iter().map(|m| m.id) {
            match runs.last_mut() {
                Some((_, hi)) if *hi + 1 == id => *hi = id,
                _ => runs.push((id, id)),
            }
        }
        runs.iter()
            .map(|&(lo, hi)| {
                if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo}-{hi}")
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A piece of a routed source's topic: text, or the value of the select's
/// extra column at this index.
#[derive(Clone, Debug)]
enum RoutePart {
    Text(String),
    Column(usize),
}

/// How a source's messages are made besides the row's object: its body
/// from one column, its topic from columns, headers from columns. Their
/// values are extra text columns after the object's fields.
#[derive(Clone, Debug, Default)]
struct Shape {
    /// The body is extra column 0.
    body: bool,
    route: Vec<RoutePart>,
    headers: Vec<String>,
    /// Extra column of the first header.
    headers_at: usize,
    /// Extra column of the message's timestamp (Unix ms).
    stamp_at: usize,
    extras: usize,
}

impl Shape {
    /// The row's topic, or why it has none: a NULL or a value outside the
    /// topic alphabet (letters, digits, `.`, `_`, `-`) in a routed column.
    fn topic<'a>(&self, extra: &impl Fn(usize) -> Option<&'a str>) -> Result<String, String> {
        let mut topic = String::new();
        for part in &self.route {
            match part {
                RoutePart::Text(text) => topic.push_str(text),
                RoutePart::Column(i) => {
                    let value = extra(*i).ok_or("the topic column is NULL")?;
                    if value.is_empty()
                        || !value
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
                    {
                        return Err(format!(
                            "`{value}` makes no topic name (letters, digits, `.`, `_`, `-` only)"
                        ));
                    }
                    topic.push_str(value);
                }
            }
        }
        if topic.len() > 249 {
            return Err(format!("topic `{topic}` is longer than 249 characters"));
        }
        Ok(topic)
    }
}

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
    fetch_sql: String,
    mark_sql: String,
    by_flag_sql: String,
    /// The message's fields, in the order `fetch_sql` selects them after
    /// the id and the key (and before the extras and `outbox_txid`).
    fields: Vec<Field>,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("flow `{flow}`: {reason}")]
    Route { flow: String, reason: String },
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
    #[error(
        "flow `{flow}`: source table {table} has no outbox_txid column, which the relay reads it by: run SELECT outbox_tune_source('{table}') as its owner (relay migrate does it for the built-in flows)"
    )]
    Untuned { flow: String, table: String },
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
            if source.body.is_some() {
                // The body is one column's value: no object to build.
                continue;
            }
            let data_type = type_of(column.as_str()).unwrap_or_default();
            let (expr, kind) =
                row_json::select(&format!("src.{}", column.pg()), data_type, source.times);
            exprs.push(expr);
            fields.push(Field::new(column.as_str(), kind));
        }
        // Checked after the flow's own columns: a definition that
        // contradicts the table is the first thing to say.
        if type_of("outbox_txid") != Some("bigint") {
            return Err(SourceError::Untuned {
                flow: flow.into(),
                table: table.into(),
            });
        }
        // After the object's fields: the body, the route's and the headers'
        // columns, as text.
        let mut extras = Vec::new();
        if let Some(body) = &source.body {
            expect(
                body.as_str(),
                "json, jsonb or text",
                &["json", "jsonb", "text", "character varying"],
            )?;
            extras.push(body.clone());
        }
        let route = if source.routed() {
            let parts = source.topic_parts().map_err(|reason| SourceError::Route {
                flow: flow.into(),
                reason,
            })?;
            parts
                .into_iter()
                .map(|part| match part {
                    flows::TopicPart::Text(text) => RoutePart::Text(text),
                    flows::TopicPart::Column(column) => {
                        extras.push(column);
                        RoutePart::Column(extras.len() - 1)
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        let headers_at = extras.len();
        extras.extend(source.headers.iter().cloned());
        exprs.extend(extras.iter().map(|c| format!("(src.{})::text", c.pg())));
        // The message's timestamp (the sink's freshness measure): the row's
        // commit time where Postgres keeps it (`track_commit_timestamp`),
        // else when this fetch began — at most the wake-up after the commit.
        let commit_times: bool = client
            .query_one(
                "SELECT current_setting('track_commit_timestamp') = 'on'",
                &[],
            )
            .await?
            .get(0);
        // The writer's transaction is `outbox_txid` (the row's `xmin` is
        // the relay's own by the time the fetch returns it, see below).
        let stamp = if commit_times {
            "coalesce(pg_xact_commit_timestamp(src.outbox_txid::text::xid8::xid), statement_timestamp())"
        } else {
            "statement_timestamp()"
        };
        // As a timestamptz, not text: numeric epoch arithmetic per row cost
        // as much as the commit-time lookup itself.
        exprs.push(stamp.to_owned());
        let shape = Shape {
            body: source.body.is_some(),
            route,
            headers: source.headers.iter().map(ToString::to_string).collect(),
            headers_at,
            stamp_at: extras.len(),
            extras: extras.len() + 1,
        };
        let key = flows::ident::Ident::new(source.key_column())
            .map(|k| k.pg())
            .unwrap_or_else(|_| "\"id\"".into());
        let t = source.table.pg();
        let mine = |alias: &str| {
            shard
                .condition(alias, &key)
                .map_or_else(String::new, |c| format!(" AND {c}"))
        };
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
        // order: `batch_of` sorts.
        let wmine = mine("w");
        let fetch_sql = format!(
            "UPDATE {t} AS src SET sent_to_kafka = TRUE WHERE src.ctid = ANY(ARRAY( \
             SELECT w.ctid FROM {t} AS w \
             WHERE (w.outbox_txid, w.\"id\") > ($1::int8, $2::int8) AND w.outbox_txid < $3::int8 \
             AND (w.outbox_txid >= $4::int8 OR w.outbox_txid = ANY($5::int8[])) \
             AND w.outbox_txid <> ALL($6::int8[]) AND w.sent_to_kafka IS NOT TRUE{wmine} \
             ORDER BY w.outbox_txid, w.\"id\" LIMIT $7)) AND src.sent_to_kafka IS NOT TRUE \
             RETURNING {columns}, src.outbox_txid"
        );
        let by_flag_sql = format!(
            "SELECT {columns}, src.outbox_txid FROM {t} AS src \
             WHERE src.sent_to_kafka IS NOT TRUE ORDER BY src.\"id\" LIMIT $1 FOR UPDATE SKIP LOCKED"
        );
        let mark_sql = format!(
            "UPDATE {t} SET sent_to_kafka = TRUE WHERE \"id\" = ANY($1::int8[]) AND sent_to_kafka IS NOT TRUE"
        );
        Ok(Self {
            table: table.into(),
            topic: source.topic.clone(),
            shard,
            position_key: shard.position_key(table),
            fetch_sql,
            mark_sql,
            by_flag_sql,
            shape,
            fields,
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
                &self.fetch_sql,
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

    /// The statement before the keyset scan: pending rows through an index
    /// on the flag. Kept as the benchmark's reference (its old-SQL row).
    pub async fn fetch_pending_by_flag(
        &self,
        tx: &impl GenericClient,
        limit: u32,
    ) -> Result<OutboxBatch, tokio_postgres::Error> {
        let rows = tx.query(&self.by_flag_sql, &[&i64::from(limit)]).await?;
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
            client.execute(&self.mark_sql, &[&ids]).await?;
            Ok(())
        })
        .await
    }
}
