//! The integration tests: one binary, a module per subject, all against
//! real Postgres, ClickHouse and Apache Kafka (see `outbox_tests`, the
//! support library in `tests/support`, for the services and fixtures).
//! `scripts/test.sh` runs everything but `faults::`, `pg_failover::` and
//! the cluster tests first, then the fault suite and `pg_failover::` (a
//! Postgres primary and standby of their own, killed and promoted), one
//! test at a time (they restart or kill servers and load the machine);
//! `scripts/cluster-test.sh` runs `cluster::`, on a three-broker cluster the
//! tests start themselves, `scripts/ch-cluster-test.sh` `ch_cluster::`.
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
mod pg_failover;
mod resend;
mod retention;
mod schema_change;
mod security;
mod shards;
mod systemd;
mod topics;
mod user_logins;
