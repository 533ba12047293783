//! The flows: their definitions (which Postgres tables go to which topics
//! and on to which ClickHouse tables), the SQL migrations behind them, and
//! the settings every daemon reads (the environment over the settings
//! file). The daemon runtime is in `daemon`, the connections to Postgres
//! and Kafka in `connections`.

pub mod config_file;
pub mod definition;
pub mod ident;
pub mod migrations;
pub mod settings;

pub use definition::{
    Flow, FlowCatalog, SourceTable, TargetTable, TopicPart, TopicSettings, parse_age, parse_time,
};
pub use settings::{Env, SettingError};

/// The Kafka header the relay puts on every record: the source row's commit
/// time, Unix milliseconds as decimal text. The sink's freshness measure
/// reads it; the record's own timestamp is when it was published.
pub const COMMITTED_AT_HEADER: &str = "committed_at";
