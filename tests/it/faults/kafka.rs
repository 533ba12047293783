//! Kafka faults only librdkafka's mock cluster can inject (request errors,
//! a broker of three down, fencing, slow round trips): no delivery claim
//! rests on it.

use super::*;

/// On the mock cluster: injected request errors, a broker of three down and
/// slow round trips are what a single real broker cannot be told to do.
/// (Fencing for real: `a_zombie_relay_is_fenced…` in tests/broker.rs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mock_kafka_faults_broker_down_produce_errors_aborts_fencing_slow_broker()
-> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let mut stack = stack_on("f_kafka", Kafka::Mock).await?;
    let mock = stack.mock.clone().context("the mock cluster")?;
    // Transactions are coordinated by broker 1, so that a late commit reply
    // can be aimed at it.
    for flow in ["user_logins", "sales"] {
        mock.coordinator_set("transaction", &format!("{}.{flow}", stack.name), 1)?;
    }
    let metrics = Metrics::default();
    // A relay-only setting (the sink refuses Kafka settings it does not know).
    stack
        .overrides
        .push(("KAFKA_COMMIT_TIMEOUT_MS".into(), "3000".into()));
    let relay = stack.spawn_relay(&metrics)?;
    stack.overrides.pop();
    let running = vec![relay, stack.spawn_sink(&metrics)?];
    let hold = Duration::from_secs(if long_mode() { 10 } else { 3 });
    type Inject = Box<dyn Fn(&devstack::MockKafka)>;
    let faults: Vec<(&str, Inject, Inject, &str)> = vec![
        (
            "mock Kafka: broker down, then up",
            Box::new(|m| {
                let _ = m.broker_down(1);
            }),
            Box::new(|m| {
                let _ = m.broker_up(1);
            }),
            "broker 1 of 3 (leader of some partitions) down",
        ),
        (
            "mock Kafka: produce errors (retriable)",
            Box::new(|m| {
                m.push_request_errors(
                    RDKafkaApiKey::Produce,
                    &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 30],
                )
            }),
            Box::new(|m| m.clear_request_errors(RDKafkaApiKey::Produce)),
            "librdkafka retries inside the transaction",
        ),
        (
            "mock Kafka: transaction errors that require an abort",
            Box::new(|m| {
                m.push_request_errors(
                    RDKafkaApiKey::Produce,
                    &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 5],
                )
            }),
            Box::new(|m| m.clear_request_errors(RDKafkaApiKey::Produce)),
            "aborted, rolled back, retried with a new producer",
        ),
        (
            "mock Kafka: fencing error injected",
            Box::new(|m| {
                m.push_request_errors(
                    RDKafkaApiKey::EndTxn,
                    &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_PRODUCER_FENCED; 2],
                )
            }),
            Box::new(|m| m.clear_request_errors(RDKafkaApiKey::EndTxn)),
            "fatal error: producer recreated (the mock injects the error; it does not fence for real)",
        ),
        (
            "mock Kafka: commit reply later than the commit deadline",
            Box::new(|m| {
                let _ = m.delay_next_response(1, RDKafkaApiKey::EndTxn, Duration::from_secs(8));
            }),
            Box::new(|_| {}),
            "EndTxn answered after 8 s, KAFKA_COMMIT_TIMEOUT_MS 3 s: outcome unknown, aborted, producer recreated, batch published again",
        ),
        (
            "mock Kafka: slow broker (500 ms per request)",
            Box::new(|m| {
                for b in 1..=3 {
                    let _ = m.broker_round_trip(b, Duration::from_millis(500));
                }
            }),
            Box::new(|m| {
                for b in 1..=3 {
                    let _ = m.broker_round_trip(b, Duration::ZERO);
                }
            }),
            "all three brokers slow",
        ),
    ];
    for (name, inject, clear, note) in &faults {
        let load = Load::start(&stack, LOAD_ROWS_PER_SEC);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let failed_before = metrics.value("relay_batches_failed_total", &[("flow", "user_logins")]);
        let unknown = || {
            ["user_logins", "sales"]
                .iter()
                .map(|flow| {
                    metrics.value(
                        "relay_rows_republished_total",
                        &[("flow", flow), ("reason", "kafka_commit_outcome_unknown")],
                    )
                })
                .sum::<i64>()
        };
        let unknown_before = unknown();
        inject(&mock);
        tokio::time::sleep(hold).await;
        clear(&mock);
        let recovering = Instant::now();
        load.stop().await;
        let failed =
            metrics.value("relay_batches_failed_total", &[("flow", "user_logins")]) - failed_before;
        if name.contains("commit reply later") {
            // The commit times out KAFKA_COMMIT_TIMEOUT_MS after the late
            // EndTxn went out.
            wait_until(
                "rows counted as re-published with an unknown commit outcome",
                Duration::from_secs(30),
                || async { Ok(unknown() > unknown_before) },
            )
            .await;
        }
        let republished = unknown() - unknown_before;
        verify(
            &stack,
            name,
            1,
            recovering,
            &format!(
                "{note}; {failed} user_logins batches retried, {republished} rows re-published (commit outcome unknown)"
            ),
        )
        .await;
    }
    for r in running {
        r.stop().await?;
    }
    Ok(())
}
