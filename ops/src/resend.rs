//! `relay resend`: publishes rows already sent once more — for a topic that
//! lost data, or a consumer added later. The rows go through the normal
//! transactional path (set pending again — the `outbox_pending_again`
//! trigger gives them this transaction's id, so they are the relay's next
//! window, see `relay/src/window.rs` — then taken by the active relay in
//! id order); the sinks' keyed tables absorb the repeat.

use flows::Flow;
use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

/// Which sent rows to publish again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// Ids `lo..=hi`.
    Ids(i64, i64),
    /// Rows whose `time_column` is at or after this time.
    Since(std::time::SystemTime),
}

/// Parses `A..B` (both included).
pub fn parse_ids(text: &str) -> Result<(i64, i64), String> {
    let (lo, hi) = text
        .split_once("..")
        .ok_or_else(|| format!("`{text}` is not an id range like 100..200"))?;
    let (lo, hi): (i64, i64) = (
        lo.trim()
            .parse()
            .map_err(|_| format!("`{lo}` is not an id"))?,
        hi.trim()
            .parse()
            .map_err(|_| format!("`{hi}` is not an id"))?,
    );
    if lo > hi {
        return Err(format!("`{text}`: the first id is above the last"));
    }
    Ok((lo, hi))
}

/// Why a resend was refused (nothing was set pending).
#[derive(Debug, thiserror::Error)]
pub enum ResendError {
    /// Rows changed since they were sent (`outbox_changed_rows`, migration
    /// `0012_changed_sent_rows`): published again they would differ from
    /// the copy ClickHouse holds, and a target ordered by a changed column
    /// would keep both.
    #[error(
        "{count} row(s) of {table} changed after they were sent (ids {ids}): resent, a target table ordered by a changed column would keep both copies; leave them out with --skip-changed (see README, \"Resend\")"
    )]
    Changed {
        table: String,
        count: i64,
        ids: String,
    },
    /// A table that does not note changes to its sent rows.
    #[error(
        "source table {table} does not note changes to its sent rows, so a resend could double a changed one: run SELECT outbox_protect_pending('{table}') first"
    )]
    Unguarded { table: String },
    #[error("postgres: {}", connections::pg::detail(.0))]
    Postgres(#[from] tokio_postgres::Error),
}

/// Sets the flow's chosen sent rows pending again, in one transaction, and
/// wakes the relay. Returns the rows per source table. A row already
/// pruned (`retention`) is gone and cannot be resent. Rows changed since
/// they were sent are refused (nothing is resent) unless `skip_changed`,
/// which leaves them out.
pub async fn resend(
    client: &mut Client,
    flow: &Flow,
    which: Which,
    skip_changed: bool,
) -> Result<Vec<(String, u64)>, ResendError> {
    let tx = client.transaction().await?;
    let mut out = Vec::new();
    for source in &flow.sources {
        check_noted(&tx, &source.table).await?;
        // Checked by the command before: with `--since`, every source has a
        // time column.
        let Some(chosen) = Chosen::of(which, source) else {
            continue;
        };
        if !skip_changed {
            chosen.refuse_changed(&tx).await?;
        }
        let rows = chosen.set_pending(&tx).await?;
        if rows > 0 {
            tx.execute(
                "SELECT pg_notify($1, $2)",
                &[&relay::CHANNEL, &source.table.as_str()],
            )
            .await?;
        }
        out.push((source.table.to_string(), rows));
    }
    tx.commit().await?;
    Ok(out)
}

/// A table whose changes to sent rows are not noted cannot say which rows
/// a resend would double: refused.
async fn check_noted(
    tx: &tokio_postgres::Transaction<'_>,
    table: &flows::ident::Ident,
) -> Result<(), ResendError> {
    let noted: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass($1) \
             AND tgname = 'outbox_sent_changed' AND tgenabled <> 'D')",
            &[&table.pg()],
        )
        .await?
        .get(0);
    if noted {
        Ok(())
    } else {
        Err(ResendError::Unguarded {
            table: table.to_string(),
        })
    }
}

/// The sent rows of one source table a resend chooses.
struct Chosen {
    table: flows::ident::Ident,
    /// SQL on `src`, with its parameters from `$1`.
    condition: String,
    which: Which,
}

impl Chosen {
    fn of(which: Which, source: &flows::SourceTable) -> Option<Self> {
        let condition = match (which, &source.time_column) {
            (Which::Ids(..), _) => "src.\"id\" BETWEEN $1::int8 AND $2::int8".to_owned(),
            (Which::Since(_), Some(time)) => format!("src.{} >= $1::timestamptz", time.pg()),
            (Which::Since(_), None) => return None,
        };
        Some(Self {
            table: source.table.clone(),
            condition,
            which,
        })
    }

    /// The condition's parameters.
    fn params(&self) -> Vec<Box<dyn ToSql + Sync + Send>> {
        match self.which {
            Which::Ids(lo, hi) => vec![Box::new(lo), Box::new(hi)],
            Which::Since(at) => vec![Box::new(at)],
        }
    }

    /// Runs `sql` (which uses the condition's parameters) for one row.
    async fn query_one(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        sql: &str,
    ) -> Result<tokio_postgres::Row, tokio_postgres::Error> {
        let params = self.params();
        let refs: Vec<&(dyn ToSql + Sync)> = params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect();
        tx.query_one(sql, &refs).await
    }

    /// The condition that a row changed since it was sent.
    fn changed(&self) -> String {
        format!(
            "EXISTS (SELECT 1 FROM outbox_changed_rows c WHERE c.source_table = '{}' AND c.source_id = src.\"id\")",
            self.table.as_str().replace('\'', "''")
        )
    }

    /// Refuses, naming up to ten of them, when chosen rows changed since
    /// they were sent.
    async fn refuse_changed(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
    ) -> Result<(), ResendError> {
        let (t, chosen, changed) = (self.table.pg(), &self.condition, self.changed());
        let found = self
            .query_one(
                tx,
                &format!(
                    "SELECT count(*)::int8, string_agg(id::text, ', ') FILTER (WHERE n <= 10) FROM \
                     (SELECT src.\"id\" AS id, row_number() OVER (ORDER BY src.\"id\") AS n FROM {t} AS src \
                      WHERE {chosen} AND src.sent_to_kafka IS TRUE AND {changed}) AS c"
                ),
            )
            .await?;
        let count: i64 = found.get(0);
        if count == 0 {
            return Ok(());
        }
        let shown: String = found.get::<_, Option<String>>(1).unwrap_or_default();
        Err(ResendError::Changed {
            table: self.table.to_string(),
            count,
            ids: if count > 10 {
                format!("{shown}, …")
            } else {
                shown
            },
        })
    }

    /// Sets the chosen sent rows (not those changed since) pending again;
    /// how many.
    async fn set_pending(&self, tx: &tokio_postgres::Transaction<'_>) -> Result<u64, ResendError> {
        let (t, chosen, changed) = (self.table.pg(), &self.condition, self.changed());
        let row = self
            .query_one(
                tx,
                &format!(
                    "WITH again AS (UPDATE {t} AS src SET sent_to_kafka = FALSE \
                     WHERE {chosen} AND src.sent_to_kafka IS TRUE AND NOT {changed} \
                     RETURNING src.\"id\"::int8 AS id) \
                     SELECT count(*)::int8 FROM again"
                ),
            )
            .await?;
        Ok(row.get::<_, i64>(0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::parse_ids;

    #[test]
    fn id_ranges_parse_and_bad_ones_say_why() {
        assert_eq!(parse_ids("100..200"), Ok((100, 200)));
        assert_eq!(parse_ids("7..7"), Ok((7, 7)));
        assert!(
            parse_ids("200..100")
                .err()
                .unwrap_or_default()
                .contains("above")
        );
        assert!(
            parse_ids("100-200")
                .err()
                .unwrap_or_default()
                .contains("like 100..200")
        );
        assert!(
            parse_ids("a..b")
                .err()
                .unwrap_or_default()
                .contains("not an id")
        );
    }
}
