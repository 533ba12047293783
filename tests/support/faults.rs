//! The fault suite's harness: a steady load on two flows (`user_logins` and
//! `sales`), checks of the guarantee after each fault, and a results row per
//! fault for README's table (`scripts/faults.sh` renders them).

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::stack::TestStack;
use crate::wait::wait_for;

/// `FAULT_ROUNDS=long` runs the documented long loop; anything else the short
/// one CI runs.
pub fn long_mode() -> bool {
    std::env::var("FAULT_ROUNDS").is_ok_and(|v| v == "long")
}

/// Short or long: how many times to inject, and how long outages last.
pub fn rounds(short: u32, long: u32) -> u32 {
    if long_mode() { long } else { short }
}

/// Rows inserted by plain SQL at a steady rate into `user_logins`, `sales`
/// and `warehouse`, reconnecting when Postgres goes away.
pub struct Load {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    pub inserted: Arc<AtomicU64>,
}

impl Load {
    pub fn start(stack: &TestStack, rows_per_sec: u64) -> Self {
        let url = stack.database_url.clone();
        let stop = CancellationToken::new();
        let inserted = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let (stop, inserted) = (stop.clone(), Arc::clone(&inserted));
            async move {
                let per_tick = (rows_per_sec / 20).max(1) as i32;
                let mut tick = tokio::time::interval(Duration::from_millis(50));
                let mut client = None;
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        () = stop.cancelled() => return,
                    }
                    if client.is_none() {
                        if let Ok((c, conn)) =
                            tokio_postgres::connect(&url, tokio_postgres::NoTls).await
                        {
                            tokio::spawn(conn);
                            client = Some(c);
                        } else {
                            continue;
                        }
                    }
                    let Some(c) = &client else { continue };
                    let batch = c
                        .batch_execute(&format!(
                            "INSERT INTO user_logins (username, event_type, event_time)
                               SELECT 'load-' || g, 'login', now() FROM generate_series(1, {per_tick}) g;
                             INSERT INTO sales (event_time, product_id, product_name, category, quantity, price, discount, total, store_id, cashier_id, customer_id)
                               SELECT '2024-01-01 00:00:00', g, 'p', 'c', 1, 1.50, 0, 1.50, 1, 1, 'x' FROM generate_series(1, {per_tick}) g;
                             INSERT INTO warehouse (event_time, product_id, product_name, category, warehouse, quantity, movement_type, source, responsible)
                               SELECT '2024-01-01 00:00:00', g, 'p', 'c', 'w', 1, 'supply', 's', 'r' FROM generate_series(1, {per_tick}) g;"
                        ))
                        .await;
                    match batch {
                        Ok(()) => {
                            inserted.fetch_add(3 * per_tick as u64, Ordering::Relaxed);
                        }
                        Err(_) => client = None, // reconnect next tick
                    }
                }
            }
        });
        Self {
            stop,
            task,
            inserted,
        }
    }

    pub async fn stop(self) -> u64 {
        self.stop.cancel();
        let _ = self.task.await;
        self.inserted.load(Ordering::Relaxed)
    }
}

/// One row of the results table.
#[derive(Debug, serde::Serialize)]
pub struct FaultReport {
    pub fault: String,
    pub injected: u32,
    pub rows_sent: u64,
    pub rows_lost: u64,
    pub doubled_in_view: u64,
    /// Rows ClickHouse accepted more than once (see [`record_arrivals`]).
    pub raw_duplicates: u64,
    pub recovery_ms: u64,
    pub note: String,
}

const PAIRS: [(&str, &str); 3] = [
    ("user_logins", "user_logins"),
    ("sales", "sales"),
    ("warehouse", "stock_movements"),
];

/// Records every row ClickHouse accepts into each target table in
/// `<table>_arrivals`, a plain MergeTree fed by a materialized view on
/// insert, which no merge collapses: raw duplicates are counted there, as
/// stored, before `ReplacingMergeTree` merges can hide them.
pub async fn record_arrivals(stack: &TestStack) -> anyhow::Result<()> {
    let targets: Vec<&str> = PAIRS.iter().map(|(_, ch)| *ch).collect();
    record_arrivals_into(stack, &targets).await
}

/// [`record_arrivals`] for other target tables.
pub async fn record_arrivals_into(stack: &TestStack, targets: &[&str]) -> anyhow::Result<()> {
    for ch in targets {
        stack
            .ch()
            .query(&format!(
                "CREATE MATERIALIZED VIEW {ch}_arrivals ENGINE = MergeTree ORDER BY id AS SELECT id FROM {ch}"
            ))
            .execute()
            .await?;
    }
    Ok(())
}

/// Waits until every source row is flagged and every table caught up, then
/// measures the guarantee. `recovering_since` is when the last fault ended.
pub async fn verify(
    stack: &TestStack,
    fault: &str,
    injected: u32,
    recovering_since: Instant,
    note: &str,
) -> FaultReport {
    verify_tables(stack, &PAIRS, fault, injected, recovering_since, note).await
}

/// [`verify`] for other (Postgres source, ClickHouse target) tables, each
/// target keyed by `id` with an `{target}_arrivals` twin (see
/// [`record_arrivals`] for the built-in ones).
pub async fn verify_tables(
    stack: &TestStack,
    pairs: &[(&str, &str)],
    fault: &str,
    injected: u32,
    recovering_since: Instant,
    note: &str,
) -> FaultReport {
    wait_for(
        &format!("{fault}: everything delivered"),
        Duration::from_secs(90),
        || async {
            for (pg, ch) in pairs {
                let sent: i64 = stack
                    .pg()
                    .await?
                    .query_one(&format!("SELECT count(*) FROM {pg}"), &[])
                    .await?
                    .get(0);
                let pending = stack.pending(pg).await?;
                let stored = stack.ch_count_final(ch).await?;
                if pending != 0 || stored < sent as u64 {
                    return Ok(Err(format!(
                        "{pg}: {sent} rows, {pending} not yet flagged sent; {ch}: {stored} in ClickHouse (FINAL)"
                    )));
                }
            }
            Ok(Ok(()))
        },
    )
    .await;
    let recovery_ms = recovering_since.elapsed().as_millis() as u64;
    let mut report = FaultReport {
        fault: fault.into(),
        injected,
        rows_sent: 0,
        rows_lost: 0,
        doubled_in_view: 0,
        raw_duplicates: 0,
        recovery_ms,
        note: note.into(),
    };
    for (pg, ch) in pairs {
        let client = stack.pg().await.unwrap_or_else(|e| panic!("{e:#}"));
        let source: BTreeSet<u64> = client
            .query(&format!("SELECT id::int8 FROM {pg}"), &[])
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
            .iter()
            .map(|r| r.get::<_, i64>(0) as u64)
            .collect();
        let stored: Vec<u64> = stack
            .ch()
            .query(&format!("SELECT id FROM {ch} FINAL"))
            .fetch_all()
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        let distinct: BTreeSet<u64> = stored.iter().copied().collect();
        let raw: (u64, u64) = stack
            .ch()
            .query(&format!("SELECT count(), uniqExact(id) FROM {ch}_arrivals"))
            .fetch_one()
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        report.rows_sent += source.len() as u64;
        report.rows_lost += source.difference(&distinct).count() as u64;
        report.doubled_in_view +=
            (stored.len() - distinct.len()) as u64 + distinct.difference(&source).count() as u64;
        report.raw_duplicates += raw.0 - raw.1;
    }
    record(&report);
    assert_eq!(report.rows_lost, 0, "{fault}: rows lost: {report:?}");
    assert_eq!(
        report.doubled_in_view, 0,
        "{fault}: rows doubled in the deduplicated view: {report:?}"
    );
    report
}

/// Records a report measured by a test of its own (not through
/// [`verify`]) and asserts that it lost and doubled nothing.
pub fn record_checked(report: FaultReport) -> FaultReport {
    record(&report);
    assert_eq!(report.rows_lost, 0, "rows lost: {report:?}");
    assert_eq!(report.doubled_in_view, 0, "rows doubled: {report:?}");
    report
}

/// Appends the report to `target/fault-results.jsonl` (or FAULT_RESULTS).
pub fn record(report: &FaultReport) {
    let path = std::env::var("FAULT_RESULTS").unwrap_or_else(|_| {
        let exe = std::env::current_exe().unwrap_or_default();
        exe.ancestors()
            .nth(3)
            .map(|t| t.join("fault-results.jsonl").display().to_string())
            .unwrap_or_else(|| "fault-results.jsonl".into())
    });
    eprintln!(
        "fault result: {}",
        serde_json::to_string(report).unwrap_or_default()
    );
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{}", serde_json::to_string(report).unwrap_or_default());
    }
}

/// Peak resident memory of a process so far, in MiB (VmHWM).
pub fn peak_rss_mib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// How many times crash point `point` was hit by the daemons whose logs
/// start with `label_prefix` (each hit prints `failpoint NAME: …`).
pub fn failpoint_hits(label_prefix: &str, point: &str) -> usize {
    let dir = super::daemon::binary("relay")
        .parent()
        .map(|d| d.join("test-logs"))
        .unwrap_or_default();
    let needle = format!("failpoint {point}: ");
    std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(label_prefix))
                .map(|e| {
                    std::fs::read_to_string(e.path())
                        .unwrap_or_default()
                        .matches(&needle)
                        .count()
                })
                .sum()
        })
        .unwrap_or(0)
}
