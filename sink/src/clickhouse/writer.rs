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
}
