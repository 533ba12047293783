//! The ClickHouse connection: the `clickhouse` crate over a hyper client with
//! TCP_NODELAY (the crate's default leaves Nagle on: ~44 ms per mid-sized
//! INSERT), no compression and no schema validation (18.16 rejects both).
//! An `https://` URL goes through OpenSSL, verifying the server against
//! `CLICKHOUSE_CA_FILE` only (default: the system's CAs) and its host name.

use std::time::Duration;

use clickhouse::{Client, Compression};
use hyper_openssl::client::legacy::HttpsConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use openssl::ssl::{SslConnector, SslMethod};

/// Below the server's 3 s keep-alive timeout, so a pooled connection is never
/// reused just as the server closes it.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct ClickHouseConfig {
    /// One endpoint, or several separated by commas (`CLICKHOUSE_URL`):
    /// see [`ClickHouseConfig::endpoints`].
    pub url: String,
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    /// PEM CA bundle for an `https://` URL; `None` = the system's CAs.
    pub ca_file: Option<String>,
    /// `CLICKHOUSE_CLUSTER`: the cluster (of the servers' `remote_servers`)
    /// the tables are spread over; `None` = plain tables on one server (or
    /// on every endpoint alike).
    pub cluster: Option<String>,
}

impl ClickHouseConfig {
    /// The endpoints of `url`, in the order given (the order the sink
    /// prefers replicas in).
    pub fn endpoints(&self) -> Vec<&str> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect()
    }
}

impl std::fmt::Debug for ClickHouseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseConfig")
            .field("url", &flows::settings::redact_urls(&self.url))
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("database", &self.database)
            .field("ca_file", &self.ca_file)
            .field("cluster", &self.cluster)
            .finish()
    }
}

/// `http` wrapped in TLS for `https://` URLs.
fn https(
    mut http: HttpConnector,
    ca_file: Option<&str>,
) -> Result<HttpsConnector<HttpConnector>, connections::tls::TrustError> {
    let mut ssl = SslConnector::builder(SslMethod::tls_client())?;
    connections::tls::trust(&mut ssl, ca_file)?;
    // ClickHouse speaks HTTP/1.1 only.
    ssl.set_alpn_protos(b"\x08http/1.1")?;
    http.enforce_http(false);
    Ok(HttpsConnector::with_connector(http, ssl)?)
}

/// A client of the first endpoint, bound to `database` (or to no
/// database, for CREATE DATABASE): for queries any endpoint answers alike
/// (status, reconcile, the dashboard). The sink's writes go through
/// [`super::replicas::Replicas`], which uses every endpoint.
pub fn client(cfg: &ClickHouseConfig, database: Option<&str>) -> Client {
    let first = cfg.endpoints().first().copied().unwrap_or("").to_owned();
    client_at(cfg, &first, database)
}

/// A client of the endpoint `url` (one of `cfg`'s), bound to `database`.
pub fn client_at(cfg: &ClickHouseConfig, url: &str, database: Option<&str>) -> Client {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_keepalive(Some(Duration::from_secs(60)));
    let builder = HyperClient::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .clone();
    let tls = url
        .starts_with("https://")
        .then(|| https(connector.clone(), cfg.ca_file.as_deref()));
    let client = match tls {
        Some(Ok(tls)) => Client::with_http_client(builder.build(tls)),
        Some(Err(error)) => {
            // Settings validation loaded the CA file already, so this is
            // OpenSSL itself failing; requests then fail, refusing https.
            tracing::error!(%error, "clickhouse TLS set-up failed");
            Client::with_http_client(builder.build(connector))
        }
        None => Client::with_http_client(builder.build(connector)),
    };
    let mut client = client
        .with_url(url.trim_end_matches('/'))
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
