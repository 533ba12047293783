//! The testcontainers backend (`TEST_BACKEND=testcontainers`): Postgres,
//! Kafka and ClickHouse in containers the test process starts through the
//! testcontainers crate, each as docker-compose.yml describes it (image,
//! environment, command, health check, limits: tests/support/compose.rs) —
//! the official images, or the local ones scripts/images.sh names in `.env`.
//! Started once per test process and shared by its tests; each test still
//! gets its own databases, topics and groups.
//!
//! The network rule: the tests reach a container only through the port it
//! publishes on 127.0.0.1 (a free port picked first, published fixed, so
//! Kafka advertises exactly it); containers reach each other on a Docker
//! network this process creates, by container name ([`Inside`]). A reaper
//! process removes the containers and the network when the test process
//! ends, however it ends. A backend that cannot start fails every test that
//! needs it, saying why: nothing falls back to other services.

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use testcontainers::bollard::models::{HostConfig, PortBinding};
use testcontainers::core::{CmdWaitFor, ExecCommand};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, ContainerRequest, GenericImage, ImageExt};
use tokio::sync::OnceCell;

use super::compose::{self, Service};

/// The label every container of one test process carries (the reaper's
/// filter).
pub const SESSION_LABEL: &str = "org.outbox-relay.test-session";

/// The services compose describes that the tests start.
const SERVICES: [&str; 3] = ["postgres", "kafka", "clickhouse"];

pub struct Containers {
    /// Postgres's superuser on its published port, database `postgres`.
    pub database_url: String,
    pub clickhouse_url: String,
    pub clickhouse_user: String,
    pub clickhouse_password: Option<String>,
    pub kafka_brokers: String,
    /// The Docker network the containers share.
    pub network: String,
    /// This process's label value (containers of its own join it).
    pub session: String,
    pub inside: Inside,
    _running: Vec<ContainerAsync<GenericImage>>,
    _reaper: Option<ChildStdin>,
}

/// The services as a container on [`Containers::network`] reaches them.
pub struct Inside {
    /// `postgres://user:password@name:5432` (add `/database`).
    pub postgres: String,
    pub clickhouse_url: String,
    pub kafka_brokers: String,
}

impl Inside {
    /// The URL of Postgres database `db` from another container.
    pub fn database_url(&self, db: &str) -> String {
        format!("{}/{db}", self.postgres)
    }
}

static CONTAINERS: OnceCell<Result<Containers, String>> = OnceCell::const_new();

/// Docker calls run on this runtime, which lives as long as the process:
/// each test has a runtime of its own, and the Docker client's connections
/// must outlive the test that opened them.
static DOCKER: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("docker")
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("a runtime for Docker calls: {e}"))
});

/// Runs the future `make` returns on the Docker runtime, from a thread of
/// its own (blocking on it there): testcontainers' exec results are not
/// `Sync`, so a future that awaits their exit code cannot be spawned.
pub async fn on_docker<T, F, Fut>(make: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("docker-call".into())
        .spawn(move || {
            let _ = tx.send(DOCKER.block_on(make()));
        })
        .context("a thread for a Docker call")?;
    rx.await.context("a Docker call panicked")?
}

/// The shared containers, started by the first test that asks.
pub async fn shared() -> anyhow::Result<&'static Containers> {
    CONTAINERS
        .get_or_init(|| async { on_docker(start).await.map_err(|e| format!("{e:#}")) })
        .await
        .as_ref()
        .map_err(|e| {
            anyhow::anyhow!("TEST_BACKEND=testcontainers: the containers did not start: {e}")
        })
}

/// `value` with compose's service names where they name a host
/// (`kafka:19092`, `1@kafka:9093`, `@postgres:5432`) turned into this
/// process's container names.
fn rename_services(value: &str, names: &[(&str, String)]) -> String {
    let is_name_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    let mut out = value.to_owned();
    for (service, container) in names {
        let needle = format!("{service}:");
        let mut renamed = String::with_capacity(out.len());
        let mut rest = out.as_str();
        while let Some(at) = rest.find(&needle) {
            renamed.push_str(&rest[..at]);
            rest = &rest[at + needle.len()..];
            let a_host = renamed.chars().last().is_none_or(|c| !is_name_char(c))
                && rest.starts_with(|c: char| c.is_ascii_digit());
            renamed.push_str(if a_host { container } else { service });
            renamed.push(':');
        }
        renamed.push_str(rest);
        out = renamed;
    }
    out
}

/// Removes this process's containers and network when it exits: a shell
/// waiting for the end of a pipe only this process holds (the kernel closes
/// it however the process ends), in a process group of its own (a Ctrl-C to
/// the tests does not stop it).
fn reaper(session: &str, network: &str) -> Option<ChildStdin> {
    let script = format!(
        "cat >/dev/null; ids=$(docker ps -aq --filter label={SESSION_LABEL}={session}); \
         [ -z \"$ids\" ] || docker rm -f -v $ids >/dev/null 2>&1; \
         docker network rm {network} >/dev/null 2>&1; true"
    );
    let mut child = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .ok()?;
    child.stdin.take()
}

/// Publishes `ports` on their host addresses only (testcontainers would
/// publish on every interface, and every exposed port besides).
fn publish(host: &mut HostConfig, ports: &[compose::Port]) {
    let mut bindings = HashMap::new();
    for p in ports {
        bindings.insert(
            format!("{}/tcp", p.container_port),
            Some(vec![PortBinding {
                host_ip: Some(p.host_ip.clone()),
                host_port: Some(p.host_port.to_string()),
            }]),
        );
    }
    host.port_bindings = Some(bindings);
    host.publish_all_ports = Some(false);
}

/// The container request for compose service `svc`, named `name` on
/// `network`.
fn request(
    svc: &Service,
    name: &str,
    network: &str,
    session: &str,
    names: &[(&str, String)],
) -> ContainerRequest<GenericImage> {
    let (image, tag) = svc.image_name_and_tag();
    let mut req = GenericImage::new(image, tag)
        .with_container_name(name)
        .with_network(network)
        .with_label(SESSION_LABEL, session)
        .with_startup_timeout(Duration::from_secs(120));
    for (k, v) in &svc.environment {
        req = req.with_env_var(k, rename_services(v, names));
    }
    if let Some(cmd) = &svc.command {
        req = req.with_cmd(cmd.iter().map(|a| rename_services(a, names)));
    }
    for (limit, soft, hard) in &svc.ulimits {
        req = req.with_ulimit(limit, *soft, Some(*hard));
    }
    let ports = svc.ports.clone();
    req.with_host_config_modifier(move |host| publish(host, &ports))
}

/// Runs `cmd` in `container` to its end: (exit code, stdout + stderr).
pub async fn exec(
    container: &ContainerAsync<GenericImage>,
    cmd: &[String],
) -> anyhow::Result<(i64, String)> {
    let mut result = container
        .exec(ExecCommand::new(cmd.to_vec()).with_cmd_ready_condition(CmdWaitFor::exit()))
        .await?;
    let mut out = String::from_utf8_lossy(&result.stdout_to_vec().await?).into_owned();
    out.push_str(&String::from_utf8_lossy(&result.stderr_to_vec().await?));
    let code = result
        .exit_code()
        .await?
        .context("exec ended without a code")?;
    Ok((code, out))
}

/// Waits until the service's compose health check passes in `container`.
async fn healthy(
    svc: &Service,
    container: &ContainerAsync<GenericImage>,
    within: Duration,
) -> anyhow::Result<()> {
    let Some(check) = &svc.healthcheck else {
        return Ok(());
    };
    let deadline = Instant::now() + within;
    loop {
        let (code, out) = exec(container, check).await?;
        if code == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let logs = container.stdout_to_vec().await.unwrap_or_default();
            let logs = String::from_utf8_lossy(&logs);
            let tail: Vec<&str> = logs.lines().rev().take(20).collect();
            bail!(
                "{} ({}) not healthy within {within:?}: {check:?} exits {code}: {}\nits last log lines:\n{}",
                svc.name,
                svc.image,
                out.trim(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn start() -> anyhow::Result<Containers> {
    let session = format!("{}-{:06x}", std::process::id(), rand::random::<u32>() >> 8);
    let network = format!("outbox-test-{session}");
    let reaper = reaper(&session, &network);
    let names: Vec<(&str, String)> = SERVICES
        .iter()
        .map(|s| (*s, format!("outbox-{session}-{s}")))
        .collect();
    let vars = [
        ("BIND_ADDRESS", "127.0.0.1".to_owned()),
        ("POSTGRES_PORT", super::http::free_port()?.to_string()),
        ("KAFKA_PORT", super::http::free_port()?.to_string()),
        ("CLICKHOUSE_PORT", super::http::free_port()?.to_string()),
    ];
    let services: Vec<Service> = SERVICES
        .iter()
        .map(|s| compose::service(s, &vars))
        .collect::<anyhow::Result<_>>()?;
    let started = Instant::now();
    let starts = services.iter().zip(&names).map(|(svc, (_, name))| {
        let req = request(svc, name, &network, &session, &names);
        let image = svc.image.clone();
        async move {
            req.start().await.with_context(|| {
                format!(
                    "starting {image} (is a Docker engine running? where no registry is reachable, \
                     scripts/images.sh builds local images and names them in .env)"
                )
            })
        }
    });
    let running: Vec<ContainerAsync<GenericImage>> = futures::future::try_join_all(starts).await?;
    for (svc, container) in services.iter().zip(&running) {
        healthy(svc, container, Duration::from_secs(180)).await?;
    }
    tracing::info!(elapsed = ?started.elapsed(), "testcontainers backend up");
    let [pg, kafka, ch] = [&services[0], &services[1], &services[2]];
    let host_port = |svc: &Service, container_port: u16| {
        svc.ports
            .iter()
            .find(|p| p.container_port == container_port)
            .map(|p| p.host_port)
            .with_context(|| format!("{} publishes no port {container_port}", svc.name))
    };
    let pg_user = pg.env("POSTGRES_USER").unwrap_or("postgres");
    let pg_password = pg.env("POSTGRES_PASSWORD").unwrap_or_default();
    let containers = Containers {
        database_url: format!(
            "postgres://{pg_user}:{pg_password}@127.0.0.1:{}/postgres",
            host_port(pg, 5432)?
        ),
        clickhouse_url: format!("http://127.0.0.1:{}", host_port(ch, 8123)?),
        clickhouse_user: ch.env("CLICKHOUSE_USER").unwrap_or("default").to_owned(),
        clickhouse_password: ch.env("CLICKHOUSE_PASSWORD").map(str::to_owned),
        kafka_brokers: format!("127.0.0.1:{}", host_port(kafka, 9092)?),
        inside: Inside {
            postgres: format!("postgres://{pg_user}:{pg_password}@{}:5432", names[0].1),
            kafka_brokers: kafka_inside(kafka, &names)?,
            clickhouse_url: format!("http://{}:8123", names[2].1),
        },
        network,
        session,
        _running: running,
        _reaper: reaper,
    };
    ready_from_host(&containers).await?;
    Ok(containers)
}

/// The listener Kafka advertises to the other containers: compose's
/// inter-broker one (`KAFKA_INTER_BROKER_LISTENER_NAME`).
fn kafka_inside(kafka: &Service, names: &[(&str, String)]) -> anyhow::Result<String> {
    let listener = kafka
        .env("KAFKA_INTER_BROKER_LISTENER_NAME")
        .unwrap_or("PLAINTEXT");
    let advertised = kafka
        .env("KAFKA_ADVERTISED_LISTENERS")
        .context("kafka has no KAFKA_ADVERTISED_LISTENERS")?;
    advertised
        .split(',')
        .find_map(|l| l.strip_prefix(&format!("{listener}://")))
        .map(|addr| rename_services(addr, names))
        .with_context(|| format!("kafka advertises no {listener} listener"))
}

/// Postgres and ClickHouse answer on their published ports (the health
/// checks ran inside the containers).
async fn ready_from_host(c: &Containers) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pg = tokio_postgres::connect(&c.database_url, tokio_postgres::NoTls).await;
        let ch = daemon::http::fetch(c.clickhouse_url.trim_start_matches("http://"), "/ping").await;
        match (pg, ch) {
            (Ok(_), Some(_)) => return Ok(()),
            (pg, ch) if Instant::now() >= deadline => bail!(
                "healthy containers do not answer on 127.0.0.1: Postgres {:?}, ClickHouse {}",
                pg.err().map(|e| e.to_string()),
                if ch.is_some() {
                    "answers"
                } else {
                    "does not answer"
                }
            ),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::rename_services;

    #[test]
    fn service_names_become_container_names() {
        let names = [
            ("kafka", "outbox-1-kafka".to_owned()),
            ("postgres", "outbox-1-postgres".to_owned()),
        ];
        assert_eq!(
            rename_services("PLAINTEXT://kafka:19092,EXTERNAL://127.0.0.1:9092", &names),
            "PLAINTEXT://outbox-1-kafka:19092,EXTERNAL://127.0.0.1:9092"
        );
        assert_eq!(
            rename_services("1@kafka:9093", &names),
            "1@outbox-1-kafka:9093"
        );
        assert_eq!(
            rename_services("postgres://u:p@postgres:5432/db", &names),
            "postgres://u:p@outbox-1-postgres:5432/db"
        );
        assert_eq!(
            rename_services("CONTROLLER:PLAINTEXT,mykafka:1,kafka:x", &names),
            "CONTROLLER:PLAINTEXT,mykafka:1,kafka:x"
        );
    }
}
