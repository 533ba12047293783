//! Each flow's recent freshness for the dashboard: p50 and p99 of the
//! sink's `sink_freshness_seconds` over the last few minutes. The histogram
//! counts since the sink started, so the page keeps snapshots of its
//! cumulative buckets and takes quantiles of what changed across the window
//! (hand-written: a few lines, no time-series store needed).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How far back the figures look.
pub const WINDOW: Duration = Duration::from_secs(300);

/// Per flow: (upper bound in seconds, cumulative count) of its buckets,
/// summed over its tables.
type Buckets = BTreeMap<String, Vec<(f64, f64)>>;

#[derive(Default)]
pub struct Recent {
    snapshots: Mutex<VecDeque<(Instant, Buckets)>>,
}

/// A flow's freshness over the window.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    pub rows: f64,
    /// Upper bounds of the buckets holding the median and the 99th
    /// percentile, in ms.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// The window's length; `None` when no row was loaded in it and the
    /// figures are since the sink started.
    pub window_s: Option<u64>,
}

impl Recent {
    /// Takes a snapshot of the sink's metrics text and returns the figures
    /// over the window (since the oldest snapshot in it) of each of `flows`
    /// the sink reports on.
    pub fn observe(&self, metrics: Option<&str>, flows: &[&str]) -> BTreeMap<String, Figures> {
        let now = Instant::now();
        let current: Buckets = metrics
            .map(|text| {
                flows
                    .iter()
                    .map(|flow| {
                        let buckets = daemon::http::histogram_buckets(
                            text,
                            "sink_freshness_seconds",
                            &[("flow", flow)],
                        );
                        ((*flow).to_owned(), buckets)
                    })
                    .filter(|(_, buckets)| !buckets.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let mut snapshots = self
            .snapshots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while snapshots
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > WINDOW)
        {
            snapshots.pop_front();
        }
        snapshots.push_back((now, current.clone()));
        let (since, base) = snapshots.front().cloned().unwrap_or((now, Buckets::new()));
        // One snapshot: the window is everything since the sink started.
        let base = if snapshots.len() > 1 {
            base
        } else {
            Buckets::new()
        };
        current
            .into_iter()
            .map(|(flow, buckets)| {
                let before = base.get(&flow);
                let mut delta: Vec<(f64, f64)> = buckets
                    .iter()
                    .map(|(le, n)| {
                        let was = before
                            .and_then(|b| b.iter().find(|(l, _)| l == le))
                            .map_or(0.0, |(_, n)| *n);
                        (*le, (n - was).max(0.0))
                    })
                    .collect();
                let mut window_s = Some(now.duration_since(since).as_secs());
                if delta.last().is_none_or(|(_, n)| *n == 0.0) {
                    // A quiet window: what the sink saw since it started.
                    delta = buckets.clone();
                    window_s = None;
                }
                let rows = delta.last().map_or(0.0, |(_, n)| *n);
                let quantile =
                    |q: f64| daemon::http::bucket_quantile(&delta, q).map(|le| le * 1000.0);
                let figures = Figures {
                    rows,
                    p50_ms: quantile(0.5),
                    p99_ms: quantile(0.99),
                    window_s,
                };
                (flow, figures)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(counts: [u32; 3]) -> String {
        let [a, b, c] = counts;
        format!(
            "sink_freshness_seconds_bucket{{flow=\"f\",table=\"t\",le=\"0.05\"}} {a}\n\
             sink_freshness_seconds_bucket{{flow=\"f\",table=\"t\",le=\"0.1\"}} {b}\n\
             sink_freshness_seconds_bucket{{flow=\"f\",table=\"t\",le=\"+Inf\"}} {c}\n"
        )
    }

    #[test]
    fn quantiles_of_what_changed_in_the_window() {
        let recent = Recent::default();
        let first = recent.observe(Some(&text([90, 100, 100])), &["f"]);
        assert_eq!(first["f"].rows, 100.0);
        assert_eq!(first["f"].p50_ms, Some(50.0));
        assert_eq!(first["f"].p99_ms, Some(100.0));
        // Since then: 100 rows, all slower than 100 ms.
        let later = recent.observe(Some(&text([90, 100, 200])), &["f"]);
        assert_eq!(later["f"].rows, 100.0);
        assert_eq!(later["f"].p50_ms, Some(f64::INFINITY));
        assert!(later["f"].window_s.is_some());
        // Nothing loaded across the window: the figures since the sink
        // started.
        let quiet = Recent::default();
        quiet.observe(Some(&text([90, 100, 200])), &["f"]);
        let again = quiet.observe(Some(&text([90, 100, 200])), &["f"]);
        assert_eq!((again["f"].rows, again["f"].window_s), (200.0, None));
        assert!(
            recent.observe(None, &["f"]).is_empty(),
            "no sink: no figures"
        );
    }
}
