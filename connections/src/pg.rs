//! Postgres connections: TLS as libpq means it, retried with backoff while
//! the server is unreachable, logged with the password redacted.
//!
//! `DATABASE_URL` takes libpq's TLS parameters: `sslmode` (`disable`,
//! `allow`/`prefer` — the default: TLS when the server offers it, unverified,
//! `require` — TLS, unverified unless `sslrootcert` is given, `verify-ca` —
//! the server's certificate must chain to `sslrootcert` (or the system's
//! CAs), `verify-full` — and name the host), `sslrootcert`, and `sslcert` +
//! `sslkey` for a client certificate. tokio-postgres knows only the first
//! three modes and none of the files, so they are taken out of the URL here
//! and applied to the OpenSSL connector.

use std::time::Duration;

use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslVerifyMode};
use postgres_openssl::{MakeTlsConnector, TlsStream};
use tokio_postgres::{Client, Connection, Socket};
use tokio_util::sync::CancellationToken;

use daemon::backoff::Backoff;
use flows::settings::redact_url;

/// tokio-postgres displays server errors as just "db error"; show the
/// server's message (never a parameter value). Other errors show what
/// caused them too (tokio-postgres's own text stops at e.g. "error
/// connecting to server").
pub fn detail(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} ({})", db.message(), db.code().code());
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let said = c.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = c.source();
    }
    text
}

/// What tokio-postgres says when `target_session_attrs=read-write` found
/// no host taking writes (each one a standby, or read-only by setting).
const NO_WRITABLE_HOST: &str = "database does not allow writes";

impl PgConnectError {
    /// Whether every host answered but none takes writes: with
    /// `target_session_attrs=read-write`, no primary among the hosts (a
    /// failover under way: the standby not yet promoted).
    pub fn no_primary(&self) -> bool {
        matches!(self, Self::Postgres(e) if detail(e).contains(NO_WRITABLE_HOST))
    }
}

/// A connection as `connect_once` returns it, to drive or poll for
/// notifications.
pub type PgConnection = Connection<Socket, TlsStream<Socket>>;

#[derive(Debug, thiserror::Error)]
pub enum PgConnectError {
    #[error("{0}")]
    Settings(String),
    #[error("TLS set-up: {0}")]
    Tls(#[from] openssl::error::ErrorStack),
    #[error("TLS set-up: {0}")]
    Trust(#[from] crate::tls::TrustError),
    #[error("{}", detail(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// How much of the server's certificate is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verify {
    Nothing,
    Chain,
    ChainAndHost,
}

/// A parsed `DATABASE_URL`: what tokio-postgres reads, and the TLS set-up.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    url: String,
    verify: Verify,
    root_cert: Option<String>,
    client_cert: Option<(String, String)>,
}

fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Takes libpq's TLS parameters out of `url`. The error never holds the URL.
fn parse(url: &str) -> Result<Target, String> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut kept = Vec::new();
    let (mut mode, mut root_cert, mut cert, mut key) = ("prefer".to_owned(), None, None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "sslmode" => mode = percent_decode(v),
            "sslrootcert" => root_cert = Some(percent_decode(v)),
            "sslcert" => cert = Some(percent_decode(v)),
            "sslkey" => key = Some(percent_decode(v)),
            _ => kept.push(pair),
        }
    }
    let (tokio_mode, verify) = match (mode.as_str(), &root_cert) {
        ("disable", _) => ("disable", Verify::Nothing),
        ("allow" | "prefer", _) => ("prefer", Verify::Nothing),
        // libpq: `require` with a root certificate verifies like verify-ca.
        ("require", None) => ("require", Verify::Nothing),
        ("require" | "verify-ca", _) => ("require", Verify::Chain),
        ("verify-full", _) => ("require", Verify::ChainAndHost),
        _ => {
            return Err(
                "sslmode must be disable, allow, prefer, require, verify-ca or verify-full"
                    .to_owned(),
            );
        }
    };
    let client_cert = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => return Err("sslcert and sslkey go together".to_owned()),
    };
    for file in client_cert.iter().flat_map(|(c, k)| [c, k]) {
        if !std::path::Path::new(file).is_file() {
            return Err(format!("TLS file {file} does not exist"));
        }
    }
    if let Some(file) = &root_cert {
        crate::tls::check_ca_file(file).map_err(|e| format!("sslrootcert: {e}"))?;
    }
    kept.push(match tokio_mode {
        "disable" => "sslmode=disable",
        "prefer" => "sslmode=prefer",
        _ => "sslmode=require",
    });
    let url = format!("{base}?{}", kept.join("&"));
    // What tokio-postgres itself would refuse (an unknown parameter, a bad
    // value); its message names the option, never a value.
    url.parse::<tokio_postgres::Config>()
        .map_err(|e| format!("cannot be parsed: {e}"))?;
    Ok(Target {
        url,
        verify,
        root_cert,
        client_cert,
    })
}

/// `DATABASE_URL`: required, a `postgres://` URL (its declaration checks
/// that), and TLS parameters that make sense — checked at start so a bad
/// one exits 2, naming the setting and never echoing the URL.
pub fn database_url(env: &flows::Env) -> Result<String, flows::SettingError> {
    let setting = &flows::settings::DATABASE_URL;
    let url = setting.get(env)?;
    parse(&url).map_err(|e| flows::SettingError::new(setting.name, e))?;
    Ok(url)
}

/// `postgres://…/<anything>?params` → the same server and parameters,
/// database `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let server = match base.rfind('/') {
        Some(i) if i > base.find("//").map_or(0, |j| j + 1) => &base[..i],
        _ => base,
    };
    match query {
        Some(q) => format!("{server}/{db}?{q}"),
        None => format!("{server}/{db}"),
    }
}

fn connector(target: &Target) -> Result<MakeTlsConnector, PgConnectError> {
    let mut builder = SslConnector::builder(SslMethod::tls_client())?;
    crate::tls::trust(&mut builder, target.root_cert.as_deref())?;
    if let Some((cert, key)) = &target.client_cert {
        builder.set_certificate_chain_file(cert)?;
        builder.set_private_key_file(key, SslFiletype::PEM)?;
    }
    if target.verify == Verify::Nothing {
        builder.set_verify(SslVerifyMode::NONE);
    }
    let mut tls = MakeTlsConnector::new(builder.build());
    let check_host = target.verify == Verify::ChainAndHost;
    tls.set_callback(move |config, _| {
        config.set_verify_hostname(check_host);
        Ok(())
    });
    Ok(tls)
}

/// The tokio-postgres configuration of `url` (libpq's TLS parameters taken
/// out) and the TLS connector they ask for.
pub fn config_and_tls(
    url: &str,
) -> Result<(tokio_postgres::Config, MakeTlsConnector), PgConnectError> {
    let target = parse(url).map_err(PgConnectError::Settings)?;
    let tls = connector(&target)?;
    let config: tokio_postgres::Config = target
        .url
        .parse()
        .map_err(|e| PgConnectError::Settings(format!("cannot be parsed: {e}")))?;
    Ok((config, tls))
}

/// A connection attempt (TCP, TLS and the server's start-up) that takes
/// longer gives up: a server behind a dead network path never answers.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How every connection notices a dead peer on its own: TCP keepalives
/// after 10 s idle, every 5 s, 3 missed = dead (≈25 s); and data not
/// acknowledged for 20 s (`TCP_USER_TIMEOUT`) fails the connection.
/// Queries still need their own deadlines: a path that drops packets while
/// a proxy or NAT in between keeps answering TCP defeats both.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
pub const KEEPALIVE_RETRIES: u32 = 3;
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(20);

/// One connection attempt, TLS as the URL asks, with keepalives and
/// timeouts (see [`CONNECT_TIMEOUT`], [`KEEPALIVE_IDLE`]). The caller drives
/// the returned connection.
pub async fn connect_once(url: &str) -> Result<(Client, PgConnection), PgConnectError> {
    let (mut config, tls) = config_and_tls(url)?;
    config
        .connect_timeout(CONNECT_TIMEOUT)
        .keepalives(true)
        .keepalives_idle(KEEPALIVE_IDLE)
        .keepalives_interval(KEEPALIVE_INTERVAL)
        .keepalives_retries(KEEPALIVE_RETRIES)
        .tcp_user_timeout(TCP_USER_TIMEOUT);
    match tokio::time::timeout(CONNECT_TIMEOUT, config.connect(tls)).await {
        Ok(connected) => Ok(connected?),
        Err(_) => Err(PgConnectError::Timeout(CONNECT_TIMEOUT)),
    }
}

/// Connects, retrying with backoff until it succeeds or `shutdown` fires
/// (then `None`). The connection is driven by a spawned task.
pub async fn connect(url: &str, purpose: &str, shutdown: &CancellationToken) -> Option<Client> {
    connect_observed(url, purpose, shutdown, |_| {}).await
}

/// [`connect`], telling `seen` of every failed attempt (`Some`, with why)
/// and of the success (`None`): e.g. for `/readyz` to name the reason.
pub async fn connect_observed(
    url: &str,
    purpose: &str,
    shutdown: &CancellationToken,
    seen: impl Fn(Option<&PgConnectError>),
) -> Option<Client> {
    let seen = &seen;
    let attempt = move || async move {
        let result = connect_once(url).await;
        seen(result.as_ref().err());
        result
    };
    let (client, connection) = until_reachable(url, purpose, shutdown, attempt).await?;
    let owner = purpose.to_owned();
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(%error, purpose = owner, "postgres connection closed");
        }
    });
    Some(client)
}

/// Runs `attempt` until it succeeds, backing off and logging (password
/// redacted) while Postgres is unreachable; `None` once `shutdown` fires.
/// Shared by direct connections and the pool (`pg_pool::Pool::get_retrying`).
pub(crate) async fn until_reachable<T, F, Fut>(
    url: &str,
    purpose: &str,
    shutdown: &CancellationToken,
    mut attempt: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, PgConnectError>>,
{
    let mut backoff = Backoff::default();
    loop {
        match attempt().await {
            Ok(connected) => {
                if backoff.attempts() > 0 {
                    tracing::info!(url = %redact_url(url), purpose, "postgres reachable again");
                }
                return Some(connected);
            }
            Err(error) => {
                let retry_in_ms = backoff.upcoming().as_millis() as u64;
                tracing::warn!(url = %redact_url(url), purpose, %error, retry_in_ms, "postgres unreachable");
                if !backoff.wait(shutdown).await {
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_tls_parameters_become_a_connector_set_up() {
        let t = parse("postgres://u:pw@h/db").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.url, "postgres://u:pw@h/db?sslmode=prefer");
        assert_eq!(t.verify, Verify::Nothing);

        let t = parse("postgres://h/db?application_name=x&sslmode=require")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.url, "postgres://h/db?application_name=x&sslmode=require");
        assert_eq!(t.verify, Verify::Nothing);

        let ca = "/etc/ssl/certs/ca-certificates.crt";
        if std::path::Path::new(ca).is_file() {
            let t = parse(&format!(
                "postgres://h/db?sslmode=verify-full&sslrootcert={ca}"
            ))
            .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(t.url, "postgres://h/db?sslmode=require");
            assert_eq!(
                (t.verify, t.root_cert.as_deref()),
                (Verify::ChainAndHost, Some(ca))
            );
            let t = parse(&format!("postgres://h/db?sslmode=require&sslrootcert={ca}"))
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                t.verify,
                Verify::Chain,
                "libpq: require + root cert = verify-ca"
            );
        }
        assert_eq!(
            parse("postgres://h/db?sslmode=verify-ca").map(|t| t.verify),
            Ok(Verify::Chain)
        );

        let err = parse("postgres://u:secret@h/db?sslmode=maybe")
            .err()
            .unwrap_or_default();
        assert!(err.contains("sslmode") && !err.contains("secret"), "{err}");
        assert!(parse("postgres://h/db?sslrootcert=/nonexistent/ca.pem").is_err());
        assert!(
            parse("postgres://h/db?sslcert=/etc/hostname").is_err(),
            "cert without key"
        );
        assert_eq!(percent_decode("%2Fetc%2Fca.pem"), "/etc/ca.pem");
    }

    #[test]
    fn swaps_the_database() {
        assert_eq!(
            with_database("postgres://u@h:5432/postgres", "t1"),
            "postgres://u@h:5432/t1"
        );
        assert_eq!(
            with_database("postgres://u@h:5432", "t1"),
            "postgres://u@h:5432/t1"
        );
        assert_eq!(
            with_database("postgres://u@h/x?sslmode=disable", "t1"),
            "postgres://u@h/t1?sslmode=disable"
        );
    }
}
