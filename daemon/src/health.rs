//! Readiness for `/readyz`: every flow connected and making progress.
//!
//! Each flow reports what its probe sees: whether it reached its systems,
//! its backlog (rows pending in Postgres, or consumer lag in Kafka), and a
//! progress marker — any number that changes when rows move (rows published
//! or inserted, the oldest pending id). A flow with a backlog whose marker
//! has not changed for `stall_after` is stalled, and a stalled pipeline is
//! not ready: it must not look healthy while nothing moves.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often a probe looks: often enough to see a stall within a quarter of
/// its threshold, at most every 5 s.
pub fn probe_interval(stall_after: Duration) -> Duration {
    (stall_after / 4).min(Duration::from_secs(5))
}

/// The readiness of one daemon's flows. Cheap to clone.
#[derive(Clone)]
pub struct Health {
    flows: Arc<Mutex<BTreeMap<String, FlowState>>>,
    stall_after: Duration,
}

struct FlowState {
    /// Set by the flow's own loop: what it cannot get past until an
    /// operator acts (e.g. ClickHouse refusing a target table), by cause
    /// (one per table, the dead-letter topic …), with the reason. Each is
    /// cleared when the flow gets past that cause.
    blocked: BTreeMap<String, String>,
    connected: bool,
    probed: bool,
    backlog: i64,
    marker: i64,
    moved_at: Instant,
}

/// One flow's reporting handle.
#[derive(Clone)]
pub struct FlowHealth {
    health: Health,
    flow: String,
}

impl Health {
    pub fn new(stall_after: Duration) -> Self {
        Self {
            flows: Arc::default(),
            stall_after,
        }
    }

    /// Registers `flow` (not ready until its first probe).
    pub fn flow(&self, flow: &str) -> FlowHealth {
        self.lock().entry(flow.to_owned()).or_insert(FlowState {
            blocked: BTreeMap::new(),
            connected: false,
            probed: false,
            backlog: 0,
            marker: 0,
            moved_at: Instant::now(),
        });
        FlowHealth {
            health: self.clone(),
            flow: flow.to_owned(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, FlowState>> {
        self.flows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether every flow is ready, and one line per flow saying why.
    pub fn check(&self) -> (bool, String) {
        self.check_at(Instant::now())
    }

    fn check_at(&self, now: Instant) -> (bool, String) {
        let mut ready = true;
        let mut report = String::new();
        for (flow, state) in self.lock().iter() {
            let still = now.saturating_duration_since(state.moved_at);
            let verdict = if !state.blocked.is_empty() {
                let reasons: Vec<&str> = state.blocked.values().map(String::as_str).collect();
                format!("not ready: {}", reasons.join("; "))
            } else if !state.probed {
                "not ready: not probed yet".to_owned()
            } else if !state.connected {
                "not ready: cannot reach its systems".to_owned()
            } else if state.backlog > 0 && still >= self.stall_after {
                format!(
                    "not ready: stalled, backlog {} and nothing moved for {} s",
                    state.backlog,
                    still.as_secs()
                )
            } else {
                format!("ready: backlog {}", state.backlog)
            };
            ready &= verdict.starts_with("ready");
            let _ = writeln!(report, "flow={flow} {verdict}");
        }
        (ready, report)
    }
}

impl FlowHealth {
    /// The flow cannot get past `cause` (e.g. `table:t`) until someone
    /// acts: not ready, saying `reason`, whatever its probe sees.
    pub fn block(&self, cause: &str, reason: &str) {
        if let Some(state) = self.health.lock().get_mut(&self.flow) {
            state.blocked.insert(cause.to_owned(), reason.to_owned());
        }
    }

    /// The flow got past `cause`; other causes still hold it.
    pub fn unblock(&self, cause: &str) {
        if let Some(state) = self.health.lock().get_mut(&self.flow) {
            state.blocked.remove(cause);
        }
    }

    /// The probe could not reach the flow's systems.
    pub fn unreachable(&self) {
        let mut flows = self.health.lock();
        if let Some(state) = flows.get_mut(&self.flow) {
            state.probed = true;
            state.connected = false;
        }
    }

    /// What the probe saw: the backlog and the progress marker.
    pub fn observe(&self, backlog: i64, marker: i64) {
        self.observe_at(backlog, marker, Instant::now());
    }

    fn observe_at(&self, backlog: i64, marker: i64, now: Instant) {
        let mut flows = self.health.lock();
        if let Some(state) = flows.get_mut(&self.flow) {
            if !state.probed || marker != state.marker || backlog <= 0 {
                state.moved_at = now;
            }
            state.probed = true;
            state.connected = true;
            state.backlog = backlog;
            state.marker = marker;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backlog_that_does_not_move_is_not_ready() {
        let health = Health::new(Duration::from_secs(30));
        let flow = health.flow("f");
        let t0 = Instant::now();
        assert!(!health.check_at(t0).0, "not ready before the first probe");
        flow.observe_at(100, 7, t0);
        assert!(health.check_at(t0 + Duration::from_secs(10)).0);
        // Same marker, backlog still there: stalled after 30 s.
        flow.observe_at(120, 7, t0 + Duration::from_secs(20));
        let (ready, report) = health.check_at(t0 + Duration::from_secs(31));
        assert!(!ready);
        assert!(
            report.contains("flow=f not ready: stalled, backlog 120"),
            "{report}"
        );
        // Rows move again: ready.
        flow.observe_at(90, 8, t0 + Duration::from_secs(32));
        assert!(health.check_at(t0 + Duration::from_secs(33)).0);
    }

    #[test]
    fn a_blocked_flow_is_not_ready_with_its_reason_until_unblocked() {
        let health = Health::new(Duration::from_secs(30));
        let flow = health.flow("f");
        let t0 = Instant::now();
        flow.observe_at(0, 1, t0);
        flow.block(
            "table:t",
            "ClickHouse refuses inserts into t: no such table",
        );
        flow.block(
            "table:u",
            "ClickHouse refuses inserts into u: no such table",
        );
        let (ready, report) = health.check_at(t0);
        assert!(!ready);
        assert!(
            report.contains("flow=f not ready: ClickHouse refuses inserts into t: no such table; ClickHouse refuses inserts into u"),
            "{report}"
        );
        // One table back: the other still holds the flow.
        flow.unblock("table:t");
        let (ready, report) = health.check_at(t0);
        assert!(
            !ready && !report.contains("into t:") && report.contains("into u:"),
            "{report}"
        );
        flow.unblock("table:u");
        assert!(health.check_at(t0).0);
    }

    #[test]
    fn no_backlog_is_ready_however_long_nothing_moves() {
        let health = Health::new(Duration::from_secs(30));
        let flow = health.flow("f");
        let t0 = Instant::now();
        flow.observe_at(0, 1, t0);
        flow.observe_at(0, 1, t0 + Duration::from_secs(100));
        assert!(health.check_at(t0 + Duration::from_secs(200)).0);
    }

    #[test]
    fn unreachable_systems_are_not_ready_and_every_flow_counts() {
        let health = Health::new(Duration::from_secs(30));
        let a = health.flow("a");
        let b = health.flow("b");
        let t0 = Instant::now();
        a.observe_at(0, 0, t0);
        b.unreachable();
        let (ready, report) = health.check_at(t0);
        assert!(!ready);
        assert!(report.contains("flow=a ready"), "{report}");
        assert!(
            report.contains("flow=b not ready: cannot reach"),
            "{report}"
        );
    }
}
