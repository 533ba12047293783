//! Plans how a flow's target table is filled: the live table's columns (from
//! `system.columns`) matched with the flow definition. A definition that
//! contradicts the table is refused with the flow, table and column named.

use clickhouse::Client;
use flows::TargetTable;

use super::encode::ColumnPlan;
use super::types::ChType;

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("flow `{flow}`: ClickHouse table {table} does not exist (run `sink migrate`)")]
    MissingTable { flow: String, table: String },
    #[error("flow `{flow}`: ClickHouse table {table} has no column {column}")]
    MissingColumn {
        flow: String,
        table: String,
        column: String,
    },
    #[error("flow `{flow}`: column {table}.{column}: {reason}")]
    BadColumn {
        flow: String,
        table: String,
        column: String,
        reason: String,
    },
    #[error(
        "flow `{flow}`: ClickHouse column {table}.{column} needs message field `{field}`, which the flow's source does not carry"
    )]
    MissingField {
        flow: String,
        table: String,
        column: String,
        field: String,
    },
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
}

/// The insert plan of one target table.
#[derive(Clone, Debug)]
pub struct TablePlan {
    pub table: String,
    pub topic: String,
    pub columns: Vec<ColumnPlan>,
    /// `INSERT INTO t (cols) FORMAT RowBinary`, identifiers quoted.
    pub insert_sql: String,
    /// Kafka headers some column is filled from (their values join the
    /// message's fields as [`header_field`]).
    pub headers: Vec<String>,
}

/// The message field a header's value is decoded into: a name no JSON body
/// field can collide with.
pub fn header_field(header: &str) -> String {
    format!("\u{1}header:{header}")
}

/// `fields`: the message fields the topic is known to carry (the columns of
/// the flow's source table for it), if known; a target column needing any
/// other field contradicts the flow.
pub async fn plan_table(
    client: &Client,
    database: &str,
    flow: &str,
    target: &TargetTable,
    fields: Option<&[String]>,
) -> Result<TablePlan, SchemaError> {
    let rows: Vec<(String, String, String)> = client
        .query(
            "SELECT name, type, default_kind FROM system.columns WHERE database = ? AND table = ?",
        )
        .bind(database)
        .bind(target.table.as_str())
        .fetch_all()
        .await?;
    let table = target.table.to_string();
    if rows.is_empty() {
        return Err(SchemaError::MissingTable {
            flow: flow.into(),
            table,
        });
    }
    for mapped in target
        .columns
        .keys()
        .chain(target.constants.keys())
        .chain(target.headers.keys())
    {
        if !rows.iter().any(|(name, _, _)| name == mapped.as_str()) {
            return Err(SchemaError::MissingColumn {
                flow: flow.into(),
                table,
                column: mapped.to_string(),
            });
        }
    }
    let mut columns = Vec::new();
    for (name, type_name, default_kind) in rows {
        let header = target
            .headers
            .iter()
            .find(|(c, _)| c.as_str() == name)
            .map(|(_, h)| h.clone());
        let mapped = target
            .columns
            .iter()
            .find(|(c, _)| c.as_str() == name)
            .map(|(_, f)| f.clone())
            .or_else(|| header.as_deref().map(header_field));
        let constant = target
            .constants
            .iter()
            .find(|(c, _)| c.as_str() == name)
            .map(|(_, v)| serde_json::Value::String(v.clone()));
        // Columns with DEFAULT/MATERIALIZED/ALIAS are left to the server
        // unless the flow maps them explicitly.
        let field = match mapped {
            Some(field) => field,
            None if constant.is_some() => String::new(),
            None if !default_kind.is_empty() => continue,
            None => name.clone(),
        };
        if constant.is_none()
            && header.is_none()
            && let Some(known) = fields
            && !known.iter().any(|f| f == &field)
        {
            return Err(SchemaError::MissingField {
                flow: flow.into(),
                table,
                column: name,
                field,
            });
        }
        let ty = ChType::parse(&type_name).map_err(|e| SchemaError::BadColumn {
            flow: flow.into(),
            table: table.clone(),
            column: name.clone(),
            reason: e.to_string(),
        })?;
        columns.push(ColumnPlan {
            column: name,
            field,
            ty,
            constant,
        });
    }
    let names: Vec<String> = columns
        .iter()
        .map(|c| format!("`{}`", c.column.replace('`', "\\`")))
        .collect();
    let insert_sql = format!(
        "INSERT INTO {} ({}) FORMAT RowBinary",
        target.table.ch(),
        names.join(", ")
    );
    Ok(TablePlan {
        headers: target.headers.values().cloned().collect(),
        table,
        topic: target.topic.clone(),
        columns,
        insert_sql,
    })
}

/// What a target table's change since its plan means to the sink (see
/// [`judge`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Same,
    /// Loses nothing: columns added that old messages can leave NULL,
    /// types widened. The new plan is used from the next batch.
    Adopt(Vec<String>),
    /// Would lose data or dead-letter messages: the old plan stays and the
    /// flow is not ready, with this reason.
    Refuse(String),
}

/// Compares the plan a sink loads with (`old`) against the table as it is
/// now (`new`, planned without a field list): a column the sink fills that
/// is gone or narrowed loses data; a new column messages may lack must be
/// Nullable (old messages carry no such field).
pub fn judge(old: &TablePlan, new: &TablePlan) -> Change {
    let mut adopted = Vec::new();
    for was in &old.columns {
        match new.columns.iter().find(|c| c.column == was.column) {
            None => {
                let what = match &was.constant {
                    Some(_) => "a constant".to_owned(),
                    None => format!("message field `{}`", was.field),
                };
                return Change::Refuse(format!(
                    "column {}.{} was dropped while the sink fills it from {what}: restore it, or restart the sink to load without it",
                    old.table, was.column
                ));
            }
            Some(now) if now.ty == was.ty => {}
            Some(now) if widens(&was.ty, &now.ty) => {
                adopted.push(format!(
                    "{} widened from {} to {}",
                    was.column, was.ty, now.ty
                ));
            }
            Some(now) => {
                return Change::Refuse(format!(
                    "column {}.{} changed from {} to {}, which not every value fits: change it back or to a wider type, or restart the sink to accept it",
                    old.table, was.column, was.ty, now.ty
                ));
            }
        }
    }
    for added in new
        .columns
        .iter()
        .filter(|c| !old.columns.iter().any(|o| o.column == c.column))
    {
        if added.constant.is_none() && !matches!(added.ty, ChType::Nullable(_)) {
            return Change::Refuse(format!(
                "column {}.{} was added as {} without a DEFAULT: messages published before it lack field `{}` and would be dead-lettered; add it as Nullable({}) or with a DEFAULT",
                old.table, added.column, added.ty, added.field, added.ty
            ));
        }
        adopted.push(format!(
            "{} added ({}), from field `{}`",
            added.column, added.ty, added.field
        ));
    }
    if adopted.is_empty() {
        Change::Same
    } else {
        Change::Adopt(adopted)
    }
}

/// Whether every value of `from` fits `to` unchanged.
fn widens(from: &ChType, to: &ChType) -> bool {
    use ChType::*;
    let bits = |t: &ChType| match t {
        UInt8 | Int8 => Some(8),
        UInt16 | Int16 => Some(16),
        UInt32 | Int32 => Some(32),
        UInt64 | Int64 => Some(64),
        _ => None,
    };
    let unsigned = |t: &ChType| matches!(t, UInt8 | UInt16 | UInt32 | UInt64);
    match (from, to) {
        (a, b) if a == b => true,
        (Nullable(a), Nullable(b)) => widens(a, b),
        (a, Nullable(b)) => widens(a, b),
        (Float32, Float64) | (FixedString(_), String) | (DateTime, DateTime64(_)) => true,
        (Decimal { bytes: a, scale: s }, Decimal { bytes: b, scale: t }) => b >= a && t == s,
        (a, b) => match (bits(a), bits(b)) {
            (Some(x), Some(y)) => match (unsigned(a), unsigned(b)) {
                (true, true) | (false, false) => y >= x,
                (true, false) => y > x,
                (false, true) => false,
            },
            _ => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(columns: &[(&str, &str)]) -> TablePlan {
        TablePlan {
            table: "t".into(),
            topic: "topic".into(),
            columns: columns
                .iter()
                .map(|(c, ty)| ColumnPlan {
                    column: (*c).into(),
                    field: (*c).into(),
                    ty: ChType::parse(ty).unwrap_or(ChType::String),
                    constant: None,
                })
                .collect(),
            insert_sql: String::new(),
            headers: Vec::new(),
        }
    }

    #[test]
    fn a_nullable_column_added_or_a_type_widened_is_adopted() {
        let old = plan(&[("id", "UInt64"), ("n", "Int32")]);
        assert_eq!(judge(&old, &old.clone()), Change::Same);
        let added = plan(&[
            ("id", "UInt64"),
            ("n", "Int32"),
            ("device", "Nullable(String)"),
        ]);
        assert!(matches!(judge(&old, &added), Change::Adopt(a) if a[0].contains("device added")));
        for wider in ["Int64", "Nullable(Int32)", "Nullable(Int64)"] {
            let widened = plan(&[("id", "UInt64"), ("n", wider)]);
            assert!(matches!(judge(&old, &widened), Change::Adopt(_)), "{wider}");
        }
    }

    #[test]
    fn a_dropped_or_narrowed_column_or_a_required_new_one_is_refused() {
        let old = plan(&[("id", "UInt64"), ("n", "Int32"), ("s", "Nullable(String)")]);
        let dropped = plan(&[("id", "UInt64"), ("s", "Nullable(String)")]);
        assert!(
            matches!(judge(&old, &dropped), Change::Refuse(r) if r.contains("t.n was dropped"))
        );
        for narrower in [("n", "Int16"), ("n", "UInt32"), ("s", "String")] {
            let mut cols = vec![("id", "UInt64"), ("n", "Int32"), ("s", "Nullable(String)")];
            cols.retain(|(c, _)| *c != narrower.0);
            cols.push(narrower);
            let changed = plan(&cols);
            assert!(
                matches!(judge(&old, &changed), Change::Refuse(r) if r.contains("changed from")),
                "{narrower:?}"
            );
        }
        let required = plan(&[
            ("id", "UInt64"),
            ("n", "Int32"),
            ("s", "Nullable(String)"),
            ("x", "String"),
        ]);
        assert!(
            matches!(judge(&old, &required), Change::Refuse(r) if r.contains("Nullable(String) or with a DEFAULT"))
        );
    }
}
