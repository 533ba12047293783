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
//! RowBinary carries no types: the server reads the bytes as its columns'
//! current types. Where the server can check them
//! (`caps::insert_checks_types`), every insert declares the column types
//! its rows were encoded for and a block encoded for other types is refused
//! whole (`InsertError::TypesDiffer`); elsewhere the caller compares the
//! types right before the insert (`flow_sink::store`).

use bytes::Bytes;
use clickhouse::Client;

use super::caps::ServerCaps;
use super::schema::TablePlan;
use crate::error::InsertError;

pub struct ClickHouseWriter {
    client: Client,
    caps: ServerCaps,
}

impl ClickHouseWriter {
    pub fn new(client: Client, caps: ServerCaps) -> Self {
        Self { client, caps }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn caps(&self) -> &ServerCaps {
        &self.caps
    }

    /// Inserts `rows` (RowBinary for `plan`'s columns) as one block,
    /// declaring `plan`'s types where the server checks them. A failure
    /// comes sorted ([`InsertError`]).
    pub async fn insert(&self, plan: &TablePlan, rows: Bytes) -> Result<(), InsertError> {
        let sql = format!("{} FORMAT {}", plan.insert_into, insert_format(&self.caps));
        let mut insert = self.client.insert_formatted_with(sql);
        if self.caps.insert_checks_types {
            // Both are the server's defaults; set so a profile cannot turn
            // the check off.
            insert = insert
                .with_setting("input_format_with_names_use_header", "1")
                .with_setting("input_format_with_types_use_header", "1");
            insert.send(plan.types_header.clone()).await?;
        }
        insert.send(rows).await?;
        Ok(insert.end().await?)
    }
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
