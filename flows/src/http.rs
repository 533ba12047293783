//! The daemons' HTTP endpoint: `/metrics` (Prometheus text) and `/healthz`.
//! Deliberately tiny — a request line, a response, close — so it adds no
//! framework to two small daemons.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Binds `addr` and serves until `shutdown`. Returns the bound address (port
/// 0 picks a free one). A failure to bind is returned, not fatal to the
/// caller's pipeline.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(s) => s,
                    Err(_) => continue,
                },
                () = shutdown.cancelled() => return,
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let n = match tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    stream.read(&mut buf),
                )
                .await
                {
                    Ok(Ok(n)) => n,
                    _ => return,
                };
                let request = String::from_utf8_lossy(&buf[..n]);
                let path = request.split_whitespace().nth(1).unwrap_or("/");
                let (status, content_type, body) = match path {
                    "/metrics" => ("200 OK", "text/plain; version=0.0.4", metrics.render()),
                    "/healthz" => ("200 OK", "text/plain", "ok\n".to_owned()),
                    _ => ("404 Not Found", "text/plain", "not found\n".to_owned()),
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    Ok(bound)
}

/// Serves on `addr` if configured, logging where; a failure to bind is
/// logged and the daemon runs on without the endpoint.
pub async fn serve_if_configured(
    addr: Option<SocketAddr>,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) {
    let Some(addr) = addr else { return };
    match serve(addr, metrics.clone(), shutdown.clone()).await {
        Ok(bound) => tracing::info!(addr = %bound, "serving /metrics and /healthz"),
        Err(error) => tracing::error!(%addr, %error, "cannot serve metrics; running without"),
    }
}

/// Parses a `host:port` setting; `off` disables the endpoint (`None`).
pub fn parse_addr(name: &str, value: &str) -> Result<Option<SocketAddr>, crate::SettingError> {
    if value == "off" {
        return Ok(None);
    }
    value.parse().map(Some).map_err(|_| {
        crate::SettingError::new(name, "expected host:port (e.g. 127.0.0.1:9101) or `off`")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_metrics_and_health() {
        let metrics = Metrics::default();
        metrics.counter("x_total", "X.", &[]).add(2);
        let shutdown = CancellationToken::new();
        let addr = serve(
            "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")),
            metrics,
            shutdown.clone(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        for (path, expect) in [
            ("/metrics", "x_total 2"),
            ("/healthz", "ok"),
            ("/nope", "404"),
        ] {
            let mut s = tokio::net::TcpStream::connect(addr)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            s.write_all(format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes())
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let mut out = String::new();
            s.read_to_string(&mut out)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(out.contains(expect), "{path}: {out}");
        }
        shutdown.cancel();
        assert_eq!(parse_addr("A", "off"), Ok(None));
        assert!(parse_addr("A", "nonsense").is_err());
    }
}
