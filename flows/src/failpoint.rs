//! Crash points for fault tests: `OUTBOX_FAILPOINTS=name=probability,…`
//! makes the process abort (like kill -9: no cleanup, no flush) when it
//! reaches a named point, with that probability. Unset in production, where
//! a check costs one atomic load.
//!
//! Points: `relay-after-kafka-commit` (Kafka committed, Postgres not yet),
//! `sink-after-insert` (ClickHouse accepted, offsets not yet committed),
//! `stage-before-commit` (records produced, transaction not yet committed).

use std::sync::OnceLock;

static POINTS: OnceLock<Vec<(String, f64)>> = OnceLock::new();

fn points() -> &'static [(String, f64)] {
    POINTS.get_or_init(|| {
        std::env::var("OUTBOX_FAILPOINTS")
            .unwrap_or_default()
            .split(',')
            .filter_map(|spec| {
                let (name, p) = spec.split_once('=')?;
                Some((name.trim().to_owned(), p.trim().parse().ok()?))
            })
            .collect()
    })
}

/// Aborts the process if `name` is armed and the draw hits.
pub fn hit(name: &str) {
    let Some((_, p)) = points().iter().find(|(n, _)| n == name) else {
        return;
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    if f64::from(nanos % 1_000_000) / 1_000_000.0 < *p {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}
