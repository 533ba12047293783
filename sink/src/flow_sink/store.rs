//! Storing one table's rows of a batch: insert until ClickHouse accepts
//! them, holding the flow not ready while it refuses them for good. The
//! rows go only into columns of the types they were encoded for, or are
//! converted to a widened column first ([`Context::refit`]): where the
//! server checks the types an insert declares, when it says they differ;
//! elsewhere right before every insert, and the table is read again right
//! after it: a column's type changed in between may have had the rows read
//! as the new type, so the batch goes in again (the table keeps the last
//! insert of a key) once it fits.

use std::borrow::Cow;

use bytes::Bytes;
use daemon::backoff::Backoff;
use tokio_util::sync::CancellationToken;

use super::Context;
use crate::clickhouse::schema::{Fit, TablePlan, fit, retyped};
use crate::clickhouse::types::ChType;
use crate::clickhouse::writer::{ColumnsNow, ShardsDone};
use crate::error::{Recovery, SinkError, classify};
use crate::stats::TableStats;

/// One table's rows on their way in, and what the attempts so far learnt.
struct Insert<'p> {
    /// The plan the rows are encoded for (a newer one once converted).
    plan: Cow<'p, TablePlan>,
    rows: Bytes,
    /// Compare the table's columns before each insert (and after it).
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
            if let SinkError::Insert { .. } | SinkError::ChangedDuringInsert { .. } = &error {
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
    /// the insert, then (when fitted) the table read again: changed in
    /// between, the attempt counts as failed
    /// ([`SinkError::ChangedDuringInsert`]).
    async fn try_insert(&self, insert: &mut Insert<'_>) -> Result<(), SinkError> {
        let before = if insert.refit {
            let (before, fitted) = self.refit(&insert.plan, &insert.rows).await?;
            if let Some((now, converted)) = fitted {
                (insert.plan, insert.rows) = (Cow::Owned(now), converted);
            }
            Some(before)
        } else {
            None
        };
        self.writer
            .insert(&insert.plan, insert.rows.clone(), &mut insert.done)
            .await
            .map_err(|error| SinkError::Insert {
                table: insert.plan.table.clone(),
                error,
            })?;
        let Some(before) = before else {
            return Ok(());
        };
        let after = self.columns(&insert.plan).await?;
        match retyped(&insert.plan, &before, &after) {
            Some(column) => Err(SinkError::ChangedDuringInsert {
                table: insert.plan.table.clone(),
                column: column.to_string(),
            }),
            None => Ok(()),
        }
    }

    /// The columns `plan`'s rows go into now
    /// ([`ClickHouseWriter::columns_now`](crate::clickhouse::writer::ClickHouseWriter::columns_now):
    /// on a cluster, every shard's local table, which must agree).
    async fn columns(&self, plan: &TablePlan) -> Result<Vec<(String, String)>, SinkError> {
        let table = &plan.table;
        match self.writer.columns_now(plan).await {
            Ok(now) => Ok(now),
            Err(ColumnsNow::Unread(error)) => {
                tracing::warn!(flow = self.name(), %table, %error, "cannot read the target table's columns around the insert; retrying, offsets not committed");
                Err(SinkError::ColumnsUnread {
                    table: table.clone(),
                    error,
                })
            }
            Err(ColumnsNow::Differ(reason)) => Err(SinkError::Unfit {
                table: table.clone(),
                reason,
            }),
        }
    }

    /// Compares the types `rows` were encoded for (`plan`) with the table's
    /// columns as they are now (`schema::fit`), returning the table as read
    /// and `Some`: insert as this plan, with these rows (converted when a
    /// column was widened); `None`: the table is gone, the insert will say
    /// so (and hold).
    async fn refit(
        &self,
        plan: &TablePlan,
        rows: &Bytes,
    ) -> Result<(Vec<(String, String)>, Option<(TablePlan, Bytes)>), SinkError> {
        let now = self.columns(plan).await?;
        if now.is_empty() {
            return Ok((now, None));
        }
        let fitted = self.fit(plan, rows, &now)?;
        Ok((now, Some(fitted)))
    }

    /// [`fit`] with the rows converted where it says so.
    fn fit(
        &self,
        plan: &TablePlan,
        rows: &Bytes,
        now: &[(String, String)],
    ) -> Result<(TablePlan, Bytes), SinkError> {
        let unfit = |reason| SinkError::Unfit {
            table: plan.table.clone(),
            reason,
        };
        match fit(plan, now) {
            Fit::Refuse(reason) => Err(unfit(reason)),
            Fit::Fits {
                plan: now,
                convert: false,
            } => Ok((now, rows.clone())),
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
                tracing::info!(flow = self.name(), table = %plan.table, rows = rows.len(), "batch encoded before a column was widened; converted to the new types");
                Ok((now, converted.freeze()))
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
                tracing::info!(flow = self.name(), table = %plan.table, "inserts into the target table go on");
                self.health.unblock(&cause);
            }
        }
    }
}
