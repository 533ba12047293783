//! How every daemon reaches Kafka: the brokers and the security settings
//! (TLS, SASL) from the environment, applied to every client it makes; and
//! the consumer settings the sink and the stage share.

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use flows::settings::{
    self, Env, KAFKA_SASL_MECHANISM, KAFKA_SASL_PASSWORD, KAFKA_SASL_USERNAME,
    KAFKA_SSL_CA_LOCATION, KAFKA_SSL_CERTIFICATE_LOCATION,
    KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM, KAFKA_SSL_KEY_LOCATION, KAFKA_SSL_KEY_PASSWORD,
    SettingError,
};

/// librdkafka's debug contexts (its `debug` property), for `KAFKA_DEBUG`.
const DEBUG_CONTEXTS: &[&str] = &[
    "all",
    "generic",
    "broker",
    "topic",
    "metadata",
    "feature",
    "queue",
    "msg",
    "protocol",
    "cgrp",
    "security",
    "fetch",
    "interceptor",
    "plugin",
    "consumer",
    "admin",
    "eos",
    "mock",
    "assignor",
    "conf",
    "telemetry",
];

/// The brokers and the librdkafka security properties. Its `Debug` shows
/// no password.
#[derive(Clone)]
pub struct KafkaEndpoint {
    pub brokers: String,
    security: Vec<(&'static str, String)>,
}

impl std::fmt::Debug for KafkaEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown: Vec<(&str, &str)> = self
            .security
            .iter()
            .map(|(k, v)| {
                (
                    *k,
                    if k.ends_with("password") {
                        "***"
                    } else {
                        v.as_str()
                    },
                )
            })
            .collect();
        f.debug_struct("KafkaEndpoint")
            .field("brokers", &self.brokers)
            .field("security", &shown)
            .finish()
    }
}

impl KafkaEndpoint {
    /// Plain TCP, no authentication (the mock cluster, tests, benchmarks).
    pub fn plaintext(brokers: &str) -> Self {
        Self {
            brokers: brokers.to_owned(),
            security: Vec::new(),
        }
    }

    /// `KAFKA_BROKERS` and the security settings: `KAFKA_SECURITY_PROTOCOL`
    /// (`plaintext`, `ssl`, `sasl_plaintext`, `sasl_ssl`), for SASL
    /// `KAFKA_SASL_MECHANISM` (`PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`),
    /// `KAFKA_SASL_USERNAME` and `KAFKA_SASL_PASSWORD`, for TLS
    /// `KAFKA_SSL_CA_LOCATION` (default: the system's CAs),
    /// `KAFKA_SSL_CERTIFICATE_LOCATION` + `KAFKA_SSL_KEY_LOCATION` (+
    /// `KAFKA_SSL_KEY_PASSWORD`) for a client certificate and
    /// `KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM` (`https`, the default:
    /// the broker's certificate must name it; `none`).
    pub fn from_env(env: &Env) -> Result<Self, SettingError> {
        let brokers = settings::KAFKA_BROKERS.get(env)?;
        let protocol = settings::KAFKA_SECURITY_PROTOCOL.get(env)?;
        let (tls, sasl) = match protocol {
            "ssl" => (true, false),
            "sasl_plaintext" => (false, true),
            "sasl_ssl" => (true, true),
            _ => (false, false),
        };
        let mut security = vec![("security.protocol", protocol.to_owned())];
        sasl_settings(env, sasl, &mut security)?;
        tls_settings(env, tls, &mut security)?;
        if let Some(contexts) = settings::KAFKA_DEBUG.get_opt(env)? {
            if let Some(bad) = contexts
                .iter()
                .find(|c| !DEBUG_CONTEXTS.contains(&c.as_str()))
            {
                return Err(SettingError::new(
                    settings::KAFKA_DEBUG.name,
                    format!(
                        "unknown librdkafka debug context {bad:?} (known: {})",
                        DEBUG_CONTEXTS.join(", ")
                    ),
                ));
            }
            security.push(("debug", contexts.join(",")));
        }
        Ok(Self { brokers, security })
    }

    /// Asks the brokers for metadata with these settings and turns what only
    /// a setting can fix into a [`SettingError`] naming it: credentials the
    /// broker refuses (`KAFKA_SASL_PASSWORD`), a broker certificate the CA
    /// does not vouch for (`KAFKA_SSL_CA_LOCATION`), a client certificate
    /// the broker requires or refuses (`KAFKA_SSL_CERTIFICATE_LOCATION`).
    /// Brokers that do not answer within `wait` are no error: the daemons
    /// retry them. Blocking. Messages never carry the password.
    pub fn check_credentials(&self, wait: std::time::Duration) -> Result<(), SettingError> {
        let recorder = ErrorRecorder::default();
        let mut config = self.client_config();
        config.set("client.id", "outbox-credentials-check");
        let Ok(probe) = config.create_with_context::<_, BaseProducer<ErrorRecorder>>(recorder)
        else {
            return Ok(());
        };
        let deadline = std::time::Instant::now() + wait;
        while std::time::Instant::now() < deadline {
            if probe
                .client()
                .fetch_metadata(None, std::time::Duration::from_millis(500))
                .is_ok()
            {
                return Ok(());
            }
            probe.poll(std::time::Duration::from_millis(100));
            if let Some(error) = probe.context().setting_error(self) {
                return Err(error);
            }
        }
        Ok(())
    }

    fn has(&self, property: &str) -> bool {
        self.security.iter().any(|(k, _)| *k == property)
    }

    /// A client configuration with the brokers and the security settings;
    /// the caller adds its own.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (key, value) in &self.security {
            config.set(*key, value);
        }
        config
    }
}

/// Keeps the client errors librdkafka reports (and silences its log).
#[derive(Default)]
struct ErrorRecorder {
    errors: std::sync::Mutex<Vec<(Option<RDKafkaErrorCode>, String)>>,
}

impl ClientContext for ErrorRecorder {
    fn log(&self, _: RDKafkaLogLevel, _: &str, _: &str) {}

    fn error(&self, error: KafkaError, reason: &str) {
        if let Ok(mut errors) = self.errors.lock() {
            errors.push((error.rdkafka_error_code(), reason.to_owned()));
        }
    }
}

impl ProducerContext for ErrorRecorder {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::producer::DeliveryResult<'_>, _: ()) {}
}

impl ErrorRecorder {
    /// The first recorded error that names a setting.
    fn setting_error(&self, endpoint: &KafkaEndpoint) -> Option<SettingError> {
        let errors = self.errors.lock().ok()?;
        errors.iter().find_map(|(code, reason)| {
            // librdkafka's own property names, as our variables.
            let reason = reason
                .replace("ssl.ca.location", "KAFKA_SSL_CA_LOCATION")
                .replace("ssl.certificate.location", "KAFKA_SSL_CERTIFICATE_LOCATION");
            match code {
                Some(RDKafkaErrorCode::Authentication)
                | Some(RDKafkaErrorCode::SaslAuthenticationFailed) => Some(SettingError::new(
                    "KAFKA_SASL_PASSWORD",
                    format!("the broker refused the credentials of KAFKA_SASL_USERNAME: {reason}"),
                )),
                _ if reason.contains("certificate verify failed") => Some(SettingError::new(
                    "KAFKA_SSL_CA_LOCATION",
                    format!("the broker's certificate is not trusted: {reason}"),
                )),
                // The broker's TLS alert about our certificate (none sent,
                // or one it does not trust).
                _ if reason.contains("alert") && reason.contains("certificate") => {
                    Some(SettingError::new(
                        "KAFKA_SSL_CERTIFICATE_LOCATION",
                        if endpoint.has("ssl.certificate.location") {
                            format!("the broker refused the client certificate: {reason}")
                        } else {
                            format!("the broker requires a client certificate: {reason}")
                        },
                    ))
                }
                _ => None,
            }
        })
    }
}

/// The partitions a group consumer owns right now, kept by its rebalance
/// callbacks: offsets are committed only for these (a partition revoked
/// while its batch was being stored belongs to another member now, which
/// may already have committed further — committing ours would move its
/// offset backwards), and a revocation is counted so that a loop can drop
/// work taken in before it.
#[derive(Default)]
pub struct Ownership {
    owned: std::sync::Mutex<std::collections::HashSet<(String, i32)>>,
    revocations: std::sync::atomic::AtomicU64,
    assignments: std::sync::atomic::AtomicU64,
}

impl Ownership {
    /// How many revocations this consumer has seen.
    pub fn revocations(&self) -> u64 {
        self.revocations.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many assignments (each rebalance's, empty ones too) this
    /// consumer has received.
    pub fn assignments(&self) -> u64 {
        self.assignments.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn owns(&self, topic: &str, partition: i32) -> bool {
        self.owned
            .lock()
            .is_ok_and(|owned| owned.contains(&(topic.to_owned(), partition)))
    }

    /// `offsets` without the partitions this consumer does not own.
    pub fn only_owned(&self, offsets: &TopicPartitionList) -> TopicPartitionList {
        let mut kept = TopicPartitionList::new();
        for e in offsets.elements() {
            if self.owns(e.topic(), e.partition()) {
                let _ = kept.add_partition_offset(e.topic(), e.partition(), e.offset());
            }
        }
        kept
    }
}

impl ClientContext for Ownership {
    /// A subscribed topic that does not exist yet is a wait, not an error:
    /// the consumer takes its partitions once it is created (within
    /// `topic.metadata.refresh.interval.ms`, see [`consumer_config`]).
    fn error(&self, error: KafkaError, reason: &str) {
        if is_missing_topic(&error) {
            tracing::info!(reason, "waiting for a subscribed topic to be created");
        } else {
            tracing::error!(%error, reason, "librdkafka error");
        }
    }
}

/// Whether a consumer's error says a topic it subscribed to does not exist
/// (yet): nothing to act on, it is consumed once created.
pub fn is_missing_topic(error: &KafkaError) -> bool {
    error.rdkafka_error_code() == Some(RDKafkaErrorCode::UnknownTopicOrPartition)
}

impl rdkafka::consumer::ConsumerContext for Ownership {
    fn pre_rebalance(
        &self,
        _: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        if let rdkafka::consumer::Rebalance::Revoke(list) = rebalance {
            if let Ok(mut owned) = self.owned.lock() {
                for e in list.elements() {
                    owned.remove(&(e.topic().to_owned(), e.partition()));
                }
            }
            self.revocations
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn post_rebalance(
        &self,
        _: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        if let rdkafka::consumer::Rebalance::Assign(list) = rebalance {
            if let Ok(mut owned) = self.owned.lock() {
                for e in list.elements() {
                    owned.insert((e.topic().to_owned(), e.partition()));
                }
            }
            self.assignments
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// The sink's and the stage's consumer: a stream consumer that knows what
/// it owns ([`Ownership`]).
pub type GroupConsumer = rdkafka::consumer::StreamConsumer<Ownership>;

/// read_committed (aborted transactions are never loaded), offsets committed
/// by hand only after the work is durable, topics never created by
/// subscribing to them, a topic created after the
/// subscription (or gaining partitions) noticed within a second, a killed
/// member's partitions moved on after 10 s (Kafka's 45 s default stalls
/// restarts), and a bounded prefetch queue so memory stays bounded at any
/// backlog, and fetches that return within 20 ms.
pub fn consumer_config(kafka: &KafkaEndpoint, group: &str, client_id: &str) -> ClientConfig {
    let mut config = kafka.client_config();
    for (key, value) in [
        ("group.id", group),
        ("client.id", client_id),
        ("isolation.level", "read_committed"),
        ("enable.auto.commit", "false"),
        ("enable.auto.offset.store", "false"),
        ("auto.offset.reset", "earliest"),
        // A consumer waits for its topics; the daemon that writes a topic
        // creates it (`topics`), never a broker on a consumer's behalf.
        ("allow.auto.create.topics", "false"),
        // How soon a running consumer sees a topic created after it
        // subscribed (librdkafka's default: 5 minutes), for one small
        // Metadata request of the subscribed topics a second.
        ("topic.metadata.refresh.interval.ms", "1000"),
        ("session.timeout.ms", "10000"),
        ("heartbeat.interval.ms", "2000"),
        ("queued.max.messages.kbytes", "32768"),
        ("fetch.max.bytes", "16777216"),
        // A fetch returns at most this long after it was sent even with no
        // new data: Kafka's 500 ms default sets the floor of end-to-end
        // latency at low rates.
        ("fetch.wait.max.ms", "20"),
        // When the prefetch queue is at its bound, fetching pauses this long
        // (librdkafka's default 1 s): a sink that stores a batch empties the
        // queue well before that and then waited for it, idle. Measured:
        // BENCHMARKS.md, the sink rows.
        ("fetch.queue.backoff.ms", "10"),
    ] {
        config.set(key, value);
    }
    config
}

/// The consumer's position in each assigned partition it has read from: the
/// offset it delivers next, which librdkafka moves past transaction markers
/// and aborted records. Those occupy offsets too, so after a transactional
/// batch "last offset + 1" stays one short of the end for ever (a healthy
/// idle consumer would show lag 1); a consumer with nothing taken in and not
/// yet stored commits this instead.
pub fn positions<X: rdkafka::consumer::ConsumerContext, C: Consumer<X>>(
    consumer: &C,
) -> Result<TopicPartitionList, KafkaError> {
    let mut at = TopicPartitionList::new();
    for e in consumer.position()?.elements() {
        if let Offset::Offset(o) = e.offset() {
            at.add_partition_offset(e.topic(), e.partition(), Offset::Offset(o))?;
        }
    }
    Ok(at)
}

/// Whether two offset lists name the same partitions at the same offsets.
pub fn same_offsets(a: &TopicPartitionList, b: &TopicPartitionList) -> bool {
    a.count() == b.count()
        && a.elements().iter().all(|e| {
            b.find_partition(e.topic(), e.partition())
                .is_some_and(|o| o.offset() == e.offset())
        })
}

/// Commits the consumer's position when it moved since `last` (then
/// remembers it). Only for a consumer with nothing taken in and not yet
/// stored: everything before its position is then done, or is a transaction
/// marker or aborted record that read_committed never delivers. Outside any
/// transaction; a failure is retried at the next call.
pub async fn commit_position_if_moved(
    consumer: &std::sync::Arc<GroupConsumer>,
    last: &mut TopicPartitionList,
    flow: &str,
) {
    let at = match positions(consumer.as_ref()) {
        Ok(at) => at,
        Err(error) => {
            tracing::debug!(flow, %error, "no consumer position");
            return;
        }
    };
    let at = consumer.context().only_owned(&at);
    if at.count() == 0 || same_offsets(&at, last) {
        return;
    }
    let committer = std::sync::Arc::clone(consumer);
    let offsets = at.clone();
    match tokio::task::spawn_blocking(move || {
        committer.commit(&offsets, rdkafka::consumer::CommitMode::Sync)
    })
    .await
    {
        Ok(Ok(())) => *last = at,
        Ok(Err(error)) => tracing::debug!(flow, %error, "position commit failed; retried"),
        Err(error) => tracing::warn!(flow, %error, "position commit task failed"),
    }
}

/// A setting that only makes sense with another security protocol is
/// refused, naming the protocol it needs.
fn only_with(
    env: &Env,
    setting: &dyn settings::Declared,
    needed: bool,
    what: &str,
) -> Result<(), SettingError> {
    if env.get(setting.name()).is_some() && !needed {
        return Err(SettingError::new(
            setting.name(),
            format!("needs KAFKA_SECURITY_PROTOCOL={what}"),
        ));
    }
    Ok(())
}

/// SASL's mechanism and credentials (`sasl`: the protocol uses SASL).
fn sasl_settings(
    env: &Env,
    sasl: bool,
    security: &mut Vec<(&'static str, String)>,
) -> Result<(), SettingError> {
    if sasl {
        security.push(("sasl.mechanism", KAFKA_SASL_MECHANISM.get(env)?.to_owned()));
        security.push(("sasl.username", KAFKA_SASL_USERNAME.get(env)?));
        security.push(("sasl.password", KAFKA_SASL_PASSWORD.get(env)?));
        return Ok(());
    }
    for setting in [
        &KAFKA_SASL_MECHANISM as &dyn settings::Declared,
        &KAFKA_SASL_USERNAME,
        &KAFKA_SASL_PASSWORD,
    ] {
        only_with(env, setting, false, "sasl_plaintext or sasl_ssl")?;
    }
    Ok(())
}

/// TLS's CA, client certificate and key, and host check (`tls`: the
/// protocol uses TLS).
fn tls_settings(
    env: &Env,
    tls: bool,
    security: &mut Vec<(&'static str, String)>,
) -> Result<(), SettingError> {
    let files = [
        (&KAFKA_SSL_CA_LOCATION, "ssl.ca.location"),
        (&KAFKA_SSL_CERTIFICATE_LOCATION, "ssl.certificate.location"),
        (&KAFKA_SSL_KEY_LOCATION, "ssl.key.location"),
    ];
    for (setting, property) in files {
        only_with(env, setting, tls, "ssl or sasl_ssl")?;
        if let Some(path) = setting.get_opt(env)? {
            if !path.is_file() {
                return Err(SettingError::new(setting.name, "no such file"));
            }
            security.push((property, path.display().to_string()));
        }
    }
    if KAFKA_SSL_CERTIFICATE_LOCATION.is_set(env) != KAFKA_SSL_KEY_LOCATION.is_set(env) {
        return Err(SettingError::new(
            KAFKA_SSL_KEY_LOCATION.name,
            "a client certificate needs both KAFKA_SSL_CERTIFICATE_LOCATION and KAFKA_SSL_KEY_LOCATION",
        ));
    }
    only_with(env, &KAFKA_SSL_KEY_PASSWORD, tls, "ssl or sasl_ssl")?;
    if let Some(password) = KAFKA_SSL_KEY_PASSWORD.get_opt(env)? {
        security.push(("ssl.key.password", password));
    }
    only_with(
        env,
        &KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM,
        tls,
        "ssl or sasl_ssl",
    )?;
    if tls {
        let identification = KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM.get(env)?;
        security.push((
            "ssl.endpoint.identification.algorithm",
            identification.to_owned(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::producer::BaseProducer;

    fn endpoint(pairs: &[(&str, &str)]) -> Result<KafkaEndpoint, SettingError> {
        let mut all = vec![("KAFKA_BROKERS", "127.0.0.1:1")];
        all.extend_from_slice(pairs);
        KafkaEndpoint::from_env(&Env::from_pairs(all))
    }

    #[test]
    fn tls_and_sasl_settings_reach_librdkafka_without_showing_the_password() {
        let ca = "/etc/ssl/certs/ca-certificates.crt";
        let mut pairs = vec![
            ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("KAFKA_SASL_MECHANISM", "SCRAM-SHA-256"),
            ("KAFKA_SASL_USERNAME", "relay"),
            ("KAFKA_SASL_PASSWORD", "s3cret"),
        ];
        if std::path::Path::new(ca).is_file() {
            pairs.push(("KAFKA_SSL_CA_LOCATION", ca));
        }
        let kafka = endpoint(&pairs).unwrap_or_else(|e| panic!("{e}"));
        let config = kafka.client_config();
        assert_eq!(config.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(config.get("sasl.mechanism"), Some("SCRAM-SHA-256"));
        assert_eq!(config.get("sasl.password"), Some("s3cret"));
        assert_eq!(
            config.get("ssl.endpoint.identification.algorithm"),
            Some("https")
        );
        assert!(!format!("{kafka:?}").contains("s3cret"));
        // librdkafka refuses SSL and SCRAM settings it was built without.
        let created = config.create::<BaseProducer>();
        assert!(created.is_ok(), "{:?}", created.err());
    }

    #[test]
    fn contradicting_security_settings_name_the_variable() {
        let name = |pairs: &[(&str, &str)]| endpoint(pairs).err().map(|e| e.name);
        assert_eq!(
            name(&[("KAFKA_SECURITY_PROTOCOL", "tls")]),
            Some("KAFKA_SECURITY_PROTOCOL".into())
        );
        assert_eq!(
            name(&[
                ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
                ("KAFKA_SASL_USERNAME", "u")
            ]),
            Some("KAFKA_SASL_PASSWORD".into())
        );
        assert_eq!(
            name(&[("KAFKA_SASL_PASSWORD", "p")]),
            Some("KAFKA_SASL_PASSWORD".into()),
            "SASL settings without a SASL protocol"
        );
        assert_eq!(
            name(&[
                ("KAFKA_SECURITY_PROTOCOL", "ssl"),
                ("KAFKA_SSL_CA_LOCATION", "/nonexistent")
            ]),
            Some("KAFKA_SSL_CA_LOCATION".into())
        );
        let plain = endpoint(&[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            plain.client_config().get("security.protocol"),
            Some("plaintext")
        );
    }
}
