//! The daemons' HTTP endpoint: `/metrics` (Prometheus text), `/healthz`
//! (the process answers) and `/readyz` (every flow connected and moving,
//! see `health`; 503 otherwise) — served by axum with the same limits for
//! every server of the product (the dashboard too), and read back by the
//! status commands with hyper's client.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::routing::get;
use http_body_util::BodyExt;
use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::metrics::Metrics;

/// A request (headers included) must be answered within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests carry no body worth reading (every route is a `GET`).
const MAX_REQUEST_BODY: usize = 1024;
/// Requests handled at once; more wait for a slot.
const MAX_CONCURRENT_REQUESTS: usize = 64;

/// Binds `addr` and serves `router` until `shutdown`, with the product's
/// limits (request timeout, body size, concurrency; `Cache-Control:
/// no-store` on every answer). Returns the bound address (port 0 picks a
/// free one).
pub async fn serve_router(
    addr: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = router.layer(
        tower::ServiceBuilder::new()
            .layer(tower_http::set_header::SetResponseHeaderLayer::overriding(
                header::CACHE_CONTROL,
                HeaderValue::from_static("no-store"),
            ))
            .layer(tower_http::limit::RequestBodyLimitLayer::new(
                MAX_REQUEST_BODY,
            ))
            .layer(tower_http::timeout::TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                REQUEST_TIMEOUT,
            ))
            .layer(tower::limit::ConcurrencyLimitLayer::new(
                MAX_CONCURRENT_REQUESTS,
            )),
    );
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::warn!(%error, "http server stopped");
        }
    });
    Ok(bound)
}

/// `/metrics`, `/healthz` and `/readyz` of a daemon.
pub fn daemon_routes(metrics: Metrics, health: Health) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let text = metrics.render();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        text,
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .route(
            "/readyz",
            get(move || {
                let (ready, report) = health.check();
                let status = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                async move { (status, report) }
            }),
        )
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until `shutdown`.
/// A failure to bind is returned, not fatal to the caller's pipeline.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    health: Health,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    serve_router(addr, daemon_routes(metrics, health), shutdown).await
}

/// Serves on `addr` if configured, logging where; a failure to bind is
/// logged and the daemon runs on without the endpoint.
pub async fn serve_if_configured(
    addr: Option<SocketAddr>,
    metrics: &Metrics,
    health: &Health,
    shutdown: &CancellationToken,
) {
    let Some(addr) = addr else { return };
    match serve(addr, metrics.clone(), health.clone(), shutdown.clone()).await {
        Ok(bound) => tracing::info!(addr = %bound, "serving /metrics, /healthz and /readyz"),
        Err(error) => tracing::error!(%addr, %error, "cannot serve metrics; running without"),
    }
}

/// (status code, body) of `GET path` on a daemon's endpoint at `addr`
/// (`host:port`, resolved on each call), if it answers within two seconds.
pub async fn fetch(addr: &str, path: &str) -> Option<(u16, String)> {
    let uri: axum::http::Uri = format!("http://{addr}{path}").parse().ok()?;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let fetch = async {
        let response = client.get(uri).await.ok()?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.ok()?.to_bytes();
        Some((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(2), fetch)
        .await
        .ok()
        .flatten()
}

/// The `/metrics` text a running daemon serves at `addr`, if it answers
/// within two seconds (for the status commands).
pub async fn fetch_metrics(addr: &str) -> Option<String> {
    match fetch(addr, "/metrics").await? {
        (200, body) => Some(body),
        _ => None,
    }
}

/// What the status commands read of a running daemon: its `/metrics` text
/// if it answers, and the report's first line saying whether it did.
pub struct DaemonView {
    /// `daemon=ADDR reachable` or `… not reachable (… unknown)`; none when
    /// the endpoint is off.
    pub header: Option<String>,
    pub metrics: Option<String>,
    /// The daemon's `/readyz` report: one `flow=F ready: …` or
    /// `flow=F not ready: reason` line per flow.
    pub readiness: Option<String>,
}

impl DaemonView {
    /// Asks `daemon` (if configured); `unknown` names what the report lacks
    /// when it does not answer.
    pub async fn fetch(daemon: Option<impl std::fmt::Display>, unknown: &str) -> Self {
        let Some(addr) = daemon else {
            return Self {
                header: None,
                metrics: None,
                readiness: None,
            };
        };
        let addr = addr.to_string();
        let metrics = fetch_metrics(&addr).await;
        let readiness = match metrics {
            Some(_) => fetch(&addr, "/readyz").await.map(|(_, body)| body),
            None => None,
        };
        let header = match metrics {
            Some(_) => format!("daemon={addr} reachable"),
            None => format!("daemon={addr} not reachable ({unknown} unknown)"),
        };
        Self {
            header: Some(header),
            metrics,
            readiness,
        }
    }

    /// What the daemon says of `flow`'s readiness (`ready: backlog 0`,
    /// `not ready: <reason>`); none when it did not answer.
    pub fn verdict(&self, flow: &str) -> Option<&str> {
        let prefix = format!("flow={flow} ");
        self.readiness
            .as_deref()?
            .lines()
            .find_map(|line| line.strip_prefix(prefix.as_str()))
    }

    /// A Unix-time gauge as `YYYY-MM-DD HH:MM:SS UTC` ("never …" while 0);
    /// none when the daemon did not answer.
    pub fn time(&self, name: &str, labels: &[(&str, &str)]) -> Option<String> {
        let text = self.metrics.as_deref()?;
        Some(
            metric_value(text, name, labels)
                .filter(|t| *t > 0.0)
                .and_then(|t| crate::time::format_utc(t as i64))
                .map_or_else(
                    || "never (since the daemon started)".to_owned(),
                    |t| format!("{t} UTC"),
                ),
        )
    }
}

/// The value of series `name` with exactly `labels` in Prometheus text.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    // An unlabelled series is written `name{} v` (OpenMetrics) or `name v`.
    let series = format!("{name}{{{}}}", wanted.join(","));
    let bare = wanted.is_empty().then(|| name.to_owned());
    text.lines().find_map(|line| {
        let rest = line
            .strip_prefix(&series)
            .or_else(|| line.strip_prefix(bare.as_deref()?))?;
        rest.strip_prefix(' ')?.parse().ok()
    })
}

/// The sum of every series of `name` whose labels include `labels` (e.g.
/// a flow's lag over all its partitions); none when there is no such series.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut sum = None;
    for (_, v) in series(text, name, labels) {
        *sum.get_or_insert(0.0) += v;
    }
    sum
}

/// The series of `name` carrying all of `labels`: (their label set, value).
fn series<'a>(
    text: &'a str,
    name: &'a str,
    labels: &[(&str, &str)],
) -> impl Iterator<Item = (&'a str, f64)> + 'a {
    let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    text.lines().filter_map(move |line| {
        let rest = line.strip_prefix(name)?;
        let (labelset, value) = match rest.strip_prefix('{') {
            Some(r) => r.split_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        let present: Vec<&str> = labelset.split(',').collect();
        if !wanted.iter().all(|w| present.contains(&w.as_str())) {
            return None;
        }
        Some((labelset, value.trim().parse::<f64>().ok()?))
    })
}

/// Histogram `name`'s buckets over the series carrying `labels`, summed:
/// (upper bound, cumulative count), ascending (`+Inf` last).
pub fn histogram_buckets(text: &str, name: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
    let bucket = format!("{name}_bucket");
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for (labelset, n) in series(text, &bucket, labels) {
        // `le` exactly (`table="…"` ends in `le=` too).
        let Some(le) = labelset
            .split(',')
            .find_map(|pair| pair.strip_prefix("le="))
            .map(|le| le.trim_matches('"'))
        else {
            continue;
        };
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            match le.parse() {
                Ok(le) => le,
                Err(_) => continue,
            }
        };
        match buckets.iter_mut().find(|(b, _)| *b == le) {
            Some((_, total)) => *total += n,
            None => buckets.push((le, n)),
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
}

/// The upper bound of the bucket holding quantile `q` of `buckets` (as
/// from [`histogram_buckets`]): what Prometheus' `histogram_quantile`
/// rounds up to. `None` without observations.
pub fn bucket_quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let count = buckets.last()?.1;
    if count <= 0.0 {
        return None;
    }
    buckets
        .iter()
        .find(|(_, n)| *n >= q * count)
        .map(|(le, _)| *le)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_sum_matching_series_and_read_le_exactly() {
        let text = "h_bucket{flow=\"f\",table=\"t\",le=\"0.05\"} 90\n\
                    h_bucket{flow=\"f\",table=\"u\",le=\"0.05\"} 10\n\
                    h_bucket{flow=\"f\",table=\"t\",le=\"+Inf\"} 100\n\
                    h_bucket{flow=\"f\",table=\"u\",le=\"+Inf\"} 100\n\
                    h_bucket{flow=\"g\",table=\"t\",le=\"+Inf\"} 7\n";
        let buckets = histogram_buckets(text, "h", &[("flow", "f")]);
        assert_eq!(buckets, vec![(0.05, 100.0), (f64::INFINITY, 200.0)]);
        assert_eq!(bucket_quantile(&buckets, 0.5), Some(0.05));
        assert_eq!(bucket_quantile(&buckets, 0.99), Some(f64::INFINITY));
        assert_eq!(bucket_quantile(&[], 0.5), None);
        assert_eq!(metric_sum(text, "h_bucket", &[("table", "u")]), Some(110.0));
    }

    #[tokio::test]
    async fn serves_metrics_and_health() {
        let metrics = Metrics::default();
        metrics.counter("x_total", "X.", &[]).add(2);
        let shutdown = CancellationToken::new();
        let health = Health::new(std::time::Duration::from_secs(60));
        health.flow("ok_flow").observe(0, 0);
        let addr = serve(
            "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")),
            metrics,
            health.clone(),
            shutdown.clone(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let get = |path: &'static str| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
            let mut out = String::new();
            s.read_to_string(&mut out)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            out
        };
        let ready = get("/readyz").await;
        assert!(
            ready.starts_with("HTTP/1.1 200") && ready.contains("flow=ok_flow ready"),
            "{ready}"
        );
        assert!(
            ready.to_lowercase().contains("cache-control: no-store"),
            "{ready}"
        );
        health.flow("dead_flow").unreachable();
        let not_ready = get("/readyz").await;
        assert!(not_ready.starts_with("HTTP/1.1 503"), "{not_ready}");
        assert!(
            not_ready.contains("flow=dead_flow not ready"),
            "{not_ready}"
        );
        for (path, expect) in [
            ("/metrics", "x_total{} 2"),
            ("/healthz", "ok"),
            ("/nope", "404"),
        ] {
            let out = get(path).await;
            assert!(out.contains(expect), "{path}: {out}");
        }
        let text = fetch_metrics(&addr.to_string()).await.unwrap_or_default();
        assert_eq!(metric_value(&text, "x_total", &[]), Some(2.0));
        assert_eq!(metric_value(&text, "x_tot", &[]), None);
        let lags = "lag{flow=\"a\",partition=\"0\"} 2\nlag{flow=\"a\",partition=\"1\"} 3\nlag{flow=\"b\",partition=\"0\"} 7\nlag_other{flow=\"a\"} 9\n";
        assert_eq!(metric_sum(lags, "lag", &[("flow", "a")]), Some(5.0));
        assert_eq!(metric_sum(lags, "lag", &[]), Some(12.0));
        assert_eq!(metric_sum(lags, "lag", &[("flow", "c")]), None);
        assert_eq!(
            fetch(&addr.to_string(), "/readyz").await.map(|(s, _)| s),
            Some(503)
        );
        // A request body past the limit is refused, not read.
        let big = {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let body = "x".repeat(4096);
            s.write_all(
                format!("POST /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}", body.len())
                    .as_bytes(),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
            let mut out = String::new();
            let _ = s.read_to_string(&mut out).await;
            out
        };
        assert!(big.starts_with("HTTP/1.1 413"), "{big}");
        shutdown.cancel();
    }
}
