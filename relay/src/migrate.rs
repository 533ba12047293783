//! `relay migrate`: applies the embedded Postgres migrations not yet recorded
//! in `outbox_schema_migrations`, each in its own transaction, under an
//! advisory lock so two concurrent runs do not race; and, given the Kafka
//! settings, creates the flows' topics ahead of time ([`create_topics`]).

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

/// Creates the topics the flows' sources publish to and that do not exist
/// yet (`connections::topics`), each with its flow's spec (`spec` with the
/// flow's `[flows.topics]` over it); a topic chosen per row is created
/// when a row first goes to it. Waits, with backoff, while Kafka does not
/// answer; a refusal is returned. Returns the topics made sure of (none
/// when `shutdown` came first).
pub async fn create_topics(
    topics: &connections::topics::Topics,
    flows: &[flows::Flow],
    spec: &connections::topics::TopicSpec,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<Vec<String>, connections::topics::TopicError> {
    let mut done = Vec::new();
    let mut backoff = daemon::backoff::Backoff::default();
    for flow in flows {
        let wanted: Vec<&str> = flow
            .sources
            .iter()
            .filter(|s| !s.routed())
            .map(|s| s.topic.as_str())
            .collect();
        let spec = spec.for_flow(&flow.topics);
        loop {
            match topics.ensure(&wanted, &spec).await {
                Ok(()) => break,
                Err(error @ connections::topics::TopicError::Unanswered { .. }) => {
                    let retry_in_ms = backoff.upcoming().as_millis() as u64;
                    tracing::warn!(flow = %flow.name, %error, retry_in_ms, "kafka unreachable");
                    if !backoff.wait(shutdown).await {
                        return Ok(Vec::new());
                    }
                }
                Err(refused) => return Err(refused),
            }
        }
        done.extend(wanted.iter().map(|t| (*t).to_owned()));
    }
    Ok(done)
}
