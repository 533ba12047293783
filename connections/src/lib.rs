//! Connections to the systems the product moves rows between: Postgres
//! (libpq's TLS, keepalives and timeouts; the pool of non-lane sessions)
//! and Kafka (TLS/SASL endpoint, consumer settings, the consumer-lag
//! probe, the group's assignment against its topics, the topics the product
//! creates), with the TLS trust
//! they share. (ClickHouse's client is the sink's: only the sink and its
//! commands talk to ClickHouse.)

pub mod group;
pub mod kafka;
pub mod lag;
pub mod pg;
pub mod pg_pool;
pub mod tls;
pub mod topics;
