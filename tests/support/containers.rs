//! The testcontainers backend: Postgres, apache/kafka (KRaft) and
//! clickhouse-server containers, started once per test process and shared by
//! its tests (each test still gets its own databases, topics and groups).

use std::path::Path;

use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, ImageExt};
use testcontainers_modules::{clickhouse::ClickHouse, kafka::apache::Kafka, postgres::Postgres};
use tokio::sync::OnceCell;

pub struct Containers {
    pub database_url: String,
    pub clickhouse_url: String,
    pub kafka_brokers: String,
    _pg: ContainerAsync<Postgres>,
    _ch: ContainerAsync<ClickHouse>,
    _kafka: ContainerAsync<Kafka>,
}

static CONTAINERS: OnceCell<Containers> = OnceCell::const_new();

/// Whether a Docker engine socket is present.
pub fn docker_available() -> bool {
    Path::new("/var/run/docker.sock").exists()
}

pub async fn shared() -> anyhow::Result<&'static Containers> {
    CONTAINERS
        .get_or_try_init(|| async {
            let pg = Postgres::default().start().await?;
            let ch = ClickHouse::default().start().await?;
            // As every broker the scripts run: the daemons create their topics.
            let kafka = Kafka::default()
                .with_env_var("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false")
                .start()
                .await?;
            Ok(Containers {
                database_url: format!(
                    "postgres://postgres:postgres@127.0.0.1:{}/postgres",
                    pg.get_host_port_ipv4(5432).await?
                ),
                clickhouse_url: format!("http://127.0.0.1:{}", ch.get_host_port_ipv4(8123).await?),
                kafka_brokers: format!(
                    "127.0.0.1:{}",
                    kafka
                        .get_host_port_ipv4(testcontainers_modules::kafka::apache::KAFKA_PORT)
                        .await?
                ),
                _pg: pg,
                _ch: ch,
                _kafka: kafka,
            })
        })
        .await
}
