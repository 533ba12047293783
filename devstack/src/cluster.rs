//! A Kafka cluster on loopback: three Apache Kafka brokers and one KRaft
//! controller, each its own JVM (the jars `scripts/kafka-lib.sh` fetches
//! with Maven), with production's settings — every topic's replication
//! factor 3 and `min.insync.replicas=2` by default, the internal topics'
//! too (`__consumer_offsets`, `__transaction_state`), topic auto-creation
//! off — for the cluster tests and the benchmark. A test can kill a node
//! (SIGKILL) and start it again, and cut a broker off from the other
//! brokers and the controller (a network partition) and heal it.
//!
//! Why a controller of its own: a broker that dies must not take the
//! metadata quorum with it (production runs controllers apart from
//! brokers), so "two brokers of three down" is about replicas only, and
//! the controller fences a dead or cut-off broker and moves leadership as
//! it would in production. One controller, not three: its own failover is
//! Kafka's business, not the product's guarantee, and memory is shared.
//!
//! How a broker is cut off without root: every connection between nodes
//! goes through a [`Link`] that can go down, and each JVM reads its own
//! hosts file (`-Djdk.net.hosts.file`), so the name `kafka-2` is
//! 127.0.1.2 for broker 1 and 127.0.3.2 for broker 3 — two links, one
//! per direction of each pair, on loopback addresses of their own. Broker
//! i reaches the controller through 127.0.i.100. Clients reach every
//! broker directly (their listener is not proxied): a cut-off broker that
//! still leads a partition in its own eyes keeps answering them.
//!
//! Every JVM dies with the process that started it (`PR_SET_PDEATHSIG`,
//! set by a thread that lives as long as the cluster).

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, Producer};

use crate::link::Link;

/// The brokers' node ids.
pub const BROKERS: [i32; 3] = [1, 2, 3];
const CONTROLLER: i32 = 100;
/// Partitions of `__consumer_offsets` and `__transaction_state`: which one
/// holds a group or a transactional id decides its coordinator.
const INTERNAL_PARTITIONS: i32 = 6;
/// A broker the controller has not heard from for this long is fenced: its
/// partitions get new leaders. Kafka's default is 9 s; shorter keeps the
/// tests short without changing what happens.
const SESSION_TIMEOUT_MS: u32 = 6_000;

pub struct ClusterOptions {
    /// The nodes' data, configs and logs (emptied at start).
    pub dir: PathBuf,
    /// The controller listens here, broker i on `base_port + 10 i` (its
    /// clients) and `+ 1` (the other brokers).
    pub base_port: u16,
    /// The broker's jars.
    pub jars: PathBuf,
    /// Each JVM's heap, e.g. `384m`.
    pub heap: String,
    /// Every link between nodes through a [`Link`] (so [`KafkaCluster::isolate`]
    /// works); off, the nodes talk directly (the benchmark).
    pub partitionable: bool,
}

impl ClusterOptions {
    /// A partitionable cluster in `dir` on ports from `base_port`, the jars
    /// from `KAFKA_JARS` or the cache `scripts/kafka-lib.sh` fills.
    pub fn new(dir: PathBuf, base_port: u16) -> Result<Self> {
        Ok(Self {
            dir,
            base_port,
            jars: default_jars()?,
            heap: "384m".into(),
            partitionable: true,
        })
    }
}

/// The Kafka version docker-compose.yml pins: the first `image:` line naming
/// `apache/kafka:<version>`, also inside a default such as
/// `${KAFKA_IMAGE:-apache/kafka:4.1.1}` (as scripts/kafka-lib.sh reads it).
fn compose_kafka_version(compose: &str) -> Option<&str> {
    compose.lines().find_map(|line| {
        let image = line.trim().strip_prefix("image:")?;
        let (_, rest) = image.split_once("apache/kafka:")?;
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        (end > 0).then(|| &rest[..end])
    })
}

/// `KAFKA_JARS`, or where `scripts/kafka-lib.sh` puts the jars of the
/// version docker-compose.yml pins (`$KAFKA_CACHE/libs`, by default
/// `~/.cache/outbox-relay/kafka-<version>/libs`).
pub fn default_jars() -> Result<PathBuf> {
    if let Some(jars) = std::env::var_os("KAFKA_JARS").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(jars));
    }
    let cache = match std::env::var_os("KAFKA_CACHE").filter(|v| !v.is_empty()) {
        Some(cache) => PathBuf::from(cache),
        None => {
            let compose = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker-compose.yml");
            let text = std::fs::read_to_string(&compose)
                .with_context(|| format!("reading {}", compose.display()))?;
            let version = compose_kafka_version(&text)
                .context("no apache/kafka image version in docker-compose.yml")?;
            let base = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .context("neither XDG_CACHE_HOME nor HOME is set")?;
            base.join("outbox-relay").join(format!("kafka-{version}"))
        }
    };
    let jars = cache.join("libs");
    if !jars.is_dir() {
        bail!(
            "no Kafka jars in {}: scripts/cluster-test.sh fetches them (or set KAFKA_JARS)",
            jars.display()
        );
    }
    Ok(jars)
}

pub struct KafkaCluster {
    opts: ClusterOptions,
    bootstrap: String,
    running: Mutex<BTreeMap<i32, Child>>,
    links: Option<Links>,
    spawner: Spawner,
    metadata: BaseConsumer,
}

impl KafkaCluster {
    /// Formats every node's storage, starts the controller and the three
    /// brokers, and waits until all three serve and the internal topics
    /// exist.
    pub fn start(opts: ClusterOptions) -> Result<Self> {
        let _ = std::fs::remove_dir_all(&opts.dir);
        std::fs::create_dir_all(&opts.dir)?;
        let bootstrap = BROKERS
            .iter()
            .map(|b| format!("127.0.0.1:{}", client_port(opts.base_port, *b)))
            .collect::<Vec<_>>()
            .join(",");
        let metadata = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("log_level", "0")
            .create()
            .context("a metadata client")?;
        let links = if opts.partitionable {
            Some(Links::start(opts.base_port)?)
        } else {
            None
        };
        let cluster = Self {
            opts,
            bootstrap,
            running: Mutex::default(),
            links,
            spawner: Spawner::start()?,
            metadata,
        };
        cluster.write_configs()?;
        cluster.format()?;
        cluster.launch(CONTROLLER)?;
        for broker in BROKERS {
            cluster.launch(broker)?;
        }
        for broker in BROKERS {
            cluster.wait_serving(broker, Duration::from_secs(120))?;
        }
        cluster.warm_up()?;
        Ok(cluster)
    }

    /// `127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3`.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// The pids of the nodes running.
    pub fn pids(&self) -> Vec<u32> {
        self.lock().values().map(Child::id).collect()
    }

    /// SIGKILL to the node; waits until it is gone.
    pub fn kill(&self, node: i32) -> Result<()> {
        let child = self.lock().remove(&node);
        if let Some(mut child) = child {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts a broker again (same data, same configuration) unless it
    /// runs, and waits until the cluster's metadata lists it.
    pub fn restart(&self, broker: i32) -> Result<()> {
        self.relaunch_if_gone(broker)?;
        self.wait_serving(broker, Duration::from_secs(120))
    }

    /// Starts the node unless its JVM runs (killed, or gone by itself).
    fn relaunch_if_gone(&self, node: i32) -> Result<()> {
        let gone = self
            .lock()
            .get_mut(&node)
            .is_none_or(|child| !matches!(child.try_wait(), Ok(None)));
        if gone {
            self.lock().remove(&node);
            self.launch(node)?;
        }
        Ok(())
    }

    /// Cuts `broker` off from the other brokers and the controller (packets
    /// dropped both ways, connections left open); its clients still reach it.
    pub fn isolate(&self, broker: i32) -> Result<()> {
        self.links()?.set(broker, false);
        Ok(())
    }

    /// Undoes [`KafkaCluster::isolate`].
    pub fn heal(&self, broker: i32) -> Result<()> {
        self.links()?.set(broker, true);
        Ok(())
    }

    /// Heals every link, starts every node not running, and waits until
    /// the cluster is whole ([`KafkaCluster::wait_healthy`]): where each
    /// test starts, whatever the one before left.
    pub fn recover(&self, timeout: Duration) -> Result<()> {
        if let Some(links) = &self.links {
            for broker in BROKERS {
                links.set(broker, true);
            }
        }
        self.relaunch_if_gone(CONTROLLER)?;
        for broker in BROKERS {
            self.restart(broker)?;
        }
        self.wait_healthy(timeout)
    }

    /// Waits until every broker is in the metadata and every partition of
    /// every topic has a leader and all its replicas in sync.
    pub fn wait_healthy(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.unhealthy() {
                Ok(None) => return Ok(()),
                Ok(Some(why)) => last = why,
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        bail!("the cluster is not whole after {timeout:?}: {last}")
    }

    /// Why the cluster is not whole, or `None`.
    fn unhealthy(&self) -> Result<Option<String>> {
        let metadata = self.metadata.fetch_metadata(None, Duration::from_secs(5))?;
        let brokers: Vec<i32> = metadata.brokers().iter().map(|b| b.id()).collect();
        if brokers.len() < BROKERS.len() {
            return Ok(Some(format!("brokers in the metadata: {brokers:?}")));
        }
        for topic in metadata.topics() {
            for p in topic.partitions() {
                if p.leader() < 0 || p.isr().len() < p.replicas().len() {
                    return Ok(Some(format!(
                        "{} partition {}: leader {}, replicas {:?}, in sync {:?}",
                        topic.name(),
                        p.id(),
                        p.leader(),
                        p.replicas(),
                        p.isr()
                    )));
                }
            }
        }
        Ok(None)
    }

    /// The broker leading `topic`'s `partition`.
    pub fn leader_of(&self, topic: &str, partition: i32) -> Result<i32> {
        let metadata = self
            .metadata
            .fetch_metadata(Some(topic), Duration::from_secs(10))?;
        metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic)
            .flat_map(|t| t.partitions())
            .find(|p| p.id() == partition && p.leader() >= 0)
            .map(|p| p.leader())
            .with_context(|| format!("no leader of {topic} partition {partition}"))
    }

    /// The broker coordinating `transactional_id`'s transactions: the
    /// leader of its `__transaction_state` partition (Kafka's
    /// `Utils.abs(id.hashCode()) % partitions`).
    pub fn transaction_coordinator(&self, transactional_id: &str) -> Result<i32> {
        self.leader_of("__transaction_state", internal_partition(transactional_id))
    }

    /// The broker coordinating consumer group `group`.
    pub fn group_coordinator(&self, group: &str) -> Result<i32> {
        self.leader_of("__consumer_offsets", internal_partition(group))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<i32, Child>> {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn links(&self) -> Result<&Links> {
        self.links
            .as_ref()
            .context("this cluster was started without links (partitionable: false)")
    }

    fn node_dir(&self, node: i32) -> PathBuf {
        let name = if node == CONTROLLER {
            "controller".to_owned()
        } else {
            format!("broker-{node}")
        };
        self.opts.dir.join(name)
    }

    /// Each node's server.properties and hosts file.
    fn write_configs(&self) -> Result<()> {
        let p = self.opts.base_port;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        for node in std::iter::once(CONTROLLER).chain(BROKERS) {
            let dir = self.node_dir(node);
            std::fs::create_dir_all(dir.join("logs"))?;
            let properties = if node == CONTROLLER {
                controller_properties(p, &dir)
            } else {
                broker_properties(p, node, &dir)
            };
            std::fs::write(dir.join("server.properties"), properties)?;
            let mut hosts = format!("127.0.0.1 localhost {}\n", host.trim());
            for other in std::iter::once(CONTROLLER).chain(BROKERS) {
                let address = if !self.opts.partitionable || node == CONTROLLER || other == node {
                    Ipv4Addr::LOCALHOST
                } else {
                    link_address(node, other)
                };
                hosts.push_str(&format!("{address} {}\n", node_name(other)));
            }
            std::fs::write(dir.join("hosts"), hosts)?;
        }
        Ok(())
    }

    /// Formats every node's storage with one cluster id, in parallel.
    fn format(&self) -> Result<()> {
        let id = cluster_id()?;
        let nodes: Vec<i32> = std::iter::once(CONTROLLER).chain(BROKERS).collect();
        let formats: Vec<_> = nodes
            .iter()
            .map(|node| {
                let dir = self.node_dir(*node);
                let mut command = self.java(&dir);
                command
                    .args(["kafka.tools.StorageTool", "format", "-t", &id, "-c"])
                    .arg(dir.join("server.properties"));
                std::thread::spawn(move || command.output())
            })
            .collect();
        for (node, format) in nodes.iter().zip(formats) {
            let out = format
                .join()
                .map_err(|_| anyhow::anyhow!("formatting node {node} panicked"))??;
            if !out.status.success() {
                bail!(
                    "formatting node {node}: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        Ok(())
    }

    /// `java` with the node's heap, logs and hosts file, the jars on the
    /// class path.
    fn java(&self, dir: &Path) -> Command {
        let log4j = Path::new(env!("CARGO_MANIFEST_DIR")).join("kafka/log4j2.xml");
        let mut command = Command::new("java");
        command
            .arg(format!("-Xms{}", self.opts.heap))
            .arg(format!("-Xmx{}", self.opts.heap))
            .args([
                "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20",
                "-Djava.awt.headless=true",
            ])
            .arg(format!("-Dkafka.logs.dir={}", dir.join("logs").display()))
            .arg(format!("-Dlog4j2.configurationFile={}", log4j.display()))
            .arg(format!(
                "-Djdk.net.hosts.file={}",
                dir.join("hosts").display()
            ))
            .arg("-cp")
            .arg(format!("{}/*", self.opts.jars.display()))
            .stdin(Stdio::null());
        command
    }

    /// Starts the node's JVM, its output appended to `logs/stdout.log`.
    fn launch(&self, node: i32) -> Result<()> {
        let dir = self.node_dir(node);
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("logs/stdout.log"))?;
        let mut command = self.java(&dir);
        command
            .arg("kafka.Kafka")
            .arg(dir.join("server.properties"))
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = self.spawner.spawn(command)?;
        self.lock().insert(node, child);
        Ok(())
    }

    /// Waits until the metadata lists `broker` (registered and unfenced).
    fn wait_serving(&self, broker: i32, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(child) = self.lock().get_mut(&broker)
                && let Ok(Some(status)) = child.try_wait()
            {
                bail!(
                    "broker {broker} exited ({status}); see {}",
                    self.node_dir(broker).join("logs").display()
                );
            }
            let listed = self
                .metadata
                .fetch_metadata(Some("__consumer_offsets"), Duration::from_secs(2))
                .is_ok_and(|m| m.brokers().iter().any(|b| b.id() == broker));
            if listed {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        bail!(
            "broker {broker} not serving after {timeout:?}; see {}",
            self.node_dir(broker).join("logs").display()
        )
    }

    /// Creates the internal topics (a transaction and a consumer group
    /// each need one, replicated 3 times) before any test needs them.
    fn warm_up(&self) -> Result<()> {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("transactional.id", "outbox-cluster-warm-up")
            .set("log_level", "3")
            .create()?;
        producer
            .init_transactions(Duration::from_secs(60))
            .context("the first transaction on the cluster")?;
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", "outbox-cluster-warm-up")
            .set("log_level", "0")
            .create()?;
        consumer.subscribe(&["outbox-cluster-warm-up"])?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let _ = consumer.poll(Duration::from_millis(200));
            let made = self
                .metadata
                .fetch_metadata(Some("__consumer_offsets"), Duration::from_secs(2))
                .is_ok_and(|m| {
                    m.topics()
                        .iter()
                        .any(|t| t.error().is_none() && !t.partitions().is_empty())
                });
            if made {
                return self.wait_healthy(Duration::from_secs(60));
            }
        }
        bail!("__consumer_offsets was not created within 60 s")
    }
}

impl Drop for KafkaCluster {
    fn drop(&mut self) {
        for (_, mut child) in std::mem::take(&mut *self.lock()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn client_port(base: u16, broker: i32) -> u16 {
    base + 10 * broker as u16
}

fn replication_port(base: u16, broker: i32) -> u16 {
    client_port(base, broker) + 1
}

fn node_name(node: i32) -> String {
    if node == CONTROLLER {
        "kafka-controller".into()
    } else {
        format!("kafka-{node}")
    }
}

/// Where `from` reaches `to`: 127.0.from.to (the controller as 100).
fn link_address(from: i32, to: i32) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, from as u8, to as u8)
}

fn controller_properties(base: u16, dir: &Path) -> String {
    format!(
        "process.roles=controller
node.id={CONTROLLER}
controller.quorum.voters={CONTROLLER}@kafka-controller:{base}
controller.listener.names=CONTROLLER
listeners=CONTROLLER://127.0.0.1:{base}
listener.security.protocol.map=CONTROLLER:PLAINTEXT
log.dirs={}
broker.session.timeout.ms={SESSION_TIMEOUT_MS}
num.io.threads=2
num.network.threads=2
",
        dir.join("data").display()
    )
}

fn broker_properties(base: u16, broker: i32, dir: &Path) -> String {
    let client = client_port(base, broker);
    let replication = replication_port(base, broker);
    format!(
        "process.roles=broker
node.id={broker}
controller.quorum.voters={CONTROLLER}@kafka-controller:{base}
controller.listener.names=CONTROLLER
listeners=CLIENT://127.0.0.1:{client},REPLICATION://127.0.0.1:{replication}
advertised.listeners=CLIENT://127.0.0.1:{client},REPLICATION://kafka-{broker}:{replication}
listener.security.protocol.map=CLIENT:PLAINTEXT,REPLICATION:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=REPLICATION
log.dirs={}
auto.create.topics.enable=false
num.partitions=6
default.replication.factor=3
min.insync.replicas=2
unclean.leader.election.enable=false
offsets.topic.replication.factor=3
offsets.topic.num.partitions={INTERNAL_PARTITIONS}
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
transaction.state.log.num.partitions={INTERNAL_PARTITIONS}
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
group.initial.rebalance.delay.ms=0
broker.heartbeat.interval.ms=1000
replica.lag.time.max.ms=10000
num.network.threads=2
num.io.threads=2
log.segment.bytes=67108864
log.retention.hours=24
",
        dir.join("data").display()
    )
}

/// Kafka's `Utils.abs(key.hashCode()) % partitions`, with Java's
/// `String.hashCode` over UTF-16 units.
fn internal_partition(key: &str) -> i32 {
    let hash = key.encode_utf16().fold(0i32, |h, unit| {
        h.wrapping_mul(31).wrapping_add(i32::from(unit))
    });
    let abs = if hash == i32::MIN { 0 } else { hash.abs() };
    abs % INTERNAL_PARTITIONS
}

/// A random cluster id as Kafka writes one: 16 bytes, URL-safe base64
/// without padding, not starting with `-`.
fn cluster_id() -> Result<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut random = std::fs::File::open("/dev/urandom")?;
    loop {
        let mut bytes = [0u8; 16];
        random.read_exact(&mut bytes)?;
        let mut bits = 0u32;
        let mut held = 0;
        let mut id = String::new();
        for byte in bytes {
            bits = (bits << 8) | u32::from(byte);
            held += 8;
            while held >= 6 {
                held -= 6;
                id.push(ALPHABET[((bits >> held) & 63) as usize] as char);
            }
        }
        if held > 0 {
            id.push(ALPHABET[((bits << (6 - held)) & 63) as usize] as char);
        }
        if !id.starts_with('-') {
            return Ok(id);
        }
    }
}

/// The links between nodes (see the module), on a runtime of their own.
struct Links {
    /// (from, to) → the link `from` reaches `to` through.
    links: BTreeMap<(i32, i32), Link>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Links {
    fn start(base: u16) -> Result<Self> {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("kafka-cluster-links".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match runtime {
                    Ok(runtime) => {
                        let _ = handle_tx.send(Ok(runtime.handle().clone()));
                        let _ = runtime.block_on(stopped);
                    }
                    Err(e) => {
                        let _ = handle_tx.send(Err(e));
                    }
                }
            })?;
        let handle = handle_rx.recv()??;
        let mut links = BTreeMap::new();
        let upstream = |port| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
        for from in BROKERS {
            let listen = SocketAddr::V4(SocketAddrV4::new(link_address(from, CONTROLLER), base));
            links.insert(
                (from, CONTROLLER),
                Link::start(&handle, listen, upstream(base))
                    .with_context(|| format!("link {listen}"))?,
            );
            for to in BROKERS.into_iter().filter(|to| *to != from) {
                let port = replication_port(base, to);
                let listen = SocketAddr::V4(SocketAddrV4::new(link_address(from, to), port));
                links.insert(
                    (from, to),
                    Link::start(&handle, listen, upstream(port))
                        .with_context(|| format!("link {listen}"))?,
                );
            }
        }
        Ok(Self {
            links,
            stop: Some(stop),
        })
    }

    /// Every link to and from `broker` up or down.
    fn set(&self, broker: i32, up: bool) {
        for ((from, to), link) in &self.links {
            if *from == broker || *to == broker {
                if up { link.up() } else { link.down() }
            }
        }
    }
}

impl Drop for Links {
    fn drop(&mut self) {
        self.links.clear();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Starts the nodes' JVMs from one thread that lives as long as the
/// cluster: a child asks the kernel for SIGKILL when the thread that
/// started it ends (`PR_SET_PDEATHSIG`), so no JVM outlives its test run.
struct Spawner(
    Mutex<std::sync::mpsc::Sender<(Command, std::sync::mpsc::Sender<std::io::Result<Child>>)>>,
);

impl Spawner {
    fn start() -> Result<Self> {
        let (tx, rx) =
            std::sync::mpsc::channel::<(Command, std::sync::mpsc::Sender<std::io::Result<Child>>)>(
            );
        std::thread::Builder::new()
            .name("kafka-cluster-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(spawn_tied(&mut command));
                }
            })?;
        Ok(Self(Mutex::new(tx)))
    }

    fn spawn(&self, command: Command) -> Result<Child> {
        let (reply, answer) = std::sync::mpsc::channel();
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .send((command, reply))
            .map_err(|_| anyhow::anyhow!("the spawner thread is gone"))?;
        Ok(answer.recv()??)
    }
}

fn spawn_tied(command: &mut Command) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec the child only calls prctl, which is
    // async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.spawn()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_partitions_follow_javas_string_hash() {
        // "".hashCode() = 0; "a" = 97; "outbox" = -1005526083 (Java).
        assert_eq!(internal_partition(""), 0);
        assert_eq!(internal_partition("a"), 97 % INTERNAL_PARTITIONS);
        assert_eq!(
            internal_partition("outbox"),
            1_005_526_083 % INTERNAL_PARTITIONS
        );
    }

    #[test]
    fn cluster_ids_are_22_url_safe_characters() {
        let id = cluster_id().unwrap_or_default();
        assert_eq!(id.len(), 22, "{id}");
        assert!(!id.starts_with('-'));
    }
}

#[cfg(test)]
mod compose_version_tests {
    use super::compose_kafka_version;

    #[test]
    fn reads_the_version_plain_or_inside_an_image_setting() {
        assert_eq!(
            compose_kafka_version("    image: apache/kafka:4.1.1\n"),
            Some("4.1.1")
        );
        assert_eq!(
            compose_kafka_version("  x:\n    image: ${KAFKA_IMAGE:-apache/kafka:4.1.1}\n"),
            Some("4.1.1")
        );
        assert_eq!(compose_kafka_version("    image: postgres:16\n"), None);
    }
}
