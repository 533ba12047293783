//! Writes encoded batches to ClickHouse.
//!
//! Contract: `insert` returns Ok only when the server answered 200 to the
//! whole INSERT, i.e. every row of the block is stored. It is at-least-once:
//! a block may be sent again after a crash or a retry whose first attempt
//! actually succeeded. Exactly-once results come from the tables: every
//! target is a ReplacingMergeTree keyed by the source row's identity, so a
//! repeated row collapses at merge time and `FINAL` queries never see it
//! twice.
//!
//! On a cluster (`CLICKHOUSE_CLUSTER`) a target table is a `Distributed`
//! table over a Replicated table per shard. The sink does not insert into
//! the `Distributed` table — which, by default, answers 200 once the rows
//! sit in a local queue waiting to be sent on, not once they are stored —
//! but splits each batch by the `Distributed` table's sharding key, as the
//! engine would (`sharding`), and inserts each shard's rows straight into
//! that shard's local table on one of its replicas (`replicas`): 200 from
//! each shard means stored on a replica and registered in ZooKeeper, where
//! the shard's other replicas fetch it from. Shards are written
//! concurrently; a shard that stored its rows is not written again when
//! the others are retried (`ShardsDone`). Every copy of a source row has
//! the same key, so all copies land on one shard, where `FINAL` collapses
//! them.
//!
//! RowBinary carries no types: the server reads the bytes as its columns'
//! current types. Where the server can check them
//! (`caps::insert_checks_types`), every insert declares the column types
//! its rows were encoded for and a block encoded for other types is refused
//! whole (`InsertError::TypesDiffer`); elsewhere the caller compares the
//! types right before the insert ([`ClickHouseWriter::columns_now`]: on a
//! cluster, each shard's local table).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use bytes::Bytes;
use clickhouse::Client;

use super::caps::ServerCaps;
use super::replicas::Replicas;
use super::schema::{SchemaError, TablePlan, column_types};
use super::sharding::{self, Sharding};
use crate::error::InsertError;

/// The shards (indexes) that stored their part of a batch's rows for one
/// table: kept across the retries of that table's insert.
pub type ShardsDone = BTreeSet<usize>;

pub struct ClickHouseWriter {
    replicas: Replicas,
    caps: ServerCaps,
    database: String,
    /// Cluster mode: how each target table is spread, by its name.
    shardings: Mutex<HashMap<String, Sharding>>,
}

/// Why the columns a batch is about to go into are not known.
#[derive(Debug)]
pub enum ColumnsNow {
    /// No replica answered.
    Unread(clickhouse::error::Error),
    /// The shards' local tables differ (an `ALTER … ON CLUSTER` not
    /// applied everywhere yet): the reason.
    Differ(String),
}

impl ClickHouseWriter {
    pub fn new(replicas: Replicas, caps: ServerCaps, database: String) -> Self {
        Self {
            replicas,
            caps,
            database,
            shardings: Mutex::default(),
        }
    }

    /// For queries any endpoint answers alike (see `Replicas::client`).
    pub fn client(&self) -> &Client {
        self.replicas.client()
    }

    pub fn replicas(&self) -> &Replicas {
        &self.replicas
    }

    pub fn caps(&self) -> &ServerCaps {
        &self.caps
    }

    fn sharding(&self, table: &str) -> Option<Sharding> {
        self.shardings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(table)
            .cloned()
    }

    /// Checks that `plan`'s table is what the mode expects — a
    /// `Distributed` table the sink can route rows of, on a cluster; any
    /// other table without one — and learns how it is spread.
    pub async fn resolve(&self, flow: &str, plan: &TablePlan) -> Result<(), SchemaError> {
        let (database, table) = (self.database.clone(), plan.table.clone());
        let engine: Vec<(String, String)> = self
            .replicas
            .any(|c| {
                let (database, table) = (database.clone(), table.clone());
                async move {
                    c.query("SELECT engine, engine_full FROM system.tables WHERE database = ? AND name = ?")
                        .bind(database)
                        .bind(table)
                        .fetch_all()
                        .await
                }
            })
            .await?;
        let Some((engine, engine_full)) = engine.into_iter().next() else {
            return Ok(()); // planning said it is missing already
        };
        let refuse = |reason: String| SchemaError::Cluster {
            flow: flow.to_owned(),
            table: plan.table.clone(),
            reason,
        };
        let Some(cluster) = self.replicas.cluster() else {
            if engine == "Distributed" {
                return Err(refuse(format!(
                    "it is a Distributed table ({engine_full}), whose inserts answer before the rows are stored on their shards: set CLICKHOUSE_CLUSTER to its cluster, and the sink writes each row into its shard's table"
                )));
            }
            return Ok(());
        };
        if engine != "Distributed" {
            return Err(refuse(format!(
                "it is a {engine} table, not a Distributed one: with CLICKHOUSE_CLUSTER, `sink migrate` into a new database creates each table ON CLUSTER behind a Distributed table"
            )));
        }
        let columns: Vec<(String, String)> = plan
            .columns
            .iter()
            .map(|c| (c.column.clone(), c.type_name.clone()))
            .collect();
        let sharding = sharding::from_engine(&engine_full, cluster, &columns).map_err(refuse)?;
        tracing::info!(flow, table = %plan.table, local = %sharding.local_table, key = %sharding.key_column, "rows go straight into their shard's table");
        self.shardings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(plan.table.clone(), sharding);
        Ok(())
    }

    /// Inserts `rows` (RowBinary for `plan`'s columns): as one block into
    /// the table, or on a cluster one block per shard not in `done` into
    /// its local table, adding each shard stored to `done`. A failure
    /// comes sorted ([`InsertError`]; of several shards', the one that
    /// asks most of the caller).
    pub async fn insert(
        &self,
        plan: &TablePlan,
        rows: Bytes,
        done: &mut ShardsDone,
    ) -> Result<(), InsertError> {
        let format = insert_format(&self.caps);
        let Some(sharding) = self.sharding(&plan.table) else {
            let sql = format!("{} FORMAT {format}", plan.insert_into);
            return self
                .replicas
                .insert(0, &self.caps, &sql, &plan.types_header, &rows)
                .await;
        };
        let slots = self.replicas.slots().ok_or_else(|| {
            InsertError::Unroutable("the cluster's shards are not known yet".into())
        })?;
        let parts = slots
            .split(&sharding, &plan.columns, &rows)
            .map_err(InsertError::Unroutable)?;
        let sql = format!(
            "{} FORMAT {format}",
            plan.insert_into_table(&format!(
                "`{}`.`{}`",
                sharding.local_database, sharding.local_table
            ))
        );
        let pending = parts
            .into_iter()
            .enumerate()
            .filter(|(shard, part)| !part.is_empty() && !done.contains(shard))
            .map(|(shard, part)| {
                let (sql, header) = (&sql, &plan.types_header);
                async move {
                    let rows = part.freeze();
                    let stored = self.replicas.insert(shard, &self.caps, sql, header, &rows);
                    (shard, stored.await)
                }
            });
        let mut worst: Option<InsertError> = None;
        for (shard, stored) in futures::future::join_all(pending).await {
            match stored {
                Ok(()) => {
                    done.insert(shard);
                }
                Err(error) => {
                    if worst.as_ref().is_none_or(|w| weight(&error) > weight(w)) {
                        worst = Some(error);
                    }
                }
            }
        }
        worst.map_or(Ok(()), Err)
    }

    /// The columns (name, type) `plan`'s rows would go into now: the
    /// table's, or on a cluster every shard's local table's, which must
    /// agree. Empty when the table does not exist.
    pub async fn columns_now(&self, plan: &TablePlan) -> Result<Vec<(String, String)>, ColumnsNow> {
        let Some(sharding) = self.sharding(&plan.table) else {
            let (database, table) = (self.database.clone(), plan.table.clone());
            return self
                .replicas
                .read(0, |c| {
                    let (database, table) = (database.clone(), table.clone());
                    async move { column_types(&c, &database, &table).await }
                })
                .await
                .map_err(ColumnsNow::Unread);
        };
        let shards = self.replicas.slots().map_or(0, |s| s.shards());
        let mut seen: Vec<Vec<(String, String)>> = Vec::new();
        for shard in 0..shards {
            let (database, table) = (
                sharding.local_database.clone(),
                sharding.local_table.clone(),
            );
            let columns = self
                .replicas
                .read(shard, |c| {
                    let (database, table) = (database.clone(), table.clone());
                    async move { column_types(&c, &database, &table).await }
                })
                .await
                .map_err(ColumnsNow::Unread)?;
            seen.push(columns);
        }
        if let Some(reason) = shards_differ(&sharding.local_table, &seen) {
            return Err(ColumnsNow::Differ(reason));
        }
        Ok(seen.into_iter().next().unwrap_or_default())
    }
}

/// How much a failed shard asks of the caller: a refusal holds the flow,
/// types that differ make it compare, anything else is retried.
fn weight(error: &InsertError) -> u8 {
    match error {
        InsertError::Refused { .. } => 3,
        InsertError::NoReplica { .. } | InsertError::Unroutable(_) => 2,
        InsertError::TypesDiffer(_) => 1,
        InsertError::Transient(_) => 0,
    }
}

/// Why the shards' local tables (`seen`, by shard) cannot take one batch
/// alike, if they cannot.
fn shards_differ(table: &str, seen: &[Vec<(String, String)>]) -> Option<String> {
    let first = seen.first()?;
    let type_of = |columns: &[(String, String)], name: &str| {
        columns
            .iter()
            .find(|(n, _)| n == name)
            .map_or("missing".to_owned(), |(_, t)| t.clone())
    };
    for (shard, columns) in seen.iter().enumerate().skip(1) {
        let names = first.iter().chain(columns.iter()).map(|(n, _)| n.as_str());
        for name in names {
            let (a, b) = (type_of(first, name), type_of(columns, name));
            if a != b {
                return Some(format!(
                    "the shards' {table} differ: column {name} is {a} on shard 1 and {b} on shard {} (an ALTER … ON CLUSTER not applied on every server yet?)",
                    shard + 1
                ));
            }
        }
    }
    None
}

/// The format of the sink's inserts into a server with `caps`: RowBinary,
/// after a header declaring the columns' types where the server checks it.
pub fn insert_format(caps: &ServerCaps) -> &'static str {
    if caps.insert_checks_types {
        "RowBinaryWithNamesAndTypes"
    } else {
        "RowBinary"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
            .collect()
    }

    #[test]
    fn shards_whose_tables_differ_are_named() {
        let a = cols(&[("id", "UInt64"), ("price", "Decimal(9, 2)")]);
        let b = cols(&[("id", "UInt64"), ("price", "Decimal(9, 4)")]);
        assert_eq!(shards_differ("t_local", &[a.clone(), a.clone()]), None);
        assert_eq!(
            shards_differ("t_local", &[a.clone(), b]).as_deref(),
            Some(
                "the shards' t_local differ: column price is Decimal(9, 2) on shard 1 and Decimal(9, 4) on shard 2 (an ALTER … ON CLUSTER not applied on every server yet?)"
            )
        );
        let c = cols(&[("id", "UInt64")]);
        assert!(
            shards_differ("t_local", &[a, c])
                .is_some_and(|r| r.contains("price is Decimal(9, 2) on shard 1 and missing"))
        );
    }
}
