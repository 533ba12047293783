//! The ClickHouse connection: the `clickhouse` crate over a hyper client with
//! TCP_NODELAY (the crate's default leaves Nagle on: ~44 ms per mid-sized
//! INSERT), no compression and no schema validation (18.16 rejects both).

use std::time::Duration;

use clickhouse::{Client, Compression};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Below the server's 3 s keep-alive timeout, so a pooled connection is never
/// reused just as the server closes it.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct ClickHouseConfig {
    pub url: String,
    pub user: String,
    pub password: Option<String>,
    pub database: String,
}

impl std::fmt::Debug for ClickHouseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseConfig")
            .field("url", &flows::settings::redact_url(&self.url))
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("database", &self.database)
            .finish()
    }
}

/// A client bound to `database` (or to no database, for CREATE DATABASE).
pub fn client(cfg: &ClickHouseConfig, database: Option<&str>) -> Client {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_keepalive(Some(Duration::from_secs(60)));
    let http = HyperClient::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .build(connector);
    let mut client = Client::with_http_client(http)
        .with_url(cfg.url.trim_end_matches('/'))
        .with_user(cfg.user.clone())
        .with_compression(Compression::None)
        .with_validation(false);
    if let Some(password) = &cfg.password {
        client = client.with_password(password.clone());
    }
    if let Some(db) = database {
        client = client.with_database(db);
    }
    client
}
