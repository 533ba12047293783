//! Postgres connections: retried with backoff while the server is
//! unreachable, logged with the password redacted.

use crate::backoff::Backoff;
use crate::settings::redact_url;
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;

/// Connects, retrying with backoff until it succeeds or `shutdown` fires
/// (then `None`). The connection is driven by a spawned task.
pub async fn connect(url: &str, purpose: &str, shutdown: &CancellationToken) -> Option<Client> {
    let mut backoff = Backoff::default();
    loop {
        match tokio_postgres::connect(url, NoTls).await {
            Ok((client, connection)) => {
                let owner = purpose.to_owned();
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::warn!(%error, purpose = owner, "postgres connection closed");
                    }
                });
                if backoff.attempts() > 0 {
                    tracing::info!(url = %redact_url(url), purpose, "postgres reachable again");
                }
                return Some(client);
            }
            Err(error) => {
                let delay = backoff.next_delay();
                tracing::warn!(url = %redact_url(url), purpose, %error, retry_in_ms = delay.as_millis() as u64, "postgres unreachable");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => return None,
                }
            }
        }
    }
}
