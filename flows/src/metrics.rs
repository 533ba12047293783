//! A small metrics registry: counters and gauges keyed by name and labels,
//! rendered in the Prometheus text format. Each daemon owns one and passes it
//! down, so tests running several daemons in one process keep them apart.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, Ordering};
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
            let labels: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
                .collect();
            let labels = if labels.is_empty() {
                String::new()
            } else {
                format!("{{{}}}", labels.join(","))
            };
            let _ = writeln!(out, "{name}{labels} {}", value.load(Ordering::Relaxed));
        }
        out
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
}
