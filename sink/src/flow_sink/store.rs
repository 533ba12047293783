//! Storing one table's rows of a batch: insert until ClickHouse accepts
//! them, holding the flow not ready while it refuses them for good. The
//! rows go only into columns of the types they were encoded for, or are
//! converted to a widened column first ([`Context::refit`]): where the
//! server checks the types an insert declares, when it says they differ;
//! elsewhere right before every insert.

use std::borrow::Cow;

use bytes::Bytes;
use daemon::backoff::Backoff;
use tokio_util::sync::CancellationToken;

use super::Context;
use crate::clickhouse::schema::{Fit, TablePlan, fit};
use crate::clickhouse::types::ChType;
use crate::clickhouse::writer::{ColumnsNow, ShardsDone};
use crate::error::{Recovery, SinkError, classify};
use crate::stats::TableStats;

/// One table's rows on their way in, and what the attempts so far learnt.
struct Insert<'p> {
    /// The plan the rows are encoded for (a newer one once converted).
    plan: Cow<'p, TablePlan>,
    rows: Bytes,
    /// Compare the table's columns before each insert.
    refit: bool,
    /// The table's inserts are held (the flow not ready).
    held: bool,
    /// On a cluster, the shards that stored their rows already.
    done: ShardsDone,
}

impl Context {
    /// Inserts one table's rows of a batch (RowBinary encoded for `plan`),
    /// retrying with `backoff` until ClickHouse accepts them; false if
    /// `stop` fired first.
    pub(super) async fn store_table(
        &self,
        table: &TableStats,
        plan: &TablePlan,
        rows: Bytes,
        backoff: &mut Backoff,
        stop: &CancellationToken,
    ) -> bool {
        let mut insert = Insert {
            plan: Cow::Borrowed(plan),
            rows,
            refit: !self.writer.caps().insert_checks_types,
            held: false,
            done: ShardsDone::new(),
        };
        loop {
            let error = match self.try_insert(&mut insert).await {
                Ok(()) => {
                    if insert.held {
                        self.hold(table, &insert.plan, None);
                    }
                    return true;
                }
                Err(error) => error,
            };
            // A batch held for not fitting the table is no failed insert.
            if !matches!(error, SinkError::Unfit { .. }) {
                self.stats.insert_failures.inc();
            }
            let hold = match classify(&error) {
                Recovery::Hold(reason) => Some(reason),
                // Checked against the table already and still refused: not
                // a change the sink can follow.
                Recovery::Refit if insert.refit => Some(format!(
                    "ClickHouse refuses the column types of the batch for {}: {}",
                    insert.plan.table,
                    error.to_string().chars().take(300).collect::<String>()
                )),
                Recovery::Refit => {
                    insert.refit = true;
                    None
                }
                _ => None,
            };
            if let SinkError::Insert { error, .. } = &error {
                let retry_in_ms = backoff.upcoming().as_millis() as u64;
                tracing::warn!(flow = self.name(), table = %insert.plan.table, %error, retry_in_ms, "clickhouse insert failed; retrying, offsets not committed");
            }
            if let Some(reason) = hold {
                insert.held = true;
                self.hold(table, &insert.plan, Some(&reason));
            }
            if !backoff.wait(stop).await {
                return false;
            }
        }
    }

    /// One attempt: the rows fitted to the table first when asked, then
    /// the insert.
    async fn try_insert(&self, insert: &mut Insert<'_>) -> Result<(), SinkError> {
        if insert.refit
            && let Some((now, converted)) = self.refit(&insert.plan, &insert.rows).await?
        {
            (insert.plan, insert.rows) = (Cow::Owned(now), converted);
        }
        self.writer
            .insert(&insert.plan, insert.rows.clone(), &mut insert.done)
            .await
            .map_err(|error| SinkError::Insert {
                table: insert.plan.table.clone(),
                error,
            })
    }

    /// Compares the types `rows` were encoded for (`plan`) with the table's
    /// columns as they are now (`schema::fit`). `Some`: insert as this
    /// plan, with these rows (converted when a column was widened); `None`:
    /// the table is gone, the insert will say so (and hold).
    async fn refit(
        &self,
        plan: &TablePlan,
        rows: &Bytes,
    ) -> Result<Option<(TablePlan, Bytes)>, SinkError> {
        let flow = self.name();
        let unfit = |reason| SinkError::Unfit {
            table: plan.table.clone(),
            reason,
        };
        let now = match self.writer.columns_now(plan).await {
            Ok(now) if now.is_empty() => return Ok(None),
            Ok(now) => now,
            Err(ColumnsNow::Unread(error)) => {
                tracing::warn!(flow, table = %plan.table, %error, "cannot read the target table's columns before the insert; retrying, offsets not committed");
                let table = plan.table.clone();
                return Err(SinkError::ColumnsUnread { table, error });
            }
            Err(ColumnsNow::Differ(reason)) => return Err(unfit(reason)),
        };
        match fit(plan, &now) {
            Fit::Refuse(reason) => Err(unfit(reason)),
            Fit::Fits {
                plan: now,
                convert: false,
            } => Ok(Some((now, rows.clone()))),
            Fit::Fits {
                plan: now,
                convert: true,
            } => {
                let from: Vec<&ChType> = plan.columns.iter().map(|c| &c.ty).collect();
                let to: Vec<&ChType> = now.columns.iter().map(|c| &c.ty).collect();
                let converted =
                    crate::clickhouse::encode::convert(rows, &from, &to).map_err(|e| {
                        unfit(format!(
                            "its rows do not convert to the table's new column types ({e})"
                        ))
                    })?;
                tracing::info!(flow, table = %plan.table, rows = rows.len(), "batch encoded before a column was widened; converted to the new types");
                Ok(Some((now, converted.freeze())))
            }
        }
    }

    /// Inserts into `plan`'s table are held (`Some(reason)`: the flow is
    /// not ready, saying why, and `sink_insert_refused` is 1) — ClickHouse
    /// refuses the table for good, or the batch does not fit its columns
    /// any more — or go on again (`None`). Nothing is committed meanwhile:
    /// the batch is retried until it is stored.
    fn hold(&self, table: &TableStats, plan: &TablePlan, reason: Option<&str>) {
        let flow = self.name();
        table.insert_refused.set(i64::from(reason.is_some()));
        let cause = format!("table:{}", plan.table);
        match reason {
            Some(reason) => {
                tracing::error!(flow, table = %plan.table, reason, "inserts into the target table held; retrying, nothing committed");
                self.health.block(&cause, reason);
            }
            None => {
                tracing::info!(flow, table = %plan.table, "inserts into the target table go on");
                self.health.unblock(&cause);
            }
        }
    }
}
