//! The topics the product writes, which it creates itself: the relay's
//! (also those chosen per row), a stage's output and the dead-letter
//! topics. Brokers in production run with `auto.create.topics.enable=false`
//! (and a broker's defaults are rarely what a topic needs), so no client of
//! the product lets a broker create a topic as a side effect
//! (`allow.auto.create.topics=false` on each), and the daemon that writes a
//! topic makes sure it exists, through the admin API, before it first
//! writes to it: partitions, replication factor and configs from
//! `KAFKA_TOPIC_*`, or the flow's `[flows.topics]`.
//!
//! An existing topic is never altered. One with fewer partitions, fewer
//! replicas or another value of a config than asked is named in a warning,
//! once per process. Whether a topic exists is asked of the metadata, so a
//! client without the right to create topics works as long as its topics
//! exist (provisioned by someone else).
//!
//! When a write fails, [`Topics::diagnose`] says what the cluster's
//! metadata shows about the topics written: partitions without a leader,
//! or with fewer in-sync replicas than `min.insync.replicas` (where Kafka
//! refuses `acks=all` writes): what `/readyz` names.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::metadata::MetadataTopic;

use flows::settings::{
    Env, KAFKA_TOPIC_CONFIG, KAFKA_TOPIC_PARTITIONS, KAFKA_TOPIC_REPLICATION_FACTOR, SettingError,
};

use crate::kafka::KafkaEndpoint;

/// How long one metadata or admin request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the controller may take to create topics.
const CREATE_TIMEOUT: Duration = Duration::from_secs(30);

/// What a topic is created with; `None`: the broker's default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopicSpec {
    pub partitions: Option<i32>,
    pub replication_factor: Option<i32>,
    pub config: Vec<(String, String)>,
}

impl TopicSpec {
    /// `KAFKA_TOPIC_PARTITIONS`, `KAFKA_TOPIC_REPLICATION_FACTOR`,
    /// `KAFKA_TOPIC_CONFIG`.
    pub fn from_env(env: &Env) -> Result<Self, SettingError> {
        let count = |value: Option<u64>| value.map(|n| i32::try_from(n).unwrap_or(i32::MAX));
        Ok(Self {
            partitions: count(KAFKA_TOPIC_PARTITIONS.get_opt(env)?),
            replication_factor: count(KAFKA_TOPIC_REPLICATION_FACTOR.get_opt(env)?),
            config: KAFKA_TOPIC_CONFIG.get_opt(env)?.unwrap_or_default(),
        })
    }

    /// This spec with a flow's `[flows.topics]` over it.
    pub fn for_flow(&self, flow: &flows::TopicSettings) -> Self {
        let mut config: BTreeMap<String, String> = self.config.iter().cloned().collect();
        config.extend(flow.config.clone());
        Self {
            partitions: flow
                .partitions
                .map(|n| i32::try_from(n).unwrap_or(i32::MAX))
                .or(self.partitions),
            replication_factor: flow
                .replication_factor
                .map(i32::from)
                .or(self.replication_factor),
            config: config.into_iter().collect(),
        }
    }

    /// A config's value as asked.
    fn config(&self, name: &str) -> Option<&str> {
        self.config
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    /// The cluster refused to create the topic.
    #[error("kafka refused to create topic {topic}: {code}{}", hint(*.code))]
    Refused {
        topic: String,
        code: RDKafkaErrorCode,
    },
    /// No answer about the topic (brokers unreachable, a timeout).
    #[error("kafka did not answer about topic {topic}: {source}")]
    Unanswered {
        topic: String,
        #[source]
        source: KafkaError,
    },
}

/// What to do about a refusal, where the code says.
fn hint(code: RDKafkaErrorCode) -> &'static str {
    match code {
        RDKafkaErrorCode::InvalidReplicationFactor => {
            " (KAFKA_TOPIC_REPLICATION_FACTOR, or the flow's topics.replication_factor, is more than the brokers there are)"
        }
        RDKafkaErrorCode::InvalidPartitions => {
            " (KAFKA_TOPIC_PARTITIONS, or the flow's topics.partitions)"
        }
        RDKafkaErrorCode::InvalidConfig => " (KAFKA_TOPIC_CONFIG, or the flow's topics.config)",
        RDKafkaErrorCode::TopicAuthorizationFailed
        | RDKafkaErrorCode::ClusterAuthorizationFailed => {
            " (grant this client CREATE on the topic, or create the topic beforehand)"
        }
        _ => "",
    }
}

impl TopicError {
    /// The setting whose value the cluster refused, when the code says.
    pub fn setting(&self) -> Option<&'static str> {
        match self {
            Self::Refused { code, .. } => match code {
                RDKafkaErrorCode::InvalidReplicationFactor => {
                    Some(KAFKA_TOPIC_REPLICATION_FACTOR.name)
                }
                RDKafkaErrorCode::InvalidPartitions => Some(KAFKA_TOPIC_PARTITIONS.name),
                RDKafkaErrorCode::InvalidConfig => Some(KAFKA_TOPIC_CONFIG.name),
                _ => None,
            },
            Self::Unanswered { .. } => None,
        }
    }

    /// The topic, when Kafka refuses its name (a value a row routed to).
    pub fn name_refused(&self) -> Option<&str> {
        match self {
            Self::Refused {
                topic,
                code: RDKafkaErrorCode::InvalidTopic,
            } => Some(topic),
            _ => None,
        }
    }
}

/// A topic as the metadata shows it.
struct Found {
    partitions: usize,
    /// The fewest replicas any partition has.
    replicas: usize,
}

/// Makes sure topics exist before they are written (see the module).
/// Cheap to clone; one per daemon.
#[derive(Clone)]
pub struct Topics {
    admin: Arc<AdminClient<DefaultClientContext>>,
    /// Topics known to exist: asked about at most once per process.
    known: Arc<Mutex<HashSet<String>>>,
    /// `min.insync.replicas` per topic, once read (for [`Topics::diagnose`]).
    min_insync: Arc<Mutex<BTreeMap<String, usize>>>,
}

impl Topics {
    pub fn new(kafka: &KafkaEndpoint) -> Result<Self, KafkaError> {
        let admin = kafka
            .client_config()
            .set("client.id", "outbox-topics")
            .set("allow.auto.create.topics", "false")
            .create()?;
        Ok(Self {
            admin: Arc::new(admin),
            known: Arc::default(),
            min_insync: Arc::default(),
        })
    }

    /// Whether this process already saw `topic` exist.
    pub fn known(&self, topic: &str) -> bool {
        self.known.lock().is_ok_and(|k| k.contains(topic))
    }

    fn remember(&self, topic: &str) {
        if let Ok(mut known) = self.known.lock() {
            known.insert(topic.to_owned());
        }
    }

    /// Creates those of `topics` that do not exist with `spec`, and warns
    /// about existing ones that have less than `spec` asks (once each).
    /// Topics this process saw before cost nothing.
    pub async fn ensure(&self, topics: &[&str], spec: &TopicSpec) -> Result<(), TopicError> {
        let mut asked: Vec<&str> = topics.iter().copied().filter(|t| !self.known(t)).collect();
        asked.sort_unstable();
        asked.dedup();
        let mut missing = Vec::new();
        for topic in asked {
            match self.find(topic).await? {
                Some(found) => {
                    self.compare(topic, &found, spec).await;
                    self.remember(topic);
                }
                None => missing.push(topic),
            }
        }
        if !missing.is_empty() {
            self.create(&missing, spec).await?;
        }
        Ok(())
    }

    /// The topic's partitions and replicas, or `None` when it does not exist.
    async fn find(&self, topic: &str) -> Result<Option<Found>, TopicError> {
        let unanswered = |source| TopicError::Unanswered {
            topic: topic.to_owned(),
            source,
        };
        let admin = Arc::clone(&self.admin);
        let name = topic.to_owned();
        let metadata = tokio::task::spawn_blocking(move || {
            admin.inner().fetch_metadata(Some(&name), REQUEST_TIMEOUT)
        })
        .await
        .map_err(|_| unanswered(KafkaError::Canceled))?
        .map_err(unanswered)?;
        let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
            return Ok(None);
        };
        match t.error().map(RDKafkaErrorCode::from) {
            Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
                Ok(None)
            }
            // Created a moment ago, or leaders moving: it exists.
            _ if t.partitions().is_empty() => Ok(Some(Found {
                partitions: 0,
                replicas: 0,
            })),
            _ => Ok(Some(Found {
                partitions: t.partitions().len(),
                replicas: t
                    .partitions()
                    .iter()
                    .map(|p| p.replicas().len())
                    .min()
                    .unwrap_or(0),
            })),
        }
    }

    /// Creates `topics` with `spec`; one another client created meanwhile
    /// is fine.
    async fn create(&self, topics: &[&str], spec: &TopicSpec) -> Result<(), TopicError> {
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|name| {
                let mut topic = NewTopic::new(
                    name,
                    spec.partitions.unwrap_or(-1),
                    TopicReplication::Fixed(spec.replication_factor.unwrap_or(-1)),
                );
                for (key, value) in &spec.config {
                    topic = topic.set(key, value);
                }
                topic
            })
            .collect();
        let options = AdminOptions::new()
            .request_timeout(Some(REQUEST_TIMEOUT))
            .operation_timeout(Some(CREATE_TIMEOUT));
        let results = self
            .admin
            .create_topics(&new, &options)
            .await
            .map_err(|source| TopicError::Unanswered {
                topic: topics.join(", "),
                source,
            })?;
        for result in results {
            match result {
                Ok(topic) => {
                    tracing::info!(
                        topic,
                        partitions = spec.partitions.unwrap_or(-1),
                        replication_factor = spec.replication_factor.unwrap_or(-1),
                        "topic created (-1: the broker's default)"
                    );
                    self.remember(&topic);
                }
                Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => self.remember(&topic),
                Err((topic, code)) => return Err(TopicError::Refused { topic, code }),
            }
        }
        Ok(())
    }

    /// Warns when an existing topic has fewer partitions or replicas, or
    /// other config values, than `spec` asks. Never changes it.
    async fn compare(&self, topic: &str, found: &Found, spec: &TopicSpec) {
        let fewer = |asked: Option<i32>, have: usize| {
            asked.is_some_and(|n| usize::try_from(n).is_ok_and(|n| n > have) && have > 0)
        };
        if fewer(spec.partitions, found.partitions) {
            tracing::warn!(
                topic,
                partitions = found.partitions,
                asked = spec.partitions.unwrap_or(0),
                "existing topic has fewer partitions than asked (KAFKA_TOPIC_PARTITIONS or the flow's topics.partitions); not changed"
            );
        }
        if fewer(spec.replication_factor, found.replicas) {
            tracing::warn!(
                topic,
                replicas = found.replicas,
                asked = spec.replication_factor.unwrap_or(0),
                "existing topic has fewer replicas than asked (KAFKA_TOPIC_REPLICATION_FACTOR or the flow's topics.replication_factor); not changed"
            );
        }
        if spec.config.is_empty() {
            return;
        }
        let configs = match self.configs(topic).await {
            Ok(configs) => configs,
            Err(error) => {
                tracing::debug!(topic, %error, "could not read the topic's configs");
                return;
            }
        };
        for (name, asked) in &spec.config {
            let have = configs.get(name.as_str()).map(String::as_str);
            if have != Some(asked.as_str()) {
                tracing::warn!(
                    topic,
                    config = name.as_str(),
                    value = have.unwrap_or("(none)"),
                    asked = asked.as_str(),
                    "existing topic's config differs from KAFKA_TOPIC_CONFIG (or the flow's topics.config); not changed"
                );
            }
        }
    }

    /// The topic's configs as the cluster holds them (defaults included).
    async fn configs(&self, topic: &str) -> Result<BTreeMap<String, String>, KafkaError> {
        let options = AdminOptions::new().request_timeout(Some(REQUEST_TIMEOUT));
        let resources = self
            .admin
            .describe_configs(&[ResourceSpecifier::Topic(topic)], &options)
            .await?;
        let mut configs = BTreeMap::new();
        for resource in resources {
            let resource = resource.map_err(KafkaError::AdminOp)?;
            for entry in resource.entries {
                if let Some(value) = entry.value {
                    configs.insert(entry.name, value);
                }
            }
        }
        Ok(configs)
    }

    /// What the metadata shows of `topics` that refuses writes: partitions
    /// without a leader, or with fewer in-sync replicas than the topic's
    /// `min.insync.replicas`; `None` when nothing of the kind (or the
    /// metadata cannot be had: the caller's own error says that).
    pub async fn diagnose(&self, topics: &[&str], spec: &TopicSpec) -> Option<String> {
        let mut found = Vec::new();
        for topic in topics {
            let min_insync = self.min_insync(topic, spec).await;
            let admin = Arc::clone(&self.admin);
            let name = (*topic).to_owned();
            let metadata = tokio::task::spawn_blocking(move || {
                admin.inner().fetch_metadata(Some(&name), REQUEST_TIMEOUT)
            })
            .await
            .ok()?
            .ok()?;
            let live: Vec<i32> = metadata.brokers().iter().map(|b| b.id()).collect();
            for t in metadata.topics().iter().filter(|t| t.name() == *topic) {
                if let Some(said) = refusing(t, min_insync, &live) {
                    found.push(said);
                }
            }
        }
        (!found.is_empty()).then(|| found.join("; "))
    }

    /// The topic's `min.insync.replicas`: read once from the cluster, else
    /// what `spec` asks.
    async fn min_insync(&self, topic: &str, spec: &TopicSpec) -> Option<usize> {
        const NAME: &str = "min.insync.replicas";
        if let Some(n) = self.min_insync.lock().ok()?.get(topic) {
            return Some(*n);
        }
        let read = self
            .configs(topic)
            .await
            .ok()
            .and_then(|c| c.get(NAME)?.parse().ok());
        let n = read.or_else(|| spec.config(NAME)?.parse().ok())?;
        if read.is_some() {
            self.min_insync.lock().ok()?.insert(topic.to_owned(), n);
        }
        Some(n)
    }
}

/// One topic's partitions that refuse writes, as one line; `None` if none.
/// `live`: the brokers the metadata lists (those up and not fenced); an
/// in-sync replica on another broker does not count.
fn refusing(topic: &MetadataTopic, min_insync: Option<usize>, live: &[i32]) -> Option<String> {
    let partitions = topic.partitions();
    let brokers = live.len();
    let leaderless = partitions
        .iter()
        .filter(|p| p.leader() < 0 || !live.contains(&p.leader()))
        .count();
    let short: Vec<usize> = partitions
        .iter()
        .filter(|p| p.leader() >= 0 && live.contains(&p.leader()))
        .map(|p| p.isr().iter().filter(|b| live.contains(b)).count())
        .filter(|isr| min_insync.is_some_and(|m| isr < &m))
        .collect();
    let mut said = Vec::new();
    if leaderless > 0 {
        said.push(format!(
            "{leaderless} of {} partitions have no leader",
            partitions.len()
        ));
    }
    if let (Some(fewest), Some(m)) = (short.iter().min(), min_insync) {
        said.push(format!(
            "{} of {} partitions have fewer in-sync replicas ({fewest}) than min.insync.replicas ({m}), so Kafka refuses acks=all writes to them until replicas catch up",
            short.len(),
            partitions.len()
        ));
    }
    (!said.is_empty()).then(|| {
        format!(
            "topic {}: {} ({brokers} broker(s) in the cluster's metadata)",
            topic.name(),
            said.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flow_overrides_the_settings_field_by_field() {
        let env = Env::from_pairs([
            ("KAFKA_TOPIC_PARTITIONS", "6"),
            (
                "KAFKA_TOPIC_CONFIG",
                "min.insync.replicas=2,retention.ms=1000",
            ),
        ]);
        let spec = TopicSpec::from_env(&env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(spec.partitions, Some(6));
        assert_eq!(spec.replication_factor, None, "the broker's default");
        let flow = flows::TopicSettings {
            partitions: None,
            replication_factor: Some(3),
            config: [("retention.ms".to_owned(), "5".to_owned())].into(),
        };
        let mine = spec.for_flow(&flow);
        assert_eq!(mine.partitions, Some(6));
        assert_eq!(mine.replication_factor, Some(3));
        assert_eq!(mine.config("retention.ms"), Some("5"));
        assert_eq!(mine.config("min.insync.replicas"), Some("2"));
        let bad = Env::from_pairs([("KAFKA_TOPIC_REPLICATION_FACTOR", "0")]);
        assert_eq!(
            TopicSpec::from_env(&bad).err().map(|e| e.name),
            Some("KAFKA_TOPIC_REPLICATION_FACTOR".to_owned())
        );
    }

    #[test]
    fn refusals_name_the_setting_to_change() {
        let refused = |code| TopicError::Refused {
            topic: "t".into(),
            code,
        };
        assert_eq!(
            refused(RDKafkaErrorCode::InvalidReplicationFactor).setting(),
            Some("KAFKA_TOPIC_REPLICATION_FACTOR")
        );
        assert_eq!(
            refused(RDKafkaErrorCode::InvalidConfig).setting(),
            Some("KAFKA_TOPIC_CONFIG")
        );
        assert_eq!(refused(RDKafkaErrorCode::PolicyViolation).setting(), None);
        assert_eq!(
            refused(RDKafkaErrorCode::InvalidTopic).name_refused(),
            Some("t")
        );
        assert!(
            refused(RDKafkaErrorCode::TopicAuthorizationFailed)
                .to_string()
                .contains("grant this client CREATE")
        );
    }
}
