//! A small metrics registry: counters, gauges and histograms keyed by name
//! and labels, rendered in the Prometheus text format. Each daemon owns one and passes it
//! down, so tests running several daemons in one process keep them apart.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

type Key = (String, Vec<(String, String)>);

fn key(name: &str, labels: &[(&str, &str)]) -> Key {
    (
        name.to_owned(),
        labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    )
}

#[derive(Default)]
struct Inner {
    help: BTreeMap<String, (&'static str, &'static str)>,
    values: BTreeMap<Key, Arc<AtomicI64>>,
    histograms: BTreeMap<Key, Arc<Buckets>>,
}

/// Bucket bounds for durations in seconds (1 ms … 30 s).
pub const SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Bucket bounds for batch sizes in rows.
pub const ROWS: &[f64] = &[1.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0, 1_000_000.0];

struct Buckets {
    bounds: &'static [f64],
    /// Observations at or below each bound (not cumulative; summed on render).
    counts: Vec<AtomicU64>,
    count: AtomicU64,
    /// f64 bits of the running sum.
    sum: AtomicU64,
}

/// A handle to one labelled histogram.
#[derive(Clone)]
pub struct Histogram(Arc<Buckets>);

impl Histogram {
    pub fn observe(&self, value: f64) {
        let b = &self.0;
        if let Some(i) = b.bounds.iter().position(|bound| value <= *bound) {
            b.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        b.count.fetch_add(1, Ordering::Relaxed);
        let _ = b
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
    }

    pub fn observe_duration(&self, d: std::time::Duration) {
        self.observe(d.as_secs_f64());
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.0.count.load(Ordering::Relaxed)
    }

    /// Sum of the observed values.
    pub fn sum(&self) -> f64 {
        f64::from_bits(self.0.sum.load(Ordering::Relaxed))
    }
}

/// Cheap to clone; clones share the registry.
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<Mutex<Inner>>,
}

/// A handle to one labelled series.
#[derive(Clone)]
pub struct Series(Arc<AtomicI64>);

impl Series {
    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Metrics {
    fn series(
        &self,
        kind: &'static str,
        name: &str,
        help: &'static str,
        labels: &[(&str, &str)],
    ) -> Series {
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        inner.help.entry(name.to_owned()).or_insert((kind, help));
        Series(Arc::clone(
            inner.values.entry(key(name, labels)).or_default(),
        ))
    }

    /// A monotonically increasing count (name should end in `_total`).
    pub fn counter(&self, name: &str, help: &'static str, labels: &[(&str, &str)]) -> Series {
        self.series("counter", name, help, labels)
    }

    /// A value that goes up and down.
    pub fn gauge(&self, name: &str, help: &'static str, labels: &[(&str, &str)]) -> Series {
        self.series("gauge", name, help, labels)
    }

    /// A distribution (durations in seconds with [`SECONDS`], sizes with
    /// [`ROWS`]). The first registration of a name fixes its bounds.
    pub fn histogram(
        &self,
        name: &str,
        help: &'static str,
        bounds: &'static [f64],
        labels: &[(&str, &str)],
    ) -> Histogram {
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        inner
            .help
            .entry(name.to_owned())
            .or_insert(("histogram", help));
        Histogram(Arc::clone(
            inner
                .histograms
                .entry(key(name, labels))
                .or_insert_with(|| {
                    Arc::new(Buckets {
                        bounds,
                        counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
                        count: AtomicU64::new(0),
                        sum: AtomicU64::new(0f64.to_bits()),
                    })
                }),
        ))
    }

    /// The current value of a series, 0 if it was never registered.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> i64 {
        let inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        inner
            .values
            .get(&key(name, labels))
            .map_or(0, |v| v.load(Ordering::Relaxed))
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = String::new();
        let mut last = "";
        for ((name, labels), value) in &inner.values {
            if name != last {
                if let Some((kind, help)) = inner.help.get(name) {
                    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
                }
                last = name;
            }
            let labels = render_labels(labels, None);
            let _ = writeln!(out, "{name}{labels} {}", value.load(Ordering::Relaxed));
        }
        last = "";
        for ((name, labels), b) in &inner.histograms {
            if name != last {
                if let Some((kind, help)) = inner.help.get(name) {
                    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
                }
                last = name;
            }
            let mut cumulative = 0;
            for (bound, count) in b.bounds.iter().zip(&b.counts) {
                cumulative += count.load(Ordering::Relaxed);
                let le = render_labels(labels, Some(&bound.to_string()));
                let _ = writeln!(out, "{name}_bucket{le} {cumulative}");
            }
            let count = b.count.load(Ordering::Relaxed);
            let inf = render_labels(labels, Some("+Inf"));
            let plain = render_labels(labels, None);
            let sum = f64::from_bits(b.sum.load(Ordering::Relaxed));
            let _ = writeln!(out, "{name}_bucket{inf} {count}");
            let _ = writeln!(out, "{name}_sum{plain} {sum}");
            let _ = writeln!(out, "{name}_count{plain} {count}");
        }
        out
    }
}

/// `{k="v",…}` with Prometheus escaping, plus `le` for histogram buckets.
fn render_labels(labels: &[(String, String)], le: Option<&str>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_renders() {
        let m = Metrics::default();
        let c = m.counter("rows_total", "Rows.", &[("flow", "a\"b")]);
        c.add(3);
        m.counter("rows_total", "Rows.", &[("flow", "a\"b")]).inc();
        m.gauge("lag", "Lag.", &[]).set(-2);
        assert_eq!(m.value("rows_total", &[("flow", "a\"b")]), 4);
        assert_eq!(m.value("missing", &[]), 0);
        let text = m.render();
        assert!(
            text.contains("# TYPE rows_total counter\nrows_total{flow=\"a\\\"b\"} 4\n"),
            "{text}"
        );
        assert!(text.contains("lag -2\n"));
    }

    #[test]
    fn histograms_render_cumulative_buckets() {
        let m = Metrics::default();
        let h = m.histogram("batch_rows", "Rows per batch.", ROWS, &[("flow", "f")]);
        h.observe(5.0);
        h.observe(5000.0);
        h.observe(5e7);
        assert_eq!(h.count(), 3);
        assert_eq!(h.sum(), 5.0 + 5000.0 + 5e7);
        let text = m.render();
        assert!(text.contains("# TYPE batch_rows histogram\n"), "{text}");
        assert!(
            text.contains("batch_rows_bucket{flow=\"f\",le=\"1\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("batch_rows_bucket{flow=\"f\",le=\"10\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("batch_rows_bucket{flow=\"f\",le=\"10000\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("batch_rows_bucket{flow=\"f\",le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("batch_rows_count{flow=\"f\"} 3\n"), "{text}");
    }
}
