//! A Postgres outbox table: pending rows are locked in id order, fetched as
//! text columns and written as JSON by the relay (`row_json`), and flagged
//! sent once Kafka committed them.

use flows::SourceTable;
use tokio_postgres::{Client, GenericClient};

use crate::row_json::{self, Field};
use crate::scan::{Look, Range, Scan};
use crate::shard::Shard;

/// One pending row, ready to publish.
#[derive(Clone, Debug)]
pub struct OutboxMessage {
    pub id: i64,
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

/// The rows one transaction publishes, in id order.
#[derive(Debug, Default)]
pub struct OutboxBatch {
    pub messages: Vec<OutboxMessage>,
    /// Ids of other shards' rows the fetch passed over (a shard's fetch
    /// only): seen, so not holes of this shard's scan.
    pub passed: Vec<i64>,
    /// How many of the first messages came from the scan's holes (see
    /// [`OutboxSource::fetch_in_holes`]); the rest are one id range.
    pub from_holes: usize,
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
    mark_range_sql: String,
    look_sql: String,
    sweep_sql: String,
    by_flag_sql: String,
    last_id_sql: String,
    /// First id, last id and first pending id (a table never relayed).
    extent_sql: String,
    rescans_sql: String,
    hole_candidates_sql: String,
    holes_sql: String,
    /// The message's fields, in the order `fetch_sql` selects them after
    /// the id and the key (and before a shard's passed ids).
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

/// Whether `table` has no index naming the flag and room on its pages for
/// HOT flag flips (`outbox_source_tuned`, migration `0008_keyset_relay`).
pub async fn source_tuned(
    client: &Client,
    table: &flows::ident::Ident,
) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT outbox_source_tuned(to_regclass($1))",
            &[&table.pg()],
        )
        .await?;
    Ok(row.get::<_, Option<bool>>(0).unwrap_or(false))
}

/// The position saved under `key` (`safe_below`, see `scan`; a table's
/// name, or a shard's `Shard::position_key`), if one ever was.
pub async fn saved_position(
    client: &impl GenericClient,
    key: &str,
) -> Result<Option<i64>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT safe_below FROM outbox_scan_positions WHERE source_table = $1",
            &[&key],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// Below it, every row of `table` is settled for a flow split in `shards`:
/// the lowest of its shards' positions when each saved one, else the
/// whole table's position (from before it was split), if any.
pub async fn position_floor(
    client: &impl GenericClient,
    table: &str,
    shards: u16,
) -> Result<Option<i64>, tokio_postgres::Error> {
    let keys: Vec<String> = Shard::all(shards).map(|s| s.position_key(table)).collect();
    let row = client
        .query_one(
            "SELECT count(*), min(safe_below) FROM outbox_scan_positions WHERE source_table = ANY($1)",
            &[&keys],
        )
        .await?;
    if row.get::<_, i64>(0) == keys.len() as i64 {
        return Ok(row.get(1));
    }
    if shards > 1 {
        return saved_position(client, table).await;
    }
    Ok(None)
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

/// `ranges` (lows, highs) as disjoint ranges in ascending order.
fn disjoint(ranges: &(Vec<i64>, Vec<i64>)) -> (Vec<i64>, Vec<i64>) {
    let mut sorted: Vec<(i64, i64)> = ranges
        .0
        .iter()
        .copied()
        .zip(ranges.1.iter().copied())
        .collect();
    sorted.sort_unstable();
    let mut merged: Vec<(i64, i64)> = Vec::with_capacity(sorted.len());
    for (lo, hi) in sorted {
        match merged.last_mut() {
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => merged.push((lo, hi)),
        }
    }
    merged.into_iter().unzip()
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
        let stamp = if commit_times {
            "coalesce(pg_xact_commit_timestamp(src.xmin), statement_timestamp())"
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
        let src_shard = mine("src");
        // A range of the primary key (see `scan`): an index scan however
        // many rows were already sent, with no index on the flag.
        let locking = format!(
            "SELECT src.\"id\"::int8 AS outbox_id, (src.{key})::text AS outbox_key, {} FROM {t} AS src \
             WHERE src.\"id\" > $2::int8 AND src.\"id\" <= $3::int8 AND src.sent_to_kafka IS NOT TRUE{src_shard} \
             ORDER BY src.\"id\" LIMIT $1 FOR UPDATE SKIP LOCKED",
            exprs.join(", ")
        );
        // A shard's fetch also returns the other shards' ids it passed (in
        // the same snapshot), so only ids it did not see become holes.
        let fetch_sql = match shard.others_condition("o", &key) {
            None => locking,
            Some(theirs) => format!(
                "WITH locked AS MATERIALIZED ({locking}) \
                 SELECT locked.*, CASE WHEN locked.outbox_id = (SELECT min(outbox_id) FROM locked) \
                 THEN ARRAY(SELECT o.\"id\"::int8 FROM {t} AS o \
                 WHERE o.\"id\" > $2::int8 AND o.\"id\" <= (SELECT max(outbox_id) FROM locked) \
                 AND {theirs} ORDER BY o.\"id\") END AS outbox_passed \
                 FROM locked ORDER BY outbox_id"
            ),
        };
        let by_flag_sql = format!(
            "SELECT src.\"id\"::int8 AS outbox_id, (src.{key})::text AS outbox_key, {} FROM {t} AS src \
             WHERE src.sent_to_kafka IS NOT TRUE ORDER BY src.\"id\" LIMIT $1 FOR UPDATE SKIP LOCKED",
            exprs.join(", ")
        );
        let mark_sql = format!(
            "UPDATE {t} SET sent_to_kafka = TRUE WHERE \"id\" = ANY($1::int8[]) AND sent_to_kafka IS NOT TRUE"
        );
        let mark_range_sql = format!(
            "UPDATE {t} SET sent_to_kafka = TRUE WHERE \"id\" BETWEEN $1::int8 AND $2::int8 \
             AND sent_to_kafka IS NOT TRUE AND xmax = pg_current_xact_id()::xid"
        );
        // One snapshot for the whole statement: its xmin and what it sees
        // in each hole belong together; the guard is an id assigned during
        // the statement, so above every transaction that wrote before it
        // (see `scan::Look`). Assigning it costs a commit record, so only
        // when a hole needs one ($3).
        let look_sql = format!(
            "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::int8, \
             CASE WHEN $3 THEN pg_current_xact_id()::text::int8 ELSE 0 END, \
             ARRAY(SELECT EXISTS (SELECT 1 FROM {t} AS src WHERE src.\"id\" BETWEEN g.lo AND g.hi \
             AND src.sent_to_kafka IS NOT TRUE{src_shard}) \
             FROM unnest($1::int8[], $2::int8[]) WITH ORDINALITY AS g(lo, hi, n) ORDER BY g.n)"
        );
        let sweep_sql = format!(
            "SELECT src.\"id\"::int8 FROM {t} AS src \
             WHERE src.sent_to_kafka IS NOT TRUE AND src.\"id\" <= $1::int8{src_shard} LIMIT 1000"
        );
        // Committed pending rows in the scan's holes, in two statements:
        // the lowest candidates (a primary-key probe per hole, lateral so
        // the plan is that whatever the estimates — a plain join of the
        // holes with the table was planned as a walk of the whole table,
        // seconds per batch on 1M rows), then those locked in id order.
        // Locking as the rows are taken (not per hole) leaves no row locked
        // and left out of the batch.
        let hole_candidates_sql = format!(
            "SELECT ARRAY(SELECT s.id FROM unnest($2::int8[], $3::int8[]) AS h(lo, hi) CROSS JOIN LATERAL \
             (SELECT src.\"id\"::int8 AS id FROM {t} AS src \
             WHERE src.\"id\" BETWEEN h.lo AND h.hi AND src.sent_to_kafka IS NOT TRUE{src_shard} \
             ORDER BY src.\"id\" LIMIT $1) AS s ORDER BY s.id LIMIT $1)"
        );
        let holes_sql = format!(
            "SELECT src.\"id\"::int8 AS outbox_id, (src.{key})::text AS outbox_key, {} FROM {t} AS src \
             WHERE src.\"id\" = ANY($1::int8[]) AND src.sent_to_kafka IS NOT TRUE \
             ORDER BY src.\"id\"::int8 + 0 FOR UPDATE SKIP LOCKED",
            exprs.join(", ")
        );
        // Rows `relay replay` set pending again, one id each: a shard takes
        // its own (and ids whose row is gone, which then close at once);
        // ranges `relay resend` set pending again, addressed to this scan.
        let mine_of_replayed = shard
            .others_condition("src", &key)
            .map_or_else(String::new, |theirs| {
                format!(
                    " AND NOT EXISTS (SELECT 1 FROM {t} AS src WHERE src.\"id\" = r.id AND {theirs})"
                )
            });
        let rescans_sql = format!(
            "DELETE FROM outbox_scan_rescans r WHERE \
             (r.source_table = $1 AND r.last_id IS NULL{mine_of_replayed}) \
             OR (r.source_table = $2 AND r.last_id IS NOT NULL) \
             RETURNING r.id, coalesce(r.last_id, r.id)"
        );
        Ok(Self {
            table: table.into(),
            topic: source.topic.clone(),
            shard,
            position_key: shard.position_key(table),
            rescans_sql,
            hole_candidates_sql,
            holes_sql,
            fetch_sql,
            mark_sql,
            mark_range_sql,
            look_sql,
            sweep_sql,
            by_flag_sql,
            shape,
            last_id_sql: format!("SELECT max(src.\"id\")::int8 FROM {t} AS src"),
            extent_sql: format!(
                "SELECT min(\"id\")::int8, max(\"id\")::int8, \
                 (SELECT min(src.\"id\")::int8 FROM {t} AS src WHERE src.sent_to_kafka IS NOT TRUE{src_shard}) FROM {t}"
            ),
            fields,
        })
    }

    /// Locks up to `limit` pending rows of `range` in id order (call inside
    /// a transaction); rows locked by another transaction are skipped.
    pub async fn fetch_pending(
        &self,
        tx: &impl GenericClient,
        limit: u32,
        range: Range,
    ) -> Result<OutboxBatch, tokio_postgres::Error> {
        let (after, upto) = range.bounds();
        let rows = tx
            .query(&self.fetch_sql, &[&i64::from(limit), &after, &upto])
            .await?;
        Ok(self.batch_of(&rows))
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
        let passed = match rows.first() {
            // On the first row only (on every row, the array would be
            // copied into each: gigabytes sorted for a 10,000-row batch).
            Some(row) if row.len() > end => row.get::<_, Option<Vec<i64>>>(end).unwrap_or_default(),
            _ => Vec::new(),
        };
        OutboxBatch {
            messages,
            passed,
            from_holes: 0,
        }
    }

    /// The lowest `limit` committed pending rows in `holes` (the scan's
    /// holes below a batch's range, as lows and highs), not locked: called
    /// right after the batch's fetch (keyset or hole), in its transaction,
    /// then locked by [`Self::lock_from_holes`].
    ///
    /// Why: a row that committed before a later row of the same key became
    /// visible is then published with it or before it, never after — the
    /// fetch alone would publish the later row and leave the earlier one
    /// to the next look into the holes. This statement's snapshot is newer
    /// than the fetch's, so it sees every row committed before any row that
    /// fetch saw. As many as `limit` means the holes may hold more: the
    /// range's rows must then wait.
    pub async fn hole_candidates(
        &self,
        tx: &impl GenericClient,
        limit: u32,
        holes: &(Vec<i64>, Vec<i64>),
    ) -> Result<Vec<i64>, tokio_postgres::Error> {
        // Holes may overlap (a rewound range over older holes): probed as
        // they were, a row in two would be locked and published twice.
        let (lo, hi) = disjoint(holes);
        Ok(tx
            .query_one(&self.hole_candidates_sql, &[&i64::from(limit), &lo, &hi])
            .await?
            .get(0))
    }

    /// Locks the `candidates` still pending and unlocked and puts them
    /// before `batch`'s rows.
    pub async fn lock_from_holes(
        &self,
        tx: &impl GenericClient,
        candidates: &[i64],
        batch: &mut OutboxBatch,
    ) -> Result<(), tokio_postgres::Error> {
        if candidates.is_empty() {
            return Ok(());
        }
        let rows = tx.query(&self.holes_sql, &[&candidates]).await?;
        if rows.is_empty() {
            return Ok(());
        }
        let mut found = self.batch_of(&rows);
        found.from_holes = found.messages.len();
        found.messages.append(&mut batch.messages);
        batch.messages = found.messages;
        batch.from_holes += found.from_holes;
        Ok(())
    }

    /// The table's highest id (a primary-key lookup).
    pub async fn last_id(
        &self,
        client: &impl GenericClient,
    ) -> Result<Option<i64>, tokio_postgres::Error> {
        let row = client.query_one(&self.last_id_sql, &[]).await?;
        Ok(row.get(0))
    }

    /// Looks into the scan's holes (outside a transaction).
    pub async fn look(
        &self,
        client: &impl GenericClient,
        holes: &(Vec<i64>, Vec<i64>),
        needs_guard: bool,
    ) -> Result<Look, tokio_postgres::Error> {
        let row = client
            .query_one(&self.look_sql, &[&holes.0, &holes.1, &needs_guard])
            .await?;
        Ok(Look {
            xmin: row.get(0),
            xmax: row.get(1),
            pending: row.get(2),
        })
    }

    /// Pending rows at or below `upto` (a scan of the whole table: see
    /// `scan`, "the sweep").
    pub async fn sweep(
        &self,
        client: &impl GenericClient,
        upto: i64,
    ) -> Result<Vec<i64>, tokio_postgres::Error> {
        let rows = client.query(&self.sweep_sql, &[&upto]).await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Where the active relay starts: after the saved position, or — for a
    /// table it never relayed — after a search for the first pending row.
    pub async fn starting_scan(
        &self,
        client: &impl GenericClient,
    ) -> Result<Scan, tokio_postgres::Error> {
        if let Some(safe_below) = saved_position(client, &self.position_key).await? {
            return Ok(Scan::starting_below(safe_below));
        }
        if !self.shard.is_whole() {
            // Settled for every row is settled for the shard's.
            if let Some(safe_below) = saved_position(client, &self.table).await? {
                return Ok(Scan::starting_below(safe_below));
            }
        }
        let row = client.query_one(&self.extent_sql, &[]).await?;
        let (first, last, pending): (Option<i64>, Option<i64>, Option<i64>) =
            (row.get(0), row.get(1), row.get(2));
        Ok(match (first, last) {
            (Some(_), Some(last)) => Scan::unsettled(pending.map_or(last, |p| p.saturating_sub(1))),
            _ => Scan::starting_below(i64::MIN),
        })
    }

    /// Takes the rows `relay replay` and `relay resend` set pending again
    /// and saves the position with them in it, in one transaction (so they
    /// are never both taken and above a saved position).
    pub async fn take_rescans(
        &self,
        client: &Client,
        flow: &str,
        scan: &std::sync::Mutex<Scan>,
    ) -> Result<usize, tokio_postgres::Error> {
        in_transaction(client, async {
            let rows = client
                .query(&self.rescans_sql, &[&self.table, &self.position_key])
                .await?;
            if rows.is_empty() {
                return Ok(0);
            }
            let ranges: Vec<(i64, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            let position = {
                let mut scan = crate::scan::lock(scan);
                scan.add_strays(&ranges);
                scan.safe_below()
            };
            self.save_position(client, flow, position).await?;
            Ok(ranges.len())
        })
        .await
    }

    /// Saves where the next leader may start (see `scan`).
    pub async fn save_position(
        &self,
        client: &impl GenericClient,
        flow: &str,
        safe_below: i64,
    ) -> Result<(), tokio_postgres::Error> {
        client
            .execute(
                "INSERT INTO outbox_scan_positions (source_table, flow, safe_below) VALUES ($1, $2, $3) \
                 ON CONFLICT (source_table) DO UPDATE \
                 SET flow = EXCLUDED.flow, safe_below = EXCLUDED.safe_below, updated_at = now()",
                &[&self.position_key, &flow, &safe_below],
            )
            .await?;
        Ok(())
    }

    /// Flags exactly the rows of `batch` sent, in the transaction that
    /// locked them. Called only after Kafka committed them.
    ///
    /// One range scan over the batch's ids (those from holes by their ids
    /// first), flipping the rows this
    /// transaction holds locked (`xmax` is its id) — a third cheaper than
    /// probing the key for every id; rows of the range this transaction did
    /// not lock (committed after the fetch, locked by others) are left
    /// alone. When a row's lock was shared meanwhile (a foreign-key check
    /// makes `xmax` a multixact), fewer rows flip and the id list flips the
    /// rest.
    pub async fn mark_sent(
        &self,
        tx: &impl GenericClient,
        batch: &OutboxBatch,
    ) -> Result<u64, tokio_postgres::Error> {
        let (holes, range) = batch.messages.split_at(batch.from_holes.min(batch.len()));
        let mut flipped = 0;
        if !holes.is_empty() {
            let ids: Vec<i64> = holes.iter().map(|m| m.id).collect();
            flipped += tx.execute(&self.mark_sql, &[&ids]).await?;
        }
        let (Some(first), Some(last)) = (range.first(), range.last()) else {
            return Ok(flipped);
        };
        flipped += tx
            .execute(&self.mark_range_sql, &[&first.id, &last.id])
            .await?;
        if flipped == batch.len() as u64 {
            return Ok(flipped);
        }
        Ok(flipped + self.mark_sent_by_ids(tx, batch).await?)
    }

    /// Flags the rows of `batch` by probing the key for each id (what
    /// [`Self::mark_sent`] falls back to, and the statement before it: the
    /// benchmark's reference).
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

#[cfg(test)]
mod tests {
    #[test]
    fn overlapping_holes_are_probed_once() {
        let holes = (vec![10, 1, 4, 20], vec![12, 5, 11, 20]);
        assert_eq!(super::disjoint(&holes), (vec![1, 20], vec![12, 20]));
    }
}
