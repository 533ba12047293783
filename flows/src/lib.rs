//! What the relay and the sink share: the flow definitions (which Postgres
//! tables go to which topics and on to which ClickHouse tables), settings
//! read from the environment, telemetry set-up, shutdown and backoff.

pub mod backoff;
pub mod cli;
pub mod config_file;
pub mod definition;
pub mod failpoint;
pub mod health;
pub mod http;
pub mod ident;
pub mod kafka;
pub mod lag;
pub mod metrics;
pub mod migrations;
pub mod pg;
pub mod pg_pool;
pub mod settings;
pub mod shutdown;
pub mod systemd;
pub mod telemetry;
pub mod time;
pub mod tls;

pub use definition::{Flow, FlowCatalog, SourceTable, TargetTable};
pub use settings::{Env, SettingError};
