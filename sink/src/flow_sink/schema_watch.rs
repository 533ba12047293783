//! Following the target tables: every SINK_SCHEMA_CHECK_MS each table's
//! columns are read again and judged against the plan in use
//! (`schema::judge`). A change the sink can follow (a Nullable column added,
//! a type widened) is adopted from the next batch on; one that would lose
//! data holds the flow not ready, with the reason, and the old plan stays
//! (its inserts fail if a column it fills is gone: nothing is committed
//! until the column is back or the sink restarts).

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::{Interval, MissedTickBehavior};

use super::Context;
use crate::clickhouse::schema::{Change, SchemaError, TablePlan, judge, plan_table};

/// The watch's state between checks.
pub(super) struct SchemaWatch {
    every: Interval,
    /// Health cause → the reason a table's change is refused, as said last.
    refusals: HashMap<String, String>,
    /// New plans, to load with from the next batch on.
    adopted: Option<Vec<TablePlan>>,
}

/// What became of one table since its plan was made.
enum Seen {
    Same,
    /// A change adopted: the table's new plan.
    Adopted(TablePlan),
    /// A change that would lose data, or a table the flow contradicts now.
    Refused(String),
    /// No answer (the inserts retry and say so), or no target for the plan.
    Unknown,
}

impl SchemaWatch {
    pub fn new(every: Duration) -> Self {
        let mut every = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        every.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            every,
            refusals: HashMap::new(),
            adopted: None,
        }
    }

    pub async fn tick(&mut self) {
        self.every.tick().await;
    }

    pub fn has_adopted(&self) -> bool {
        self.adopted.is_some()
    }

    pub fn take_adopted(&mut self) -> Option<Vec<TablePlan>> {
        self.adopted.take()
    }

    /// Looks at every table of `plans` (the plans in use): keeps the new
    /// plans when a change is adopted, holds or frees each table's cause.
    pub async fn check(&mut self, cx: &Context, plans: &[TablePlan]) {
        let mut next = plans.to_vec();
        let mut changed = false;
        for (i, plan) in plans.iter().enumerate() {
            match look(cx, plan).await {
                Seen::Unknown => {}
                Seen::Same => self.fits(cx, plan),
                Seen::Adopted(now) => {
                    cx.stats.tables[i].schema_changes.inc();
                    next[i] = now;
                    changed = true;
                    self.fits(cx, plan);
                }
                Seen::Refused(reason) => self.refuse(cx, plan, reason),
            }
        }
        self.adopted = changed.then_some(next);
    }

    fn fits(&mut self, cx: &Context, plan: &TablePlan) {
        let cause = cause(plan);
        if self.refusals.remove(&cause).is_some() {
            tracing::info!(flow = cx.name(), table = %plan.table, "target table fits the flow again");
        }
        cx.health.unblock(&cause);
    }

    fn refuse(&mut self, cx: &Context, plan: &TablePlan, reason: String) {
        let cause = cause(plan);
        if self.refusals.get(&cause) != Some(&reason) {
            tracing::error!(flow = cx.name(), table = %plan.table, reason, "target table changed in a way that would lose data; flow not ready");
        }
        cx.health.block(&cause, &reason);
        self.refusals.insert(cause, reason);
    }
}

/// The health cause of a table's refused change.
fn cause(plan: &TablePlan) -> String {
    format!("schema:{}", plan.table)
}

/// Reads the table's columns and judges them against `plan`.
async fn look(cx: &Context, plan: &TablePlan) -> Seen {
    let flow = cx.name();
    let target = cx
        .flow
        .targets
        .iter()
        .find(|t| t.table.as_str() == plan.table && t.topic == plan.topic);
    let Some(target) = target else {
        return Seen::Unknown;
    };
    let database = &cx.config.clickhouse.database;
    match plan_table(cx.writer.client(), database, flow, target, None).await {
        Ok(now) => match judge(plan, &now) {
            Change::Same => Seen::Same,
            Change::Adopt(what) => {
                tracing::info!(flow, table = %plan.table, changes = ?what, "target table changed; loading with its new columns from the next batch");
                Seen::Adopted(now)
            }
            Change::Refuse(reason) => Seen::Refused(reason),
        },
        Err(SchemaError::ClickHouse(_)) => Seen::Unknown,
        Err(other) => Seen::Refused(other.to_string()),
    }
}
