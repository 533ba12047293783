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
    for mapped in target.columns.keys().chain(target.constants.keys()) {
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
        let mapped = target
            .columns
            .iter()
            .find(|(c, _)| c.as_str() == name)
            .map(|(_, f)| f.clone());
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
        table,
        topic: target.topic.clone(),
        columns,
        insert_sql,
    })
}
