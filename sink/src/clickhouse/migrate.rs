//! `sink migrate`: creates the database and applies the embedded ClickHouse
//! migrations not yet recorded in `outbox_schema_migrations`. Every statement
//! is `IF NOT EXISTS`-safe, so a run interrupted half-way can simply be
//! repeated.

use clickhouse::Client;
use flows::migrations::{Migration, statements};

use super::caps::ServerCaps;

pub async fn server_caps(client: &Client) -> Result<ServerCaps, clickhouse::error::Error> {
    let version: String = client.query("SELECT version()").fetch_one().await?;
    Ok(ServerCaps::from_version(&version))
}

/// `root` is bound to no database (to create it), `client` to `database`.
pub async fn migrate(
    root: &Client,
    client: &Client,
    database: &str,
    migrations: &[Migration],
) -> Result<Vec<String>, clickhouse::error::Error> {
    let caps = server_caps(root).await?;
    // Nothing missing: no DDL at all, so a user with only the sink's grants
    // (README, "Least privilege") can run it as a start-up check.
    let tracked: u64 = root
        .query("SELECT count() FROM system.tables WHERE database = ? AND name = 'outbox_schema_migrations'")
        .bind(database)
        .fetch_one()
        .await?;
    if tracked > 0 {
        let done: Vec<String> = client
            .query("SELECT name FROM outbox_schema_migrations")
            .fetch_all()
            .await?;
        if migrations.iter().all(|m| done.contains(&m.name)) {
            return Ok(Vec::new());
        }
    }
    root.query(&format!(
        "CREATE DATABASE IF NOT EXISTS `{}`",
        database.replace('`', "")
    ))
    .execute()
    .await?;
    client
        .query(
            "CREATE TABLE IF NOT EXISTS outbox_schema_migrations \
             (name String, applied_at DateTime DEFAULT now()) ENGINE = MergeTree ORDER BY name",
        )
        .execute()
        .await?;
    let done: Vec<String> = client
        .query("SELECT name FROM outbox_schema_migrations")
        .fetch_all()
        .await?;
    let mut applied_now = Vec::new();
    for migration in migrations {
        if done.contains(&migration.name) {
            continue;
        }
        for statement in statements(&caps.substitute(&migration.sql)) {
            client.query_raw(&statement).execute().await?;
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
