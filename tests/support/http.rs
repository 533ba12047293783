//! The daemons' HTTP endpoints from a test.

/// A free local port for a daemon's HTTP endpoint.
pub fn free_addr() -> anyhow::Result<String> {
    Ok(format!("127.0.0.1:{}", free_port()?))
}

/// A port free on 127.0.0.1 now (for a server the test starts).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// (status code, body) of `GET path`.
pub async fn get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    daemon::http::fetch(addr, path)
        .await
        .ok_or_else(|| anyhow::anyhow!("{addr} did not answer {path}"))
}
