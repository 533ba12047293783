//! The daemons' metrics on `prometheus-client`: counters, gauges and
//! histograms keyed by name and labels, rendered in the Prometheus (OpenMetrics)
//! text format. Each daemon owns one registry and passes it down, so tests
//! running several daemons in one process keep them apart.
//!
//! This module only adds what the daemons need on top of the crate: series
//! registered by name on first use (one `Family` per name, with dynamic
//! labels), and reading a series back (`value`, for tests and status).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Bucket bounds for durations in seconds (1 ms … 30 s).
pub const SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Bucket bounds for batch sizes in rows.
pub const ROWS: &[f64] = &[1.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0, 1_000_000.0];

/// Makes each labelled histogram of a name with the name's bounds.
#[derive(Clone)]
struct Bounds(&'static [f64]);

impl MetricConstructor<prometheus_client::metrics::histogram::Histogram> for Bounds {
    fn new_metric(&self) -> prometheus_client::metrics::histogram::Histogram {
        prometheus_client::metrics::histogram::Histogram::new(self.0.iter().copied())
    }
}

type HistogramFamily = Family<Labels, prometheus_client::metrics::histogram::Histogram, Bounds>;

/// One registered name.
enum Kind {
    Counter(Family<Labels, Counter>),
    Gauge(Family<Labels, Gauge>),
    Histogram(HistogramFamily),
}

#[derive(Default)]
struct Inner {
    registry: Registry,
    names: BTreeMap<String, Kind>,
    /// Count and sum per histogram series (the crate does not read them
    /// back).
    totals: BTreeMap<(String, Labels), Arc<Totals>>,
}

#[derive(Default)]
struct Totals {
    count: AtomicU64,
    /// f64 bits of the running sum.
    sum: AtomicU64,
}

/// A handle to one labelled histogram.
#[derive(Clone)]
pub struct Histogram {
    histogram: prometheus_client::metrics::histogram::Histogram,
    totals: Arc<Totals>,
}

impl Histogram {
    pub fn observe(&self, value: f64) {
        self.histogram.observe(value);
        self.totals.count.fetch_add(1, Ordering::Relaxed);
        let _ = self
            .totals
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
        self.totals.count.load(Ordering::Relaxed)
    }

    /// Sum of the observed values.
    pub fn sum(&self) -> f64 {
        f64::from_bits(self.totals.sum.load(Ordering::Relaxed))
    }
}

/// Cheap to clone; clones share the registry.
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<Mutex<Inner>>,
}

/// A handle to one labelled counter or gauge.
#[derive(Clone)]
pub enum Series {
    Counter(Counter),
    Gauge(Gauge<i64, AtomicI64>),
}

impl Series {
    /// Adds `n` (a counter ignores a negative `n`: it never goes down).
    pub fn add(&self, n: i64) {
        match self {
            Self::Counter(c) => {
                c.inc_by(u64::try_from(n).unwrap_or(0));
            }
            Self::Gauge(g) => {
                g.inc_by(n);
            }
        }
    }
    pub fn inc(&self) {
        self.add(1);
    }
    /// Sets a gauge (a counter cannot be set; ignored).
    pub fn set(&self, v: i64) {
        if let Self::Gauge(g) = self {
            g.set(v);
        }
    }
    pub fn get(&self) -> i64 {
        match self {
            Self::Counter(c) => i64::try_from(c.get()).unwrap_or(i64::MAX),
            Self::Gauge(g) => g.get(),
        }
    }
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A monotonically increasing count (the name ends in `_total`, which
    /// the exposition format adds to the family's name).
    pub fn counter(&self, name: &str, help: &'static str, pairs: &[(&str, &str)]) -> Series {
        let mut inner = self.lock();
        let Inner {
            registry, names, ..
        } = &mut *inner;
        let kind = names.entry(name.to_owned()).or_insert_with(|| {
            let family = Family::<Labels, Counter>::default();
            let base = name.strip_suffix("_total").unwrap_or(name);
            registry.register(base, help_text(help), family.clone());
            Kind::Counter(family)
        });
        match kind {
            Kind::Counter(family) => Series::Counter(family.get_or_create(&labels(pairs)).clone()),
            // A name registered as another kind: a detached series.
            _ => Series::Counter(Counter::default()),
        }
    }

    /// A value that goes up and down.
    pub fn gauge(&self, name: &str, help: &'static str, pairs: &[(&str, &str)]) -> Series {
        let mut inner = self.lock();
        let Inner {
            registry, names, ..
        } = &mut *inner;
        let kind = names.entry(name.to_owned()).or_insert_with(|| {
            let family = Family::<Labels, Gauge>::default();
            registry.register(name, help_text(help), family.clone());
            Kind::Gauge(family)
        });
        match kind {
            Kind::Gauge(family) => Series::Gauge(family.get_or_create(&labels(pairs)).clone()),
            _ => Series::Gauge(Gauge::default()),
        }
    }

    /// A distribution (durations in seconds with [`SECONDS`], sizes with
    /// [`ROWS`]). The first registration of a name fixes its bounds.
    pub fn histogram(
        &self,
        name: &str,
        help: &'static str,
        bounds: &'static [f64],
        pairs: &[(&str, &str)],
    ) -> Histogram {
        let mut inner = self.lock();
        let Inner {
            registry,
            names,
            totals,
        } = &mut *inner;
        let kind = names.entry(name.to_owned()).or_insert_with(|| {
            let family = HistogramFamily::new_with_constructor(Bounds(bounds));
            registry.register(name, help_text(help), family.clone());
            Kind::Histogram(family)
        });
        let labels = labels(pairs);
        let histogram = match kind {
            Kind::Histogram(family) => family.get_or_create(&labels).clone(),
            _ => Bounds(bounds).new_metric(),
        };
        let totals = Arc::clone(totals.entry((name.to_owned(), labels)).or_default());
        Histogram { histogram, totals }
    }

    /// The current value of a counter or gauge series, 0 if it was never
    /// registered.
    pub fn value(&self, name: &str, pairs: &[(&str, &str)]) -> i64 {
        let inner = self.lock();
        let labels = labels(pairs);
        match inner.names.get(name) {
            Some(Kind::Counter(family)) => family
                .get(&labels)
                .map_or(0, |c| i64::try_from(c.get()).unwrap_or(i64::MAX)),
            Some(Kind::Gauge(family)) => family.get(&labels).map_or(0, |g| g.get()),
            _ => 0,
        }
    }

    /// The text exposition format (OpenMetrics, which Prometheus reads).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.lock().registry);
        out
    }
}

/// The crate ends every help text with a full stop; ours have theirs.
fn help_text(help: &str) -> &str {
    help.strip_suffix('.').unwrap_or(help)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_renders() {
        let m = Metrics::default();
        let c = m.counter("rows_total", "Rows.", &[("flow", "a")]);
        c.add(3);
        m.counter("rows_total", "Rows.", &[("flow", "a")]).inc();
        m.gauge("lag", "Lag.", &[]).set(-2);
        assert_eq!(m.value("rows_total", &[("flow", "a")]), 4);
        assert_eq!(m.value("missing", &[]), 0);
        // A second registry (another daemon in the same process) is apart.
        assert_eq!(Metrics::default().value("rows_total", &[("flow", "a")]), 0);
        let text = m.render();
        assert!(
            text.contains("# HELP rows Rows.\n# TYPE rows counter\nrows_total{flow=\"a\"} 4\n"),
            "{text}"
        );
        assert!(text.contains("lag{} -2\n"), "{text}");
        assert_eq!(crate::http::metric_value(&text, "lag", &[]), Some(-2.0));
        assert_eq!(
            crate::http::metric_value(&text, "rows_total", &[("flow", "a")]),
            Some(4.0)
        );
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
            text.contains("batch_rows_bucket{le=\"1.0\",flow=\"f\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("batch_rows_bucket{le=\"10.0\",flow=\"f\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("batch_rows_bucket{le=\"10000.0\",flow=\"f\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("batch_rows_bucket{le=\"+Inf\",flow=\"f\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("batch_rows_count{flow=\"f\"} 3\n"), "{text}");
    }
}
