//! The topics the product writes, which it creates itself: brokers run
//! with `auto.create.topics.enable=false` (and none of the product's
//! clients lets a broker create one). `relay migrate` creates the flows'
//! topics with `KAFKA_TOPIC_*`; a topic chosen per row is created before
//! its first row, with its flow's `[flows.topics]`; an existing topic that
//! has less than asked is named in a warning and left as it is; a cluster
//! that refuses to create one holds the flow not ready, saying why, with
//! nothing flagged.

use std::time::Duration;

use daemon::metrics::Metrics;
use outbox_tests::daemon::run_for_output;
use outbox_tests::http::{free_addr, get};
use outbox_tests::topic::{create, describe};
use outbox_tests::{TestStack, repo_path, wait_until};

const SETTLE: Duration = Duration::from_secs(60);

fn pairs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// `relay migrate` with the Kafka settings creates every flow's topic
/// with `KAFKA_TOPIC_PARTITIONS` and `KAFKA_TOPIC_CONFIG`; a topic that
/// already exists with fewer partitions is named in a warning and keeps
/// them; a second run creates nothing and says the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_migrate_creates_the_flows_topics_and_leaves_existing_ones_alone()
-> anyhow::Result<()> {
    let mut stack = TestStack::start("topics_migrate").await?;
    stack.flows = "user_logins,sales".into();
    let brokers = stack.kafka_brokers.clone();
    create(&brokers, &stack.topic("warehouse"), 1, &[]).await?;
    stack.overrides.extend([
        ("KAFKA_TOPIC_PARTITIONS".to_owned(), "3".to_owned()),
        (
            "KAFKA_TOPIC_CONFIG".to_owned(),
            "retention.ms=3600000,cleanup.policy=compact,delete".to_owned(),
        ),
    ]);
    let env = stack.daemon_env();
    for run in ["first", "second"] {
        let (code, _, stderr) = run_for_output("relay", &["migrate"], &pairs(&env));
        assert_eq!(code, Some(0), "{run} relay migrate: {stderr}");
        let warning = stderr.lines().find(|l| {
            l.contains("WARN")
                && l.contains(&stack.topic("warehouse"))
                && l.contains("fewer partitions than asked")
        });
        assert!(warning.is_some(), "{run} run names warehouse: {stderr}");
    }
    for topic in ["user_events", "sales"] {
        let t = describe(&brokers, &stack.topic(topic)).await?;
        assert_eq!(t.partitions, 3, "{topic}: {t:?}");
        assert_eq!(
            t.config.get("retention.ms").map(String::as_str),
            Some("3600000"),
            "{topic}"
        );
        assert_eq!(
            t.config.get("cleanup.policy").map(String::as_str),
            Some("compact,delete"),
            "{topic}"
        );
    }
    let warehouse = describe(&brokers, &stack.topic("warehouse")).await?;
    assert_eq!(
        warehouse.partitions, 1,
        "an existing topic is never altered"
    );
    Ok(())
}

/// A topic chosen per row (the outbox-router example) is created before
/// the first row goes to it, with the flow's `[flows.topics]` over the
/// settings (2 partitions and its retention, not `KAFKA_TOPIC_PARTITIONS`
/// 5); every row published once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routed_topic_is_created_before_its_first_row_with_its_flows_settings()
-> anyhow::Result<()> {
    let mut stack = TestStack::start("topics_routed").await?;
    stack.flows = "outbox_events".into();
    let example = repo_path("examples/outbox-router");
    let flows = format!(
        "{}\n[flows.topics]\npartitions = 2\nconfig = {{ \"retention.ms\" = 7200000 }}\n",
        std::fs::read_to_string(example.join("flows.toml"))?
    );
    let file = std::env::temp_dir().join(format!("{}-flows.toml", stack.name));
    std::fs::write(&file, flows)?;
    stack
        .overrides
        .push(("FLOWS_FILE".into(), file.display().to_string()));
    stack
        .overrides
        .push(("KAFKA_TOPIC_PARTITIONS".into(), "5".into()));
    stack.migrate_with(&example.join("migrations")).await?;
    let relay = stack.spawn_relay(&Metrics::default())?;
    let pg = stack.pg().await?;
    pg.batch_execute(
        r#"INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES
             ('invoice', 'i-1', 'InvoiceSent', '{"n": 1}'),
             ('invoice', 'i-2', 'InvoiceSent', '{"n": 2}')"#,
    )
    .await?;
    wait_until("both rows published", SETTLE, || async {
        Ok(stack.pending("outbox").await? == 0)
    })
    .await;
    let brokers = stack.kafka_brokers.clone();
    let topic = stack.topic("outbox.event.invoice");
    let created = describe(&brokers, &topic).await?;
    assert_eq!(created.partitions, 2, "{created:?}");
    assert_eq!(
        created.config.get("retention.ms").map(String::as_str),
        Some("7200000")
    );
    let records = tokio::task::spawn_blocking(move || {
        outbox_tests::topic::read_all(
            &brokers,
            &[topic],
            outbox_tests::topic::Isolation::Committed,
        )
    })
    .await??;
    assert_eq!(records.len(), 2, "{records:?}");
    relay.stop().await?;
    Ok(())
}

/// A cluster that refuses to create a flow's topic (a replication factor
/// above its brokers): `relay run` flags nothing and is not ready, naming
/// the topic, Kafka's reason and the setting, until run with a factor the
/// cluster has; `relay migrate` exits 2 naming the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_the_cluster_refuses_to_create_holds_the_flow_not_ready_naming_it()
-> anyhow::Result<()> {
    let mut stack = TestStack::start("topics_refused").await?;
    stack.migrate().await?;
    let addr = free_addr()?;
    stack.overrides.extend([
        ("RELAY_METRICS_ADDR".to_owned(), addr.clone()),
        ("KAFKA_TOPIC_REPLICATION_FACTOR".to_owned(), "3".to_owned()),
    ]);
    let (code, _, stderr) = run_for_output("relay", &["migrate"], &pairs(&stack.daemon_env()));
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr
            .lines()
            .last()
            .is_some_and(|l| l.contains("KAFKA_TOPIC_REPLICATION_FACTOR")),
        "{stderr}"
    );
    let relay = stack.spawn_relay(&Metrics::default())?;
    stack
        .pg()
        .await?
        .batch_execute(
            "INSERT INTO user_logins (username, event_type, event_time)
             SELECT 'refused' || g, 'login', now() FROM generate_series(1, 5) g",
        )
        .await?;
    let topic = stack.topic("user_events");
    wait_until("/readyz naming the refusal", SETTLE, || async {
        let (status, body) = get(&addr, "/readyz").await?;
        Ok(status == 503
            && body.contains(&format!("kafka refused to create topic {topic}"))
            && body.contains("KAFKA_TOPIC_REPLICATION_FACTOR"))
    })
    .await;
    assert_eq!(stack.pending("user_logins").await?, 5, "nothing flagged");
    assert_eq!(describe(&stack.kafka_brokers, &topic).await?.partitions, 0);
    relay.stop().await?;

    stack
        .overrides
        .retain(|(k, _)| k != "KAFKA_TOPIC_REPLICATION_FACTOR");
    let relay = stack.spawn_relay(&Metrics::default())?;
    wait_until("rows published, ready", SETTLE, || async {
        let (status, _) = get(&addr, "/readyz").await?;
        Ok(stack.pending("user_logins").await? == 0 && status == 200)
    })
    .await;
    relay.stop().await?;
    Ok(())
}
