//! The real Kafka broker the suite runs on (one KRaft node started by
//! scripts/test.sh, see scripts/kafka-lib.sh): its listeners, CA, client
//! certificate and throw-away users, from `TEST_KAFKA_*` variables with the
//! scripts' defaults.

use std::time::Duration;

use anyhow::Context;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

fn var(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

fn stack_file(rel: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    root.join(".stack/kafka/tls")
        .join(rel)
        .to_string_lossy()
        .into_owned()
}

/// `host:port` of the PLAINTEXT listener.
pub fn plaintext() -> String {
    var("TEST_KAFKA_BROKERS", "127.0.0.1:9092")
}

/// The broker's TLS-related endpoints and credentials.
pub struct Secure {
    pub ssl: String,
    pub sasl_ssl: String,
    pub mtls: String,
    pub ca: String,
    pub other_ca: String,
    pub client_cert: String,
    pub client_key: String,
    pub user: String,
    pub password: String,
}

pub fn secure() -> Secure {
    Secure {
        ssl: var("TEST_KAFKA_SSL_BROKERS", "127.0.0.1:9093"),
        sasl_ssl: var("TEST_KAFKA_SASL_SSL_BROKERS", "127.0.0.1:9094"),
        mtls: var("TEST_KAFKA_MTLS_BROKERS", "127.0.0.1:9095"),
        ca: var("TEST_KAFKA_LOCAL_CA", &stack_file("ca.pem")),
        other_ca: var("TEST_KAFKA_LOCAL_OTHER_CA", &stack_file("other-ca.pem")),
        client_cert: var("TEST_KAFKA_LOCAL_CLIENT_CERT", &stack_file("client.pem")),
        client_key: var("TEST_KAFKA_LOCAL_CLIENT_KEY", &stack_file("client.key")),
        user: var("TEST_KAFKA_LOCAL_SASL_USER", "outbox"),
        password: var("TEST_KAFKA_LOCAL_SASL_PASSWORD", "local-broker-secret"),
    }
}

/// Fails with what to do when no broker answers a metadata request.
pub fn check_answers(brokers: &str) -> anyhow::Result<()> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("log_level", "0")
        .create()?;
    consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .map(|_| ())
        .with_context(|| {
            format!(
                "no Kafka broker answers at {brokers}: run the suite with scripts/test.sh \
                 (it starts one) or point TEST_KAFKA_BROKERS at one"
            )
        })
}
