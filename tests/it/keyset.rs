//! The relay's transaction-id windows (`relay/src/window.rs`) under the
//! writers it must not lose a row to: many concurrent inserting
//! transactions, some rolled back, and long transactions whose ids the
//! relay passes long before they commit; a relay starting while an insert
//! is open; and the start-up check of a source table. On the real broker
//! (the relay has no sweep: what is proven is the normal path). Rows whose
//! ids are not in commit order: `commit_order.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outbox_tests::topic::{Isolation, read_all};
use outbox_tests::{Daemon, TestStack, wait_until};
use rand::Rng;

const SETTLE: Duration = Duration::from_secs(60);

/// Committed ids, shared by the writers.
type Ids = Arc<Mutex<BTreeSet<i64>>>;

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

async fn insert(
    tx: &tokio_postgres::Transaction<'_>,
    writer: usize,
    rows: i32,
) -> anyhow::Result<Vec<i64>> {
    let inserted = tx
        .query(
            "INSERT INTO user_logins (username, event_type, event_time)
             SELECT 'writer-' || $1::int, 'login', now() FROM generate_series(1, $2::int)
             RETURNING id::int8",
            &[&(writer as i32), &rows],
        )
        .await?;
    Ok(inserted.iter().map(|r| r.get(0)).collect())
}

/// Short transactions until `until`: 1–20 rows, a pause of up to 30 ms
/// inside the transaction, one in five rolled back.
async fn short_writer(url: &str, writer: usize, until: Instant, ids: Ids) -> anyhow::Result<usize> {
    let mut pg = connect(url).await?;
    let mut rolled_back = 0;
    while Instant::now() < until {
        let (rows, pause, commit) = {
            let mut rng = rand::rng();
            (
                rng.random_range(1..=20),
                rng.random_range(0..30u64),
                rng.random_range(0..5) > 0,
            )
        };
        let tx = pg.transaction().await?;
        let new = insert(&tx, writer, rows).await?;
        tokio::time::sleep(Duration::from_millis(pause)).await;
        if commit {
            tx.commit().await?;
            ids.lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .extend(new);
        } else {
            tx.rollback().await?;
            rolled_back += 1;
        }
    }
    Ok(rolled_back)
}

/// A long transaction: rows inserted early (low ids), more rows later, held
/// `hold`, then committed or rolled back. Returns its ids and how many rows
/// with higher ids were already flagged sent when it ended — proof that the
/// scan had passed over it.
async fn long_writer(
    url: &str,
    writer: usize,
    hold: Duration,
    commit: bool,
    ids: Ids,
) -> anyhow::Result<(Vec<i64>, i64)> {
    let mut pg = connect(url).await?;
    let watcher = connect(url).await?;
    let tx = pg.transaction().await?;
    let mut new = insert(&tx, writer, 50).await?;
    tokio::time::sleep(hold / 2).await;
    new.extend(insert(&tx, writer, 50).await?);
    tokio::time::sleep(hold / 2).await;
    let first = *new.first().ok_or_else(|| anyhow::anyhow!("no ids"))?;
    let passed: i64 = watcher
        .query_one(
            "SELECT count(*) FROM user_logins WHERE id > $1::int8 AND sent_to_kafka",
            &[&first],
        )
        .await?
        .get(0);
    if commit {
        tx.commit().await?;
        ids.lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .extend(new.iter().copied());
    } else {
        tx.rollback().await?;
    }
    Ok((new, passed))
}

/// Eight concurrent writers with rollbacks, and long transactions whose ids
/// the relay passed seconds before they committed (or rolled back): every
/// committed row published exactly once, no rolled-back row, with no sweep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_long_and_rolled_back_inserts_are_each_published_once() -> anyhow::Result<()> {
    let stack = TestStack::migrated("k_writers").await?;
    let mut env = stack.daemon_env();
    env.retain(|(k, _)| k != "RELAY_BATCH_SIZE");
    env.push(("RELAY_BATCH_SIZE".into(), "50".into()));
    let mut relay = Daemon::spawn("relay", &["run"], &env, &format!("{}-relay", stack.name));

    let ids: Ids = Arc::default();
    let until = Instant::now() + Duration::from_secs(8);
    let mut short = tokio::task::JoinSet::new();
    for writer in 0..8 {
        let (url, ids) = (stack.database_url.clone(), Arc::clone(&ids));
        short.spawn(async move { short_writer(&url, writer, until, ids).await });
    }
    let long = [
        (100, Duration::from_secs(4), true),
        (101, Duration::from_secs(6), false),
        (102, Duration::from_secs(7), true),
    ];
    let mut longs = tokio::task::JoinSet::new();
    for (writer, hold, commit) in long {
        let (url, ids) = (stack.database_url.clone(), Arc::clone(&ids));
        longs.spawn(async move { long_writer(&url, writer, hold, commit, ids).await });
    }
    let mut rolled_back = 0;
    while let Some(done) = short.join_next().await {
        rolled_back += done??;
    }
    let mut long_ids = Vec::new();
    while let Some(done) = longs.join_next().await {
        let (new, passed) = done??;
        assert!(
            passed > 0,
            "rows after the long transaction's first id were published before it ended (the scan passed over it)"
        );
        long_ids.push(new);
    }
    assert!(rolled_back > 0, "some short transactions rolled back");

    wait_until("every committed row flagged", SETTLE, || async {
        Ok(stack.pending("user_logins").await? == 0)
    })
    .await;
    relay.terminate(Duration::from_secs(15));

    let committed: BTreeSet<i64> = ids.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
    let brokers = stack.kafka_brokers.clone();
    let topics = vec![stack.topic("user_events")];
    let records =
        tokio::task::spawn_blocking(move || read_all(&brokers, &topics, Isolation::Committed))
            .await??;
    let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
    for record in &records {
        *counts.entry(record.id().unwrap_or(-1)).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(twice.is_empty(), "rows published twice: {twice:?}");
    let published: BTreeSet<i64> = counts.keys().copied().collect();
    let missing: Vec<_> = committed.difference(&published).take(5).collect();
    assert!(
        missing.is_empty(),
        "committed rows never published: {missing:?} (of {})",
        committed.len()
    );
    let extra: Vec<_> = published.difference(&committed).take(5).collect();
    assert!(extra.is_empty(), "rolled-back rows published: {extra:?}");
    for new in &long_ids[..] {
        let rolled = !new.iter().any(|id| committed.contains(id));
        assert_eq!(
            new.iter().filter(|id| published.contains(id)).count(),
            if rolled { 0 } else { new.len() },
            "a long transaction's rows: all published if it committed, none if it rolled back"
        );
    }
    assert!(
        committed.len() > 1_000,
        "a real load: {} rows committed",
        committed.len()
    );
    Ok(())
}

/// `relay run` says at start-up which source tables are not tuned (an index
/// on the flag, a full fillfactor: flag flips not HOT), naming them and the
/// fix; a tuned table gets no such line; a table without `outbox_txid` is
/// refused (exit 2, naming the fix).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_run_warns_about_an_untuned_source_table_naming_it() -> anyhow::Result<()> {
    let stack = TestStack::migrated("k_untuned").await?;
    let pg = stack.pg().await?;
    let log_of = |d: &Daemon| std::fs::read_to_string(&d.log).unwrap_or_default();
    let env = stack.daemon_env();

    let mut tuned = Daemon::spawn("relay", &["run"], &env, &format!("{}-tuned", stack.name));
    wait_until("the tuned relay leading", SETTLE, || async {
        Ok(log_of(&tuned).contains("active relay for this flow"))
    })
    .await;
    tuned.terminate(Duration::from_secs(15));
    assert!(
        !log_of(&tuned).contains("not HOT updates"),
        "{}",
        log_of(&tuned)
    );

    pg.batch_execute(
        "CREATE INDEX user_logins_pending ON user_logins (id) WHERE sent_to_kafka IS NOT TRUE;
         ALTER TABLE user_logins RESET (fillfactor);",
    )
    .await?;
    let mut untuned = Daemon::spawn("relay", &["run"], &env, &format!("{}-untuned", stack.name));
    wait_until("the warning naming the table", SETTLE, || async {
        Ok(log_of(&untuned).contains("not HOT updates"))
    })
    .await;
    untuned.terminate(Duration::from_secs(15));
    let line = log_of(&untuned)
        .lines()
        .find(|l| l.contains("not HOT updates"))
        .unwrap_or_default()
        .to_owned();
    assert!(
        line.contains("user_logins") && line.contains("outbox_tune_source('user_logins')"),
        "{line}"
    );

    // The helper puts it right.
    pg.batch_execute("SELECT outbox_tune_source('user_logins')")
        .await?;
    let tuned: bool = pg
        .query_one("SELECT outbox_source_tuned('user_logins')", &[])
        .await?
        .get(0);
    assert!(tuned);

    // Without the column the relay reads by, it refuses to start.
    pg.batch_execute("ALTER TABLE user_logins DROP COLUMN outbox_txid")
        .await?;
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (code, out) = outbox_tests::daemon::run_to_exit("relay", &["run"], &env);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("outbox_txid") && out.contains("outbox_tune_source('user_logins')"),
        "{out}"
    );
    Ok(())
}

/// One row of `key` in `tx`, its id.
async fn insert_one(tx: &tokio_postgres::Transaction<'_>, key: &str) -> anyhow::Result<i64> {
    Ok(tx
        .query_one(
            "INSERT INTO user_logins (username, event_type, event_time) VALUES ($1, 'login', now()) RETURNING id::int8",
            &[&key],
        )
        .await?
        .get(0))
}

/// A relay starting on a table it has no position for, while an insert
/// holding a lower id than every committed row is still open, publishes
/// that row once it commits (it once took the lowest id it saw as settled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_starting_fresh_waits_for_an_insert_open_below_the_first_row() -> anyhow::Result<()>
{
    let stack = TestStack::migrated("k_fresh_start").await?;
    let env = stack.daemon_env();
    let (mut open, other) = (
        connect(&stack.database_url).await?,
        connect(&stack.database_url).await?,
    );
    let t1 = open.transaction().await?;
    let early = insert_one(&t1, "k").await?;
    let later = other
        .query_one(
            "INSERT INTO user_logins (username, event_type, event_time)
             VALUES ('x', 'login', now()) RETURNING id::int8",
            &[],
        )
        .await?
        .get::<_, i64>(0);
    assert!(early < later);
    let mut relay = Daemon::spawn("relay", &["run"], &env, &format!("{}-relay", stack.name));
    wait_until("the committed row published", SETTLE, || async {
        Ok(stack.pending("user_logins").await? == 0)
    })
    .await;
    t1.commit().await?;
    wait_until(
        "the open insert's row published once it committed",
        SETTLE,
        || async { Ok(stack.pending("user_logins").await? == 0) },
    )
    .await;
    relay.terminate(Duration::from_secs(15));
    let brokers = stack.kafka_brokers.clone();
    let topics = vec![stack.topic("user_events")];
    let records =
        tokio::task::spawn_blocking(move || read_all(&brokers, &topics, Isolation::Committed))
            .await??;
    let ids: BTreeSet<i64> = records.iter().filter_map(|r| r.id()).collect();
    assert_eq!(ids, BTreeSet::from([early, later]));
    assert_eq!(records.len(), 2, "each once");
    Ok(())
}
