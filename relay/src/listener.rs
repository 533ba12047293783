//! Wakes flow workers the moment their source tables get rows: one LISTEN
//! connection per process on the `outbox_relay` channel, whose payload is the
//! table name (see the `outbox_notify` trigger function). When the connection
//! is lost and re-established every worker is woken once, since
//! notifications may have been missed meanwhile; polling covers the gap.

use std::collections::HashMap;
use std::sync::Arc;

use daemon::backoff::Backoff;
use futures::StreamExt;
use tokio::sync::{Notify, mpsc};
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

pub const CHANNEL: &str = "outbox_relay";

/// Which workers to wake for which table.
#[derive(Clone, Default)]
pub struct Wakers {
    by_table: HashMap<String, Vec<Arc<Notify>>>,
}

impl Wakers {
    pub fn register(&mut self, table: &str, notify: Arc<Notify>) {
        self.by_table
            .entry(table.to_owned())
            .or_default()
            .push(notify);
    }

    fn wake(&self, table: &str) {
        for n in self.by_table.get(table).into_iter().flatten() {
            n.notify_one();
        }
    }

    fn wake_all(&self) {
        for n in self.by_table.values().flatten() {
            n.notify_one();
        }
    }
}

/// Runs until `shutdown`; reconnects with backoff on connection loss.
pub async fn listen(url: String, wakers: Wakers, shutdown: CancellationToken) {
    let mut backoff = Backoff::default();
    while !shutdown.is_cancelled() {
        match listen_once(&url, &wakers, &shutdown).await {
            Ok(()) => return,
            Err(error) => {
                let retry_in_ms = backoff.upcoming().as_millis() as u64;
                tracing::warn!(%error, retry_in_ms, "notification listener lost; polling meanwhile");
                if !backoff.wait(&shutdown).await {
                    return;
                }
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum ListenError {
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Connect(#[from] connections::pg::PgConnectError),
    #[error("connection closed")]
    Closed,
}

/// Returns Ok only on shutdown.
async fn listen_once(
    url: &str,
    wakers: &Wakers,
    shutdown: &CancellationToken,
) -> Result<(), ListenError> {
    let (client, mut connection) = connections::pg::connect_once(url).await?;
    let (tx, mut rx) = mpsc::unbounded_channel::<Result<String, tokio_postgres::Error>>();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            let forwarded = match message {
                Ok(AsyncMessage::Notification(n)) => tx.send(Ok(n.payload().to_owned())),
                Ok(_) => Ok(()),
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            if forwarded.is_err() {
                return;
            }
        }
    });
    let result = async {
        client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
        tracing::debug!("listening for outbox notifications");
        wakers.wake_all();
        loop {
            tokio::select! {
                message = rx.recv() => match message {
                    Some(Ok(table)) => wakers.wake(&table),
                    Some(Err(e)) => return Err(ListenError::Postgres(e)),
                    None => return Err(ListenError::Closed),
                },
                () = shutdown.cancelled() => return Ok(()),
            }
        }
    }
    .await;
    driver.abort();
    result
}
