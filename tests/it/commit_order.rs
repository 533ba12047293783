//! Rows whose ids are not in commit order, on the real broker: ids taken
//! from a sequence cache, handed out by the application in blocks, taken
//! with `nextval` long before the insert, held by a slow default
//! expression, or by a slow `COPY`. Each row must be published at the
//! normal pace (seconds: the relay has no sweep that could publish it
//! later), and a key's rows must go out in the order their transactions
//! committed (one transaction's rows in id order).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::SinkExt;
use outbox_tests::topic::{Isolation, read_all};
use outbox_tests::{Daemon, TestStack, wait_until};

/// A committed row is on the topic within this (the relay's poll interval
/// is 500 ms, and a NOTIFY wakes it at once).
const PROMPT: Duration = Duration::from_secs(5);

/// A source table `events` (`id`, key `k`, `n`) with the outbox trigger,
/// guard and tuning, its flow into a ClickHouse table `ordered_events` (keyed by
/// id, arrivals recorded), a relay publishing it and a sink loading it.
struct Fixture {
    stack: TestStack,
    relay: Daemon,
    sink: Daemon,
}

impl Fixture {
    /// `id_default`: the id column's default (`None`: ids are given).
    /// `extra`: more column definitions.
    async fn start(
        test: &str,
        prelude: &str,
        id_default: Option<&str>,
        extra: &str,
    ) -> anyhow::Result<Self> {
        let mut stack = TestStack::migrated(test).await?;
        stack.flows = "events".into();
        let pg = stack.pg().await?;
        let default = id_default.map_or_else(String::new, |d| format!(" DEFAULT {d}"));
        pg.batch_execute(&format!(
            "{prelude}
             CREATE TABLE events (id bigint PRIMARY KEY{default}, k text NOT NULL, n int NOT NULL{extra},
                                  sent_to_kafka boolean DEFAULT false);
             CREATE TRIGGER events_outbox_notify AFTER INSERT ON events
                 FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
             SELECT outbox_protect_pending('events');
             SELECT outbox_tune_source('events');"
        ))
        .await?;
        stack.use_flows_file(
            r#"[[flows]]
name = "events"
consumer_group = "events-consumer"

[[flows.sources]]
table = "events"
topic = "events"
key = "k"
columns = ["id", "k", "n"]

[[flows.targets]]
topic = "events"
table = "ordered_events"
"#,
        )?;
        stack
            .ch()
            .query("CREATE TABLE ordered_events (id UInt64, k String, n Int32) ENGINE = ReplacingMergeTree ORDER BY id")
            .execute()
            .await?;
        outbox_tests::faults::record_arrivals_into(&stack, &["ordered_events"]).await?;
        let env = stack.daemon_env();
        let relay = Daemon::spawn("relay", &["run"], &env, &format!("{}-relay", stack.name));
        let sink = Daemon::spawn("sink", &["run"], &env, &format!("{}-sink", stack.name));
        Ok(Self { stack, relay, sink })
    }

    async fn connect(&self) -> anyhow::Result<tokio_postgres::Client> {
        self.stack.pg().await
    }

    /// Waits until row `id` is flagged sent; how long after `since`.
    async fn published(&self, id: i64, since: Instant) -> anyhow::Result<Duration> {
        let pg = self.connect().await?;
        wait_until(&format!("row {id} published"), PROMPT, || async {
            let row = pg
                .query_opt("SELECT sent_to_kafka FROM events WHERE id = $1", &[&id])
                .await?;
            Ok(row.and_then(|r| r.get::<_, Option<bool>>(0)) == Some(true))
        })
        .await;
        Ok(since.elapsed())
    }

    /// Has the relay take a few turns (each row waited for alone): a row
    /// whose id it passed long ago is then known to be behind it.
    async fn a_few_turns(&self, writer: &tokio_postgres::Client, key: &str) -> anyhow::Result<()> {
        for n in 0..3 {
            let id: i64 = writer
                .query_one(
                    "INSERT INTO events (id, k, n) VALUES (DEFAULT, $1, $2) RETURNING id",
                    &[&key, &n],
                )
                .await?
                .get(0);
            self.published(id, Instant::now()).await?;
        }
        Ok(())
    }

    /// One row through, first: the sequence has WAL-logged values ahead
    /// (it logs 32 at a time), so the next `nextval` calls take no
    /// transaction id — as most calls on a busy sequence do not.
    async fn warm_up(&self, writer: &tokio_postgres::Client) -> anyhow::Result<()> {
        let id: i64 = writer
            .query_one(
                "INSERT INTO events (k, n) VALUES ('warm', 0) RETURNING id",
                &[],
            )
            .await?
            .get(0);
        self.published(id, Instant::now()).await?;
        Ok(())
    }

    /// Every record of the topic (read to its end), as key → ids in topic
    /// order, and how often each id appears.
    async fn topic(&self) -> anyhow::Result<(BTreeMap<String, Vec<i64>>, BTreeMap<i64, usize>)> {
        let brokers = self.stack.kafka_brokers.clone();
        let topics = vec![self.stack.topic("events")];
        let records =
            tokio::task::spawn_blocking(move || read_all(&brokers, &topics, Isolation::Committed))
                .await??;
        let mut by_key: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        let mut counts = BTreeMap::new();
        for r in &records {
            let id = r
                .id()
                .ok_or_else(|| anyhow::anyhow!("a record without an id"))?;
            let key = String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned();
            by_key.entry(key).or_default().push(id);
            *counts.entry(id).or_default() += 1;
        }
        Ok((by_key, counts))
    }

    async fn stop(mut self) {
        self.relay.terminate(Duration::from_secs(15));
        self.sink.terminate(Duration::from_secs(15));
    }
}

/// Row `late` of key `shared` committed after row `early` of the same key
/// (whose id is higher): both on the topic once, `early` first.
async fn assert_commit_order(fx: &Fixture, early: &[i64], late: &[i64]) -> anyhow::Result<()> {
    let (by_key, counts) = fx.topic().await?;
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "published more than once: {twice:?}");
    let shared = by_key.get("shared").cloned().unwrap_or_default();
    let expected: Vec<i64> = early.iter().chain(late).copied().collect();
    assert_eq!(
        shared, expected,
        "key `shared`: the topic's order must be the commit order (ids {early:?} committed before {late:?})"
    );
    Ok(())
}

/// Two sessions with blocks of a `CACHE 100` sequence: session A holds
/// 1–100, B 101–200. B's row 101 is published; A's row 2, committed later,
/// must follow at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_from_a_sequence_cache_below_published_rows_goes_out_at_once() -> anyhow::Result<()> {
    let fx = Fixture::start(
        "co_cache",
        "CREATE SEQUENCE events_id_seq CACHE 100;",
        Some("nextval('events_id_seq')"),
        "",
    )
    .await?;
    let (a, b) = (fx.connect().await?, fx.connect().await?);
    let insert = "INSERT INTO events (k, n) VALUES ($1, $2) RETURNING id";
    let first: i64 = a.query_one(insert, &[&"a", &0]).await?.get(0);
    let early: i64 = b.query_one(insert, &[&"shared", &1]).await?.get(0);
    assert!(
        early > first + 50,
        "sessions hold separate blocks ({first}, {early})"
    );
    fx.published(early, Instant::now()).await?;
    fx.a_few_turns(&b, "b").await?;
    let committed = Instant::now();
    let late: i64 = a.query_one(insert, &[&"shared", &2]).await?.get(0);
    assert!(
        late < early,
        "the late row's id ({late}) is below the published one ({early})"
    );
    let took = fx.published(late, committed).await?;
    println!("row {late} (id from the cache) published {took:?} after its commit");
    assert_commit_order(&fx, &[early], &[late]).await?;
    fx.stop().await;
    Ok(())
}

/// Ids given by the application from blocks (as pooled id generators do),
/// under load: four writers, each with a block it hands out in a shuffled
/// order, each writing its own keys in short transactions. Every row on the
/// topic within seconds of the last commit, once, and each key's rows in
/// its writer's commit order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_from_application_blocks_go_out_at_once_in_each_writers_commit_order()
-> anyhow::Result<()> {
    let fx = Fixture::start("co_blocks", "", None, "").await?;
    let until = Instant::now() + Duration::from_secs(6);
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..4i64 {
        let pg = fx.connect().await?;
        writers.spawn(async move {
            // Blocks of 50 ids, 200 apart per writer, each handed out in a
            // shuffled order; a new block above every earlier one.
            let mut commits: BTreeMap<String, Vec<i64>> = BTreeMap::new();
            let mut block = 0i64;
            while Instant::now() < until {
                let base = 1 + (block * 4 + w) * 50;
                let mut ids: Vec<i64> = (base..base + 50).collect();
                {
                    use rand::seq::SliceRandom;
                    ids.shuffle(&mut rand::rng());
                }
                for chunk in ids.chunks(5) {
                    // One transaction's rows go out in id order.
                    let mut rows: Vec<(i64, String)> = chunk
                        .iter()
                        .map(|&id| (id, format!("w{w}-{}", id % 3)))
                        .collect();
                    rows.sort_unstable();
                    let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
                    let keys: Vec<String> = rows.iter().map(|r| r.1.clone()).collect();
                    pg.execute(
                        "INSERT INTO events (id, k, n) SELECT i, k, 0 FROM unnest($1::int8[], $2::text[]) AS u(i, k)",
                        &[&ids, &keys],
                    )
                    .await?;
                    for (id, key) in rows {
                        commits.entry(key).or_default().push(id);
                    }
                }
                block += 1;
            }
            anyhow::Ok(commits)
        });
    }
    let mut expected: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    while let Some(done) = writers.join_next().await {
        expected.extend(done??);
    }
    let last_commit = Instant::now();
    // Rows committed with an id below one committed before them.
    let pg = fx.connect().await?;
    let late_ids: i64 = pg
        .query_one(
            "SELECT count(*) FROM (SELECT id < max(id) OVER (ORDER BY outbox_txid, id ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS late FROM events) AS e WHERE late",
            &[],
        )
        .await?
        .get(0);
    wait_until("every row published", PROMPT, || async {
        let pending: i64 = pg
            .query_one(
                "SELECT count(*) FROM events WHERE sent_to_kafka IS NOT TRUE",
                &[],
            )
            .await?
            .get(0);
        Ok(pending == 0)
    })
    .await;
    println!(
        "every row published {:?} after the last commit",
        last_commit.elapsed()
    );
    let (by_key, counts) = fx.topic().await?;
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(twice.is_empty(), "published more than once: {twice:?}");
    let rows: usize = expected.values().map(Vec::len).sum();
    assert!(rows > 500, "a real load: {rows} rows");
    assert_eq!(counts.len(), rows, "every committed row on the topic");
    let report = outbox_tests::faults::verify_tables(
        &fx.stack,
        &[("events", "ordered_events")],
        "Ids out of commit order: 4 writers hand out ids from blocks, shuffled",
        u32::try_from(late_ids).unwrap_or(u32::MAX),
        last_commit,
        &format!("no sweep; every row published within {:?} of the last commit, each key in its writer's commit order on the topic", PROMPT),
    )
    .await;
    assert!(report.rows_sent as usize == rows);
    for (key, ids) in &expected {
        let seen = by_key.get(key).cloned().unwrap_or_default();
        let first_difference = ids.iter().zip(&seen).position(|(a, b)| a != b);
        assert!(
            seen == *ids,
            "key {key}: the topic's order must be its writer's commit order; {} rows committed, {} on the topic, first difference at {first_difference:?}: committed {:?}, topic {:?}",
            ids.len(),
            seen.len(),
            first_difference.map(|i| &ids[i..(i + 5).min(ids.len())]),
            first_difference.map(|i| &seen[i..(i + 5).min(seen.len())]),
        );
    }
    fx.stop().await;
    Ok(())
}

/// `SELECT nextval(...)` in a transaction, the insert with that id much
/// later in the same transaction (no transaction id until the insert).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_taken_with_nextval_long_before_its_insert_goes_out_at_once() -> anyhow::Result<()> {
    let fx = Fixture::start(
        "co_nextval",
        "CREATE SEQUENCE events_id_seq;",
        Some("nextval('events_id_seq')"),
        "",
    )
    .await?;
    let (mut a, b) = (fx.connect().await?, fx.connect().await?);
    fx.warm_up(&b).await?;
    let tx = a.transaction().await?;
    let late: i64 = tx
        .query_one("SELECT nextval('events_id_seq')", &[])
        .await?
        .get(0);
    let insert = "INSERT INTO events (k, n) VALUES ($1, $2) RETURNING id";
    let early: i64 = b.query_one(insert, &[&"shared", &1]).await?.get(0);
    fx.published(early, Instant::now()).await?;
    fx.a_few_turns(&b, "b").await?;
    tx.execute(
        "INSERT INTO events (id, k, n) VALUES ($1, 'shared', 2)",
        &[&late],
    )
    .await?;
    let committed = Instant::now();
    tx.commit().await?;
    let took = fx.published(late, committed).await?;
    println!("row {late} (nextval taken early) published {took:?} after its commit");
    assert_commit_order(&fx, &[early], &[late]).await?;
    fx.stop().await;
    Ok(())
}

/// A default expression that takes seconds: the id is taken first, the
/// row written (and a transaction id taken) only when it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_held_by_a_slow_default_expression_goes_out_at_once() -> anyhow::Result<()> {
    let fx = Fixture::start(
        "co_slow_default",
        "CREATE SEQUENCE events_id_seq;
         CREATE FUNCTION events_slow_note() RETURNS text LANGUAGE sql VOLATILE
             AS $$ SELECT CASE WHEN current_setting('events.slow', true) = 'on'
                          THEN (SELECT 'slow' FROM pg_sleep(4)) ELSE 'quick' END $$;",
        Some("nextval('events_id_seq')"),
        ", note text DEFAULT events_slow_note()",
    )
    .await?;
    let (a, b) = (fx.connect().await?, fx.connect().await?);
    fx.warm_up(&b).await?;
    a.batch_execute("SET events.slow = 'on'").await?;
    let slow = tokio::spawn(async move {
        let id: i64 = a
            .query_one(
                "INSERT INTO events (k, n) VALUES ('shared', 2) RETURNING id",
                &[],
            )
            .await?
            .get(0);
        anyhow::Ok((id, Instant::now()))
    });
    // The slow insert has its id by now (taken before its default ran).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let insert = "INSERT INTO events (k, n) VALUES ($1, $2) RETURNING id";
    let early: i64 = b.query_one(insert, &[&"shared", &1]).await?.get(0);
    fx.published(early, Instant::now()).await?;
    fx.a_few_turns(&b, "b").await?;
    let (late, committed) = slow.await??;
    assert!(
        late < early,
        "the slow row's id ({late}) was taken before the quick one's ({early})"
    );
    let took = fx.published(late, committed).await?;
    println!("row {late} (slow default) published {took:?} after its commit");
    assert_commit_order(&fx, &[early], &[late]).await?;
    fx.stop().await;
    Ok(())
}

/// A `COPY` whose rows arrive slowly: each row's id is taken as it is read,
/// but the rows are written (and a transaction id taken) in one go at the
/// end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_of_a_slow_copy_go_out_at_once() -> anyhow::Result<()> {
    let fx = Fixture::start(
        "co_copy",
        "CREATE SEQUENCE events_id_seq;",
        Some("nextval('events_id_seq')"),
        "",
    )
    .await?;
    let (a, b) = (fx.connect().await?, fx.connect().await?);
    fx.warm_up(&b).await?;
    let copy = tokio::spawn(async move {
        let sink = a.copy_in("COPY events (k, n) FROM STDIN").await?;
        let mut sink = std::pin::pin!(sink);
        for n in 10..13 {
            sink.send(bytes::Bytes::from(format!("shared\t{n}\n")))
                .await?;
            tokio::time::sleep(Duration::from_millis(800)).await;
        }
        let rows = sink.finish().await?;
        anyhow::Ok((rows, Instant::now()))
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let insert = "INSERT INTO events (k, n) VALUES ($1, $2) RETURNING id";
    let early: i64 = b.query_one(insert, &[&"shared", &1]).await?.get(0);
    fx.published(early, Instant::now()).await?;
    fx.a_few_turns(&b, "b").await?;
    let (rows, committed) = copy.await??;
    assert_eq!(rows, 3);
    let pg = fx.connect().await?;
    let late: Vec<i64> = pg
        .query("SELECT id FROM events WHERE n >= 10 ORDER BY id", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        late.iter().any(|&id| id < early),
        "the copy took ids below {early}: {late:?}"
    );
    for &id in &late {
        let took = fx.published(id, committed).await?;
        println!("row {id} (slow COPY) published {took:?} after its commit");
    }
    assert_commit_order(&fx, &[early], &late).await?;
    fx.stop().await;
    Ok(())
}
