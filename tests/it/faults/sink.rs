//! Faults of the sink: kill -9 at random moments and between insert and
//! commit, ClickHouse gone and back, members joining and leaving, poison
//! messages, a target table gone, a dead-letter topic that cannot be
//! written.

use super::*;

/// The sink killed -9 at random moments under load and aborting at the
/// crash point between ClickHouse's acceptance and the offset commit
/// (`sink-after-insert`, hit at least once): every source row in ClickHouse
/// once under FINAL; static membership rejoins at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_kill_9_at_random_moments_and_between_insert_and_commit() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let stack = stack("f_sink_kill").await?;
    let metrics = Metrics::default();
    let relay = stack.spawn_relay(&metrics)?;
    // Static membership: every restart is the same member, which gets its
    // partitions back at once instead of after session.timeout.ms.
    let mut clean_env = stack.daemon_env();
    clean_env.push(("SINK_GROUP_INSTANCE_ID".into(), "sink-a".into()));
    let mut env = clean_env.clone();
    env.push(("OUTBOX_FAILPOINTS".into(), "sink-after-insert=0.2".into()));
    let spawn = |i: u32| Daemon::spawn("sink", &["run"], &env, &label(&stack, "sink", i));
    let load = Load::start(&stack, LOAD_ROWS_PER_SEC);
    let mut sink = spawn(0);
    let (mut kills, mut restarts) = (0u32, 0u32);
    let hit = || {
        outbox_tests::faults::failpoint_hits(&format!("{}-sink-", stack.name), "sink-after-insert")
    };
    // The crash point fires on one insert in five: rounds go on (a bounded
    // few more) until it has fired at least once, so a slow machine, where a
    // short-lived sink stores few batches, still tests it.
    let mut round = 0;
    while round < rounds(3, 15) || (hit() == 0 && round < 30) {
        let wait = Duration::from_millis(500 + u64::from(rand::random::<u16>() % 1500));
        supervise_for(&mut sink, &spawn, wait, &mut restarts).await;
        sink.kill9();
        kills += 1;
        round += 1;
        sink = spawn(round);
    }
    // The last instance runs without crash points, so that it can finish.
    sink.kill9();
    kills += 1;
    let _last = Daemon::spawn("sink", &["run"], &clean_env, &label(&stack, "sink", 999));
    load.stop().await;
    let recovering = Instant::now();
    let hits = hit();
    assert!(
        hits >= 1,
        "the crash point between insert and commit was hit"
    );
    let report = verify(&stack, "sink kill -9 (random moments + failpoint between insert and offset commit)", kills + hits as u32, recovering, &format!("{kills} kills, crash point sink-after-insert hit {hits} times; static membership (SINK_GROUP_INSTANCE_ID): restarts rejoin at once")).await;
    assert!(report.rows_sent > 0);
    relay.stop().await?;
    Ok(())
}

/// ClickHouse unreachable for 30 s under load, then back: nothing committed
/// meanwhile, the sink's memory stays bounded while it holds, it resumes by
/// itself and every row lands once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_stopped_then_back_with_bounded_sink_memory() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let mut stack = stack("f_ch_outage").await?;
    let proxy = Proxy::start(stack.clickhouse_url.trim_start_matches("http://").parse()?).await?;
    stack
        .overrides
        .push(("CLICKHOUSE_URL".into(), format!("http://{}", proxy.addr)));
    let metrics = Metrics::default();
    let relay = stack.spawn_relay(&metrics)?;
    let mut sink = Daemon::spawn(
        "sink",
        &["run"],
        &stack.daemon_env(),
        &label(&stack, "sink", 0),
    );
    let load = Load::start(&stack, LOAD_ROWS_PER_SEC);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let outage = Duration::from_secs(if long_mode() { 30 } else { 6 });
    proxy.cut();
    let before = peak_rss_mib(sink.pid()).unwrap_or(0);
    tokio::time::sleep(outage).await;
    let during = peak_rss_mib(sink.pid()).unwrap_or(0);
    proxy.restore();
    let recovering = Instant::now();
    load.stop().await;
    assert!(sink.is_running(), "the sink waits out the outage");
    assert!(during < 300, "sink peak RSS {during} MiB during the outage");
    verify(
        &stack,
        &format!("ClickHouse unreachable {} s, then back", outage.as_secs()),
        1,
        recovering,
        &format!(
            "sink peak RSS {before} MiB before, {during} MiB after the outage; resumed by itself"
        ),
    )
    .await;
    relay.stop().await?;
    Ok(())
}

/// Two sinks in one consumer group split the partitions; a third joins and
/// leaves mid-batch: every row in ClickHouse once, each sink loaded a
/// share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sinks_in_one_group_split_partitions_and_rebalance_mid_batch() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let stack = stack("f_two_sinks").await?;
    let relay = stack.spawn_relay(&Metrics::default())?;
    let load = Load::start(&stack, LOAD_ROWS_PER_SEC);
    let (m1, m2, m3) = (Metrics::default(), Metrics::default(), Metrics::default());
    let first = stack.spawn_sink(&m1)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = stack.spawn_sink(&m2)?; // rebalance while the first has a batch open
    let inserted = |m: &Metrics| {
        m.value(
            "sink_rows_inserted_total",
            &[("flow", "user_logins"), ("table", "user_logins")],
        )
    };
    wait_until(
        "both sinks loading their share",
        Duration::from_secs(30),
        || async {
            let before = (inserted(&m1), inserted(&m2));
            tokio::time::sleep(Duration::from_millis(1500)).await;
            Ok(inserted(&m1) > before.0 && inserted(&m2) > before.1)
        },
    )
    .await;
    first.stop().await?; // second rebalance: the survivor takes every partition
    let third = stack.spawn_sink(&m3)?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    load.stop().await;
    let recovering = Instant::now();
    verify(
        &stack,
        "Two sinks in one group, rebalances mid-batch",
        3,
        recovering,
        &format!(
            "rows loaded per sink: {}, {}, {}",
            inserted(&m1),
            inserted(&m2),
            inserted(&m3)
        ),
    )
    .await;
    second.stop().await?;
    third.stop().await?;
    relay.stop().await?;
    Ok(())
}

/// Malformed JSON, a wrong type, a missing field and a 2 MiB message in the
/// topic: each goes to `<topic>.dlq` with its reason and source
/// coordinates, and the stream goes on; every good row once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_go_to_the_dead_letter_topic_and_the_stream_goes_on() -> anyhow::Result<()>
{
    let _serial = SERIAL.lock().await;
    let stack = stack("f_poison").await?;
    let topic = stack.topic("user_events");
    // A real broker refuses records over 1 MiB by default: this topic takes
    // the 2 MiB letter (the sink's own limit is what is tested).
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka_brokers)
        .create()?;
    for result in admin
        .create_topics(
            &[NewTopic::new(&topic, 4, TopicReplication::Fixed(1))
                .set("max.message.bytes", "10000000")],
            &AdminOptions::new(),
        )
        .await?
    {
        result.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }
    let metrics = Metrics::default();
    let running = vec![stack.spawn_relay(&metrics)?, stack.spawn_sink(&metrics)?];
    let load = Load::start(&stack, 300);
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka_brokers)
        .set("message.max.bytes", "10000000")
        .create()?;
    let oversized = format!(
        "{{\"id\": 99999999, \"username\": \"{}\"}}",
        "x".repeat(2 * 1024 * 1024)
    );
    let bad: [&[u8]; 4] = [
        b"{\"id\": 1, \"username\": ",        // malformed JSON
        br#"{"id": "abc", "username": "u"}"#, // wrong type
        br#"{"username": "no id"}"#,          // missing required field
        oversized.as_bytes(),                 // larger than SINK_MAX_MESSAGE_BYTES
    ];
    for payload in &bad {
        producer
            .send(
                FutureRecord::<(), [u8]>::to(&topic).payload(payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    load.stop().await;
    let recovering = Instant::now();
    verify(
        &stack,
        "Poison messages in the topic",
        bad.len() as u32,
        recovering,
        "malformed JSON, wrong type, missing field, 2 MiB: all in user_events.dlq",
    )
    .await;
    assert_eq!(
        metrics.value(
            "sink_dead_letters_total",
            &[("flow", "user_logins"), ("topic", &topic)]
        ),
        4
    );

    let (b, dlq) = (stack.kafka_brokers.clone(), vec![format!("{topic}.dlq")]);
    let letters: Vec<BTreeMap<String, String>> = tokio::task::spawn_blocking(move || {
        outbox_tests::topic::read_all(&b, &dlq, outbox_tests::topic::Isolation::Uncommitted)
    })
    .await??
    .into_iter()
    .map(|letter| letter.headers.into_iter().collect())
    .collect();
    assert_eq!(letters.len(), 4, "{letters:?}");
    for letter in &letters {
        assert_eq!(letter.get("source_topic"), Some(&topic), "{letter:?}");
        assert!(
            letter.contains_key("source_partition") && letter.contains_key("source_offset"),
            "{letter:?}"
        );
    }
    let errors: Vec<&str> = letters
        .iter()
        .filter_map(|l| l.get("error").map(String::as_str))
        .collect();
    for expected in [
        "malformed JSON",
        "column id: expected an unsigned integer",
        "column id: missing required field",
        "exceeds SINK_MAX_MESSAGE_BYTES",
    ] {
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "no letter says {expected:?}: {errors:?}"
        );
    }
    let oversized = letters.iter().find(|l| {
        l.get("error")
            .is_some_and(|e| e.contains("SINK_MAX_MESSAGE_BYTES"))
    });
    assert!(
        oversized.is_some_and(|l| l.contains_key("payload_truncated")),
        "{oversized:?}"
    );
    for r in running {
        r.stop().await?;
    }
    Ok(())
}

/// Watches a group's committed offsets every 50 ms until `stop`; returns
/// how many changes it saw and every move backwards `(partition, from, to)`.
fn watch_committed(
    brokers: &str,
    group: &str,
    topic: &str,
    stop: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<(u64, Vec<(i32, i64, i64)>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            tpl.add_partition(topic, p.id());
        }
    }
    let mut seen: BTreeMap<i32, i64> = BTreeMap::new();
    let (mut changes, mut backwards) = (0, Vec::new());
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let committed = consumer.committed_offsets(tpl.clone(), Duration::from_secs(10))?;
        for e in committed.elements() {
            if let rdkafka::Offset::Offset(at) = e.offset() {
                match seen.insert(e.partition(), at) {
                    Some(before) if at < before => backwards.push((e.partition(), before, at)),
                    Some(before) if at == before => {}
                    _ => changes += 1,
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((changes, backwards))
}

/// A slow sink (crash point `sink-after-insert=delay:3000`: each batch waits
/// 3 s between ClickHouse accepting it and its offset commit) while fast
/// members join and leave its group: a partition revoked while a batch was
/// being stored belongs to another member, which may have committed further
/// already — the slow sink must not commit it (it used to, moving the
/// group's offset backwards). The group's committed offsets, watched every
/// 50 ms, never decrease; nothing lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_sink_never_commits_for_partitions_revoked_mid_batch() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let stack = stack("f_revoked").await?;
    let relay = stack.spawn_relay(&Metrics::default())?;
    let load = Load::start(&stack, LOAD_ROWS_PER_SEC);
    let mut slow_env = stack.daemon_env();
    slow_env.push((
        "OUTBOX_FAILPOINTS".into(),
        "sink-after-insert=delay:3000".into(),
    ));
    let slow = Daemon::spawn("sink", &["run"], &slow_env, &label(&stack, "sink", 0));
    let topic = stack.topic("user_events");
    let group = format!("{}.user-logins-consumer", stack.name);
    wait_until(
        "the slow sink's first commit",
        Duration::from_secs(30),
        || async { Ok(stack.ch_count_final("user_logins").await? > 0) },
    )
    .await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (b, g, t, stop) = (
            stack.kafka_brokers.clone(),
            group.clone(),
            topic.clone(),
            stop.clone(),
        );
        tokio::task::spawn_blocking(move || watch_committed(&b, &g, &t, &stop))
    };
    let rounds = rounds(3, 6);
    for round in 0..rounds {
        let stored = stack.ch_count_final("user_logins").await?;
        let mut fast = Daemon::spawn(
            "sink",
            &["run"],
            &stack.daemon_env(),
            &label(&stack, "sink", round + 1),
        );
        // Joined and loading its share: rows arrive faster than the slow
        // sink alone stores them.
        wait_until(
            "the fast member loading",
            Duration::from_secs(30),
            || async { Ok(stack.ch_count_final("user_logins").await? > stored + 200) },
        )
        .await;
        let status = fast.terminate(Duration::from_secs(15)); // leaves: rebalance again
        assert!(
            status.is_some_and(|s| s.success()),
            "the fast sink stopped cleanly: {status:?}"
        );
    }
    load.stop().await;
    let recovering = Instant::now();
    let report = verify(
        &stack,
        "A slow sink (3 s per batch) while members join and leave",
        rounds * 2,
        recovering,
        &format!("{rounds} members joined and left; committed offsets watched every 50 ms"),
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (changes, backwards) = watcher.await??;
    assert!(changes > 0, "the watcher saw commits");
    assert!(
        backwards.is_empty(),
        "committed offsets moved backwards (partition, from, to): {backwards:?}"
    );
    let log = std::fs::read_to_string(&slow.log)?;
    eprintln!(
        "{} commit changes watched; the slow sink left {} revoked partitions' offsets to their new owner; {} rows",
        changes,
        log.matches("partitions revoked while the batch was stored")
            .count(),
        report.rows_sent
    );
    relay.stop().await?;
    Ok(())
}

/// The sink's target table gone under load (detached, so that the rows
/// stored before stay countable), then back (attached): the
/// flow is not ready at once, saying which table ClickHouse refuses and
/// why; the group's committed offsets stay where the last accepted batch
/// left them; once the table is back the sink resumes by itself and the
/// flow is ready. Nothing lost, nothing doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_target_table_makes_the_flow_not_ready_and_it_recovers() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let mut stack = stack("f_table_gone").await?;
    let addr = outbox_tests::http::free_addr()?;
    stack
        .overrides
        .push(("SINK_METRICS_ADDR".into(), addr.clone()));
    let metrics = Metrics::default();
    let relay = stack.spawn_relay(&metrics)?;
    let sink = stack.spawn_sink(&metrics)?;
    let load = Load::start(&stack, LOAD_ROWS_PER_SEC);
    wait_until("rows loaded", Duration::from_secs(30), || async {
        Ok(stack.ch_count_final("user_logins").await? > 0)
    })
    .await;
    stack
        .ch()
        .query("DETACH TABLE user_logins")
        .execute()
        .await?;
    let dropped = Instant::now();
    wait_until(
        "/readyz naming the refused table",
        Duration::from_secs(30),
        || async {
            let (status, body) = outbox_tests::http::get(&addr, "/readyz").await?;
            Ok(status == 503
                && body.contains(
                    "ClickHouse refuses inserts into user_logins: the table does not exist",
                ))
        },
    )
    .await;
    let noticed = dropped.elapsed();
    // `sink status` says the same, and survives the missing table.
    let env = stack.daemon_env();
    let status = tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        outbox_tests::daemon::run_for_output("sink", &["status"], &env)
    })
    .await?;
    assert_eq!(status.0, Some(0), "sink status: {status:?}");
    assert!(
        status.1.contains(
            "flow=user_logins not ready: ClickHouse refuses inserts into user_logins: the table does not exist"
        ) && status.1.contains("flow=user_logins table=user_logins rows=unknown"),
        "sink status: {}",
        status.1
    );
    // While refused, the offsets stay put: nothing is committed past the
    // last batch ClickHouse accepted.
    let (b, g, t) = (
        stack.kafka_brokers.clone(),
        format!("{}.user-logins-consumer", stack.name),
        stack.topic("user_events"),
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (b, g, t, stop) = (b.clone(), g.clone(), t.clone(), stop.clone());
        tokio::task::spawn_blocking(move || watch_committed(&b, &g, &t, &stop))
    };
    let refused_since = Instant::now();
    wait_until(
        "the refusal counted for a while",
        Duration::from_secs(30),
        || async {
            Ok(refused_since.elapsed() > Duration::from_secs(3)
                && metrics.value(
                    "sink_insert_refused",
                    &[("flow", "user_logins"), ("table", "user_logins")],
                ) == 1)
        },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (changes_while_refused, _) = watcher.await??;
    // The watcher counts each partition's first reading as a change.
    let partitions = 4;
    assert!(
        changes_while_refused <= partitions,
        "no offset committed while the table was gone ({changes_while_refused} changes)"
    );
    stack
        .ch()
        .query("ATTACH TABLE user_logins")
        .execute()
        .await?;
    let restored = Instant::now();
    wait_until("/readyz ready again", Duration::from_secs(60), || async {
        let (status, _) = outbox_tests::http::get(&addr, "/readyz").await?;
        Ok(status == 200)
    })
    .await;
    load.stop().await;
    verify(
        &stack,
        "Target table gone (detached), then back",
        1,
        restored,
        &format!(
            "not ready {:.1} s after it went, naming the table; no offset committed while it was gone; ready {:.1} s after it was back",
            noticed.as_secs_f64(),
            restored.elapsed().as_secs_f64()
        ),
    )
    .await;
    sink.stop().await?;
    relay.stop().await?;
    Ok(())
}

/// Dead letters of one batch bound for two topics, one of which cannot be
/// written (created with `max.message.bytes=64`: even a letter cut to its
/// headers is too large): the flow is not ready, naming the topic,
/// while the batch waits; the letter the other topic took is not sent
/// again on each retry (it used to be); once the topic is writable the
/// stream goes on. A 100 KiB key is cut to 16 KiB with a `key_truncated`
/// header. Each letter exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_dead_letter_topic_is_not_ready_and_no_letter_is_doubled()
-> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let mut stack = stack("f_dlq").await?;
    let addr = outbox_tests::http::free_addr()?;
    stack.overrides.extend([
        ("SINK_METRICS_ADDR".to_owned(), addr.clone()),
        ("SINK_DLQ_TIMEOUT_MS".to_owned(), "3000".to_owned()),
    ]);
    let (sales, warehouse) = (stack.topic("sales"), stack.topic("warehouse"));
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka_brokers)
        .create()?;
    let stuck = format!("{warehouse}.dlq");
    for result in admin
        .create_topics(
            &[
                NewTopic::new(&sales, 4, TopicReplication::Fixed(1)),
                NewTopic::new(&warehouse, 4, TopicReplication::Fixed(1)),
                NewTopic::new(&stuck, 1, TopicReplication::Fixed(1)).set("max.message.bytes", "64"),
            ],
            &AdminOptions::new(),
        )
        .await?
    {
        result.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }
    let metrics = Metrics::default();
    let sink = stack.spawn_sink(&metrics)?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka_brokers)
        .create()?;
    let big_key = vec![b'k'; 100 * 1024];
    producer
        .send(
            FutureRecord::to(&sales)
                .key(&big_key[..])
                .payload("not json"),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)?;
    producer
        .send(
            FutureRecord::to(&warehouse)
                .key("w")
                .payload("not json either"),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)?;
    outbox_tests::wait::wait_for(
        "/readyz naming the unwritable topic",
        Duration::from_secs(60),
        || async {
            let (status, body) = outbox_tests::http::get(&addr, "/readyz").await?;
            let named = body.contains(&format!("dead-letter topic {stuck} cannot be written"));
            Ok(if status == 503 && named {
                Ok(())
            } else {
                Err(format!("{status}: {body}"))
            })
        },
    )
    .await;
    // Several attempts while the topic stays unwritable: before the fix each
    // one wrote the other topic's letter again.
    wait_until("three failed attempts", Duration::from_secs(60), || async {
        Ok(metrics.value("sink_dead_letter_failures_total", &[("flow", "sales")]) >= 3)
    })
    .await;
    let mut fix =
        rdkafka::admin::AlterConfig::new(rdkafka::admin::ResourceSpecifier::Topic(&stuck));
    fix = fix.set("max.message.bytes", "1048588");
    for result in admin.alter_configs(&[fix], &AdminOptions::new()).await? {
        result.map_err(|(r, e)| anyhow::anyhow!("altering {r:?}: {e}"))?;
    }
    wait_until("/readyz ready again", Duration::from_secs(60), || async {
        let (status, _) = outbox_tests::http::get(&addr, "/readyz").await?;
        Ok(status == 200)
    })
    .await;
    // Ready again says the stuck topic takes letters; the other flow's
    // letter may still be on its way: read both topics to their ends until
    // each holds its letter.
    let topics = vec![format!("{sales}.dlq"), stuck.clone()];
    let read_letters = || {
        let (b, topics) = (stack.kafka_brokers.clone(), topics.clone());
        tokio::task::spawn_blocking(move || {
            outbox_tests::topic::read_all(&b, &topics, outbox_tests::topic::Isolation::Uncommitted)
        })
    };
    wait_until("both letters written", Duration::from_secs(60), || async {
        let letters = read_letters().await??;
        Ok(topics.iter().all(|t| letters.iter().any(|l| &l.topic == t)))
    })
    .await;
    let letters = read_letters().await??;
    let per_topic = |t: &str| letters.iter().filter(|l| l.topic == t).count();
    assert_eq!(
        (per_topic(&format!("{sales}.dlq")), per_topic(&stuck)),
        (1, 1),
        "each letter exactly once: {:?}",
        letters
            .iter()
            .map(|l| (&l.topic, l.offset))
            .collect::<Vec<_>>()
    );
    let cut = letters
        .iter()
        .find(|l| l.topic == format!("{sales}.dlq"))
        .context("the sales letter")?;
    assert_eq!(
        cut.key.as_ref().map(Vec::len),
        Some(16 * 1024),
        "the key cut to 16 KiB"
    );
    assert_eq!(cut.header("key_truncated"), Some("102400"));
    sink.stop().await?;
    Ok(())
}
