//! The delivery guarantee on a three-broker Kafka cluster, as production
//! runs Kafka: replication factor 3, `min.insync.replicas=2` (the topics the
//! relay creates, the internal topics too), topic auto-creation off, the
//! producer's `acks=all` (see `tests/support/cluster.rs`). Under a steady
//! load on `user_logins` and `sales` (three topics) each test injects one
//! fault — the leader of a partition killed, the relay's transaction
//! coordinator killed, the sink's group coordinator killed, a broker cut off
//! from the others, two brokers of three down — then checks that nothing
//! was lost or doubled in what ClickHouse's `FINAL` returns (`verify`) and
//! in what a `read_committed` reader of the topics counts as first
//! deliveries: every source row there, and every repeat one the relay
//! counted as re-published. Each records a fault row (docs/faults.md).
//! `scripts/cluster-test.sh` runs them, one at a time.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use daemon::metrics::Metrics;
use devstack::cluster::{BROKERS, KafkaCluster};
use outbox_tests::faults::{Load, record_arrivals, rounds, verify};
use outbox_tests::http::{free_addr, get};
use outbox_tests::stack::Running;
use outbox_tests::topic::{Isolation, read_all};
use outbox_tests::wait::wait_for;
use outbox_tests::{TestStack, wait_until};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const LOAD_ROWS_PER_SEC: u64 = 600;

/// (source table, its topic, its ClickHouse table).
const TABLES: [(&str, &str, &str); 3] = [
    ("user_logins", "user_events", "user_logins"),
    ("sales", "sales", "sales"),
    ("warehouse", "warehouse", "stock_movements"),
];

/// How long a fault may take to heal, and the pipeline to catch up.
const RECOVERY: Duration = Duration::from_secs(180);

/// The relay and the sink on the cluster, both in-process.
struct Pipeline {
    stack: TestStack,
    cluster: &'static KafkaCluster,
    metrics: Metrics,
    relay: Running,
    sink: Running,
    /// The relay's `/readyz`.
    relay_addr: String,
}

/// A test's databases on the whole cluster, its topics created by the relay
/// with replication factor 3 and `min.insync.replicas=2`, relay and sink
/// running. `KAFKA_COMMIT_TIMEOUT_MS` 10 s: a batch stuck on an unreachable
/// leader is given up (and published again) sooner than the default 30 s.
async fn pipeline(test: &str) -> anyhow::Result<Pipeline> {
    let cluster = tokio::task::spawn_blocking(outbox_tests::cluster::whole).await??;
    let mut stack = TestStack::start_on_brokers(test, cluster.bootstrap_servers()).await?;
    stack.flows = "user_logins,sales".into();
    for (name, value) in [
        ("KAFKA_TOPIC_PARTITIONS", "6"),
        ("KAFKA_TOPIC_REPLICATION_FACTOR", "3"),
        ("KAFKA_TOPIC_CONFIG", "min.insync.replicas=2"),
    ] {
        stack.overrides.push((name.into(), value.into()));
    }
    stack.migrate().await?;
    record_arrivals(&stack).await?;
    let relay_addr = free_addr()?;
    stack
        .overrides
        .push(("RELAY_METRICS_ADDR".into(), relay_addr.clone()));
    let metrics = Metrics::default();
    // A relay-only setting (the sink refuses Kafka settings it does not know).
    stack
        .overrides
        .push(("KAFKA_COMMIT_TIMEOUT_MS".into(), "10000".into()));
    let relay = stack.spawn_relay(&metrics)?;
    stack.overrides.pop();
    let sink = stack.spawn_sink(&metrics)?;
    Ok(Pipeline {
        stack,
        cluster,
        metrics,
        relay,
        sink,
        relay_addr,
    })
}

impl Pipeline {
    /// Rows of every table in ClickHouse (`FINAL`).
    async fn loaded(&self) -> anyhow::Result<u64> {
        let mut rows = 0;
        for (_, _, ch) in TABLES {
            rows += self.stack.ch_count_final(ch).await?;
        }
        Ok(rows)
    }

    /// Waits until `more` rows more than now are loaded: the pipeline
    /// moves (under the fault, when one holds).
    async fn moves(&self, what: &str, more: u64) {
        let Ok(start) = self.loaded().await else {
            panic!("counting rows in ClickHouse");
        };
        wait_for(what, RECOVERY, || async {
            let now = self.loaded().await?;
            Ok(if now >= start + more {
                Ok(())
            } else {
                Err(format!(
                    "{} of {more} more rows loaded",
                    now - start.min(now)
                ))
            })
        })
        .await;
    }

    /// Source rows flagged sent, over every table.
    async fn flagged(&self) -> anyhow::Result<i64> {
        let pg = self.stack.pg().await?;
        let mut rows = 0;
        for (table, _, _) in TABLES {
            rows += pg
                .query_one(
                    &format!("SELECT count(*) FROM {table} WHERE sent_to_kafka"),
                    &[],
                )
                .await?
                .get::<_, i64>(0);
        }
        Ok(rows)
    }

    /// Rows the relay counted as published again, over flows and reasons.
    fn republished(&self) -> i64 {
        let mut rows = 0;
        for flow in ["user_logins", "sales"] {
            for reason in ["postgres", "other_lane", "kafka_commit_outcome_unknown"] {
                rows += self.metrics.value(
                    "relay_rows_republished_total",
                    &[("flow", flow), ("reason", reason)],
                );
            }
        }
        rows
    }

    /// Runs a blocking call on the cluster.
    async fn on_cluster<T: Send + 'static>(
        &self,
        call: impl FnOnce(&'static KafkaCluster) -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let cluster = self.cluster;
        tokio::task::spawn_blocking(move || call(cluster)).await?
    }

    /// After the fault: the load stopped, everything delivered; the
    /// read_committed reader's count, then `verify` (FINAL) with it in the
    /// note; relay and sink stopped.
    async fn finish(
        self,
        load: Load,
        fault: &str,
        injected: u32,
        since: Instant,
        note: &str,
    ) -> anyhow::Result<()> {
        load.stop().await;
        self.delivered().await;
        let reader = self.first_deliveries().await?;
        verify(
            &self.stack,
            fault,
            injected,
            since,
            &format!("{note}; {reader}"),
        )
        .await;
        self.relay.stop().await?;
        self.sink.stop().await?;
        Ok(())
    }

    /// Every source row flagged and loaded.
    async fn delivered(&self) {
        wait_for("every row delivered", RECOVERY, || async {
            for (table, _, ch) in TABLES {
                let pending = self.stack.pending(table).await?;
                let rows: i64 = self
                    .stack
                    .pg()
                    .await?
                    .query_one(&format!("SELECT count(*) FROM {table}"), &[])
                    .await?
                    .get(0);
                let loaded = self.stack.ch_count_final(ch).await?;
                if pending > 0 || loaded < rows as u64 {
                    return Ok(Err(format!(
                        "{table}: {pending} pending; {ch}: {loaded} of {rows}"
                    )));
                }
            }
            Ok(Ok(()))
        })
        .await;
    }

    /// What a read_committed reader of the three topics sees: every source
    /// id at least once, no id that is not a source row's, and no more
    /// repeats than rows the relay counted as published again (a repeat it
    /// did not count would be one the cluster made). Asserts; says what it
    /// counted.
    async fn first_deliveries(&self) -> anyhow::Result<String> {
        let topics: Vec<String> = TABLES.iter().map(|(_, t, _)| self.stack.topic(t)).collect();
        let brokers = self.stack.kafka_brokers.clone();
        let records =
            tokio::task::spawn_blocking(move || read_all(&brokers, &topics, Isolation::Committed))
                .await??;
        let pg = self.stack.pg().await?;
        let (mut ids, mut repeats, mut missing, mut strangers) = (0usize, 0usize, 0usize, 0usize);
        for (table, topic, _) in TABLES {
            let topic = self.stack.topic(topic);
            let mut seen: BTreeMap<i64, usize> = BTreeMap::new();
            for record in records.iter().filter(|r| r.topic == topic) {
                let id = record
                    .header("source_id")
                    .and_then(|v| v.parse().ok())
                    .or_else(|| record.id())
                    .unwrap_or(-1);
                *seen.entry(id).or_default() += 1;
            }
            let source: Vec<i64> = pg
                .query(&format!("SELECT id::int8 FROM {table} ORDER BY id"), &[])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            missing += source.iter().filter(|id| !seen.contains_key(*id)).count();
            strangers += seen
                .keys()
                .filter(|id| source.binary_search(*id).is_err())
                .count();
            ids += seen.len();
            repeats += seen.values().map(|n| n - 1).sum::<usize>();
        }
        let counted = self.republished();
        assert_eq!(missing, 0, "source rows no read_committed reader sees");
        assert_eq!(strangers, 0, "records of no source row");
        assert!(
            repeats as i64 <= counted,
            "{repeats} repeats on the topics, only {counted} rows counted as re-published"
        );
        Ok(format!(
            "read_committed reader: {ids} ids, 0 missing, {repeats} repeats ({counted} rows counted re-published)"
        ))
    }
}

/// The pipeline with the load running and rows flowing.
async fn started(test: &str) -> anyhow::Result<(Pipeline, Load)> {
    let p = pipeline(test).await?;
    let load = Load::start(&p.stack, LOAD_ROWS_PER_SEC);
    p.moves("rows flowing before the fault", 300).await;
    Ok((p, load))
}

/// The leader of a partition of `user_events` killed (kill -9) under load;
/// another replica leads, the relay's idempotent producer and the sink move
/// to it; the broker restarted catches up. Nothing lost or doubled under
/// `FINAL` or for a read_committed reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_leader_killed_and_restarted_loses_and_doubles_nothing() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let (p, load) = started("c_leader").await?;
    let topic = p.stack.topic("user_events");
    let mut killed = Vec::new();
    let mut since = Instant::now();
    for _ in 0..rounds(1, 3) {
        let t = topic.clone();
        let leader = p.on_cluster(move |c| c.leader_of(&t, 0)).await?;
        p.on_cluster(move |c| c.kill(leader)).await?;
        killed.push(leader);
        p.moves("rows loaded with the leader dead", 600).await;
        p.on_cluster(move |c| c.restart(leader)).await?;
        since = Instant::now();
        p.on_cluster(|c| c.wait_healthy(RECOVERY)).await?;
    }
    let note = format!(
        "kill -9 of the leader of user_events partition 0 (broker {killed:?}), 600 rows loaded while it was down, then restarted and back in sync"
    );
    let injected = killed.len() as u32;
    p.finish(
        load,
        "Kafka cluster: a partition's leader killed, then restarted",
        injected,
        since,
        &note,
    )
    .await
}

/// The broker coordinating the relay's transactions (its transactional
/// id's `__transaction_state` partition) killed under load: another
/// replica takes the coordinator's place; an open transaction is completed
/// or aborted there, and a commit whose answer was lost is published again
/// (counted). Nothing lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relays_transaction_coordinator_killed_loses_and_doubles_nothing() -> anyhow::Result<()>
{
    let _serial = SERIAL.lock().await;
    let (p, load) = started("c_txn").await?;
    let id = format!("{}.user_logins", p.stack.name);
    let mut killed = Vec::new();
    let mut since = Instant::now();
    for _ in 0..rounds(1, 3) {
        let txn = id.clone();
        let coordinator = p
            .on_cluster(move |c| c.transaction_coordinator(&txn))
            .await?;
        p.on_cluster(move |c| c.kill(coordinator)).await?;
        killed.push(coordinator);
        p.moves("rows loaded with the coordinator dead", 600).await;
        p.on_cluster(move |c| c.restart(coordinator)).await?;
        since = Instant::now();
        p.on_cluster(|c| c.wait_healthy(RECOVERY)).await?;
    }
    let note = format!(
        "kill -9 of the broker coordinating transactional id <prefix>.user_logins (broker {killed:?}), 600 rows loaded meanwhile, then restarted"
    );
    let injected = killed.len() as u32;
    p.finish(
        load,
        "Kafka cluster: the relay's transaction coordinator killed",
        injected,
        since,
        &note,
    )
    .await
}

/// The broker coordinating the sink's consumer group killed under load:
/// the group moves to another coordinator; offsets committed before are
/// kept, a commit that failed leaves its rows to be read again (absorbed by
/// the keyed tables). Nothing lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sinks_group_coordinator_killed_loses_and_doubles_nothing() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let (p, load) = started("c_group").await?;
    let group = p.stack.group("user-logins-consumer");
    let mut killed = Vec::new();
    let mut since = Instant::now();
    for _ in 0..rounds(1, 3) {
        let g = group.clone();
        let coordinator = p.on_cluster(move |c| c.group_coordinator(&g)).await?;
        p.on_cluster(move |c| c.kill(coordinator)).await?;
        killed.push(coordinator);
        p.moves("rows loaded with the group coordinator dead", 600)
            .await;
        p.on_cluster(move |c| c.restart(coordinator)).await?;
        since = Instant::now();
        p.on_cluster(|c| c.wait_healthy(RECOVERY)).await?;
    }
    let note = format!(
        "kill -9 of the broker coordinating the user_logins sink's group (broker {killed:?}), 600 rows loaded meanwhile, then restarted"
    );
    let injected = killed.len() as u32;
    p.finish(
        load,
        "Kafka cluster: the sink's group coordinator killed",
        injected,
        since,
        &note,
    )
    .await
}

/// The leader of a partition cut off from the other brokers and the
/// controller (packets dropped both ways; its clients still reach it): the
/// controller fences it and another replica leads, while the cut-off
/// broker still answers the relay and the sink as the leader it thinks it
/// is — `acks=all` keeps it from acknowledging anything. The pipeline moves
/// on while the partition lasts; healed, the broker truncates what it alone
/// took and catches up. Nothing lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_cut_off_from_the_others_then_healed_loses_and_doubles_nothing()
-> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let (p, load) = started("c_partition").await?;
    let topic = p.stack.topic("user_events");
    let mut cut = Vec::new();
    let mut since = Instant::now();
    let mut moved_after = Vec::new();
    for _ in 0..rounds(1, 2) {
        let t = topic.clone();
        let leader = p.on_cluster(move |c| c.leader_of(&t, 0)).await?;
        p.on_cluster(move |c| c.isolate(leader)).await?;
        cut.push(leader);
        let start = Instant::now();
        p.moves("rows loaded while a broker is cut off", 600).await;
        moved_after.push(start.elapsed().as_millis());
        p.on_cluster(move |c| c.heal(leader)).await?;
        since = Instant::now();
        p.on_cluster(|c| c.wait_healthy(RECOVERY)).await?;
    }
    let note = format!(
        "the leader of user_events partition 0 (broker {cut:?}) cut off from the other brokers and the controller; 600 rows loaded while cut off (after {moved_after:?} ms), then healed and back in sync"
    );
    let injected = cut.len() as u32;
    p.finish(
        load,
        "Kafka cluster: a broker cut off from the others, then healed",
        injected,
        since,
        &note,
    )
    .await
}

/// Two brokers of three killed: every partition is below
/// `min.insync.replicas`, Kafka refuses `acks=all` writes. The relay keeps
/// running and flags nothing (every row stays pending); its `/readyz` is
/// 503 saying why — the topics' partitions with fewer in-sync replicas
/// than `min.insync.replicas` — for each flow. One broker back: the relay
/// resumes by itself and `/readyz` is ready again. Nothing lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_brokers_down_stop_the_relay_without_flagging_and_it_resumes_by_itself()
-> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let (p, load) = started("c_two_down").await?;
    let t = p.stack.topic("user_events");
    let first = p.on_cluster(move |c| c.leader_of(&t, 0)).await?;
    let second = BROKERS.into_iter().find(|b| *b != first).unwrap_or(first);
    p.on_cluster(move |c| c.kill(first)).await?;
    p.on_cluster(move |c| c.kill(second)).await?;
    let down = Instant::now();
    let reason = "min.insync.replicas";
    let said = std::sync::Mutex::new(String::new());
    wait_for(
        "/readyz naming min.insync.replicas for both flows",
        RECOVERY,
        || async {
            let (status, body) = get(&p.relay_addr, "/readyz").await?;
            let both = ["user_logins", "sales"].iter().all(|flow| {
                body.lines()
                    .any(|l| l.starts_with(&format!("flow={flow} not ready")) && l.contains(reason))
            });
            if status == 503 && both {
                if let Ok(mut said) = said.lock() {
                    *said = body;
                }
                return Ok(Ok(()));
            }
            Ok(Err(format!("{status}: {body}")))
        },
    )
    .await;
    let named_after = down.elapsed();
    // Below min.insync.replicas nothing commits in Kafka, so nothing is
    // flagged: the count holds while the relay keeps retrying.
    let flagged = p.flagged().await?;
    let held = Instant::now();
    wait_until("10 s not ready, nothing flagged", RECOVERY, || async {
        let (status, body) = get(&p.relay_addr, "/readyz").await?;
        assert!(
            status == 503 && body.contains(reason),
            "ready again below min.insync.replicas: {body}"
        );
        let now = p.flagged().await?;
        assert_eq!(now, flagged, "rows flagged below min.insync.replicas");
        Ok(held.elapsed() >= Duration::from_secs(10))
    })
    .await;
    assert!(!p.relay.task.is_finished(), "the relay keeps running");
    p.on_cluster(move |c| c.restart(first)).await?;
    let back = Instant::now();
    wait_until("/readyz ready again", RECOVERY, || async {
        let (status, _) = get(&p.relay_addr, "/readyz").await?;
        Ok(status == 200 && p.flagged().await? > flagged)
    })
    .await;
    let resumed_after = back.elapsed();
    p.on_cluster(move |c| c.restart(second)).await?;
    p.on_cluster(|c| c.wait_healthy(RECOVERY)).await?;
    let said = said.into_inner().unwrap_or_default();
    let line = said
        .lines()
        .find(|l| l.starts_with("flow=user_logins"))
        .unwrap_or_default()
        .to_owned();
    let note = format!(
        "brokers {first} and {second} killed: /readyz named the reason after {:.1} s (`{line}`), nothing flagged for 10 s; broker {first} restarted: publishing again after {:.1} s, by itself",
        named_after.as_secs_f64(),
        resumed_after.as_secs_f64()
    );
    p.finish(
        load,
        "Kafka cluster: two brokers of three down (below min.insync.replicas)",
        1,
        back,
        &note,
    )
    .await
}
