//! `sink dashboard`: a small web page with each flow's pipeline status. It
//! reads ClickHouse and the daemons' own endpoints (`RELAY_METRICS_ADDR`,
//! `SINK_METRICS_ADDR`), writes nothing, and needs neither Kafka nor
//! Postgres.
//!
//! `GET /` is the page (static; it asks `GET /api/dashboard` every few
//! seconds and draws itself), `/api/dashboard` the JSON behind it,
//! `/healthz` liveness. Every viewer gets the same snapshot, at most
//! [`cache::MAX_AGE`] old: ClickHouse sees one query set per period however
//! many pages are open.
//!
//! A program built on it adds [`Section`]s below the status table (the
//! demo's `outbox-demo dashboard` adds the seed 002 sales charts).

mod cache;
mod freshness;
mod status;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::routing::get;
use flows::{Env, Flow, SettingError};
use tokio_util::sync::CancellationToken;

use sink::clickhouse::ClickHouseConfig;

const PAGE: &str = include_str!("page.html");
/// Where the sections' markup goes in `page.html`.
const SECTIONS: &str = "<!-- sections -->";

/// What a section's `read` returns: its part of the JSON.
pub type SectionFuture<'a> = Pin<Box<dyn Future<Output = serde_json::Value> + Send + 'a>>;

/// More the page shows below the status table.
#[derive(Clone, Copy)]
pub struct Section {
    /// Its part of `/api/dashboard` is under this key.
    pub key: &'static str,
    /// Its markup, put below the status table. A `<script>` in it adds the
    /// function that draws it to the page's list: `sections.push(data =>
    /// …)`, called with the whole JSON at every refresh (the page's helpers
    /// `el`, `row`, `fill`, `num` are there to use).
    pub html: &'static str,
    /// Reads its part: `null` for nothing to show, `{"error": "…"}` to say
    /// why it cannot be shown.
    pub read: for<'a> fn(&'a DashboardConfig, &'a clickhouse::Client) -> SectionFuture<'a>,
}

#[derive(Clone, Debug)]
pub struct DashboardConfig {
    pub clickhouse: ClickHouseConfig,
    pub flows: Vec<Flow>,
    /// Where the page is served.
    pub addr: SocketAddr,
    /// The daemons' endpoints the status is read from, `host:port`
    /// (`None` = off).
    pub relay_metrics: Option<String>,
    pub sink_metrics: Option<String>,
}

impl DashboardConfig {
    pub fn from_env(env: &Env) -> Result<Self, SettingError> {
        env.reject_unknown(flows::settings::Reader::Sink)?;
        let dashboard = &flows::settings::SINK_DASHBOARD_ADDR;
        let addr = dashboard
            .get(env)?
            .ok_or_else(|| SettingError::new(dashboard.name, "the dashboard needs an address"))?;
        // The daemons' endpoints: `host:port`, a name resolved on each read
        // (`relay:9101` works in a compose network), or `off`.
        Ok(Self {
            clickhouse: sink::config::clickhouse_config(env)?,
            flows: flows::settings::selected_flows(env)?,
            addr,
            relay_metrics: flows::settings::RELAY_METRICS_ADDR.endpoint(env)?,
            sink_metrics: flows::settings::SINK_METRICS_ADDR.endpoint(env)?,
        })
    }
}

/// Serves the dashboard until `shutdown`; returns the bound address.
pub async fn serve(
    config: DashboardConfig,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    serve_with(config, &[], shutdown).await
}

/// [`serve`], with `sections` below the status table.
pub async fn serve_with(
    config: DashboardConfig,
    sections: &[Section],
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let client =
        sink::clickhouse::client::client(&config.clickhouse, Some(&config.clickhouse.database));
    let addr = config.addr;
    let page: Arc<str> = PAGE
        .replace(
            SECTIONS,
            &sections.iter().map(|s| s.html).collect::<String>(),
        )
        .into();
    let config = Arc::new(config);
    let sections: Arc<[Section]> = sections.into();
    let cache = Arc::new(cache::SnapshotCache::new(cache::MAX_AGE));
    let recent = Arc::new(freshness::Recent::default());
    let api = move || {
        let (config, client, cache, recent, sections) = (
            config.clone(),
            client.clone(),
            cache.clone(),
            recent.clone(),
            sections.clone(),
        );
        async move {
            let body = cache
                .get(|| async {
                    snapshot(&config, &client, &recent, &sections)
                        .await
                        .to_string()
                })
                .await;
            (
                [(header::CONTENT_TYPE, "application/json")],
                body.to_string(),
            )
        }
    };
    let router = Router::new()
        .route(
            "/",
            get(move || async move {
                (
                    [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                    page.to_string(),
                )
            }),
        )
        .route("/api/dashboard", get(api))
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") });
    daemon::http::serve_router(addr, router, shutdown).await
}

/// Everything the page shows, as one JSON document. A part that cannot be
/// read says why in its `error` field instead of failing the whole page.
async fn snapshot(
    config: &DashboardConfig,
    client: &clickhouse::Client,
    recent: &freshness::Recent,
    sections: &[Section],
) -> serde_json::Value {
    let status = status::flows(config, client, recent).await;
    let mut snapshot = serde_json::json!({
        "generated_at": daemon::time::format_utc(daemon::time::unix_now()).map(|t| format!("{t} UTC")),
        "daemons": status.daemons,
        "flows": status.flows,
    });
    for section in sections {
        snapshot[section.key] = (section.read)(config, client).await;
    }
    snapshot
}
