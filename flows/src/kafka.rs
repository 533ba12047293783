//! The consumer settings the sink and the stage share, in one place.

/// read_committed (aborted transactions are never loaded), offsets committed
/// by hand only after the work is durable, a missing topic created on
/// subscribe where the cluster allows it and new topics noticed within
/// seconds, a killed member's partitions moved on after 10 s (Kafka's 45 s
/// default stalls restarts), and a bounded prefetch queue so memory stays
/// bounded at any backlog, and fetches that return within 20 ms.
pub fn consumer_settings(
    brokers: &str,
    group: &str,
    client_id: &str,
) -> Vec<(&'static str, String)> {
    [
        ("bootstrap.servers", brokers),
        ("group.id", group),
        ("client.id", client_id),
        ("isolation.level", "read_committed"),
        ("enable.auto.commit", "false"),
        ("enable.auto.offset.store", "false"),
        ("auto.offset.reset", "earliest"),
        ("allow.auto.create.topics", "true"),
        ("topic.metadata.refresh.interval.ms", "10000"),
        ("session.timeout.ms", "10000"),
        ("heartbeat.interval.ms", "2000"),
        ("queued.max.messages.kbytes", "32768"),
        ("fetch.max.bytes", "16777216"),
        // A fetch returns at most this long after it was sent even with no
        // new data: Kafka's 500 ms default sets the floor of end-to-end
        // latency at low rates.
        ("fetch.wait.max.ms", "20"),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.to_owned()))
    .collect()
}
