//! `sink migrate`: creates the database and applies the embedded ClickHouse
//! migrations not yet recorded in `outbox_schema_migrations`. Every statement
//! is `IF NOT EXISTS`-safe, so a run interrupted half-way can simply be
//! repeated.
//!
//! With `CLICKHOUSE_CLUSTER` every statement is rendered for the cluster
//! first (`cluster_ddl`: `ON CLUSTER`, a Replicated table per shard behind
//! a `Distributed` one), all of them before anything is applied, so a
//! migration without a cluster form is refused before it half-applies.

use clickhouse::Client;
use flows::migrations::{Migration, statements};

use super::caps::ServerCaps;
use super::cluster_ddl::ClusterDdl;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    /// A statement of a migration has no cluster form.
    #[error("migration {migration}: {reason}")]
    NoClusterForm { migration: String, reason: String },
    /// `CLICKHOUSE_CLUSTER` names no cluster of the server.
    #[error("no cluster {cluster} in the server's remote_servers (it has: {known})")]
    NoCluster { cluster: String, known: String },
}

impl MigrateError {
    /// Fixed by changing a setting or a migration, not by waiting.
    pub fn is_setting(&self) -> bool {
        !matches!(self, Self::ClickHouse(_))
    }
}

pub async fn server_caps(client: &Client) -> Result<ServerCaps, clickhouse::error::Error> {
    let version: String = client.query("SELECT version()").fetch_one().await?;
    Ok(ServerCaps::from_version(&version))
}

/// `root` is bound to no database (to create it), `client` to `database`;
/// `cluster`: `CLICKHOUSE_CLUSTER`.
pub async fn migrate(
    root: &Client,
    client: &Client,
    database: &str,
    cluster: Option<&str>,
    migrations: &[Migration],
) -> Result<Vec<String>, MigrateError> {
    let caps = server_caps(root).await?;
    let mut ddl = cluster.map(|cluster| ClusterDdl::new(database, cluster));
    if let Some(ddl) = &ddl {
        check_cluster(root, ddl.cluster).await?;
    }
    // Nothing missing: no DDL at all, so a user with only the sink's grants
    // (README, "Least privilege") can run it as a start-up check.
    let tracked: u64 = root
        .query("SELECT count() FROM system.tables WHERE database = ? AND name = 'outbox_schema_migrations'")
        .bind(database)
        .fetch_one()
        .await?;
    let mut done: Vec<String> = Vec::new();
    if tracked > 0 {
        done = applied(client).await?;
        if migrations.iter().all(|m| done.contains(&m.name)) {
            return Ok(Vec::new());
        }
    }
    // Every migration rendered in order (those applied too: the cluster
    // form of an ALTER needs its table's CREATE), the pending ones kept.
    let mut pending = Vec::new();
    for migration in migrations {
        let statements = rendered(&caps, ddl.as_mut(), migration);
        if !done.contains(&migration.name) {
            pending.push((migration, statements?));
        }
    }
    let (create_database, create_record) = match &ddl {
        Some(ddl) => (ddl.create_database(), ddl.migrations_table()),
        None => (
            format!(
                "CREATE DATABASE IF NOT EXISTS `{}`",
                database.replace('`', "")
            ),
            "CREATE TABLE IF NOT EXISTS outbox_schema_migrations \
             (name String, applied_at DateTime DEFAULT now()) ENGINE = MergeTree ORDER BY name"
                .to_owned(),
        ),
    };
    ddl_query(root, &create_database).await?;
    ddl_query(client, &create_record).await?;
    let done = applied(client).await?;
    let mut applied_now = Vec::new();
    for (migration, statements) in pending {
        if done.contains(&migration.name) {
            continue;
        }
        for statement in statements {
            ddl_query(client, &statement).await?;
        }
        client
            .query("INSERT INTO outbox_schema_migrations (name) VALUES (?)")
            .bind(&migration.name)
            .execute()
            .await?;
        applied_now.push(migration.name.clone());
    }
    Ok(applied_now)
}

async fn applied(client: &Client) -> Result<Vec<String>, clickhouse::error::Error> {
    client
        .query("SELECT name FROM outbox_schema_migrations")
        .fetch_all()
        .await
}

/// `migration`'s statements as this server (`caps`) and mode take them.
pub fn rendered(
    caps: &ServerCaps,
    ddl: Option<&mut ClusterDdl>,
    migration: &Migration,
) -> Result<Vec<String>, MigrateError> {
    let plain = statements(&caps.substitute(&migration.sql));
    let Some(ddl) = ddl else {
        return Ok(plain);
    };
    let mut out = Vec::new();
    for statement in plain {
        out.extend(
            ddl.render(&statement)
                .map_err(|reason| MigrateError::NoClusterForm {
                    migration: migration.name.clone(),
                    reason,
                })?,
        );
    }
    Ok(out)
}

/// A DDL statement, its answer awaited whole: an `ON CLUSTER` statement
/// streams each server's outcome, and an error on one of them comes at the
/// end of a response whose status was already sent unless the server waits
/// for the end of the query.
async fn ddl_query(client: &Client, statement: &str) -> Result<(), clickhouse::error::Error> {
    client
        .query_raw(statement)
        .with_setting("wait_end_of_query", "1")
        .execute()
        .await
}

async fn check_cluster(root: &Client, cluster: &str) -> Result<(), MigrateError> {
    let known: Vec<String> = root
        .query("SELECT DISTINCT cluster FROM system.clusters ORDER BY cluster")
        .fetch_all()
        .await?;
    if known.iter().any(|c| c == cluster) {
        return Ok(());
    }
    Err(MigrateError::NoCluster {
        cluster: cluster.to_owned(),
        known: known.join(", "),
    })
}
