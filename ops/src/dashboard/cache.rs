//! The dashboard's snapshot, shared by every viewer: at most one set of
//! ClickHouse queries per [`MAX_AGE`], however many pages are open.
//!
//! Hand-written (a mutex around the last value and its time) because a
//! caching crate would add expiry policies and a second runtime model for
//! what is one value refreshed on demand.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

/// How old a snapshot may be when served.
pub const MAX_AGE: Duration = Duration::from_secs(2);

/// The last snapshot and when it was made. Concurrent requests for a stale
/// snapshot wait for the one refresh in progress instead of starting their
/// own (the lock is held while refreshing).
pub struct SnapshotCache {
    max_age: Duration,
    last: Mutex<Option<(Instant, Arc<String>)>>,
}

impl SnapshotCache {
    pub fn new(max_age: Duration) -> Self {
        Self {
            max_age,
            last: Mutex::new(None),
        }
    }

    /// The cached snapshot if younger than the maximum age, else a new one
    /// from `make`.
    pub async fn get<F, Fut>(&self, make: F) -> Arc<String>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = String>,
    {
        let mut last = self.last.lock().await;
        if let Some((at, body)) = last.as_ref()
            && at.elapsed() < self.max_age
        {
            return Arc::clone(body);
        }
        let body = Arc::new(make().await);
        *last = Some((Instant::now(), Arc::clone(&body)));
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_concurrent_viewers_cost_one_refresh() {
        let cache = Arc::new(SnapshotCache::new(Duration::from_secs(60)));
        let made = Arc::new(AtomicUsize::new(0));
        let mut viewers = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let (cache, made) = (Arc::clone(&cache), Arc::clone(&made));
            viewers.spawn(async move {
                cache
                    .get(|| async move {
                        made.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        "snapshot".to_owned()
                    })
                    .await
            });
        }
        while let Some(body) = viewers.join_next().await {
            assert_eq!(
                body.map(|b| b.to_string()).ok().as_deref(),
                Some("snapshot")
            );
        }
        assert_eq!(made.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_stale_snapshot_is_made_again() {
        let cache = SnapshotCache::new(Duration::ZERO);
        let first = cache.get(|| async { "a".to_owned() }).await;
        let second = cache.get(|| async { "b".to_owned() }).await;
        assert_eq!((first.as_str(), second.as_str()), ("a", "b"));
    }
}
