//! The relay loop of one flow: win leadership, then drain pending rows in
//! batches, one Postgres transaction and one Kafka transaction per batch
//! (pipelined over two connections, see `pipeline`).
//!
//! Delivery contract: a row is flagged `sent_to_kafka` only after the Kafka
//! transaction carrying it committed, and in the same Postgres transaction
//! that locked it. A crash between the Kafka commit and the Postgres commit
//! leaves the rows pending, so they are published again (at-least-once); the
//! sink's tables are keyed by source id and absorb the repeat.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use daemon::backoff::Backoff;
use daemon::metrics::Metrics;
use flows::Flow;
use tokio::sync::Notify;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::config::{PostgresConfig, RelayConfig};
use crate::error::{Recovery, RelayError, classify, within};
use crate::pipeline::{Lanes, Source};
use crate::publisher::{Publisher, SharedPublisher};
use crate::shard::Shard;
use crate::source::OutboxSource;
use crate::stats::{FlowStats, TableStats};
use crate::window::Scan;

pub struct FlowRelay {
    pub flow: Flow,
    /// The part of the flow this loop relays (see `shard`).
    pub shard: Shard,
    /// Whether this relay prefers the shard (`RELAY_SHARDS`): else it leads
    /// it only while no live relay claims it.
    pub preferred: bool,
    pub config: Arc<RelayConfig>,
    pub wake: Arc<Notify>,
    pub metrics: Metrics,
    /// This flow's loop turning, for the systemd watchdog.
    pub beats: daemon::systemd::Beats,
    /// Sessions for the prune (see `prune`).
    pub pool: connections::pg_pool::Pool,
    /// Creates the flow's topics before a batch first goes to one.
    pub topics: connections::topics::Topics,
    /// What the flow's topics are created with.
    pub spec: connections::topics::TopicSpec,
    /// `/readyz`: held not ready, with Kafka's reason, while batches fail.
    pub health: daemon::health::FlowHealth,
}

/// A source table of the flow this relay leads: checked, with its metrics
/// and where its scan stands (see `window`).
struct Led {
    table: OutboxSource,
    stats: TableStats,
    scan: Mutex<Scan>,
}

/// Postgres connections per leader (see `pipeline`). Measured on 2 cores:
/// a third lane (flagging and locking at once) gained nothing over two, as
/// the two statements then slow each other down.
const LANES: usize = 2;

/// How often a relay leading a shard it does not prefer checks whether a
/// relay that prefers it is back (see `shard`).
const CLAIM_CHECK_EVERY: Duration = Duration::from_secs(1);

/// The advisory-lock key of a flow's lane: a relay leads a flow (a shard)
/// only while it holds every lane's key, so one active relay per flow
/// (shard) per database.
pub fn leader_key(flow: &str, lane: usize) -> String {
    Shard::WHOLE.lane_key(flow, lane)
}

/// The health cause of Postgres not giving this loop a writable session.
const POSTGRES_CAUSE: &str = "postgres";

/// Why leading ended without an error.
enum Ended {
    Shutdown,
    /// A relay that prefers this shard claims it again.
    HandedBack,
}

impl FlowRelay {
    /// Runs until `shutdown`. Returns Err only when the flow's definition
    /// contradicts the database.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), RelayError> {
        let flow = self.unit();
        let mut backoff = Backoff::default();
        while !shutdown.is_cancelled() {
            self.beats.beat(&flow);
            let connect = connections::pg::connect_observed(
                &self.config.postgres.url,
                &flow,
                &shutdown,
                |failed| self.postgres_seen(failed),
            );
            let Some(client) = self.beating(connect).await else {
                break;
            };
            // Dropping the clients (either way out) closes both sessions,
            // which releases their advisory locks.
            match self.lead(client, &mut backoff, &shutdown).await {
                Ok(Ended::Shutdown) => break,
                Ok(Ended::HandedBack) => {
                    tracing::info!(
                        flow,
                        "a relay that prefers this shard is back; handed it over, standing by"
                    );
                }
                Err(err) if classify(&err) == Recovery::Fatal => return Err(err),
                Err(error) => {
                    if matches!(error, RelayError::ReadOnly) {
                        self.health.block(POSTGRES_CAUSE, &error.to_string());
                    }
                    let retry_in_ms = backoff.upcoming().as_millis() as u64;
                    tracing::warn!(flow, %error, retry_in_ms, "relay session lost; reconnecting");
                    backoff.wait(&shutdown).await;
                }
            }
        }
        tracing::info!(flow, "relay stopped");
        Ok(())
    }

    /// `flow`, or `flow/shard-1-of-4`: how logs and the watchdog name it.
    fn unit(&self) -> String {
        self.shard.unit(self.flow.name.as_str())
    }

    /// Waits to become the flow's (shard's) leader (both lanes' locks),
    /// then relays until shutdown or hand-over (Ok) or until a session is
    /// unusable (Err).
    async fn lead(
        &self,
        first: Client,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> Result<Ended, RelayError> {
        self.writable(&first).await?;
        self.health.unblock(POSTGRES_CAUSE);
        let sources = self.inspect_sources(&first).await?;
        let Some(lanes) = self.open_lanes(first, shutdown).await? else {
            return Ok(Ended::Shutdown);
        };
        let led = self.start_scans(&lanes[0], sources).await?;
        tracing::info!(
            flow = self.unit(),
            preferred = self.preferred,
            "active relay for this flow"
        );
        let Some(mut publisher) = self.beating(self.new_publisher(backoff, shutdown)).await else {
            return Ok(Ended::Shutdown);
        };
        let stats = FlowStats::new(&self.metrics, self.flow.name.as_str());
        stats.leader.inc();
        let result = self
            .relay_until_error(&lanes, &led, &mut publisher, backoff, shutdown, &stats)
            .await;
        // A standby publishes nothing: Kafka's troubles are the leader's.
        self.health.unblock(&self.kafka_cause());
        stats.leader.add(-1);
        for led in &led {
            led.stats.show_waiting_for(0);
        }
        result
    }

    /// A connection failed (`Some`): not ready, saying why — no primary
    /// among the hosts, or none reachable — until `lead` gets a writable
    /// session.
    fn postgres_seen(&self, failed: Option<&connections::pg::PgConnectError>) {
        let Some(error) = failed else { return };
        let reason = if error.no_primary() {
            "postgres: no host of DATABASE_URL takes writes (only standbys answer: a failover under way?); retrying".to_owned()
        } else {
            format!("postgres unreachable: {error}; retrying")
        };
        self.health.block(POSTGRES_CAUSE, &reason);
    }

    /// Err([`RelayError::ReadOnly`]) when `client`'s server takes no
    /// writes: a standby reached by a URL without
    /// `target_session_attrs=read-write`.
    async fn writable(&self, client: &Client) -> Result<(), RelayError> {
        let read_only = within(
            self.config.postgres.query_timeout,
            "SHOW transaction_read_only",
            client.query_one(
                "SELECT current_setting('transaction_read_only') = 'on'",
                &[],
            ),
        )
        .await?;
        if read_only.get::<_, bool>(0) {
            return Err(RelayError::ReadOnly);
        }
        Ok(())
    }

    /// Checks every source table of the flow against the database.
    async fn inspect_sources(
        &self,
        client: &Client,
    ) -> Result<Vec<(OutboxSource, TableStats)>, RelayError> {
        let flow = self.flow.name.as_str();
        let mut sources = Vec::new();
        for source in &self.flow.sources {
            let checked = within(
                self.config.postgres.query_timeout,
                "the source table's inspection",
                OutboxSource::inspect(client, flow, source, self.shard),
            )
            .await?;
            let stats = TableStats::new(&self.metrics, flow, &checked.table);
            sources.push((checked, stats));
        }
        Ok(sources)
    }

    /// The lanes' sessions, each holding its advisory lock (waited for:
    /// standing by); `None` on shutdown.
    async fn open_lanes(
        &self,
        first: Client,
        shutdown: &CancellationToken,
    ) -> Result<Option<Vec<Client>>, RelayError> {
        let flow = self.flow.name.to_string();
        let mut lanes = vec![first];
        for lane in 0..LANES {
            if lane > 0 {
                let url = &self.config.postgres.url;
                let connect = connections::pg::connect(url, &flow, shutdown);
                let Some(client) = self.beating(connect).await else {
                    return Ok(None);
                };
                lanes.push(client);
            }
            let settings = limit_session(&lanes[lane], &self.config.postgres);
            within(
                self.config.postgres.query_timeout,
                "the session settings",
                settings,
            )
            .await?;
            if lane == 0 && self.preferred && !self.shard.is_whole() {
                // Held while this session lives: standing by and leading.
                self.try_lock(&lanes[0], &self.shard.claim_key(&flow))
                    .await?;
            }
            let key = self.shard.lane_key(&flow, lane);
            if !self
                .acquire_lock(&lanes[lane], &key, lane == 0, shutdown)
                .await?
            {
                return Ok(None);
            }
        }
        Ok(Some(lanes))
    }

    /// Each source's scan, from its saved floor (see `window`).
    async fn start_scans(
        &self,
        client: &Client,
        sources: Vec<(OutboxSource, TableStats)>,
    ) -> Result<Vec<Led>, RelayError> {
        let mut led = Vec::with_capacity(sources.len());
        for (table, stats) in sources {
            let floor = within(
                self.config.postgres.query_timeout,
                "the scan's saved floor",
                crate::positions::starting_floor(client, &table.table, self.shard),
            )
            .await?;
            tracing::info!(flow = self.unit(), table = %table.table, floor = %floor.text(), "scan starts");
            led.push(Led {
                table,
                stats,
                scan: Mutex::new(Scan::from_floor(floor)),
            });
        }
        Ok(led)
    }

    /// Turns until shutdown, hand-over or an error the relay cannot go on
    /// from: each turn drains every source table, then, when none had more,
    /// waits for a NOTIFY or the poll interval.
    async fn relay_until_error(
        &self,
        lanes: &[Client],
        sources: &[Led],
        publisher: &mut SharedPublisher,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
        stats: &FlowStats,
    ) -> Result<Ended, RelayError> {
        let unit = self.unit();
        let mut prune = crate::prune::Scheduled::default();
        let mut claim_checked = Instant::now();
        loop {
            self.beats.beat(&unit);
            if shutdown.is_cancelled() {
                return Ok(Ended::Shutdown);
            }
            if !self.preferred && claim_checked.elapsed() >= CLAIM_CHECK_EVERY {
                claim_checked = Instant::now();
                if self.claimed(&lanes[0]).await? {
                    return Ok(Ended::HandedBack);
                }
            }
            if self.shard.index == 0 {
                let every = self.config.batch.prune_interval;
                prune.start_if_due(&self.pool, &self.flow, every, &self.metrics);
            }
            let mut more = false;
            for led in sources {
                match self
                    .drain_one(lanes, led, publisher, backoff, shutdown, stats)
                    .await?
                {
                    Some(drained_more) => more |= drained_more,
                    None => return Ok(Ended::Shutdown),
                }
            }
            if !more && !self.idle(lanes, shutdown).await? {
                return Ok(Ended::Shutdown);
            }
        }
    }

    /// One turn of one source table: whether it may have more rows (`None`
    /// on shutdown). A batch Kafka did not take is retried with backoff and
    /// a new producer; an error of the sessions ends leading (Err).
    async fn drain_one(
        &self,
        lanes: &[Client],
        led: &Led,
        publisher: &mut SharedPublisher,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
        stats: &FlowStats,
    ) -> Result<Option<bool>, RelayError> {
        let flow = self.flow.name.as_str();
        let source = Source {
            table: &led.table,
            stats: &led.stats,
            scan: &led.scan,
        };
        let pipeline = Lanes {
            lanes,
            beats: &self.beats,
            query_timeout: self.config.postgres.query_timeout,
            publisher,
            topics: &self.topics,
            spec: &self.spec,
            flow,
            batch_size: self.config.batch.batch_size,
            stats,
        };
        let renew = match pipeline.drain(&source, shutdown).await {
            Ok(drained) => {
                backoff.reset();
                self.health.unblock(&self.kafka_cause());
                // Recovery::SetAside: the aborted transaction may leave the
                // producer needing an epoch bump.
                if drained.set_aside == 0 {
                    return Ok(Some(drained.more));
                }
                drained.more
            }
            Err(err) => match classify(&err) {
                // `drain` sets rows aside itself; a rejection that still
                // comes back is retried like an abort.
                recovery @ (Recovery::RecreateProducer | Recovery::SetAside | Recovery::Retry) => {
                    stats.failed.inc();
                    let retry_in_ms = backoff.upcoming().as_millis() as u64;
                    tracing::warn!(flow, table = %led.table.table, error = %err, retry_in_ms, "batch not published; nothing flagged, retrying");
                    self.kafka_trouble(&err.to_string()).await;
                    if !backoff.wait(shutdown).await {
                        return Ok(None);
                    }
                    if recovery == Recovery::Retry {
                        return Ok(Some(false));
                    }
                    false
                }
                Recovery::Reconnect | Recovery::Fatal => {
                    stats.failed.inc();
                    return Err(err);
                }
            },
        };
        match self.beating(self.new_publisher(backoff, shutdown)).await {
            Some(renewed) => {
                *publisher = renewed;
                Ok(Some(renew))
            }
            None => Ok(None),
        }
    }

    /// Nothing more to do: keeps the idle lanes' sessions alive, then waits
    /// for a NOTIFY or the poll interval; false on shutdown.
    async fn idle(
        &self,
        lanes: &[Client],
        shutdown: &CancellationToken,
    ) -> Result<bool, RelayError> {
        // Lanes after the first see no query while idle; keep their
        // sessions inside the server's idle timeout.
        for lane in &lanes[1..] {
            let ping = lane.simple_query("");
            within(self.config.postgres.query_timeout, "a lane's ping", ping).await?;
        }
        tokio::select! {
            () = self.wake.notified() => Ok(true),
            () = tokio::time::sleep(self.config.batch.poll_interval) => Ok(true),
            () = shutdown.cancelled() => Ok(false),
        }
    }

    /// Session-level advisory lock: held until this connection ends, so a
    /// killed leader's locks are released by Postgres and a standby takes
    /// over at its next attempt. A shard this relay does not prefer is
    /// tried (at `first`, the lane-0 lock) only while nobody claims it.
    /// Returns false on shutdown.
    async fn acquire_lock(
        &self,
        client: &Client,
        key: &str,
        first: bool,
        shutdown: &CancellationToken,
    ) -> Result<bool, RelayError> {
        let flow = self.unit();
        let mut announced = false;
        loop {
            self.beats.beat(&flow);
            let yielding = first && !self.preferred && self.claimed(client).await?;
            if !yielding && self.try_lock(client, key).await? {
                return Ok(true);
            }
            if !announced {
                tracing::info!(flow, "another relay is active for this flow; standing by");
                announced = true;
            }
            tokio::select! {
                () = tokio::time::sleep(self.config.batch.standby_retry) => {}
                () = shutdown.cancelled() => return Ok(false),
            }
        }
    }

    /// `pg_try_advisory_lock` at session level: whether it is held now.
    async fn try_lock(&self, client: &Client, key: &str) -> Result<bool, RelayError> {
        let row = within(
            self.config.postgres.query_timeout,
            "the leader lock",
            client.query_one(
                "SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
                &[&key],
            ),
        )
        .await?;
        Ok(row.get(0))
    }

    /// Whether a live relay that prefers this shard holds its claim (the
    /// claim is tried and, when free, let go at once).
    async fn claimed(&self, client: &Client) -> Result<bool, RelayError> {
        let row = within(
            self.config.postgres.query_timeout,
            "the shard's claim",
            client.query_one(
                "SELECT CASE WHEN pg_try_advisory_lock(hashtextextended($1, 0)) \
                 THEN NOT pg_advisory_unlock(hashtextextended($1, 0)) ELSE true END",
                &[&self.shard.claim_key(self.flow.name.as_str())],
            ),
        )
        .await?;
        Ok(row.get(0))
    }

    /// Runs `wait` — a retry loop whose every attempt is bounded — beating
    /// for the watchdog meanwhile: waiting out an unreachable service is
    /// not being stuck.
    async fn beating<T>(&self, wait: impl std::future::Future<Output = T>) -> T {
        let flow = self.unit();
        let mut wait = std::pin::pin!(wait);
        let mut every = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                done = &mut wait => return done,
                _ = every.tick() => self.beats.beat(&flow),
            }
        }
    }

    /// The health cause of Kafka not taking this loop's batches.
    fn kafka_cause(&self) -> String {
        format!("kafka {}", self.unit())
    }

    /// Holds the flow not ready: Kafka's `error`, what the cluster's
    /// metadata shows of the flow's topics (a partition without a leader,
    /// too few in-sync replicas), and that nothing is flagged meanwhile.
    /// Cleared by the next batch published (or the end of leading).
    async fn kafka_trouble(&self, error: &str) {
        /// Diagnosing must not hold the retries up when no broker answers.
        const LOOK_FOR: Duration = Duration::from_secs(5);
        let fixed: Vec<&str> = self
            .flow
            .sources
            .iter()
            .filter(|s| !s.routed())
            .map(|s| s.topic.as_str())
            .collect();
        let seen = tokio::time::timeout(LOOK_FOR, self.topics.diagnose(&fixed, &self.spec));
        let mut reason = format!("kafka does not take its batches ({}): {error}", self.unit());
        if let Ok(Some(seen)) = self.beating(seen).await {
            reason.push_str("; ");
            reason.push_str(&seen);
        }
        reason.push_str("; nothing flagged sent, retrying");
        self.health.block(&self.kafka_cause(), &reason);
    }

    async fn new_publisher(
        &self,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> Option<SharedPublisher> {
        let flow = self.unit();
        loop {
            let kafka = self.config.kafka.clone();
            let (name, shard) = (self.flow.name.to_string(), self.shard);
            match tokio::task::spawn_blocking(move || Publisher::connect(&kafka, &name, shard))
                .await
            {
                Ok(Ok(p)) => return Some(Arc::new(p)),
                Ok(Err(error)) => {
                    let retry_in_ms = backoff.upcoming().as_millis() as u64;
                    tracing::warn!(flow, %error, retry_in_ms, "kafka producer not ready");
                    self.kafka_trouble(&format!("its producer cannot start transactions: {error}"))
                        .await;
                    if !backoff.wait(shutdown).await {
                        return None;
                    }
                }
                Err(error) => {
                    tracing::error!(flow, %error, "kafka producer set-up panicked");
                    return None;
                }
            }
        }
    }
}

/// Asks the server to end this session when it stays idle longer than
/// `session_timeout`, inside a transaction or not: a leader that freezes
/// (SIGSTOP, a paused VM) or whose network path dies loses its advisory and
/// row locks then, so a standby takes over; when it resumes, its Kafka
/// producer is fenced and it steps down (see `error::classify`). Also bounds
/// each statement (`statement_timeout` = `query_timeout`) and has the server
/// probe the client's socket (keepalives, unacknowledged data, and between
/// rows of a long query). `idle_session_timeout` and
/// `client_connection_check_interval` need PostgreSQL 14.
async fn limit_session(client: &Client, pg: &PostgresConfig) -> Result<(), RelayError> {
    let idle = pg.session_timeout.as_millis();
    let query = pg.query_timeout.as_millis();
    let user_timeout = connections::pg::TCP_USER_TIMEOUT.as_millis();
    client
        .batch_execute(&format!(
            "SET idle_in_transaction_session_timeout = {idle};
             SET statement_timeout = {query};
             SET tcp_keepalives_idle = {};
             SET tcp_keepalives_interval = {};
             SET tcp_keepalives_count = {};
             SET tcp_user_timeout = {user_timeout}",
            connections::pg::KEEPALIVE_IDLE.as_secs(),
            connections::pg::KEEPALIVE_INTERVAL.as_secs(),
            connections::pg::KEEPALIVE_RETRIES,
        ))
        .await?;
    for (setting, value) in [
        ("idle_session_timeout", idle),
        ("client_connection_check_interval", 5_000),
    ] {
        if let Err(error) = client
            .batch_execute(&format!("SET {setting} = {value}"))
            .await
        {
            tracing::warn!(setting, error = %connections::pg::detail(&error), "not available (PostgreSQL < 14): a relay frozen between batches keeps its locks until the server notices");
        }
    }
    Ok(())
}
