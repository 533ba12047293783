//! Plans how a flow's target table is filled: the live table's columns (from
//! `system.columns`) matched with the flow definition. A definition that
//! contradicts the table is refused with the flow, table and column named.
//! A table changed since it was planned is judged here too: per batch
//! ([`fit`]: can rows encoded for the old types go in?) and for the plan
//! the sink loads with ([`judge`]: adopt the change or refuse it).

use bytes::{BufMut, Bytes, BytesMut};
use clickhouse::Client;
use flows::TargetTable;

use super::encode::{ColumnPlan, put_varint};
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
    /// The table is not what `CLICKHOUSE_CLUSTER` (set or not) expects.
    #[error("flow `{flow}`: ClickHouse table {table}: {reason}")]
    Cluster {
        flow: String,
        table: String,
        reason: String,
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
    /// `INSERT INTO t (cols)`, identifiers quoted; the writer adds the
    /// format.
    pub insert_into: String,
    /// The `RowBinaryWithNamesAndTypes` header of `columns`: their count,
    /// names and server type names, sent before the rows where the server
    /// checks them (`caps::insert_checks_types`).
    pub types_header: Bytes,
    /// Kafka headers some column is filled from (their values join the
    /// message's fields as [`header_field`]).
    pub headers: Vec<String>,
}

impl TablePlan {
    /// `sql_table`: the table's name as SQL (quoted).
    pub fn new(
        table: String,
        sql_table: &str,
        topic: String,
        columns: Vec<ColumnPlan>,
        headers: Vec<String>,
    ) -> Self {
        Self {
            insert_into: insert_into(sql_table, &columns),
            types_header: types_header(&columns),
            table,
            topic,
            columns,
            headers,
        }
    }

    /// `INSERT INTO sql_table (…)` of this plan's columns, into another
    /// table of the same columns (a shard's local table).
    pub fn insert_into_table(&self, sql_table: &str) -> String {
        insert_into(sql_table, &self.columns)
    }
}

fn insert_into(sql_table: &str, columns: &[ColumnPlan]) -> String {
    let names: Vec<String> = columns
        .iter()
        .map(|c| format!("`{}`", c.column.replace('`', "\\`")))
        .collect();
    format!("INSERT INTO {sql_table} ({})", names.join(", "))
}

fn types_header(columns: &[ColumnPlan]) -> Bytes {
    let mut out = BytesMut::new();
    put_varint(&mut out, columns.len() as u64);
    let names = columns.iter().map(|c| &c.column);
    for text in names.chain(columns.iter().map(|c| &c.type_name)) {
        put_varint(&mut out, text.len() as u64);
        out.put_slice(text.as_bytes());
    }
    out.freeze()
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
    let mapped = target
        .columns
        .keys()
        .chain(target.constants.keys())
        .chain(target.headers.keys());
    for column in mapped {
        if !rows.iter().any(|(name, _, _)| name == column.as_str()) {
            return Err(SchemaError::MissingColumn {
                flow: flow.into(),
                table,
                column: column.to_string(),
            });
        }
    }
    let planner = ColumnPlanner {
        flow,
        table: &table,
        target,
        fields,
    };
    let mut columns = Vec::new();
    for (name, type_name, default_kind) in rows {
        columns.extend(planner.plan(name, type_name, &default_kind)?);
    }
    Ok(TablePlan::new(
        table,
        &target.table.ch(),
        target.topic.clone(),
        columns,
        target.headers.values().cloned().collect(),
    ))
}

/// Plans the columns of one target table.
struct ColumnPlanner<'a> {
    flow: &'a str,
    table: &'a str,
    target: &'a TargetTable,
    fields: Option<&'a [String]>,
}

impl ColumnPlanner<'_> {
    /// What fills the column `name`: the field the flow maps to it, a
    /// header, a constant, or the field of its own name. `None`: the server
    /// fills it (a DEFAULT, MATERIALIZED or ALIAS column the flow does not
    /// map).
    fn plan(
        &self,
        name: String,
        type_name: String,
        default_kind: &str,
    ) -> Result<Option<ColumnPlan>, SchemaError> {
        let target = self.target;
        let header = of_column(&target.headers, &name);
        let mapped = of_column(&target.columns, &name)
            .cloned()
            .or_else(|| header.map(|h| header_field(h)));
        let constant =
            of_column(&target.constants, &name).map(|v| serde_json::Value::String(v.clone()));
        let field = match mapped {
            Some(field) => field,
            None if constant.is_some() => String::new(),
            None if !default_kind.is_empty() => return Ok(None),
            None => name.clone(),
        };
        if constant.is_none()
            && header.is_none()
            && let Some(known) = self.fields
            && !known.iter().any(|f| f == &field)
        {
            return Err(SchemaError::MissingField {
                flow: self.flow.into(),
                table: self.table.into(),
                column: name,
                field,
            });
        }
        let ty = ChType::parse(&type_name).map_err(|e| SchemaError::BadColumn {
            flow: self.flow.into(),
            table: self.table.into(),
            column: name.clone(),
            reason: e.to_string(),
        })?;
        Ok(Some(ColumnPlan {
            column: name,
            field,
            ty,
            type_name,
            constant,
        }))
    }
}

/// What a flow's map (`columns`, `constants`, `headers`) gives the column
/// `name`.
fn of_column<'m>(
    map: &'m std::collections::BTreeMap<flows::ident::Ident, String>,
    name: &str,
) -> Option<&'m String> {
    map.iter().find(|(c, _)| c.as_str() == name).map(|(_, v)| v)
}

/// A table's columns as the server has them now: (name, type name), from
/// `system.columns`; none when the table does not exist.
pub async fn column_types(
    client: &Client,
    database: &str,
    table: &str,
) -> Result<Vec<(String, String)>, clickhouse::error::Error> {
    client
        .query("SELECT name, type FROM system.columns WHERE database = ? AND table = ?")
        .bind(database)
        .bind(table)
        .fetch_all()
        .await
}

/// The first of `plan`'s columns whose type is not the same in `after` as
/// in `before` (two [`column_types`] reads around an insert): the insert
/// may have read the rows as either. A column dropped or added in between
/// does not count: an insert naming a column the table lacks fails whole.
/// An ALTER and its reversal both in between go unseen.
pub fn retyped<'p>(
    plan: &'p TablePlan,
    before: &[(String, String)],
    after: &[(String, String)],
) -> Option<&'p str> {
    fn type_of<'c>(columns: &'c [(String, String)], name: &str) -> Option<&'c str> {
        columns
            .iter()
            .find(|(c, _)| c == name)
            .map(|(_, t)| t.as_str())
    }
    plan.columns.iter().map(|c| c.column.as_str()).find(|name| {
        matches!(
            (type_of(before, name), type_of(after, name)),
            (Some(was), Some(now)) if was != now
        )
    })
}

/// How a batch encoded with `plan` goes into its table as the table is
/// `now` ([`column_types`], read right before the insert).
#[derive(Debug)]
pub enum Fit {
    /// Insert it as `plan` says: the batch's columns, with the type names
    /// the table has now. `convert`: a column was widened, so the rows are
    /// converted to its new type first (`encode::convert`).
    Fits { plan: TablePlan, convert: bool },
    /// Hold it: a column it fills is gone, or its type changed to one not
    /// every value fits (RowBinary would be read as other numbers, or
    /// misaligned).
    Refuse(String),
}

/// See [`Fit`]. Only the batch's own columns matter: it names them in its
/// insert, the server fills any others.
pub fn fit(plan: &TablePlan, now: &[(String, String)]) -> Fit {
    let mut columns = Vec::with_capacity(plan.columns.len());
    let mut convert = false;
    for was in &plan.columns {
        let Some((_, type_name)) = now.iter().find(|(name, _)| *name == was.column) else {
            return Fit::Refuse(dropped(plan, was));
        };
        let changed = |to: &dyn std::fmt::Display, why: &str| {
            Fit::Refuse(format!(
                "column {}.{} changed from {} to {to}, {why}: change it back or to a wider type, or restart the sink to accept it",
                plan.table, was.column, was.ty
            ))
        };
        let Ok(ty) = ChType::parse(type_name) else {
            return changed(type_name, "which the sink cannot write");
        };
        if ty != was.ty {
            if !widens(&was.ty, &ty) {
                return changed(&ty, "which not every value fits");
            }
            convert = true;
        }
        columns.push(ColumnPlan {
            ty,
            type_name: type_name.clone(),
            ..was.clone()
        });
    }
    Fit::Fits {
        plan: TablePlan {
            types_header: types_header(&columns),
            columns,
            ..plan.clone()
        },
        convert,
    }
}

fn dropped(plan: &TablePlan, was: &ColumnPlan) -> String {
    let what = match &was.constant {
        Some(_) => "a constant".to_owned(),
        None => format!("message field `{}`", was.field),
    };
    format!(
        "column {}.{} was dropped while the sink fills it from {what}: restore it, or restart the sink to load without it",
        plan.table, was.column
    )
}

/// What a target table's change since its plan means to the sink (see
/// [`judge`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Same,
    /// Loses nothing: columns added that old messages can leave NULL,
    /// types widened (or renamed only: `DateTime` → `DateTime('UTC')`).
    /// The new plan is used from the next batch; batches encoded with the
    /// old one are converted as they are inserted ([`fit`]).
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
    let now: Vec<(String, String)> = new
        .columns
        .iter()
        .map(|c| (c.column.clone(), c.type_name.clone()))
        .collect();
    if let Fit::Refuse(reason) = fit(old, &now) {
        return Change::Refuse(reason);
    }
    let mut adopted = Vec::new();
    for was in &old.columns {
        match new.columns.iter().find(|c| c.column == was.column) {
            Some(now) if now.ty != was.ty => adopted.push(format!(
                "{} widened from {} to {}",
                was.column, was.ty, now.ty
            )),
            Some(now) if now.type_name != was.type_name => adopted.push(format!(
                "{} now {} (encoded as {} was)",
                was.column, now.type_name, was.type_name
            )),
            _ => {}
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

    fn pairs(plan: &TablePlan) -> Vec<(String, String)> {
        plan.columns
            .iter()
            .map(|c| (c.column.clone(), c.type_name.clone()))
            .collect()
    }

    fn plan(columns: &[(&str, &str)]) -> TablePlan {
        TablePlan::new(
            "t".into(),
            "`t`",
            "topic".into(),
            columns
                .iter()
                .map(|(c, ty)| ColumnPlan {
                    column: (*c).into(),
                    field: (*c).into(),
                    ty: ChType::parse(ty).unwrap_or(ChType::String),
                    type_name: (*ty).into(),
                    constant: None,
                })
                .collect(),
            Vec::new(),
        )
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

    #[test]
    fn a_batch_fits_a_widened_column_converted_and_is_held_from_any_other_change() {
        let batch = plan(&[
            ("id", "UInt64"),
            ("price", "Decimal(9, 2)"),
            ("t", "DateTime"),
        ]);
        let fits = |now: &TablePlan| match fit(&batch, &pairs(now)) {
            Fit::Fits { plan, convert } => Ok((
                plan.columns
                    .iter()
                    .map(|c| c.type_name.clone())
                    .collect::<Vec<_>>(),
                convert,
            )),
            Fit::Refuse(reason) => Err(reason),
        };
        let same = plan(&[
            ("id", "UInt64"),
            ("price", "Decimal(9, 2)"),
            ("t", "DateTime"),
            ("new", "Nullable(String)"),
        ]);
        assert_eq!(
            fits(&same),
            Ok((
                vec!["UInt64".into(), "Decimal(9, 2)".into(), "DateTime".into()],
                false
            )),
            "columns added do not matter to the batch"
        );
        let renamed = plan(&[
            ("id", "UInt64"),
            ("price", "Decimal32(2)"),
            ("t", "DateTime('UTC')"),
        ]);
        assert_eq!(
            fits(&renamed),
            Ok((
                vec![
                    "UInt64".into(),
                    "Decimal32(2)".into(),
                    "DateTime('UTC')".into()
                ],
                false
            )),
            "the same encoding under another name"
        );
        let widened = plan(&[
            ("id", "UInt64"),
            ("price", "Decimal(18, 2)"),
            ("t", "DateTime64(3)"),
        ]);
        assert_eq!(
            fits(&widened),
            Ok((
                vec![
                    "UInt64".into(),
                    "Decimal(18, 2)".into(),
                    "DateTime64(3)".into()
                ],
                true
            ))
        );
        for (column, ty) in [
            ("price", "Decimal(9, 4)"),
            ("price", "Int32"),
            ("id", "Int64"),
            ("id", "Float64"),
            ("t", "UInt32"),
            ("id", "UInt32"),
        ] {
            let mut cols = vec![
                ("id", "UInt64"),
                ("price", "Decimal(9, 2)"),
                ("t", "DateTime"),
            ];
            cols.retain(|(c, _)| *c != column);
            cols.push((column, ty));
            assert!(
                matches!(fits(&plan(&cols)), Err(r) if r.contains(&format!("t.{column} changed from"))),
                "{column} {ty}"
            );
        }
        let rescaled = plan(&[
            ("id", "UInt64"),
            ("price", "Decimal(9, 4)"),
            ("t", "DateTime"),
        ]);
        assert!(
            matches!(fits(&rescaled), Err(r) if r.starts_with("column t.price changed from Decimal32(2) to Decimal32(4), which not every value fits")),
            "{:?}",
            fits(&rescaled)
        );
        let dropped = plan(&[("id", "UInt64"), ("t", "DateTime")]);
        assert!(matches!(fits(&dropped), Err(r) if r.contains("t.price was dropped")));
        let unsupported = [
            ("id".into(), "UInt64".into()),
            ("price".into(), "Array(Decimal(9, 2))".into()),
            ("t".into(), "DateTime".into()),
        ];
        assert!(
            matches!(fit(&batch, &unsupported), Fit::Refuse(r) if r.contains("which the sink cannot write"))
        );
        let unrelated = [
            ("id".into(), "UInt64".into()),
            ("price".into(), "Decimal(9, 2)".into()),
            ("t".into(), "DateTime".into()),
            ("tags".into(), "Array(String)".into()),
        ];
        assert!(
            matches!(fit(&batch, &unrelated), Fit::Fits { convert: false, .. }),
            "a column the batch does not fill may be of any type"
        );
    }

    #[test]
    fn the_types_header_names_each_column_and_its_server_type() {
        let p = plan(&[("id", "UInt64"), ("p", "Decimal(9, 2)")]);
        assert_eq!(p.insert_into, "INSERT INTO `t` (`id`, `p`)");
        let mut expected = vec![2, 2];
        expected.extend_from_slice(b"id");
        expected.push(1);
        expected.extend_from_slice(b"p");
        expected.push(6);
        expected.extend_from_slice(b"UInt64");
        expected.push(13);
        expected.extend_from_slice(b"Decimal(9, 2)");
        assert_eq!(p.types_header.to_vec(), expected);
        let renamed = plan(&[("id", "UInt64"), ("p", "Decimal32(2)")]);
        assert!(
            matches!(judge(&p, &renamed), Change::Adopt(a) if a[0].contains("p now Decimal32(2)"))
        );
    }

    #[test]
    fn a_column_retyped_around_an_insert_is_named_and_a_dropped_or_added_one_is_not() {
        let batch = plan(&[("id", "UInt64"), ("price", "Decimal32(2)")]);
        let before = pairs(&batch);
        let owned = |columns: &[(&str, &str)]| -> Vec<(String, String)> {
            columns
                .iter()
                .map(|(c, t)| ((*c).into(), (*t).into()))
                .collect()
        };
        assert_eq!(retyped(&batch, &before, &before), None);
        let rescaled = owned(&[("id", "UInt64"), ("price", "Decimal32(4)")]);
        assert_eq!(retyped(&batch, &before, &rescaled), Some("price"));
        let dropped = owned(&[("id", "UInt64")]);
        assert_eq!(retyped(&batch, &before, &dropped), None);
        let added = owned(&[("id", "UInt64"), ("price", "Decimal32(2)"), ("n", "String")]);
        assert_eq!(retyped(&batch, &before, &added), None);
        let other = owned(&[("id", "UInt64"), ("price", "Decimal32(2)"), ("n", "UInt8")]);
        assert_eq!(
            retyped(&batch, &added, &other),
            None,
            "a column the batch does not fill"
        );
    }
}
