//! The endpoints of `CLICKHOUSE_URL`, each a replica of some shard, and
//! which one takes a shard's rows now.
//!
//! Without `CLICKHOUSE_CLUSTER` every endpoint is a replica of the one
//! shard there is (one endpoint: the server). With it, each endpoint says
//! which shard of the cluster it is (`system.clusters`, its `is_local`
//! row), and the shards' weights come from the same table.
//!
//! A shard's rows go to its first endpoint (in `CLICKHOUSE_URL`'s order)
//! that is not *left*. An endpoint that cannot be reached, or that answers
//! but refuses writes for a while — its Replicated table read-only after
//! losing ZooKeeper, ZooKeeper failing mid-insert (`error::replica_fault`
//! decides) — is left for the next replica of its shard, at once, in the
//! same attempt; it is tried first again after a pause (1 s, doubling to
//! [`PAUSE_MAX`]) and taken back as soon as it stores a block. Any other
//! error (a table refused, types that differ) is the same on every replica
//! and goes back to the caller as it is. When every replica of a shard
//! failed, the insert fails: unreachable ones alone as a transient error
//! (the same as one server down), any refusing writes as
//! [`InsertError::NoReplica`], which holds the flow not ready, saying
//! which replica refused what.

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clickhouse::Client;
use daemon::metrics::{Metrics, Series};

use super::caps::ServerCaps;
use super::client::{ClickHouseConfig, client_at};
use super::sharding::Slots;
use crate::error::{InsertError, ReplicaFault, replica_fault};

/// The longest a left replica waits before it is tried again: a restarted
/// server or a ZooKeeper session re-established is back within seconds,
/// and a replica that is still failing costs one quick refusal per try.
pub const PAUSE_MAX: Duration = Duration::from_secs(30);
const PAUSE_FIRST: Duration = Duration::from_secs(1);

/// One endpoint of `CLICKHOUSE_URL`.
struct Endpoint {
    /// For logs and reasons (its password, if any, redacted).
    name: String,
    client: Client,
    state: Mutex<State>,
    /// 1 while the endpoint is left for another replica.
    left_gauge: Series,
    failovers: Series,
    /// The only endpoint: nothing to leave it for, so nothing to log
    /// beyond the insert's own failure.
    alone: bool,
}

struct State {
    member: Member,
    left: Option<Left>,
}

/// What an endpoint is in the cluster.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Member {
    /// Not asked yet (it has not answered): never written to.
    Unknown,
    /// A replica of this shard (an index into the cluster's shards).
    Shard(usize),
    /// No server of the cluster: never written to.
    Outside,
}

struct Left {
    reason: String,
    until: Instant,
    pause: Duration,
}

/// Every endpoint, and the cluster's shards.
pub struct Replicas {
    endpoints: Vec<Endpoint>,
    cluster: Option<String>,
    /// Cluster mode: the shards' slots, once an endpoint said.
    slots: Mutex<Option<Slots>>,
}

/// Why the cluster's shape could not be learnt.
#[derive(Debug, thiserror::Error)]
pub enum ShapeError {
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    /// The servers have no such cluster in `remote_servers`.
    #[error("no cluster {cluster} in the servers' remote_servers (they have: {known})")]
    NoCluster { cluster: String, known: String },
}

impl Replicas {
    pub fn new(cfg: &ClickHouseConfig, metrics: &Metrics) -> Self {
        let mut urls = cfg.endpoints();
        if urls.is_empty() {
            // The setting requires one; a config built otherwise still
            // gets clients that say what is wrong.
            urls.push(cfg.url.as_str());
        }
        let alone = urls.len() == 1;
        let endpoints = urls
            .into_iter()
            .map(|url| {
                let name = flows::settings::redact_url(url);
                let label = [("endpoint", name.as_str())];
                Endpoint {
                    client: client_at(cfg, url, Some(&cfg.database)),
                    state: Mutex::new(State {
                        member: match cfg.cluster {
                            None => Member::Shard(0),
                            Some(_) => Member::Unknown,
                        },
                        left: None,
                    }),
                    left_gauge: metrics.gauge(
                        "sink_clickhouse_replica_left",
                        "1 while the endpoint is left for another replica of its shard (down, or refusing writes).",
                        &label,
                    ),
                    failovers: metrics.counter(
                        "sink_clickhouse_failovers_total",
                        "Times the endpoint was left for another replica of its shard.",
                        &label,
                    ),
                    name,
                    alone,
                }
            })
            .collect();
        Self {
            endpoints,
            cluster: cfg.cluster.clone(),
            slots: Mutex::new(cfg.cluster.is_none().then(|| Slots::new(&[1]))),
        }
    }

    pub fn cluster(&self) -> Option<&str> {
        self.cluster.as_deref()
    }

    /// The cluster's shards, once known (one shard without a cluster).
    pub fn slots(&self) -> Option<Slots> {
        lock(&self.slots).clone()
    }

    /// A client for queries any endpoint answers alike (the tables'
    /// columns, the server's version): the first not left.
    pub fn client(&self) -> &Client {
        let now = Instant::now();
        let usable = self.endpoints.iter().find(|e| !e.is_left(now));
        // `new` made at least one endpoint.
        &usable.unwrap_or(&self.endpoints[0]).client
    }

    /// `query` answered by the first endpoint that answers (those not left
    /// first); the last error when none does.
    pub async fn any<T, F, Fut>(&self, query: F) -> Result<T, clickhouse::error::Error>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, clickhouse::error::Error>>,
    {
        let now = Instant::now();
        let (usable, left): (Vec<&Endpoint>, Vec<&Endpoint>) =
            self.endpoints.iter().partition(|e| !e.is_left(now));
        let mut last = None;
        for endpoint in usable.into_iter().chain(left) {
            match query(endpoint.client.clone()).await {
                Ok(answer) => return Ok(answer),
                Err(error) => last = Some(error),
            }
        }
        Err(last.unwrap_or(clickhouse::error::Error::TimedOut))
    }

    /// Cluster mode: learns the shards and their weights, and which shard
    /// each answering endpoint is. Endpoints that do not answer now are
    /// asked again when a shard needs them.
    pub async fn learn_shape(&self) -> Result<(), ShapeError> {
        let Some(cluster) = self.cluster.clone() else {
            return Ok(());
        };
        let weights: Vec<(u32, u32)> = self
            .any(|c| {
                let cluster = cluster.clone();
                async move {
                    c.query("SELECT shard_num, any(shard_weight) FROM system.clusters WHERE cluster = ? GROUP BY shard_num ORDER BY shard_num")
                        .bind(cluster)
                        .fetch_all()
                        .await
                }
            })
            .await?;
        if weights.is_empty() {
            let known: Vec<String> = self
                .any(|c| async move {
                    c.query("SELECT DISTINCT cluster FROM system.clusters ORDER BY cluster")
                        .fetch_all()
                        .await
                })
                .await?;
            return Err(ShapeError::NoCluster {
                cluster,
                known: known.join(", "),
            });
        }
        let weights: Vec<u32> = weights.into_iter().map(|(_, w)| w).collect();
        *lock(&self.slots) = Some(Slots::new(&weights));
        for endpoint in &self.endpoints {
            if self.member(endpoint).await.is_err() {
                tracing::warn!(endpoint = %endpoint.name, "clickhouse endpoint not answering; asked again when its shard needs it");
            }
        }
        Ok(())
    }

    /// What the endpoint is in the cluster, asking it if it has not said
    /// yet.
    async fn member(&self, endpoint: &Endpoint) -> Result<Member, clickhouse::error::Error> {
        let known = lock(&endpoint.state).member;
        let (Member::Unknown, Some(cluster)) = (known, &self.cluster) else {
            return Ok(known);
        };
        let shard: Vec<u32> = endpoint
            .client
            .query("SELECT shard_num FROM system.clusters WHERE cluster = ? AND is_local LIMIT 1")
            .bind(cluster.as_str())
            .fetch_all()
            .await?;
        let member = match shard.first() {
            Some(n) => {
                tracing::info!(endpoint = %endpoint.name, shard = n, cluster = %cluster, "clickhouse endpoint is a replica of its shard");
                Member::Shard(n.saturating_sub(1) as usize)
            }
            None => {
                tracing::warn!(endpoint = %endpoint.name, cluster = %cluster, "clickhouse endpoint is no server of the cluster; it is not used");
                Member::Outside
            }
        };
        lock(&endpoint.state).member = member;
        Ok(member)
    }

    /// The replicas of `shard`, in the order to try: those not left in
    /// `CLICKHOUSE_URL`'s order, then the left ones, the soonest due
    /// first. An endpoint that has not said which shard it is is asked
    /// first (unless left); one that does not answer is left, never
    /// written to.
    async fn candidates(&self, shard: usize) -> Vec<&Endpoint> {
        let now = Instant::now();
        let mut usable = Vec::new();
        let mut left = Vec::new();
        for endpoint in &self.endpoints {
            let known = lock(&endpoint.state).member;
            let member = match known {
                Member::Unknown if endpoint.is_left(now) => continue,
                Member::Unknown => match self.member(endpoint).await {
                    Ok(member) => member,
                    Err(error) => {
                        endpoint.leave(&format!("unreachable: {error}"), ReplicaFault::Unreachable);
                        continue;
                    }
                },
                member => member,
            };
            if member != Member::Shard(shard) {
                continue;
            }
            if endpoint.is_left(now) {
                left.push(endpoint);
            } else {
                usable.push(endpoint);
            }
        }
        left.sort_by_key(|e| lock(&e.state).left.as_ref().map(|l| l.until));
        usable.extend(left);
        usable
    }

    /// Stores `rows` (`sql` … `FORMAT`, the body after `header`) on a
    /// replica of `shard`, leaving those that are down or refuse writes for
    /// the next (see the module's doc).
    pub async fn insert(
        &self,
        shard: usize,
        caps: &ServerCaps,
        sql: &str,
        header: &Bytes,
        rows: &Bytes,
    ) -> Result<(), InsertError> {
        let mut tried = Vec::new();
        let mut refused = false;
        let mut last = None;
        for endpoint in self.candidates(shard).await {
            match insert_at(&endpoint.client, caps, sql, header, rows.clone()).await {
                Ok(()) => {
                    endpoint.take_back();
                    return Ok(());
                }
                Err(error) => match replica_fault(&error) {
                    Some(fault) => {
                        let reason = fault_reason(&fault, &error);
                        refused |= matches!(fault, ReplicaFault::RefusesWrites(_));
                        endpoint.leave(&reason, fault);
                        tried.push(format!("{}: {reason}", endpoint.name));
                        last = Some(error);
                    }
                    None => return Err(InsertError::from(error)),
                },
            }
        }
        let shard_name = match &self.cluster {
            Some(_) => format!("of shard {} ", shard + 1),
            None => String::new(),
        };
        match last {
            Some(error) if !refused => Err(InsertError::Transient(error)),
            Some(_) => Err(InsertError::NoReplica {
                shard: shard_name,
                detail: tried.join("; "),
            }),
            None => Err(InsertError::Unroutable(format!(
                "no endpoint of CLICKHOUSE_URL is a replica {shard_name}of cluster {}",
                self.cluster.as_deref().unwrap_or("")
            ))),
        }
    }

    /// `query` answered by a replica of `shard` (unreachable ones left for
    /// the next, as for inserts).
    pub async fn read<T, F, Fut>(
        &self,
        shard: usize,
        query: F,
    ) -> Result<T, clickhouse::error::Error>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, clickhouse::error::Error>>,
    {
        let mut last = None;
        for endpoint in self.candidates(shard).await {
            match query(endpoint.client.clone()).await {
                Ok(answer) => return Ok(answer),
                Err(error) => {
                    if let Some(ReplicaFault::Unreachable) = replica_fault(&error) {
                        endpoint.leave(&format!("unreachable: {error}"), ReplicaFault::Unreachable);
                    }
                    last = Some(error);
                }
            }
        }
        Err(last.unwrap_or_else(|| {
            clickhouse::error::Error::Custom(format!(
                "no endpoint of CLICKHOUSE_URL is a replica of shard {}",
                shard + 1
            ))
        }))
    }
}

fn fault_reason(fault: &ReplicaFault, error: &clickhouse::error::Error) -> String {
    let detail: String = error.to_string().chars().take(160).collect();
    match fault {
        ReplicaFault::Unreachable => format!("unreachable ({detail})"),
        ReplicaFault::RefusesWrites(what) => format!("{what} ({detail})"),
    }
}

impl Endpoint {
    fn is_left(&self, now: Instant) -> bool {
        lock(&self.state)
            .left
            .as_ref()
            .is_some_and(|left| left.until > now)
    }

    /// Left for the next replica of its shard, with `reason`: tried again
    /// after a pause that doubles while it keeps failing.
    fn leave(&self, reason: &str, fault: ReplicaFault) {
        let mut state = lock(&self.state);
        let pause = state
            .left
            .as_ref()
            .map_or(PAUSE_FIRST, |l| (l.pause * 2).min(PAUSE_MAX));
        if state.left.is_none() {
            self.failovers.inc();
            self.left_gauge.set(1);
        }
        if state.left.is_none() && !self.alone {
            tracing::warn!(endpoint = %self.name, ?fault, reason, "clickhouse replica left for another of its shard");
        }
        state.left = Some(Left {
            reason: reason.to_owned(),
            until: Instant::now() + pause,
            pause,
        });
    }

    /// It stored a block: in use again.
    fn take_back(&self) {
        let mut state = lock(&self.state);
        if let Some(left) = state.left.take() {
            self.left_gauge.set(0);
            if self.alone {
                return;
            }
            tracing::info!(endpoint = %self.name, was = %left.reason, "clickhouse replica taken back");
        }
    }
}

/// One INSERT of `rows` into the server behind `client`: the header first
/// where the server checks the types an insert declares.
async fn insert_at(
    client: &Client,
    caps: &ServerCaps,
    sql: &str,
    header: &Bytes,
    rows: Bytes,
) -> Result<(), clickhouse::error::Error> {
    let mut insert = client.insert_formatted_with(sql.to_owned());
    if caps.insert_checks_types {
        // Both are the server's defaults; set so a profile cannot turn the
        // check off.
        insert = insert
            .with_setting("input_format_with_names_use_header", "1")
            .with_setting("input_format_with_types_use_header", "1");
        insert.send(header.clone()).await?;
    }
    insert.send(rows).await?;
    insert.end().await
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    const OK: u8 = 0;
    const READ_ONLY: u8 = 1;
    const NO_TABLE: u8 = 2;
    const DOWN: u8 = 3;

    /// A stand-in for one ClickHouse server's HTTP interface: answers every
    /// request as its `mode` says, counting the requests.
    struct Fake {
        url: String,
        mode: Arc<AtomicU8>,
        hits: Arc<AtomicUsize>,
    }

    impl Fake {
        async fn start(mode: u8) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let url = format!(
                "http://{}",
                listener.local_addr().unwrap_or_else(|e| panic!("{e}"))
            );
            let (mode, hits) = (Arc::new(AtomicU8::new(mode)), Arc::new(AtomicUsize::new(0)));
            let (m, h) = (Arc::clone(&mode), Arc::clone(&hits));
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(serve(stream, Arc::clone(&m), Arc::clone(&h)));
                }
            });
            Self { url, mode, hits }
        }

        fn set(&self, mode: u8) {
            self.mode.store(mode, Ordering::SeqCst);
        }

        fn hits(&self) -> usize {
            self.hits.load(Ordering::SeqCst)
        }
    }

    /// Reads one request after another (keep-alive) and answers each.
    async fn serve(mut stream: tokio::net::TcpStream, mode: Arc<AtomicU8>, hits: Arc<AtomicUsize>) {
        let mut buf = Vec::new();
        loop {
            if mode.load(Ordering::SeqCst) == DOWN {
                return; // closed without an answer: a server going away
            }
            let Some(end) = read_request(&mut stream, &mut buf).await else {
                return;
            };
            buf.drain(..end);
            hits.fetch_add(1, Ordering::SeqCst);
            let (status, body) = match mode.load(Ordering::SeqCst) {
                OK => ("200 OK", String::new()),
                READ_ONLY => (
                    "500 Internal Server Error",
                    "Code: 242, e.displayText() = DB::Exception: Table is in readonly mode, e.what() = DB::Exception".to_owned(),
                ),
                NO_TABLE => (
                    "404 Not Found",
                    "Code: 60, e.displayText() = DB::Exception: Table t.x doesn't exist., e.what() = DB::Exception".to_owned(),
                ),
                _ => return,
            };
            let answer = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            if stream.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
    }

    /// Reads until `buf` holds a whole request (headers, then a body of its
    /// Content-Length or chunked to the last chunk); its length.
    async fn read_request(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(head) = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4) {
                let headers = String::from_utf8_lossy(&buf[..head]).to_ascii_lowercase();
                let length = headers
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|n| n.trim().parse::<usize>().ok());
                match length {
                    Some(n) if buf.len() >= head + n => return Some(head + n),
                    None if !headers.contains("chunked") => return Some(head),
                    None => {
                        if let Some(at) = buf[head..].windows(5).position(|w| w == b"0\r\n\r\n") {
                            return Some(head + at + 5);
                        }
                    }
                    Some(_) => {}
                }
            }
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn replicas(fakes: &[&Fake], metrics: &Metrics) -> Replicas {
        let urls: Vec<&str> = fakes.iter().map(|f| f.url.as_str()).collect();
        let cfg = ClickHouseConfig {
            url: urls.join(","),
            user: "default".into(),
            password: None,
            database: "t".into(),
            ca_file: None,
            cluster: None,
        };
        Replicas::new(&cfg, metrics)
    }

    async fn insert(replicas: &Replicas) -> Result<(), InsertError> {
        let caps = ServerCaps::from_version("18.16.1");
        let rows = Bytes::from_static(&[1, 0, 0, 0, 0, 0, 0, 0]);
        replicas
            .insert(
                0,
                &caps,
                "INSERT INTO t.x (id) FORMAT RowBinary",
                &Bytes::new(),
                &rows,
            )
            .await
    }

    /// A replica refusing writes is left for the next at once, not tried
    /// again during its pause, and taken back once it stores a block; a
    /// table's own refusal is not a replica's.
    #[tokio::test]
    async fn a_replica_refusing_writes_is_left_and_taken_back() {
        let (a, b) = (Fake::start(READ_ONLY).await, Fake::start(OK).await);
        let metrics = Metrics::default();
        let replicas = replicas(&[&a, &b], &metrics);
        let left = || metrics.value("sink_clickhouse_replica_left", &[("endpoint", &a.url)]);
        assert!(insert(&replicas).await.is_ok());
        assert_eq!((a.hits(), b.hits(), left()), (1, 1, 1));
        assert!(insert(&replicas).await.is_ok());
        assert_eq!(
            (a.hits(), b.hits()),
            (1, 2),
            "left: not tried during its pause"
        );
        a.set(OK);
        let deadline = Instant::now() + Duration::from_secs(10);
        while a.hits() < 2 {
            assert!(
                Instant::now() < deadline,
                "the left replica tried again after its pause"
            );
            assert!(insert(&replicas).await.is_ok());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(left(), 0, "taken back");
        let before = b.hits();
        assert!(insert(&replicas).await.is_ok());
        assert_eq!(
            (a.hits(), b.hits()),
            (3, before),
            "the first replica in use again"
        );
        a.set(NO_TABLE);
        let refused = insert(&replicas).await;
        assert!(
            matches!(refused, Err(InsertError::Refused { code: 60, .. })),
            "{refused:?}"
        );
        assert_eq!(
            b.hits(),
            before,
            "a table's refusal is not left for another replica"
        );
    }

    /// Every replica of the shard failing: unreachable ones alone are a
    /// transient error (as one server down); any refusing writes is
    /// `NoReplica`, naming each with its reason.
    #[tokio::test]
    async fn a_shard_without_a_replica_taking_writes() {
        let (a, b) = (Fake::start(DOWN).await, Fake::start(DOWN).await);
        let metrics = Metrics::default();
        let replicas = replicas(&[&a, &b], &metrics);
        let down = insert(&replicas).await;
        assert!(matches!(down, Err(InsertError::Transient(_))), "{down:?}");
        b.set(READ_ONLY);
        let refused = insert(&replicas).await;
        match refused {
            Err(InsertError::NoReplica { shard, detail }) => {
                assert_eq!(shard, "");
                assert!(
                    detail.contains(&format!("{}: unreachable", a.url))
                        && detail.contains(&format!(
                            "{}: its table is read-only (the replica lost its ZooKeeper session)",
                            b.url
                        )),
                    "{detail}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
