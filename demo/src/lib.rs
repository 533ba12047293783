//! The demo, built on the product the way a user's own flows are: the five
//! pipelines of `shared/FLOWS.md` as data (`flows.toml`) and SQL
//! (`migrations/postgres`, `migrations/clickhouse`), which reach the daemons
//! through FLOWS_FILE and MIGRATIONS_DIR, and the commands that show them
//! off: `outbox-demo generate` (the demos' emitters, through Postgres),
//! `outbox-demo watch` (seed 000's events watcher) and `outbox-demo
//! dashboard` (the product's status page with seed 002's sales charts).

use std::path::{Path, PathBuf};

pub mod dashboard;
pub mod generate;
pub mod watch;

/// The demo's flows file in this checkout (the tests' and the benchmark's;
/// an installed demo's copy is named by FLOWS_FILE).
pub fn flows_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("flows.toml")
}

/// The demo's migrations folder in this checkout, for MIGRATIONS_DIR.
pub fn migrations_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_five_flows_load_and_their_migrations_are_there() {
        let catalog =
            flows::FlowCatalog::load(&[super::flows_file()]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            catalog.names(),
            vec!["user_logins", "my_table", "router", "sales", "etl"]
        );
        let flow = &catalog.flows()[0];
        assert_eq!(flow.consumer_group, "user-logins-consumer");
        assert_eq!(flow.sources[0].topic, "user_events");
        assert_eq!(flow.sources[0].key_column(), "username");
        for kind in ["postgres", "clickhouse"] {
            let list = flows::migrations::all(kind, &[super::migrations_dir()])
                .unwrap_or_else(|e| panic!("{e}"));
            let demo: Vec<&str> = list
                .iter()
                .filter_map(|m| m.name.strip_prefix("user/"))
                .collect();
            let expected: &[&str] = if kind == "postgres" {
                &[
                    "0001_user_logins",
                    "0002_my_table",
                    "0003_router",
                    "0004_sales",
                ]
            } else {
                &[
                    "0001_user_logins",
                    "0002_my_table",
                    "0003_router",
                    "0004_sales",
                    "0005_etl",
                ]
            };
            assert_eq!(demo, expected, "{kind}");
        }
    }
}
