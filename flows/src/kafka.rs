//! How every daemon reaches Kafka: the brokers and the security settings
//! (TLS, SASL) from the environment, applied to every client it makes; and
//! the consumer settings the sink and the stage share.

use rdkafka::ClientConfig;

use crate::settings::{Env, SettingError};

/// The Kafka variables every daemon knows, besides its own.
pub const KNOWN_VARS: &[&str] = &[
    "KAFKA_BROKERS",
    "KAFKA_SECURITY_PROTOCOL",
    "KAFKA_SASL_MECHANISM",
    "KAFKA_SASL_USERNAME",
    "KAFKA_SASL_PASSWORD",
    "KAFKA_SSL_CA_LOCATION",
    "KAFKA_SSL_CERTIFICATE_LOCATION",
    "KAFKA_SSL_KEY_LOCATION",
    "KAFKA_SSL_KEY_PASSWORD",
    "KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM",
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
        let brokers = env.required("KAFKA_BROKERS")?;
        let protocol = env
            .string_or("KAFKA_SECURITY_PROTOCOL", "plaintext")
            .to_ascii_lowercase();
        let (tls, sasl) = match protocol.as_str() {
            "plaintext" => (false, false),
            "ssl" => (true, false),
            "sasl_plaintext" => (false, true),
            "sasl_ssl" => (true, true),
            _ => {
                return Err(SettingError::new(
                    "KAFKA_SECURITY_PROTOCOL",
                    "must be plaintext, ssl, sasl_plaintext or sasl_ssl",
                ));
            }
        };
        let mut security = vec![("security.protocol", protocol.clone())];
        let only_with = |name: &str, needed: bool, what: &str| match env.get(name) {
            Some(_) if !needed => Err(SettingError::new(
                name,
                format!("needs KAFKA_SECURITY_PROTOCOL={what}"),
            )),
            _ => Ok(()),
        };
        if sasl {
            let mechanism = env.string_or("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512");
            if !["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"].contains(&mechanism.as_str()) {
                return Err(SettingError::new(
                    "KAFKA_SASL_MECHANISM",
                    "must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
                ));
            }
            security.push(("sasl.mechanism", mechanism));
            security.push(("sasl.username", env.required("KAFKA_SASL_USERNAME")?));
            security.push(("sasl.password", env.required("KAFKA_SASL_PASSWORD")?));
        } else {
            for name in [
                "KAFKA_SASL_MECHANISM",
                "KAFKA_SASL_USERNAME",
                "KAFKA_SASL_PASSWORD",
            ] {
                only_with(name, false, "sasl_plaintext or sasl_ssl")?;
            }
        }
        let files = [
            ("KAFKA_SSL_CA_LOCATION", "ssl.ca.location"),
            ("KAFKA_SSL_CERTIFICATE_LOCATION", "ssl.certificate.location"),
            ("KAFKA_SSL_KEY_LOCATION", "ssl.key.location"),
        ];
        for (name, property) in files {
            only_with(name, tls, "ssl or sasl_ssl")?;
            if let Some(path) = env.get(name) {
                if !std::path::Path::new(path).is_file() {
                    return Err(SettingError::new(name, "no such file"));
                }
                security.push((property, path.to_owned()));
            }
        }
        if env.get("KAFKA_SSL_CERTIFICATE_LOCATION").is_some()
            != env.get("KAFKA_SSL_KEY_LOCATION").is_some()
        {
            return Err(SettingError::new(
                "KAFKA_SSL_KEY_LOCATION",
                "a client certificate needs both KAFKA_SSL_CERTIFICATE_LOCATION and KAFKA_SSL_KEY_LOCATION",
            ));
        }
        only_with("KAFKA_SSL_KEY_PASSWORD", tls, "ssl or sasl_ssl")?;
        if let Some(password) = env.get("KAFKA_SSL_KEY_PASSWORD") {
            security.push(("ssl.key.password", password.to_owned()));
        }
        only_with(
            "KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM",
            tls,
            "ssl or sasl_ssl",
        )?;
        if tls {
            let identification =
                env.string_or("KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM", "https");
            if identification != "https" && identification != "none" {
                return Err(SettingError::new(
                    "KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM",
                    "must be https or none",
                ));
            }
            security.push(("ssl.endpoint.identification.algorithm", identification));
        }
        Ok(Self { brokers, security })
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

/// read_committed (aborted transactions are never loaded), offsets committed
/// by hand only after the work is durable, a missing topic created on
/// subscribe where the cluster allows it and new topics noticed within
/// seconds, a killed member's partitions moved on after 10 s (Kafka's 45 s
/// default stalls restarts), and a bounded prefetch queue so memory stays
/// bounded at any backlog, and fetches that return within 20 ms.
pub fn consumer_config(kafka: &KafkaEndpoint, group: &str, client_id: &str) -> ClientConfig {
    let mut config = kafka.client_config();
    for (key, value) in [
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
    ] {
        config.set(key, value);
    }
    config
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
