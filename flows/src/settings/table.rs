//! Every setting of the product, declared once: the daemons parse them
//! with these declarations' getters, refuse prefixed variables not declared
//! for them, print `config` from them, and `docs/settings.md` is written
//! from them (`cargo run -p flows --example settings-doc`).

use std::time::Duration;

use super::kind::{
    Brokers, Choice, Identifier, Ignored, KafkaName, List, Listen, Millis, MillisOrOff, Path, Text,
    TopicConfigs, Url, UrlList, Whole, loopback,
};
use super::setting::{Declared, Reader, Setting, Unset};

const RELAY: &[Reader] = &[Reader::Relay];
const SINK: &[Reader] = &[Reader::Sink];
const STAGE: &[Reader] = &[Reader::Stage];
const RELAY_AND_SINK: &[Reader] = &[Reader::Relay, Reader::Sink];
const EVERY: &[Reader] = &[Reader::Relay, Reader::Sink, Reader::Stage];

const fn ms(millis: u64) -> Unset<Duration> {
    Unset::Default(Duration::from_millis(millis))
}

// Flows and logging: every daemon.

pub const FLOWS: Setting<List> = Setting::new(
    "FLOWS",
    EVERY,
    List,
    Unset::Means("all flows"),
    "the flows to run, by name; each daemon takes those that have work for it",
);
pub const FLOWS_FILE: Setting<List> = Setting::new(
    "FLOWS_FILE",
    EVERY,
    List,
    Unset::Required,
    "your flows: TOML files, a later one adding flows or replacing earlier ones by name; the product ships none (the demo's: `demo/flows.toml`; [Adding your own flow](flows.md#adding-your-own-flow))",
);
pub const MIGRATIONS_DIR: Setting<List> = Setting::new(
    "MIGRATIONS_DIR",
    RELAY_AND_SINK,
    List,
    Unset::Means("none"),
    "your flows' SQL for `migrate`: folders with `postgres/*.sql` (relay) and `clickhouse/*.sql` (sink), applied in order after the product's own and recorded as `user/<file stem>` (the demo's: `demo/migrations`)",
);
pub const KAFKA_TOPIC_PREFIX: Setting<Text> = Setting::new(
    "KAFKA_TOPIC_PREFIX",
    EVERY,
    Text,
    Unset::Default(""),
    "prepended to every topic (shared clusters, tests)",
);
pub const KAFKA_GROUP_PREFIX: Setting<Text> = Setting::new(
    "KAFKA_GROUP_PREFIX",
    EVERY,
    Text,
    Unset::Default(""),
    "prepended to every consumer group",
);
pub const LOG_FORMAT: Setting<Choice> = Setting::new(
    "LOG_FORMAT",
    EVERY,
    Choice {
        options: &["text", "json"],
        ignore_case: false,
    },
    Unset::Default("text"),
    "log lines as text or as JSON objects",
);
pub const RUST_LOG: Setting<Text> = Setting::new(
    "RUST_LOG",
    EVERY,
    Text,
    Unset::Default("info"),
    "log levels, e.g. `info,relay=debug`",
)
.environment_only();

// How every daemon reaches Kafka.

pub const KAFKA_BROKERS: Setting<Brokers> = Setting::new(
    "KAFKA_BROKERS",
    EVERY,
    Brokers,
    Unset::Required,
    "bootstrap servers",
);
pub const KAFKA_SECURITY_PROTOCOL: Setting<Choice> = Setting::new(
    "KAFKA_SECURITY_PROTOCOL",
    EVERY,
    Choice {
        options: &["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"],
        ignore_case: true,
    },
    Unset::Default("plaintext"),
    "TLS (`ssl`), SASL, both or neither; `KAFKA_SASL_*` settings need a `sasl_…` protocol, `KAFKA_SSL_*` ones `ssl` or `sasl_ssl`",
);
pub const KAFKA_SASL_MECHANISM: Setting<Choice> = Setting::new(
    "KAFKA_SASL_MECHANISM",
    EVERY,
    Choice {
        options: &["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"],
        ignore_case: false,
    },
    Unset::Default("SCRAM-SHA-512"),
    "the SASL mechanism (SASL protocols only)",
);
pub const KAFKA_SASL_USERNAME: Setting<Text> = Setting::new(
    "KAFKA_SASL_USERNAME",
    EVERY,
    Text,
    Unset::Means("required with SASL"),
    "the SASL user",
);
pub const KAFKA_SASL_PASSWORD: Setting<Text> = Setting::new(
    "KAFKA_SASL_PASSWORD",
    EVERY,
    Text,
    Unset::Means("required with SASL"),
    "the SASL user's password",
)
.as_secret();
pub const KAFKA_SSL_CA_LOCATION: Setting<Path> = Setting::new(
    "KAFKA_SSL_CA_LOCATION",
    EVERY,
    Path,
    Unset::Means("the system's CAs"),
    "PEM CAs the brokers' certificates must chain to (TLS protocols only)",
);
pub const KAFKA_SSL_CERTIFICATE_LOCATION: Setting<Path> = Setting::new(
    "KAFKA_SSL_CERTIFICATE_LOCATION",
    EVERY,
    Path,
    Unset::Means("none"),
    "a client certificate (PEM) for mutual TLS, with `KAFKA_SSL_KEY_LOCATION`",
);
pub const KAFKA_SSL_KEY_LOCATION: Setting<Path> = Setting::new(
    "KAFKA_SSL_KEY_LOCATION",
    EVERY,
    Path,
    Unset::Means("none"),
    "the client certificate's private key (PEM)",
);
pub const KAFKA_SSL_KEY_PASSWORD: Setting<Text> = Setting::new(
    "KAFKA_SSL_KEY_PASSWORD",
    EVERY,
    Text,
    Unset::Means("none"),
    "the password of the client certificate's key",
)
.as_secret();
pub const KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM: Setting<Choice> = Setting::new(
    "KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM",
    EVERY,
    Choice {
        options: &["https", "none"],
        ignore_case: false,
    },
    Unset::Default("https"),
    "`https`: the broker's certificate must name it; `none`: not checked (TLS protocols only)",
);
pub const KAFKA_DEBUG: Setting<List> = Setting::new(
    "KAFKA_DEBUG",
    EVERY,
    List,
    Unset::Means("none"),
    "librdkafka debug contexts for every Kafka client (e.g. `eos,cgrp`; `all`), logged with `RUST_LOG=info,librdkafka=debug,rdkafka=debug`; the tests pass it on to the daemons they start",
);

// The topics the daemons create (`connections::topics`).

pub const KAFKA_TOPIC_PARTITIONS: Setting<Whole> = Setting::new(
    "KAFKA_TOPIC_PARTITIONS",
    EVERY,
    Whole {
        min: 1,
        max: 1_000_000,
        unit: "",
    },
    Unset::Means("the broker's `num.partitions`"),
    "partitions of each topic the product creates; an existing topic with fewer is named in a warning, never changed",
);
pub const KAFKA_TOPIC_REPLICATION_FACTOR: Setting<Whole> = Setting::new(
    "KAFKA_TOPIC_REPLICATION_FACTOR",
    EVERY,
    Whole {
        min: 1,
        max: 32_767,
        unit: "",
    },
    Unset::Means("the broker's `default.replication.factor`"),
    "replicas of each partition of a topic the product creates (production: 3, with `min.insync.replicas=2`); an existing topic with fewer is named in a warning, never changed",
);
pub const KAFKA_TOPIC_CONFIG: Setting<TopicConfigs> = Setting::new(
    "KAFKA_TOPIC_CONFIG",
    EVERY,
    TopicConfigs,
    Unset::Means("the broker's defaults"),
    "configs of each topic the product creates, e.g. `min.insync.replicas=2,retention.ms=604800000`; an existing topic with another value is named in a warning, never changed",
);

// Postgres: the relay, and the sink's `reconcile`.

pub const DATABASE_URL: Setting<Url> = Setting::new(
    "DATABASE_URL",
    RELAY_AND_SINK,
    Url {
        schemes: &["postgres", "postgresql"],
    },
    Unset::Required,
    "`postgres://user:pass@host:port/db` with libpq's TLS parameters (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`; [Secure defaults](operations.md#secure-defaults)); several hosts with `target_session_attrs=read-write` (`postgres://user:pass@pg-a:5432,pg-b:5432/db?target_session_attrs=read-write`) follow a failover to whichever takes writes ([Running on clusters](clusters.md#postgres)); `config` and the logs show it with the password replaced",
)
.as_secret();
pub const POSTGRES_POOL_SIZE: Setting<Whole> = Setting::new(
    "POSTGRES_POOL_SIZE",
    RELAY_AND_SINK,
    Whole::POSITIVE,
    Unset::Default(4),
    "pooled sessions a daemon opens at most: all but the relay's lanes and its `LISTEN` connection (start-up check, backlog probe, the commands)",
)
.environment_only();
pub const POSTGRES_CONNECT_TIMEOUT_MS: Setting<Millis> = Setting::new(
    "POSTGRES_CONNECT_TIMEOUT_MS",
    RELAY_AND_SINK,
    Millis::POSITIVE,
    ms(10_000),
    "a pooled session must be connected (TCP, TLS, start-up) within this; the one-shot commands then give up (exit 1), `migrate` and the daemon retry",
)
.environment_only();
pub const POSTGRES_STATEMENT_TIMEOUT_MS: Setting<Millis> = Setting::new(
    "POSTGRES_STATEMENT_TIMEOUT_MS",
    RELAY_AND_SINK,
    Millis::POSITIVE,
    ms(60_000),
    "`statement_timeout` of the pooled sessions",
)
.environment_only();
pub const POSTGRES_KEEPALIVE_IDLE_MS: Setting<Millis> = Setting::new(
    "POSTGRES_KEEPALIVE_IDLE_MS",
    RELAY_AND_SINK,
    Millis::POSITIVE,
    ms(10_000),
    "TCP keepalives of the pooled sessions start after this much silence (then every 5 s, 3 missed = dead); the lanes and `LISTEN` use 10 s",
)
.environment_only();

// The relay.

pub const RELAY_BATCH_SIZE: Setting<Whole> = Setting::new(
    "RELAY_BATCH_SIZE",
    RELAY,
    Whole {
        min: 1,
        max: 100_000,
        unit: "",
    },
    Unset::Default(10_000),
    "rows per Postgres + Kafka transaction",
);
pub const RELAY_POLL_INTERVAL_MS: Setting<Millis> = Setting::new(
    "RELAY_POLL_INTERVAL_MS",
    RELAY,
    Millis::POSITIVE,
    ms(1_000),
    "safety-net poll when no NOTIFY arrives",
);
pub const RELAY_STANDBY_RETRY_MS: Setting<Millis> = Setting::new(
    "RELAY_STANDBY_RETRY_MS",
    RELAY,
    Millis::POSITIVE,
    ms(1_000),
    "how often a standby tries to take over a flow",
);
pub const RELAY_SHARDS: Setting<Text> = Setting::new(
    "RELAY_SHARDS",
    RELAY,
    Text,
    Unset::Default("all"),
    "the shards of split flows this relay prefers: `all`, or indexes such as `0,1` or `2-3`; it leads others only while no live relay prefers them ([Shards](operations.md#shards-more-than-one-relay-process-per-flow))",
);
pub const RELAY_PRUNE_INTERVAL_MS: Setting<Millis> = Setting::new(
    "RELAY_PRUNE_INTERVAL_MS",
    RELAY,
    Millis::POSITIVE,
    ms(300_000),
    "how often the active relay deletes the sent rows of flows with a `retention` older than it, the first time one interval after it takes the lead ([Retention of sent rows](operations.md#retention-of-sent-rows))",
);
pub const RELAY_SESSION_TIMEOUT_MS: Setting<Millis> = Setting::new(
    "RELAY_SESSION_TIMEOUT_MS",
    RELAY,
    Millis::POSITIVE,
    ms(30_000),
    "the server ends a leader's session idle this long, so a frozen or cut-off relay's locks go to a standby; at least twice `RELAY_POLL_INTERVAL_MS`",
);
pub const RELAY_QUERY_TIMEOUT_MS: Setting<Millis> = Setting::new(
    "RELAY_QUERY_TIMEOUT_MS",
    RELAY,
    Millis::POSITIVE,
    ms(15_000),
    "every query of the relay's own sessions ends within this (a client deadline and `statement_timeout`); past it the relay reconnects, standing by if another took over",
);
pub const RELAY_STUCK_AFTER_MS: Setting<Millis> = Setting::new(
    "RELAY_STUCK_AFTER_MS",
    RELAY,
    Millis::POSITIVE,
    ms(120_000),
    "a flow loop that has not turned this long is stuck: the systemd watchdog is no longer fed (systemd restarts the relay); at least twice the query timeout, poll interval and standby retry, and three times `KAFKA_COMMIT_TIMEOUT_MS`",
);
pub const RELAY_STALL_AFTER_MS: Setting<Millis> = Setting::new(
    "RELAY_STALL_AFTER_MS",
    RELAY,
    Millis::POSITIVE,
    ms(60_000),
    "a flow with pending rows and nothing moving this long is not ready (`/readyz`)",
);
pub const RELAY_TRANSACTIONAL_ID_PREFIX: Setting<Text> = Setting::new(
    "RELAY_TRANSACTIONAL_ID_PREFIX",
    RELAY,
    Text,
    Unset::Default("outbox-relay"),
    "`transactional.id` = prefix + `.` + flow: a restarted relay fences its predecessor",
);
pub const RELAY_METRICS_ADDR: Setting<Listen> = Setting::new(
    "RELAY_METRICS_ADDR",
    RELAY,
    Listen,
    Unset::Default(loopback(9101)),
    "`/metrics` (Prometheus), `/healthz`, `/readyz`; `off` disables; `relay status` and `sink dashboard` read it",
);
pub const RELAY_SWEEP_INTERVAL_MS: Setting<Ignored> = Setting::new(
    "RELAY_SWEEP_INTERVAL_MS",
    RELAY,
    Ignored {
        why: "the whole-table sweep it paced is gone; the relay's windows find every row (docs/flows.md, *Source tables*)",
    },
    Unset::Means("—"),
    "accepted and ignored, with a warning at start-up",
);

// The relay's Kafka producer.

pub const KAFKA_ACKS: Setting<Choice> = Setting::new(
    "KAFKA_ACKS",
    RELAY,
    Choice {
        options: &["all", "-1"],
        ignore_case: false,
    },
    Unset::Default("all"),
    "producer `acks`: transactions require `all`",
);
pub const KAFKA_LINGER_MS: Setting<Millis> = Setting::new(
    "KAFKA_LINGER_MS",
    RELAY,
    Millis { min: 0 },
    ms(5),
    "producer `linger.ms`",
);
pub const KAFKA_BATCH_SIZE: Setting<Whole> = Setting::new(
    "KAFKA_BATCH_SIZE",
    RELAY,
    Whole::BYTES,
    Unset::Default(1_000_000),
    "producer `batch.size`",
);
pub const KAFKA_TRANSACTION_TIMEOUT_MS: Setting<Millis> = Setting::new(
    "KAFKA_TRANSACTION_TIMEOUT_MS",
    RELAY,
    Millis::POSITIVE,
    ms(60_000),
    "producer `transaction.timeout.ms` (also `message.timeout.ms`)",
);
pub const KAFKA_COMMIT_TIMEOUT_MS: Setting<Millis> = Setting::new(
    "KAFKA_COMMIT_TIMEOUT_MS",
    RELAY,
    Millis::POSITIVE,
    ms(30_000),
    "how long flushing a batch and committing its transaction may each take; past it the outcome is unknown: the relay aborts, recreates its producer and publishes the batch again (`relay_rows_republished_total{reason=\"kafka_commit_outcome_unknown\"}`)",
);

// ClickHouse: the sink.

pub const CLICKHOUSE_URL: Setting<UrlList> = Setting::new(
    "CLICKHOUSE_URL",
    SINK,
    UrlList {
        schemes: &["http", "https"],
    },
    Unset::Required,
    "`http://host:8123` or `https://host:8443`; several, comma-separated, are replicas the sink writes to in this order, leaving one that is down or refuses writes for the next and taking it back when healthy (with `CLICKHOUSE_CLUSTER`: the replicas of every shard, see [Running on clusters](clusters.md#clickhouse))",
);
pub const CLICKHOUSE_CLUSTER: Setting<Identifier> = Setting::new(
    "CLICKHOUSE_CLUSTER",
    SINK,
    Identifier,
    Unset::Means("one server: plain tables"),
    "a cluster of the servers' `remote_servers`: `sink migrate` creates each table `ON CLUSTER` as a Replicated table per shard behind a `Distributed` table of the table's name, and the sink writes each row straight into its shard ([Running on clusters](clusters.md#clickhouse))",
);
pub const CLICKHOUSE_USER: Setting<Text> = Setting::new(
    "CLICKHOUSE_USER",
    SINK,
    Text,
    Unset::Default("default"),
    "the ClickHouse user",
);
pub const CLICKHOUSE_PASSWORD: Setting<Text> = Setting::new(
    "CLICKHOUSE_PASSWORD",
    SINK,
    Text,
    Unset::Means("none"),
    "the ClickHouse user's password",
)
.as_secret();
pub const CLICKHOUSE_DATABASE: Setting<Identifier> = Setting::new(
    "CLICKHOUSE_DATABASE",
    SINK,
    Identifier,
    Unset::Default("default"),
    "the database of the target tables, created by `sink migrate`",
);
pub const CLICKHOUSE_CA_FILE: Setting<Path> = Setting::new(
    "CLICKHOUSE_CA_FILE",
    SINK,
    Path,
    Unset::Means("the system's CAs"),
    "PEM CAs an `https://` server must chain to (the only ones trusted)",
);

// The sink.

pub const SINK_BATCH_ROWS: Setting<Whole> = Setting::new(
    "SINK_BATCH_ROWS",
    SINK,
    Whole::POSITIVE,
    Unset::Default(100_000),
    "flush after this many messages…",
);
pub const SINK_BATCH_BYTES: Setting<Whole> = Setting::new(
    "SINK_BATCH_BYTES",
    SINK,
    Whole::BYTES,
    Unset::Default(16 * 1024 * 1024),
    "…or this many encoded bytes…",
);
/// The floor between a flow's inserts when its stream goes quiet, chosen
/// by the benchmark's latency runs (BENCHMARKS.md: inserts a second per
/// table and active parts beside the latency).
const MIN_INSERT_INTERVAL_DEFAULT_MS: u64 = 20;
pub const SINK_FLUSH_INTERVAL_MS: Setting<Millis> = Setting::new(
    "SINK_FLUSH_INTERVAL_MS",
    SINK,
    Millis::POSITIVE,
    ms(100),
    "…or when the oldest buffered message is this old (an upper bound: a stream that goes quiet is stored at once, see SINK_MIN_INSERT_INTERVAL_MS)",
);
pub const SINK_MIN_INSERT_INTERVAL_MS: Setting<Millis> = Setting::new(
    "SINK_MIN_INSERT_INTERVAL_MS",
    SINK,
    Millis::ANY,
    ms(MIN_INSERT_INTERVAL_DEFAULT_MS),
    "when the consumer has nothing more queued the sink stores what it holds at once, but no sooner than this after the flow's last insert: at most 1000/this inserts a second per table (ClickHouse makes a part of each), the floor under the latency of a busy stream (BENCHMARKS.md)",
);
pub const SINK_MAX_MESSAGE_BYTES: Setting<Whole> = Setting::new(
    "SINK_MAX_MESSAGE_BYTES",
    SINK,
    Whole::BYTES,
    Unset::Default(1024 * 1024),
    "larger messages are dead-lettered unread",
);
pub const SINK_DLQ_SUFFIX: Setting<KafkaName> = Setting::new(
    "SINK_DLQ_SUFFIX",
    SINK,
    KafkaName,
    Unset::Default(".dlq"),
    "dead letters of topic T go to T + this",
);
pub const SINK_DLQ_TIMEOUT_MS: Setting<Millis> = Setting::new(
    "SINK_DLQ_TIMEOUT_MS",
    SINK,
    Millis::POSITIVE,
    ms(30_000),
    "how long one attempt waits for Kafka to acknowledge a dead letter; a failed attempt makes the flow not ready until the letters go through",
);
pub const SINK_GROUP_INSTANCE_ID: Setting<KafkaName> = Setting::new(
    "SINK_GROUP_INSTANCE_ID",
    SINK,
    KafkaName,
    Unset::Means("dynamic membership"),
    "static group membership (`group.instance.id` = this + `.` + flow): a restarted sink gets its partitions back without a rebalance; unique per sink process (e.g. the host name): a second process with the same id takes the member's place and the first exits naming this setting",
);
pub const SINK_METRICS_ADDR: Setting<Listen> = Setting::new(
    "SINK_METRICS_ADDR",
    SINK,
    Listen,
    Unset::Default(loopback(9102)),
    "`/metrics`, `/healthz`, `/readyz`; `off` disables; `sink status` and `sink dashboard` read it",
);
pub const SINK_STALL_AFTER_MS: Setting<Millis> = Setting::new(
    "SINK_STALL_AFTER_MS",
    SINK,
    Millis::POSITIVE,
    ms(60_000),
    "a flow with consumer lag and no batch stored this long is not ready",
);
pub const SINK_SCHEMA_CHECK_MS: Setting<Millis> = Setting::new(
    "SINK_SCHEMA_CHECK_MS",
    SINK,
    Millis::POSITIVE,
    ms(5_000),
    "how often each target table's columns are read again: a column added or widened is loaded from the next batch, one dropped or narrowed holds the flow not ready ([Schema changes](flows.md#schema-changes-without-a-stop))",
);
pub const SINK_MAX_FRESHNESS_MS: Setting<MillisOrOff> = Setting::new(
    "SINK_MAX_FRESHNESS_MS",
    SINK,
    MillisOrOff,
    Unset::Default(None),
    "rows loaded later than this after their commit (or waiting longer), for `SINK_STALL_AFTER_MS`, make the flow not ready (*Freshness* in [Operations](operations.md#operations))",
);
pub const SINK_DASHBOARD_ADDR: Setting<Listen> = Setting::new(
    "SINK_DASHBOARD_ADDR",
    SINK,
    Listen,
    Unset::Default(loopback(9180)),
    "where `sink dashboard` serves its page, reading the daemons at `RELAY_METRICS_ADDR` and `SINK_METRICS_ADDR` (there `host:port` names are resolved)",
);

// The stage.

pub const STAGE_BATCH_SIZE: Setting<Whole> = Setting::new(
    "STAGE_BATCH_SIZE",
    STAGE,
    Whole::POSITIVE,
    Unset::Default(10_000),
    "input records per transaction",
);
pub const STAGE_FLUSH_INTERVAL_MS: Setting<Millis> = Setting::new(
    "STAGE_FLUSH_INTERVAL_MS",
    STAGE,
    Millis::POSITIVE,
    ms(100),
    "a transaction commits at the latest this long after its first record",
);
pub const STAGE_TRANSACTIONAL_ID_PREFIX: Setting<Text> = Setting::new(
    "STAGE_TRANSACTIONAL_ID_PREFIX",
    STAGE,
    Text,
    Unset::Default("outbox-stage"),
    "`transactional.id` = prefix + `.` + flow (one active stage per flow)",
);
pub const STAGE_METRICS_ADDR: Setting<Listen> = Setting::new(
    "STAGE_METRICS_ADDR",
    STAGE,
    Listen,
    Unset::Default(loopback(9103)),
    "`/metrics`, `/healthz`, `/readyz`; `off` disables",
);
pub const STAGE_STALL_AFTER_MS: Setting<Millis> = Setting::new(
    "STAGE_STALL_AFTER_MS",
    STAGE,
    Millis::POSITIVE,
    ms(60_000),
    "a flow with input lag and no record committed this long is not ready",
);

/// Settings that belong together, in the order of the reference.
pub struct Group {
    pub title: &'static str,
    /// A line under the title in the reference.
    pub about: &'static str,
    pub settings: &'static [&'static dyn Declared],
}

/// Every setting, by group.
pub static GROUPS: &[Group] = &[
    Group {
        title: "Flows and logging",
        about: "What every daemon runs and how it logs.",
        settings: &[
            &FLOWS,
            &FLOWS_FILE,
            &MIGRATIONS_DIR,
            &KAFKA_TOPIC_PREFIX,
            &KAFKA_GROUP_PREFIX,
            &LOG_FORMAT,
            &RUST_LOG,
        ],
    },
    Group {
        title: "Kafka connection",
        about: "How every daemon reaches the brokers; applied to every Kafka client it makes. At start-up `relay run`, `sink run` and `stage run` ask the brokers for metadata: credentials or certificates they refuse exit 2 naming `KAFKA_SASL_PASSWORD`, `KAFKA_SSL_CA_LOCATION` or `KAFKA_SSL_CERTIFICATE_LOCATION`; brokers that do not answer within 10 s are retried.",
        settings: &[
            &KAFKA_BROKERS,
            &KAFKA_SECURITY_PROTOCOL,
            &KAFKA_SASL_MECHANISM,
            &KAFKA_SASL_USERNAME,
            &KAFKA_SASL_PASSWORD,
            &KAFKA_SSL_CA_LOCATION,
            &KAFKA_SSL_CERTIFICATE_LOCATION,
            &KAFKA_SSL_KEY_LOCATION,
            &KAFKA_SSL_KEY_PASSWORD,
            &KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM,
            &KAFKA_DEBUG,
        ],
    },
    Group {
        title: "Kafka topics",
        about: "The topics the product writes — the relay's, a stage's output, the dead-letter topics — are created through Kafka's admin API by the daemon that writes them, before it first writes to one (`relay migrate` creates the relay's ahead of time), so brokers may run with `auto.create.topics.enable=false`. A flow's `[flows.topics]` overrides these for its topics ([Flows](flows.md#the-topics-a-flow-writes)); [Running on clusters](clusters.md#kafka) says what to choose.",
        settings: &[
            &KAFKA_TOPIC_PARTITIONS,
            &KAFKA_TOPIC_REPLICATION_FACTOR,
            &KAFKA_TOPIC_CONFIG,
        ],
    },
    Group {
        title: "Postgres",
        about: "The relay's database; the sink reads it only for `sink reconcile`. The `POSTGRES_*` settings shape the pooled sessions (`deadpool-postgres`); the settings file has no section for them.",
        settings: &[
            &DATABASE_URL,
            &POSTGRES_POOL_SIZE,
            &POSTGRES_CONNECT_TIMEOUT_MS,
            &POSTGRES_STATEMENT_TIMEOUT_MS,
            &POSTGRES_KEEPALIVE_IDLE_MS,
        ],
    },
    Group {
        title: "Relay",
        about: "The relay (Postgres → Kafka).",
        settings: &[
            &RELAY_BATCH_SIZE,
            &RELAY_POLL_INTERVAL_MS,
            &RELAY_STANDBY_RETRY_MS,
            &RELAY_SHARDS,
            &RELAY_PRUNE_INTERVAL_MS,
            &RELAY_SESSION_TIMEOUT_MS,
            &RELAY_QUERY_TIMEOUT_MS,
            &RELAY_STUCK_AFTER_MS,
            &RELAY_STALL_AFTER_MS,
            &RELAY_TRANSACTIONAL_ID_PREFIX,
            &RELAY_METRICS_ADDR,
            &RELAY_SWEEP_INTERVAL_MS,
        ],
    },
    Group {
        title: "Relay: Kafka producer",
        about: "The relay's transactional producer. Only the relay reads them; in the environment the sink and the stage refuse them as unknown, in a settings file shared by all three (its `[kafka]` section) they leave them to the relay.",
        settings: &[
            &KAFKA_ACKS,
            &KAFKA_LINGER_MS,
            &KAFKA_BATCH_SIZE,
            &KAFKA_TRANSACTION_TIMEOUT_MS,
            &KAFKA_COMMIT_TIMEOUT_MS,
        ],
    },
    Group {
        title: "ClickHouse",
        about: "Where the sink stores the rows.",
        settings: &[
            &CLICKHOUSE_URL,
            &CLICKHOUSE_CLUSTER,
            &CLICKHOUSE_USER,
            &CLICKHOUSE_PASSWORD,
            &CLICKHOUSE_DATABASE,
            &CLICKHOUSE_CA_FILE,
        ],
    },
    Group {
        title: "Sink",
        about: "The sink (Kafka → ClickHouse) and its commands.",
        settings: &[
            &SINK_BATCH_ROWS,
            &SINK_BATCH_BYTES,
            &SINK_FLUSH_INTERVAL_MS,
            &SINK_MIN_INSERT_INTERVAL_MS,
            &SINK_MAX_MESSAGE_BYTES,
            &SINK_DLQ_SUFFIX,
            &SINK_DLQ_TIMEOUT_MS,
            &SINK_GROUP_INSTANCE_ID,
            &SINK_METRICS_ADDR,
            &SINK_STALL_AFTER_MS,
            &SINK_SCHEMA_CHECK_MS,
            &SINK_MAX_FRESHNESS_MS,
            &SINK_DASHBOARD_ADDR,
        ],
    },
    Group {
        title: "Stage",
        about: "The stage (Kafka → Kafka).",
        settings: &[
            &STAGE_BATCH_SIZE,
            &STAGE_FLUSH_INTERVAL_MS,
            &STAGE_TRANSACTIONAL_ID_PREFIX,
            &STAGE_METRICS_ADDR,
            &STAGE_STALL_AFTER_MS,
        ],
    },
];

/// Every declared setting.
pub fn all() -> impl Iterator<Item = &'static dyn Declared> {
    GROUPS.iter().flat_map(|g| g.settings.iter().copied())
}

/// The declaration of `name`.
pub fn find(name: &str) -> Option<&'static dyn Declared> {
    all().find(|s| s.name() == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn every_name_is_declared_once() {
        let mut seen = BTreeSet::new();
        for setting in all() {
            assert!(seen.insert(setting.name()), "{} twice", setting.name());
        }
        for setting in all().filter(|s| s.secret()) {
            let file = format!("{}_FILE", setting.name());
            assert!(find(&file).is_none(), "{file} clashes with a setting");
        }
    }

    #[test]
    fn every_default_parses_with_its_own_kind() {
        for setting in all() {
            assert_eq!(
                setting.default_round_trips(),
                Ok(()),
                "{}'s default",
                setting.name()
            );
            if let Some(default) = setting.default_shown().filter(|d| !d.is_empty()) {
                assert_eq!(setting.check(&default), Ok(()), "{}", setting.name());
            }
        }
        // Bounds count: a default outside them is caught.
        let out_of_bounds: Setting<Whole> = Setting::new(
            "X",
            RELAY,
            Whole {
                min: 1,
                max: 10,
                unit: "",
            },
            Unset::Default(11),
            "x",
        );
        assert!(out_of_bounds.default_round_trips().is_err());
    }

    #[test]
    fn every_setting_is_documented_and_read_by_someone() {
        for setting in all() {
            let doc = setting.doc();
            assert!(!doc.trim().is_empty(), "{} has no doc", setting.name());
            assert!(
                !doc.contains('\n') && !doc.contains('|'),
                "{}",
                setting.name()
            );
            assert!(!setting.read_by().is_empty(), "{}", setting.name());
            assert!(!setting.kind().is_empty(), "{}", setting.name());
            assert!(
                setting
                    .name()
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'),
                "{}",
                setting.name()
            );
        }
    }

    #[test]
    fn every_secret_can_come_from_a_file_and_never_from_the_settings_file() {
        let secrets: Vec<&str> = all().filter(|s| s.secret()).map(|s| s.name()).collect();
        assert_eq!(
            secrets,
            [
                "KAFKA_SASL_PASSWORD",
                "KAFKA_SSL_KEY_PASSWORD",
                "DATABASE_URL",
                "CLICKHOUSE_PASSWORD"
            ]
        );
        for name in secrets {
            let file = format!("{name}_FILE");
            let env = super::super::Env::from_pairs([(file.as_str(), "/nonexistent/secret")])
                .with_secret_files()
                .err()
                .map(|e| e.name);
            assert_eq!(env.as_deref(), Some(file.as_str()), "{name}");
            assert_eq!(
                find(name).map(|s| s.shown("hunter2").contains("hunter2")),
                Some(false)
            );
        }
    }

    #[test]
    fn a_daemon_knows_each_prefixed_setting_it_reads() {
        // A setting whose prefix a daemon polices but that the daemon does
        // not read would be refused there: declaring it for that daemon
        // is what makes it known.
        for setting in all() {
            for reader in setting.read_by() {
                let policed = reader
                    .prefixes()
                    .iter()
                    .any(|p| setting.name().starts_with(p));
                let unprefixed = !Reader::ALL
                    .iter()
                    .flat_map(|r| r.prefixes())
                    .any(|p| setting.name().starts_with(p));
                assert!(
                    policed || unprefixed,
                    "{} read by {reader:?}",
                    setting.name()
                );
            }
        }
    }
}
