//! Everything that talks to ClickHouse.

pub mod caps;
pub mod client;
pub mod encode;
pub mod migrate;
pub mod schema;
pub mod types;
pub mod writer;

pub use client::ClickHouseConfig;
pub use writer::ClickHouseWriter;
