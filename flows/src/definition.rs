//! Flows as data. A flow is a relay/sink pair: Postgres source tables (each
//! with an `id` key and a `sent_to_kafka` flag) publish to topics, and one
//! consumer group loads those topics into ClickHouse tables.
//!
//! The product ships no flow: FLOWS_FILE names the files that define them
//! (the demo's are in `demo/flows.toml`), a later file adding flows or
//! replacing earlier ones by name.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;

use crate::ident::{Ident, check_kafka_name};

/// One pipeline: what the relay publishes and what the sink loads.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Flow {
    pub name: Ident,
    /// Kafka consumer group of this flow's sink.
    pub consumer_group: String,
    /// Postgres tables the relay publishes (may be empty for a flow fed by
    /// another stage).
    #[serde(default)]
    pub sources: Vec<SourceTable>,
    /// ClickHouse tables the sink loads.
    #[serde(default)]
    pub targets: Vec<TargetTable>,
    /// A Kafka → Kafka stage (consume, transform, produce, exactly once).
    #[serde(default)]
    pub stage: Option<StageDef>,
    /// The relay's work split by message key into this many shards, each
    /// led by one relay process (see `relay::shard`). 1 = not split.
    #[serde(default = "one_shard")]
    pub shards: u16,
    /// How long sent rows are kept in the source tables (`7d`, `12h`;
    /// off when absent): the active relay deletes older ones (see
    /// `relay::prune`). Needs each source's `time_column`.
    #[serde(default, deserialize_with = "retention")]
    pub retention: Option<std::time::Duration>,
    /// What the daemons create this flow's topics with, over the
    /// `KAFKA_TOPIC_*` settings: the relay's topics, the stage's output and
    /// the dead-letter topics of its sink and stage.
    #[serde(default)]
    pub topics: TopicSettings,
}

/// A flow's `[flows.topics]`: each field given replaces the setting of the
/// same name for the flow's topics; `config` entries replace those of
/// `KAFKA_TOPIC_CONFIG` by name and add to them.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TopicSettings {
    /// `KAFKA_TOPIC_PARTITIONS` for this flow.
    pub partitions: Option<u32>,
    /// `KAFKA_TOPIC_REPLICATION_FACTOR` for this flow.
    pub replication_factor: Option<u16>,
    /// Topic configs (`"min.insync.replicas" = 2`): text, numbers or
    /// booleans, sent as their text.
    #[serde(default, deserialize_with = "topic_configs")]
    pub config: BTreeMap<String, String>,
}

fn topic_configs<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Value {
        Text(String),
        Whole(i64),
        Real(f64),
        Flag(bool),
    }
    let raw = BTreeMap::<String, Value>::deserialize(d)?;
    Ok(raw
        .into_iter()
        .map(|(name, value)| {
            let text = match value {
                Value::Text(t) => t,
                Value::Whole(n) => n.to_string(),
                Value::Real(x) => x.to_string(),
                Value::Flag(b) => b.to_string(),
            };
            (name, text)
        })
        .collect())
}

fn retention<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<std::time::Duration>, D::Error> {
    let text = String::deserialize(d)?;
    parse_age(&text).map(Some).map_err(serde::de::Error::custom)
}

/// A point in time on the command line: `2026-11-23T10:00:00Z` (RFC 3339,
/// UTC; the `T`, zone and fraction optional) or an age meaning that long
/// ago (`2h`, `7d`).
pub fn parse_time(text: &str) -> Result<std::time::SystemTime, String> {
    let text = text.trim();
    if let Ok(at) = humantime::parse_rfc3339_weak(text) {
        return Ok(at);
    }
    let ago = parse_age(text).map_err(|_| {
        format!("`{text}` is neither a time like 2026-11-23T10:00:00Z nor an age like 2h")
    })?;
    Ok(std::time::SystemTime::now()
        .checked_sub(ago)
        .unwrap_or(std::time::UNIX_EPOCH))
}

/// An age such as `7d`, `36h`, `90m` (whole units: s, m, h, d, w).
pub fn parse_age(text: &str) -> Result<std::time::Duration, String> {
    let age = humantime::parse_duration(text.trim())
        .map_err(|e| format!("`{text}` is not an age like 7d, 12h or 30m: {e}"))?;
    if age.is_zero() {
        return Err(format!(
            "`{text}` is zero: leave retention out to keep rows"
        ));
    }
    Ok(age)
}

/// Shards a flow may be split into at most.
pub const MAX_SHARDS: u16 = 64;

fn one_shard() -> u16 {
    1
}

/// How time columns travel in messages.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TimeFormat {
    /// Unix seconds, fractional when the value has sub-second precision
    /// (seed 003).
    #[default]
    Unix,
    /// `YYYY-MM-DD HH:MM:SS` text, UTC (the demos' emitters).
    Text,
}

/// The transforms a stage can apply.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Transform {
    /// seed 004: one clean shape from the raw click, view and order events.
    Normalise,
}

/// A consume-transform-produce stage: reads `inputs`, writes `output`, and
/// commits its consumer offsets inside the producer's transaction.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StageDef {
    pub consumer_group: String,
    pub inputs: Vec<String>,
    pub output: String,
    pub transform: Transform,
}

/// A Postgres outbox table: rows with `sent_to_kafka = FALSE` are published,
/// one JSON message each, in `id` order.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceTable {
    pub table: Ident,
    pub topic: String,
    /// Column whose value is the Kafka message key (per-key order is kept).
    /// `id` when absent.
    #[serde(default)]
    pub key: Option<Ident>,
    /// Columns carried in the message, by name. Must include `id`.
    pub columns: Vec<Ident>,
    /// How `timestamp`, `timestamptz` and `date` columns travel.
    #[serde(default)]
    pub times: TimeFormat,
    /// A column whose value is the message body as is (`json`, `jsonb` or
    /// `text`; not wrapped in an object, not re-escaped) instead of the
    /// row's columns as a JSON object.
    #[serde(default)]
    pub body: Option<Ident>,
    /// Columns sent as Kafka headers (header name = column name, value its
    /// text; a NULL is a header without a value).
    #[serde(default)]
    pub headers: Vec<Ident>,
    /// A `timestamptz`, `timestamp` or `date` column giving a row's age:
    /// what the flow's `retention` and `relay resend --since` go by.
    #[serde(default)]
    pub time_column: Option<Ident>,
}

/// A ClickHouse table fed from a topic. Every column of the table without a
/// DEFAULT is filled from the message field of the same name unless
/// `columns` maps it to another field.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TargetTable {
    pub topic: String,
    pub table: Ident,
    /// ClickHouse column -> message field, where they differ.
    #[serde(default)]
    pub columns: BTreeMap<Ident, String>,
    /// ClickHouse column -> a fixed text value for every row.
    #[serde(default)]
    pub constants: BTreeMap<Ident, String>,
    /// ClickHouse column -> the Kafka header whose value fills it (text;
    /// a missing header is NULL).
    #[serde(default)]
    pub headers: BTreeMap<Ident, String>,
}

impl SourceTable {
    pub fn key_column(&self) -> &str {
        self.key.as_ref().map_or("id", Ident::as_str)
    }

    /// The topic as pieces: text, and column names whose value is put in
    /// their place per row (`topic = "events.{aggregatetype}"`). Err names
    /// what is wrong with the template.
    pub fn topic_parts(&self) -> Result<Vec<TopicPart>, String> {
        let mut parts = Vec::new();
        let mut rest = self.topic.as_str();
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(TopicPart::Text(rest[..open].to_owned()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("topic {}: `{{` without `}}`", self.topic))?;
            let column = Ident::new(&rest[open + 1..open + close])
                .map_err(|e| format!("topic {}: {e}", self.topic))?;
            parts.push(TopicPart::Column(column));
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(TopicPart::Text(rest.to_owned()));
        }
        Ok(parts)
    }

    /// Whether the topic is chosen per row from a column.
    pub fn routed(&self) -> bool {
        self.topic.contains('{')
    }
}

/// A piece of a source's topic (see [`SourceTable::topic_parts`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopicPart {
    Text(String),
    Column(Ident),
}

#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    #[error("cannot read flows file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("flows file {origin} is not valid: {message}")]
    Parse { origin: String, message: String },
    #[error("flow `{flow}`: {message}")]
    Invalid { flow: String, message: String },
    #[error("unknown flow `{0}` (known: {1})")]
    Unknown(String, String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FlowsFile {
    #[serde(default)]
    flows: Vec<Flow>,
}

/// The flows this process knows, in definition order.
#[derive(Clone, Debug, PartialEq)]
pub struct FlowCatalog {
    flows: Vec<Flow>,
}

impl FlowCatalog {
    /// The flows of `files`, in order: each file adds its flows, or
    /// replaces flows of an earlier file by name.
    pub fn load(files: &[impl AsRef<Path>]) -> Result<Self, FlowError> {
        let mut catalog = Self { flows: Vec::new() };
        for path in files {
            let path = path.as_ref();
            let text = std::fs::read_to_string(path).map_err(|source| FlowError::Read {
                path: path.display().to_string(),
                source,
            })?;
            catalog.merge(Self::parse(&text, &path.display().to_string())?);
        }
        catalog.one_flow_per_source_table()?;
        Ok(catalog)
    }

    /// Two flows reading one source table would both lock its pending rows
    /// (SKIP LOCKED) and flip the same `sent_to_kafka` flag, so each row
    /// would reach only one of them: refused, naming both flows and the
    /// table.
    fn one_flow_per_source_table(&self) -> Result<(), FlowError> {
        let mut readers: std::collections::BTreeMap<&str, &str> = std::collections::BTreeMap::new();
        for flow in &self.flows {
            for source in &flow.sources {
                match readers.insert(source.table.as_str(), flow.name.as_str()) {
                    Some(other) if other != flow.name.as_str() => {
                        return Err(FlowError::Invalid {
                            flow: flow.name.to_string(),
                            message: format!(
                                "source table {} is also a source of flow `{other}`: both relays would flip its one sent_to_kafka flag and each row would reach only one flow; give each flow its own table",
                                source.table
                            ),
                        });
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    pub fn parse(text: &str, origin: &str) -> Result<Self, FlowError> {
        let file: FlowsFile = toml::from_str(text).map_err(|e| FlowError::Parse {
            origin: origin.to_owned(),
            message: e.message().to_owned(),
        })?;
        let catalog = Self { flows: file.flows };
        catalog.validate()?;
        catalog.one_flow_per_source_table()?;
        Ok(catalog)
    }

    fn merge(&mut self, other: FlowCatalog) {
        for flow in other.flows {
            match self.flows.iter_mut().find(|f| f.name == flow.name) {
                Some(slot) => *slot = flow,
                None => self.flows.push(flow),
            }
        }
    }

    fn validate(&self) -> Result<(), FlowError> {
        let mut names = BTreeSet::new();
        for flow in &self.flows {
            let invalid = |message: String| FlowError::Invalid {
                flow: flow.name.to_string(),
                message,
            };
            if !names.insert(flow.name.clone()) {
                return Err(invalid("defined twice".into()));
            }
            flow.check().map_err(invalid)?;
        }
        Ok(())
    }

    /// Prefix every topic and consumer group (for shared clusters and
    /// isolated tests); an empty prefix changes nothing.
    pub fn with_prefixes(mut self, topic_prefix: &str, group_prefix: &str) -> Self {
        for flow in &mut self.flows {
            flow.consumer_group = format!("{group_prefix}{}", flow.consumer_group);
            for s in &mut flow.sources {
                s.topic = format!("{topic_prefix}{}", s.topic);
            }
            for t in &mut flow.targets {
                t.topic = format!("{topic_prefix}{}", t.topic);
            }
            if let Some(stage) = &mut flow.stage {
                stage.consumer_group = format!("{group_prefix}{}", stage.consumer_group);
                stage.output = format!("{topic_prefix}{}", stage.output);
                for input in &mut stage.inputs {
                    *input = format!("{topic_prefix}{input}");
                }
            }
        }
        self
    }

    /// The flows named in `selection` (all when `None`), in catalog order.
    pub fn select(&self, selection: Option<&[String]>) -> Result<Vec<Flow>, FlowError> {
        let Some(names) = selection else {
            return Ok(self.flows.clone());
        };
        for name in names {
            if !self.flows.iter().any(|f| f.name.as_str() == name) {
                return Err(FlowError::Unknown(name.clone(), self.names().join(", ")));
            }
        }
        Ok(self
            .flows
            .iter()
            .filter(|f| names.iter().any(|n| n == f.name.as_str()))
            .cloned()
            .collect())
    }

    pub fn names(&self) -> Vec<String> {
        self.flows.iter().map(|f| f.name.to_string()).collect()
    }

    pub fn flows(&self) -> &[Flow] {
        &self.flows
    }
}

impl Flow {
    /// What a flow must be on its own; the reason, else.
    fn check(&self) -> Result<(), String> {
        check_kafka_name(&self.consumer_group).map_err(|e| format!("consumer_group: {e}"))?;
        if !(1..=MAX_SHARDS).contains(&self.shards) {
            return Err(format!(
                "shards must be between 1 and {MAX_SHARDS}, not {}",
                self.shards
            ));
        }
        for source in &self.sources {
            source.check(self.retention.is_some())?;
        }
        for target in &self.targets {
            target.check()?;
        }
        self.topics.check()?;
        if let Some(stage) = &self.stage {
            check_kafka_name(&stage.consumer_group)
                .map_err(|e| format!("stage consumer_group: {e}"))?;
            check_kafka_name(&stage.output).map_err(|e| format!("stage output: {e}"))?;
            if stage.inputs.is_empty() {
                return Err("stage has no inputs".into());
            }
            for input in &stage.inputs {
                check_kafka_name(input).map_err(|e| format!("stage input: {e}"))?;
            }
        }
        Ok(())
    }
}

impl TopicSettings {
    /// Counts of at least 1; config names that are names.
    fn check(&self) -> Result<(), String> {
        if self.partitions == Some(0) {
            return Err("topics.partitions must be at least 1".into());
        }
        if self.replication_factor == Some(0) {
            return Err("topics.replication_factor must be at least 1".into());
        }
        for name in self.config.keys() {
            crate::ident::check_topic_config_name(name)
                .map_err(|e| format!("topics.config: {e}"))?;
        }
        Ok(())
    }
}

impl SourceTable {
    /// Its topic (routed: each column's place taken by a safe name) is a
    /// topic name; every column it names is among its columns, `id` too; a
    /// flow with retention needs its time column.
    fn check(&self, retention: bool) -> Result<(), String> {
        let parts = self.topic_parts()?;
        let sample: String = parts
            .iter()
            .map(|p| match p {
                TopicPart::Text(t) => t.as_str(),
                TopicPart::Column(_) => "x",
            })
            .collect();
        check_kafka_name(&sample).map_err(|e| format!("topic: {e}"))?;
        let listed = |c: &Ident, what: &str| -> Result<(), String> {
            if self.columns.contains(c) {
                Ok(())
            } else {
                Err(format!(
                    "{what} column {c} of source table {} is not among its columns",
                    self.table
                ))
            }
        };
        for part in &parts {
            if let TopicPart::Column(c) = part {
                listed(c, "topic")?;
            }
        }
        if let Some(body) = &self.body {
            listed(body, "body")?;
        }
        for header in &self.headers {
            listed(header, "header")?;
        }
        if !self.columns.iter().any(|c| c.as_str() == "id") {
            return Err(format!(
                "source table {} must list the `id` column",
                self.table
            ));
        }
        if retention && self.time_column.is_none() {
            return Err(format!(
                "retention needs a time_column on source table {} (the column giving a row's age)",
                self.table
            ));
        }
        if let Some(key) = &self.key {
            listed(key, "key")?;
        }
        Ok(())
    }
}

impl TargetTable {
    /// Its topic is a topic name; no column both mapped and constant.
    fn check(&self) -> Result<(), String> {
        check_kafka_name(&self.topic).map_err(|e| format!("topic: {e}"))?;
        if let Some(c) = self
            .constants
            .keys()
            .chain(self.headers.keys())
            .find(|c| self.columns.contains_key(*c))
        {
            return Err(format!(
                "column {c} of table {} is both mapped and constant",
                self.table
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = r#"
[[flows]]
name = "logins"
consumer_group = "logins-consumer"
[[flows.sources]]
table = "logins"
topic = "login_events"
key = "username"
columns = ["id", "username"]
[[flows.targets]]
topic = "login_events"
table = "logins"

[[flows]]
name = "orders"
consumer_group = "orders-consumer"
[[flows.sources]]
table = "orders"
topic = "orders"
columns = ["id"]
"#;

    fn two() -> FlowCatalog {
        FlowCatalog::parse(TWO, "test").unwrap_or_else(|e| panic!("{e}"))
    }

    /// `text` as a flows file of its own.
    fn file(name: &str, text: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("{name}-{}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
        path
    }

    #[test]
    fn flows_load_in_order() {
        let catalog = two();
        let flow = &catalog.flows()[0];
        assert_eq!(flow.name.as_str(), "logins");
        assert_eq!(flow.consumer_group, "logins-consumer");
        assert_eq!(flow.sources[0].topic, "login_events");
        assert_eq!(flow.sources[0].key_column(), "username");
        assert_eq!(flow.targets[0].table.as_str(), "logins");
        assert_eq!(catalog.flows()[1].sources[0].key_column(), "id");
    }

    #[test]
    fn rejects_sql_in_identifiers_and_unknown_keys() {
        let bad = r#"
[[flows]]
name = "x"
consumer_group = "g"
[[flows.sources]]
table = "t; drop table users"
topic = "t"
columns = ["id"]
"#;
        let err = FlowCatalog::parse(bad, "test").err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("not a valid identifier")));

        let unknown = "[[flows]]\nname = \"x\"\nconsumer_group = \"g\"\ncolour = 1\n";
        let err = FlowCatalog::parse(unknown, "test")
            .err()
            .map(|e| e.to_string());
        assert!(
            err.is_some_and(|e| e.contains("colour")),
            "unknown key must be named"
        );
    }

    #[test]
    fn source_must_carry_id_and_key() {
        let no_id = "[[flows]]\nname = \"x\"\nconsumer_group = \"g\"\n[[flows.sources]]\ntable = \"t\"\ntopic = \"t\"\ncolumns = [\"a\"]\n";
        let err = FlowCatalog::parse(no_id, "test")
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("`id`")));
    }

    #[test]
    fn a_flow_may_say_how_its_topics_are_created() {
        let text = format!(
            "{TWO}[flows.topics]\npartitions = 12\nreplication_factor = 3\nconfig = {{ \"min.insync.replicas\" = 2, \"cleanup.policy\" = \"compact,delete\" }}\n"
        );
        let catalog = FlowCatalog::parse(&text, "test").unwrap_or_else(|e| panic!("{e}"));
        let topics = &catalog.flows()[1].topics;
        assert_eq!(topics.partitions, Some(12));
        assert_eq!(topics.replication_factor, Some(3));
        assert_eq!(
            topics.config.get("min.insync.replicas").map(String::as_str),
            Some("2")
        );
        assert_eq!(
            topics.config.get("cleanup.policy").map(String::as_str),
            Some("compact,delete")
        );
        assert_eq!(catalog.flows()[0].topics, TopicSettings::default());
        for bad in [
            "partitions = 0",
            "replication = 3",
            "config = { \"Min ISR\" = 2 }",
        ] {
            let text = format!("{TWO}[flows.topics]\n{bad}\n");
            assert!(FlowCatalog::parse(&text, "test").is_err(), "{bad}");
        }
    }

    #[test]
    fn select_and_prefix() {
        let catalog = two().with_prefixes("t1.", "g1.");
        let all = catalog.select(None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(all[0].sources[0].topic, "t1.login_events");
        assert_eq!(all[0].consumer_group, "g1.logins-consumer");
        let err = catalog
            .select(Some(&["nope".to_owned()]))
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("unknown flow `nope`")));
    }

    #[test]
    fn a_later_file_replaces_by_name_and_adds() {
        let first = file("first-flows", TWO);
        let second = file(
            "second-flows",
            "[[flows]]\nname = \"logins\"\nconsumer_group = \"other\"\n[[flows]]\nname = \"mine\"\nconsumer_group = \"m\"\n",
        );
        let catalog = FlowCatalog::load(&[&first, &second]);
        let _ = (std::fs::remove_file(&first), std::fs::remove_file(&second));
        let catalog = catalog.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(catalog.names(), vec!["logins", "orders", "mine"]);
        assert_eq!(catalog.flows()[0].consumer_group, "other");
        let none: [&Path; 0] = [];
        assert_eq!(
            FlowCatalog::load(&none).map(|c| c.names()).ok(),
            Some(vec![])
        );
    }

    #[test]
    fn two_flows_on_one_source_table_are_refused_naming_both() {
        let shared = "[[flows]]\nname = \"audit\"\nconsumer_group = \"a\"\n[[flows.sources]]\ntable = \"logins\"\ntopic = \"audit\"\ncolumns = [\"id\"]\n";
        let (first, second) = (file("owner-flows", TWO), file("shared-source", shared));
        let err = FlowCatalog::load(&[&first, &second])
            .err()
            .map(|e| e.to_string());
        let _ = (std::fs::remove_file(&first), std::fs::remove_file(&second));
        let err = err.unwrap_or_else(|| panic!("a second flow on logins was accepted"));
        assert!(
            err.contains("audit") && err.contains("logins") && err.contains("sent_to_kafka"),
            "{err}"
        );
        // Replacing the flow that owns the table is still fine.
        assert!(
            FlowCatalog::parse(
                &shared.replace("audit\"\nconsumer", "logins\"\nconsumer"),
                "t"
            )
            .is_ok()
        );
    }
}
