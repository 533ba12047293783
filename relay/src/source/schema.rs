//! The start-up check of a source table: its definition (a flow's
//! `[[flows.sources]]` entry) against the live table's columns, and the
//! select expressions and message shape that follow from both. A definition
//! that contradicts the table is refused with the flow, table and column
//! named.

use flows::SourceTable;
use tokio_postgres::Client;

use super::message::{RoutePart, Shape};
use crate::row_json::{self, Field};

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
        "flow `{flow}`: source table {table} has no outbox_txid column, which the relay reads it by: run SELECT outbox_tune_source('{table}') as its owner (a flow's own migration does: see README, \"Adding your own flow\")"
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

/// The live table's columns and their types (`information_schema`).
struct LiveColumns<'a> {
    flow: &'a str,
    table: &'a str,
    columns: Vec<(String, String)>,
}

impl<'a> LiveColumns<'a> {
    async fn load(client: &Client, flow: &'a str, table: &'a str) -> Result<Self, SourceError> {
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
        Ok(Self {
            flow,
            table,
            columns: rows.iter().map(|r| (r.get(0), r.get(1))).collect(),
        })
    }

    fn type_of(&self, name: &str) -> Option<&str> {
        self.columns
            .iter()
            .find(|(c, _)| c == name)
            .map(|(_, t)| t.as_str())
    }

    /// `column` exists, and is of one of the types `ok` (any, when empty).
    fn expect(&self, column: &str, expected: &'static str, ok: &[&str]) -> Result<(), SourceError> {
        match self.type_of(column) {
            None => Err(SourceError::MissingColumn {
                flow: self.flow.into(),
                table: self.table.into(),
                column: column.into(),
            }),
            Some(found) if !ok.is_empty() && !ok.contains(&found) => Err(SourceError::WrongType {
                flow: self.flow.into(),
                table: self.table.into(),
                column: column.into(),
                expected,
                found: found.into(),
            }),
            Some(_) => Ok(()),
        }
    }
}

/// What a checked source selects: the object's fields (in select order,
/// after the id and the key) and every select expression (the fields'
/// JSON-ready text, then the extras of [`Shape`], the commit time last).
pub(super) struct Selected {
    pub fields: Vec<Field>,
    pub exprs: Vec<String>,
    pub shape: Shape,
}

/// Checks `source` against the live table and plans what its fetch selects.
pub(super) async fn check(
    client: &Client,
    flow: &str,
    source: &SourceTable,
) -> Result<Selected, SourceError> {
    let live = LiveColumns::load(client, flow, source.table.as_str()).await?;
    live.expect("id", "an integer", &["integer", "bigint", "smallint"])?;
    live.expect("sent_to_kafka", "boolean", &["boolean"])?;
    if source.columns.len() > 50 {
        return Err(SourceError::TooManyColumns {
            flow: flow.into(),
            table: live.table.into(),
            count: source.columns.len(),
        });
    }
    let (fields, mut exprs) = object_fields(&live, source)?;
    // Checked after the flow's own columns: a definition that contradicts
    // the table is the first thing to say.
    if live.type_of("outbox_txid") != Some("bigint") {
        return Err(SourceError::Untuned {
            flow: flow.into(),
            table: live.table.into(),
        });
    }
    let (shape, extras) = shape(&live, flow, source)?;
    exprs.extend(extras.iter().map(|c| format!("(src.{})::text", c.pg())));
    exprs.push(commit_time(client).await?.to_owned());
    Ok(Selected {
        fields,
        exprs,
        shape,
    })
}

/// The object's fields and their select expressions (none for a source
/// whose body is one column: no object to build).
fn object_fields(
    live: &LiveColumns<'_>,
    source: &SourceTable,
) -> Result<(Vec<Field>, Vec<String>), SourceError> {
    let mut fields = Vec::with_capacity(source.columns.len());
    let mut exprs = Vec::with_capacity(source.columns.len());
    for column in &source.columns {
        live.expect(column.as_str(), "", &[])?;
        if source.body.is_some() {
            continue;
        }
        let data_type = live.type_of(column.as_str()).unwrap_or_default();
        let (expr, kind) =
            row_json::select(&format!("src.{}", column.pg()), data_type, source.times);
        exprs.push(expr);
        fields.push(Field::new(column.as_str(), kind));
    }
    Ok((fields, exprs))
}

/// The message's shape besides the object, and its extra columns (selected
/// as text after the object's fields): the body, the route's and the
/// headers' columns.
fn shape(
    live: &LiveColumns<'_>,
    flow: &str,
    source: &SourceTable,
) -> Result<(Shape, Vec<flows::ident::Ident>), SourceError> {
    let mut extras = Vec::new();
    if let Some(body) = &source.body {
        live.expect(
            body.as_str(),
            "json, jsonb or text",
            &["json", "jsonb", "text", "character varying"],
        )?;
        extras.push(body.clone());
    }
    let mut route = Vec::new();
    if source.routed() {
        let parts = source.topic_parts().map_err(|reason| SourceError::Route {
            flow: flow.into(),
            reason,
        })?;
        for part in parts {
            route.push(match part {
                flows::TopicPart::Text(text) => RoutePart::Text(text),
                flows::TopicPart::Column(column) => {
                    extras.push(column);
                    RoutePart::Column(extras.len() - 1)
                }
            });
        }
    }
    let headers_at = extras.len();
    extras.extend(source.headers.iter().cloned());
    let shape = Shape {
        body: source.body.is_some(),
        route,
        headers: source.headers.iter().map(ToString::to_string).collect(),
        headers_at,
        stamp_at: extras.len(),
        extras: extras.len() + 1,
    };
    Ok((shape, extras))
}

/// The message's commit time (the sink's freshness measure), as a
/// timestamptz — numeric epoch arithmetic per row cost as much as the
/// lookup itself: the writer's commit where Postgres keeps commit times
/// (`track_commit_timestamp`; the writer is `outbox_txid`, since the row's
/// `xmin` is the relay's own by the time its fetch returns it), else when
/// the fetch began — at most the wake-up after the commit.
async fn commit_time(client: &Client) -> Result<&'static str, SourceError> {
    let kept: bool = client
        .query_one(
            "SELECT current_setting('track_commit_timestamp') = 'on'",
            &[],
        )
        .await?
        .get(0);
    Ok(if kept {
        "coalesce(pg_xact_commit_timestamp(src.outbox_txid::text::xid8::xid), statement_timestamp())"
    } else {
        "statement_timestamp()"
    })
}
