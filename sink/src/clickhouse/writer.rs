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
//! whole ([`types_differ`]); elsewhere the caller compares the types right
//! before the insert (`flow_sink`).

use bytes::Bytes;
use clickhouse::Client;

use super::caps::ServerCaps;
use super::schema::TablePlan;

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
    /// declaring `plan`'s types where the server checks them.
    pub async fn insert(
        &self,
        plan: &TablePlan,
        rows: Bytes,
    ) -> Result<(), clickhouse::error::Error> {
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
        insert.end().await
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

/// The server refused a block because the types it declares are not the
/// table's (code 117, "Type of 'c' must be T, not U"): the table changed
/// since the block was encoded. Nothing of it is stored.
pub fn types_differ(error: &clickhouse::error::Error) -> bool {
    let text = error.to_string();
    text.contains("Code: 117") && text.contains("Type of '")
}

/// ClickHouse's answer to an INSERT that no retry cures until someone
/// changes the table (or the grants): the table or database is gone, a
/// column is missing or of another type, the user may not write. The sink
/// keeps retrying (the table may come back) but the flow is not ready, with
/// this reason. Connection errors and server overload are not refusals.
pub fn refusal(error: &clickhouse::error::Error) -> Option<String> {
    const FOR_GOOD: &[(u32, &str)] = &[
        (10, "a column is missing"),
        (16, "a column is missing"),
        (20, "the number of columns differs"),
        (33, "the columns differ"),
        (44, "a column's type differs"),
        (47, "a column is missing"),
        (53, "a column's type differs"),
        (60, "the table does not exist"),
        (81, "the database does not exist"),
        (164, "the server is read-only"),
        (192, "ClickHouse does not know the user"),
        (193, "ClickHouse refuses the password"),
        (194, "ClickHouse requires a password"),
        (497, "the user may not insert"),
        (516, "ClickHouse refuses the credentials"),
    ];
    let text = error.to_string();
    let code: u32 = text
        .split_once("Code: ")?
        .1
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()?;
    let (_, what) = FOR_GOOD.iter().find(|(c, _)| *c == code)?;
    let detail: String = text.chars().take(300).collect();
    Some(format!("{what} (ClickHouse code {code}: {detail})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_told_from_transient_errors() {
        let old = clickhouse::error::Error::BadResponse(
            "Code: 60, e.displayText() = DB::Exception: Table t.x doesn't exist., e.what() = DB::Exception".into(),
        );
        let current = clickhouse::error::Error::BadResponse(
            "Code: 16. DB::Exception: No such column y in table t.x. (NO_SUCH_COLUMN_IN_TABLE)"
                .into(),
        );
        let busy = clickhouse::error::Error::BadResponse(
            "Code: 202. DB::Exception: Too many simultaneous queries. (TOO_MANY_SIMULTANEOUS_QUERIES)".into(),
        );
        assert!(refusal(&old).is_some_and(|r| r.starts_with("the table does not exist")));
        assert!(refusal(&current).is_some_and(|r| r.starts_with("a column is missing")));
        assert_eq!(refusal(&busy), None);
        assert_eq!(refusal(&clickhouse::error::Error::TimedOut), None);
    }

    #[test]
    fn a_block_of_other_types_is_told_from_other_errors() {
        // As chdb 4.4 (ClickHouse 26.9) answers a RowBinaryWithNamesAndTypes
        // block declaring Decimal(9, 2) for a Decimal(9, 4) column.
        let differ = clickhouse::error::Error::BadResponse(
            "Code: 117. DB::Exception: Type of 'price' must be Decimal(9, 4), not Decimal(9, 2): (while reading header): While executing BinaryRowInputFormat. (INCORRECT_DATA) (version 26.9.2.1)".into(),
        );
        let bad_data = clickhouse::error::Error::BadResponse(
            "Code: 117. DB::Exception: Unexpected NULL value of not Nullable type String. (INCORRECT_DATA)".into(),
        );
        assert!(types_differ(&differ));
        assert!(!types_differ(&bad_data));
        assert!(!types_differ(&clickhouse::error::Error::TimedOut));
        assert_eq!(refusal(&differ), None, "not a refusal: the sink re-plans");
    }
}
