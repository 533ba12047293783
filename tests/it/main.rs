//! The integration tests: one binary, a module per subject, all against
//! real Postgres, ClickHouse and Apache Kafka (see `outbox_tests`, the
//! support library in `tests/support`, for the services and fixtures).
//! `scripts/test.sh` runs everything but `faults::` and `cluster::` first,
//! then the fault suite alone, one test at a time (it restarts the shared
//! Postgres and loads the machine); `scripts/cluster-test.sh` runs
//! `cluster::`, on a three-broker cluster the tests start themselves.
//! docs/testing.md says which test proves what.

mod broker;
mod ch_cluster;
mod cluster;
mod commit_order;
mod config;
mod dashboard;
mod etl;
mod faults;
mod flows;
mod freshness;
mod kafka_security;
mod keyset;
mod operations;
mod outbox_router;
mod resend;
mod retention;
mod schema_change;
mod security;
mod shards;
mod systemd;
mod topics;
mod user_logins;
