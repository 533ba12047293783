//! `relay migrate`: applies the embedded Postgres migrations not yet recorded
//! in `outbox_schema_migrations`, each in its own transaction, under an
//! advisory lock so two concurrent runs do not race.

use flows::migrations::Migration;
use tokio_postgres::Client;

const MIGRATION_LOCK: i64 = 0x6f75_7462_6f78; // "outbox"

/// Applies what is missing; returns the names applied now. When nothing
/// is missing it runs no DDL at all, so a role with only the daemon's
/// grants (README, "Least privilege") can run it as a start-up check.
pub async fn migrate(
    client: &mut Client,
    migrations: &[Migration],
) -> Result<Vec<String>, tokio_postgres::Error> {
    let tracked = client
        .query_one(
            "SELECT to_regclass('outbox_schema_migrations') IS NOT NULL",
            &[],
        )
        .await?
        .get::<_, bool>(0);
    if tracked {
        let done: Vec<String> = client
            .query("SELECT name FROM outbox_schema_migrations", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if migrations.iter().all(|m| done.contains(&m.name)) {
            return Ok(Vec::new());
        }
    }
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS outbox_schema_migrations (
                name TEXT PRIMARY KEY,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        )
        .await?;
    let mut applied_now = Vec::new();
    for migration in migrations {
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        let done = tx
            .query_opt(
                "SELECT 1 FROM outbox_schema_migrations WHERE name = $1",
                &[&migration.name],
            )
            .await?
            .is_some();
        if !done {
            tx.batch_execute(&migration.sql).await?;
            tx.execute(
                "INSERT INTO outbox_schema_migrations (name) VALUES ($1)",
                &[&migration.name],
            )
            .await?;
            applied_now.push(migration.name.clone());
        }
        tx.commit().await?;
    }
    Ok(applied_now)
}
