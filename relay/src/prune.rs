//! Retention of sent rows: deleting a source table's rows that are flagged
//! sent and older than the flow's `retention`, so an outbox does not grow
//! for ever.
//!
//! The table is walked along its primary key from the lowest id, a few
//! thousand ids per statement, each its own short transaction: a statement
//! deletes the rows of its stretch that are sent *and* older than the
//! cutoff (both checked again on the row it deletes, so a row flagged back
//! to pending meanwhile stays), and locks nothing else — inserts go on, and
//! the relay never waits on it (it locks pending rows only). The walk stops
//! at the first stretch holding a row inside the window: ids grow with
//! time, so what follows is younger. A pending row is never deleted,
//! however old. Rows older than the cutoff that sit after a younger one
//! (an id taken long before its row was written) wait for a later prune
//! after the younger row ages out.
//!
//! A table partitioned by its time column loses whole partitions first: a
//! partition whose rows are all sent and older than the cutoff, and whose
//! range lies wholly before it (the cutoff itself does not fit its
//! constraint), is detached `CONCURRENTLY` (no lock that stops inserts) and
//! dropped. The default partition is never dropped.
//!
//! The check before the detach cannot see a row a transaction still open
//! writes into the partition, and the detach waits for that transaction to
//! end — so a partition is dropped only after a second look, once detached
//! and locked (`ACCESS EXCLUSIVE`: no writer left in it, none can come):
//! holding a pending row, it is attached again instead, and the relay
//! publishes the row. A detach cut short (a statement timeout, a crash)
//! leaves the partition detached or pending detach, which hides it from the
//! relay and from the next prune's walk: so every detach is recorded first
//! in `outbox_partition_detaches`, and each prune settles what a previous
//! one left there (finishes the detach, then drops or attaches again as
//! above) before anything else.

use std::time::{Duration, SystemTime};

use flows::SourceTable;
use tokio_postgres::GenericClient;

/// Ids one statement walks: short enough that a statement takes
/// milliseconds, long enough that a million rows take a few hundred.
pub const STRETCH: i64 = 5_000;

/// What a prune of one table did (or, dry, would do).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    /// Rows deleted (dry: rows that would be).
    pub rows: u64,
    /// Statements run.
    pub stretches: u64,
    /// Whole partitions dropped (dry: that would be); their rows are
    /// counted in `rows`.
    pub partitions: u64,
}

/// One source table's prune statements.
pub struct Prune {
    pub table: String,
    /// The table, quoted, and its time column (quoted and as is).
    quoted: String,
    time: (String, String),
    dry_run: bool,
    walk_sql: String,
}

impl Prune {
    /// `None` when the source has no `time_column`.
    pub fn of(source: &SourceTable, dry_run: bool) -> Option<Self> {
        let time = source.time_column.as_ref()?.pg();
        let t = source.table.pg();
        let old = format!("src.sent_to_kafka IS TRUE AND src.{time} < $3::timestamptz");
        let walk = format!(
            "SELECT src.\"id\"::int8 AS id, ({old}) AS old, (src.{time} >= $3::timestamptz) AS young \
             FROM {t} AS src WHERE src.\"id\" > $1::int8 AND src.tableoid <> ALL($4::oid[]) \
             ORDER BY src.\"id\" LIMIT $2"
        );
        let walk_sql = if dry_run {
            format!(
                "WITH walk AS ({walk}) SELECT (SELECT max(id) FROM walk), \
                 (SELECT count(*) FROM walk WHERE old)::int8, \
                 EXISTS (SELECT 1 FROM walk WHERE young)"
            )
        } else {
            format!(
                "WITH walk AS MATERIALIZED ({walk}), \
                 gone AS (DELETE FROM {t} AS src USING walk WHERE src.\"id\" = walk.id AND walk.old \
                 AND {old} RETURNING 1) \
                 SELECT (SELECT max(id) FROM walk), (SELECT count(*) FROM gone)::int8, \
                 EXISTS (SELECT 1 FROM walk WHERE young)"
            )
        };
        Some(Self {
            table: source.table.to_string(),
            quoted: t,
            time: (time, source.time_column.as_ref()?.to_string()),
            dry_run,
            walk_sql,
        })
    }

    /// Deletes (dry: counts) the table's sent rows older than `older_than`,
    /// a stretch per statement, until the first stretch holding a row
    /// inside the window. `each` hears every stretch's count (metrics,
    /// progress).
    pub async fn run(
        &self,
        client: &impl GenericClient,
        older_than: Duration,
        mut each: impl FnMut(u64),
    ) -> Result<Pruned, tokio_postgres::Error> {
        let cutoff = SystemTime::now()
            .checked_sub(older_than)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut after = i64::MIN;
        // Dry, the partitions that would go are still there: the walk
        // passes over their rows, counted already.
        let (mut pruned, dropped) = self.drop_partitions(client, cutoff).await?;
        each(pruned.rows);
        loop {
            let row = client
                .query_one(&self.walk_sql, &[&after, &STRETCH, &cutoff, &dropped])
                .await?;
            let (last, rows, younger): (Option<i64>, i64, bool) =
                (row.get(0), row.get(1), row.get(2));
            pruned.stretches += 1;
            pruned.rows += rows as u64;
            each(rows as u64);
            match last {
                Some(last) if !younger => after = last,
                _ => break,
            }
        }
        if !self.dry_run {
            // Notes of changes to rows now gone (`relay resend`'s check).
            client
                .execute(
                    &format!(
                        "DELETE FROM outbox_changed_rows c WHERE c.source_table = $1 \
                         AND NOT EXISTS (SELECT 1 FROM {} AS src WHERE src.\"id\" = c.source_id)",
                        self.quoted
                    ),
                    &[&self.table],
                )
                .await?;
        }
        Ok(pruned)
    }
}

impl Prune {
    /// Detaches and drops (dry: counts) the partitions wholly before
    /// `cutoff` holding only sent rows (see the module doc), after settling
    /// what an earlier prune's detach left. Returns them and their oids.
    async fn drop_partitions(
        &self,
        client: &impl GenericClient,
        cutoff: SystemTime,
    ) -> Result<(Pruned, Vec<u32>), tokio_postgres::Error> {
        let mut pruned = Pruned::default();
        let mut dropped = Vec::new();
        if !self.dry_run {
            pruned.rows += self.settle_leftovers(client).await?;
        }
        for part in self.partitions(client).await? {
            let Some(rows) = self.droppable(client, &part, cutoff).await else {
                continue;
            };
            let gone = if self.dry_run {
                Some(rows)
            } else {
                self.detach_and_drop(client, &part).await?
            };
            if let Some(rows) = gone {
                pruned.partitions += 1;
                pruned.rows += rows;
                dropped.push(part.oid);
            }
        }
        Ok((pruned, dropped))
    }

    /// The table's partitions by range (not the default one, none pending
    /// detach), each with its constraint and the time column's type there.
    async fn partitions(
        &self,
        client: &impl GenericClient,
    ) -> Result<Vec<Partition>, tokio_postgres::Error> {
        let rows = client
            .query(
                "SELECT c.oid::regclass::text, pg_get_partition_constraintdef(c.oid), \
                 format_type(a.atttypid, a.atttypmod), c.oid, pg_get_expr(c.relpartbound, c.oid) \
                 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
                 JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = $2 AND NOT a.attisdropped \
                 WHERE i.inhparent = $1::text::regclass AND c.relkind = 'r' AND NOT i.inhdetachpending \
                 AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT' ORDER BY 1",
                &[&self.quoted, &self.time.1],
            )
            .await?;
        Ok(rows
            .iter()
            .filter_map(|row| {
                Some(Partition {
                    name: row.get(0),
                    constraint: row.get::<_, Option<String>>(1)?,
                    kind: row.get(2),
                    oid: row.get(3),
                    bound: row.get(4),
                })
            })
            .collect())
    }

    /// The partition's rows when it may go whole: its range wholly before
    /// `cutoff` (the cutoff does not fit its constraint) and every row sent
    /// and older. The constraint names its columns unqualified: evaluated
    /// on a one-column row holding the cutoff (a constraint on other
    /// columns fails here, and the partition is left to the walk).
    async fn droppable(
        &self,
        client: &impl GenericClient,
        part: &Partition,
        cutoff: SystemTime,
    ) -> Option<u64> {
        let (name, time) = (&part.name, &self.time.0);
        let check = format!(
            "SELECT EXISTS (SELECT 1 FROM {name}) \
             AND NOT EXISTS (SELECT 1 FROM {name} AS src WHERE src.sent_to_kafka IS NOT TRUE \
             OR src.{time} IS NULL OR src.{time} >= $1::timestamptz) \
             AND NOT coalesce((SELECT {} FROM (SELECT $1::timestamptz::{} AS {time}) AS probe), false), \
             (SELECT count(*) FROM {name})::int8",
            part.constraint, part.kind
        );
        match client.query_one(&check, &[&cutoff]).await {
            Ok(row) if row.get::<_, bool>(0) => Some(row.get::<_, i64>(1) as u64),
            Ok(_) => None,
            Err(error) => {
                tracing::debug!(partition = name, error = %connections::pg::detail(&error), "partition not judged by its range; pruned row by row");
                None
            }
        }
    }

    /// Records the detach, detaches `CONCURRENTLY` and settles the
    /// partition (see the module doc); its rows when it was dropped.
    async fn detach_and_drop(
        &self,
        client: &impl GenericClient,
        part: &Partition,
    ) -> Result<Option<u64>, tokio_postgres::Error> {
        let name = &part.name;
        client
            .execute(
                "INSERT INTO outbox_partition_detaches (partition, parent, bound) \
                 VALUES ($1, $2::text::regclass, $3) ON CONFLICT (partition) DO NOTHING",
                &[name, &self.quoted, &part.bound],
            )
            .await?;
        let detach = format!(
            "ALTER TABLE {} DETACH PARTITION {name} CONCURRENTLY",
            self.quoted
        );
        if let Err(error) = client.batch_execute(&detach).await {
            // E.g. a default partition exists (CONCURRENTLY is refused
            // then): the walk deletes its rows instead. Cut short in its
            // second step (a timeout), the partition is pending detach: the
            // next prune settles it.
            tracing::warn!(table = self.table, partition = name, error = %connections::pg::detail(&error), "partition not detached; pruned row by row (a detach cut short is settled by the next prune)");
            return Ok(None);
        }
        daemon::failpoint::hit("relay-prune-after-detach");
        match self.settle(client, name, &part.bound).await? {
            Settled::Dropped(rows) => {
                tracing::info!(
                    table = self.table,
                    partition = name,
                    rows,
                    "partition older than the retention dropped"
                );
                Ok(Some(rows))
            }
            Settled::Attached(_) | Settled::Nothing => Ok(None),
        }
    }

    /// Settles the partitions of this table an earlier prune's detach left
    /// (see the module doc); the rows of those it dropped.
    async fn settle_leftovers(
        &self,
        client: &impl GenericClient,
    ) -> Result<u64, tokio_postgres::Error> {
        let leftovers = client
            .query(
                "SELECT partition, bound FROM outbox_partition_detaches \
                 WHERE parent = $1::text::regclass ORDER BY 1",
                &[&self.quoted],
            )
            .await?;
        let mut rows = 0;
        for leftover in leftovers {
            let (part, bound): (String, String) = (leftover.get(0), leftover.get(1));
            match self.settle(client, &part, &bound).await? {
                Settled::Dropped(n) => {
                    tracing::info!(
                        table = self.table,
                        partition = part,
                        rows = n,
                        "partition an earlier prune detached: dropped"
                    );
                    rows += n;
                }
                Settled::Attached(pending) => {
                    tracing::warn!(
                        table = self.table,
                        partition = part,
                        pending,
                        "partition an earlier prune detached held pending rows: attached again, the relay publishes them"
                    );
                }
                Settled::Nothing => {}
            }
        }
        Ok(rows)
    }

    /// Ends a recorded detach of `part`: finishes it if it was cut short,
    /// then, with the detached table locked against every writer, drops it
    /// when it holds no pending row and attaches it again (`bound`) when it
    /// does. Attached all along (the detach never started): nothing to do.
    async fn settle(
        &self,
        client: &impl GenericClient,
        part: &str,
        bound: &str,
    ) -> Result<Settled, tokio_postgres::Error> {
        let state = client
            .query_one(
                "SELECT to_regclass($1) IS NOT NULL, \
                 (SELECT i.inhdetachpending FROM pg_inherits i \
                  WHERE i.inhrelid = to_regclass($1) AND i.inhparent = $2::text::regclass)",
                &[&part, &self.quoted],
            )
            .await?;
        let (exists, pending_detach): (bool, Option<bool>) = (state.get(0), state.get(1));
        let settled = match (exists, pending_detach) {
            (false, _) | (true, Some(false)) => Settled::Nothing,
            (true, detaching) => {
                if detaching == Some(true) {
                    client
                        .batch_execute(&format!(
                            "ALTER TABLE {} DETACH PARTITION {part} FINALIZE",
                            self.quoted
                        ))
                        .await?;
                }
                self.drop_or_attach(client, part, bound).await?
            }
        };
        client
            .execute(
                "DELETE FROM outbox_partition_detaches WHERE partition = $1",
                &[&part],
            )
            .await?;
        Ok(settled)
    }

    /// The second look at a detached partition, in one transaction.
    async fn drop_or_attach(
        &self,
        client: &impl GenericClient,
        part: &str,
        bound: &str,
    ) -> Result<Settled, tokio_postgres::Error> {
        client.batch_execute("BEGIN").await?;
        let settled = async {
            client
                .batch_execute(&format!("LOCK TABLE {part} IN ACCESS EXCLUSIVE MODE"))
                .await?;
            let counts = client
                .query_one(
                    &format!(
                        "SELECT count(*) FILTER (WHERE sent_to_kafka IS NOT TRUE)::int8, count(*)::int8 FROM {part}"
                    ),
                    &[],
                )
                .await?;
            let (pending, rows): (i64, i64) = (counts.get(0), counts.get(1));
            if pending == 0 {
                client.batch_execute(&format!("DROP TABLE {part}")).await?;
                return Ok(Settled::Dropped(rows as u64));
            }
            client
                .batch_execute(&format!(
                    "ALTER TABLE {} ATTACH PARTITION {part} {bound}",
                    self.quoted
                ))
                .await?;
            tracing::warn!(
                table = self.table,
                partition = part,
                pending,
                "a partition detached to be dropped held pending rows (written while it was being detached): attached again"
            );
            Ok(Settled::Attached(pending as u64))
        }
        .await;
        match settled {
            Ok(done) => {
                client.batch_execute("COMMIT").await?;
                Ok(done)
            }
            Err(error) => {
                let _ = client.batch_execute("ROLLBACK").await;
                Err(error)
            }
        }
    }
}

/// A partition by range of a source table.
struct Partition {
    /// Its name, as `regclass` prints it.
    name: String,
    /// Its partition constraint.
    constraint: String,
    /// The time column's type in it.
    kind: String,
    oid: u32,
    /// `FOR VALUES …`: how to attach it again.
    bound: String,
}

/// How a detached partition ended (see [`Prune::settle`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    /// No pending row: dropped, with this many rows.
    Dropped(u64),
    /// Pending rows written meanwhile: attached again.
    Attached(u64),
    /// Attached all along, or gone.
    Nothing,
}

/// The active relay's prune of a flow with `retention` (the leader of its
/// first shard only: the statements cover the whole table): one run at a
/// time, on a pooled session, every `RELAY_PRUNE_INTERVAL_MS`, the first
/// one interval after taking the lead.
pub struct Scheduled {
    running: Option<tokio::task::JoinHandle<()>>,
    last: std::time::Instant,
}

impl Default for Scheduled {
    fn default() -> Self {
        Self {
            running: None,
            last: std::time::Instant::now(),
        }
    }
}

impl Scheduled {
    pub fn start_if_due(
        &mut self,
        pool: &connections::pg_pool::Pool,
        flow: &flows::Flow,
        every: Duration,
        metrics: &daemon::metrics::Metrics,
    ) {
        let Some(retention) = flow.retention else {
            return;
        };
        if self.running.as_ref().is_some_and(|r| !r.is_finished()) || self.last.elapsed() < every {
            return;
        }
        self.last = std::time::Instant::now();
        let (pool, flow, metrics) = (pool.clone(), flow.clone(), metrics.clone());
        self.running = Some(tokio::spawn(async move {
            let name = flow.name.to_string();
            let session = match pool.get().await {
                Ok(session) => session,
                Err(error) => {
                    tracing::warn!(flow = name, %error, "prune skipped: no database session");
                    return;
                }
            };
            let mut failed = false;
            for prune in flow.sources.iter().filter_map(|s| Prune::of(s, false)) {
                let counter = crate::stats::pruned_rows(&metrics, &name, &prune.table);
                match prune
                    .run(&**session, retention, |n| counter.add(n as i64))
                    .await
                {
                    Ok(done) if done.rows > 0 => {
                        tracing::info!(
                            flow = name,
                            table = prune.table,
                            rows = done.rows,
                            statements = done.stretches,
                            "sent rows older than the retention deleted"
                        );
                    }
                    Ok(_) => {}
                    Err(error) => {
                        failed = true;
                        tracing::warn!(flow = name, table = prune.table, error = %connections::pg::detail(&error), "prune failed; tried again next interval");
                    }
                }
            }
            if !failed {
                let now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                crate::stats::last_prune(&metrics, &name).set(now);
            }
        }));
    }
}
