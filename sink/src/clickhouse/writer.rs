//! Writes encoded batches to ClickHouse.
//!
//! Contract: `insert` returns Ok only when the server answered 200 to the
//! whole INSERT, i.e. every row of the block is stored. It is at-least-once:
//! a block may be sent again after a crash or a retry whose first attempt
//! actually succeeded. Exactly-once results come from the tables: every
//! target is a ReplacingMergeTree keyed by the source row's identity, so a
//! repeated row collapses at merge time and `FINAL` queries never see it
//! twice.

use bytes::Bytes;
use clickhouse::Client;

use super::schema::TablePlan;

pub struct ClickHouseWriter {
    client: Client,
}

impl ClickHouseWriter {
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Inserts `rows` (RowBinary for `plan`'s columns) as one block.
    pub async fn insert(
        &self,
        plan: &TablePlan,
        rows: Bytes,
    ) -> Result<(), clickhouse::error::Error> {
        let mut insert = self.client.insert_formatted_with(plan.insert_sql.clone());
        insert.send(rows).await?;
        insert.end().await
    }
}
