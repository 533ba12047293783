//! Everything that talks to ClickHouse.

pub mod caps;
pub mod client;
pub mod cluster_ddl;
pub mod encode;
pub mod migrate;
pub mod replicas;
pub mod schema;
pub mod sharding;
pub mod types;
pub mod writer;

pub use client::ClickHouseConfig;
pub use writer::ClickHouseWriter;
