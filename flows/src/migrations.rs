//! The SQL migrations. The product's own — the outbox machinery every
//! source table relies on: the NOTIFY function, the dead rows, the guard of
//! pending rows, the relay's positions and windows, the partition detaches,
//! the notes of changed sent rows — are embedded in the binaries and name no
//! table of anyone's flows. The tables of the flows (a user's, the demo's in
//! `demo/migrations`) come from MIGRATIONS_DIR. Each runner records what it
//! applied by name, so `migrate` is idempotent.
//!
//! Names are what a database remembers: an applied migration's name stays
//! for ever. Its content may change for fresh installs as long as a
//! database that ran the old content needs nothing more — as when the demo
//! tables (once `0002_user_logins` … `0005_sales` here, and every ClickHouse
//! migration) moved to `demo/migrations`, whose files create them only if
//! missing.

use std::path::{Path, PathBuf};

/// One migration file: `name` is its file stem, applied in name order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Migration {
    pub name: String,
    pub sql: String,
}

macro_rules! embed {
    ($dir:literal, $($name:literal),* $(,)?) => {
        &[$(($name, include_str!(concat!("../../migrations/", $dir, "/", $name, ".sql")))),*]
    };
}

/// Numbers 0002–0005 were the demo's tables (now `demo/migrations`): left
/// out, never reused.
const POSTGRES: &[(&str, &str)] = embed!(
    "postgres",
    "0001_outbox_notify",
    "0006_outbox_dead_rows",
    "0007_pending_rows_immutable",
    "0008_keyset_relay",
    "0009_rescan_ranges",
    "0010_txid_windows",
    "0011_partition_detaches",
    "0012_changed_sent_rows",
);
/// The sink needs no table of its own: `sink migrate` creates the database
/// and its record of migrations, the flows' tables come from MIGRATIONS_DIR.
/// (`0001_user_logins` … `0005_etl` were the demo's: never reused.)
const CLICKHOUSE: &[(&str, &str)] = &[];

fn owned(list: &[(&str, &str)]) -> Vec<Migration> {
    list.iter()
        .map(|(name, sql)| Migration {
            name: (*name).to_owned(),
            sql: (*sql).to_owned(),
        })
        .collect()
}

pub fn postgres() -> Vec<Migration> {
    owned(POSTGRES)
}

pub fn clickhouse() -> Vec<Migration> {
    owned(CLICKHOUSE)
}

/// A user's migrations for their own flows: `<dir>/<kind>/*.sql` (kind is
/// `postgres` or `clickhouse`), applied after the built-in ones in file-name
/// order and recorded as `user/<file stem>`. A missing folder is no migration.
pub fn from_dir(dir: &Path, kind: &str) -> std::io::Result<Vec<Migration>> {
    Ok(files_of(dir, kind)?
        .into_iter()
        .map(|(migration, _)| migration)
        .collect())
}

fn files_of(dir: &Path, kind: &str) -> std::io::Result<Vec<(Migration, PathBuf)>> {
    let folder = dir.join(kind);
    if !folder.is_dir() {
        return Ok(Vec::new());
    }
    let mut files: Vec<_> = std::fs::read_dir(&folder)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let migration = Migration {
                name: format!("user/{stem}"),
                sql: std::fs::read_to_string(&path)?,
            };
            Ok((migration, path))
        })
        .collect()
}

/// The product's migrations of `kind`, then those of each MIGRATIONS_DIR
/// folder in the order given (e.g. the demo's, then a user's; a folder
/// named twice counts once), each folder's files in name order. Two files
/// of one name in different folders would be one record: refused, naming
/// both.
pub fn all(kind: &str, user_dirs: &[PathBuf]) -> std::io::Result<Vec<Migration>> {
    let mut list = if kind == "postgres" {
        postgres()
    } else {
        clickhouse()
    };
    let mut seen: Vec<(String, PathBuf)> = Vec::new();
    for (i, dir) in user_dirs.iter().enumerate() {
        if user_dirs[..i].contains(dir) {
            continue;
        }
        for (migration, path) in files_of(dir, kind)? {
            if let Some((_, first)) = seen.iter().find(|(name, _)| *name == migration.name) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "{} and {} would both be recorded as migration {}: rename one",
                        first.display(),
                        path.display(),
                        migration.name
                    ),
                ));
            }
            seen.push((migration.name.clone(), path));
            list.push(migration);
        }
    }
    Ok(list)
}

/// Splits a file into statements at `;` ending a line (ClickHouse's HTTP
/// interface takes one statement per request). Comment-only pieces are dropped.
pub fn statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in sql.lines() {
        current.push_str(line);
        current.push('\n');
        if line.trim_end().ends_with(';') {
            push_statement(&mut out, &current);
            current.clear();
        }
    }
    push_statement(&mut out, &current);
    out
}

fn push_statement(out: &mut Vec<String>, text: &str) {
    let body: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    let body = body.trim().trim_end_matches(';').trim();
    if !body.is_empty() {
        out.push(body.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_product_migrations_name_no_flow_table() {
        // The demo's tables, and their ClickHouse targets, are the demo's.
        let demo = [
            "user_logins",
            "my_table",
            "user_clicks",
            "page_views",
            "orders",
            "sales",
            "warehouse",
            "events_processed",
            "stock_movements",
        ];
        for m in postgres().iter().chain(clickhouse().iter()) {
            let sql = m.sql.to_lowercase();
            for table in demo {
                assert!(
                    !sql.contains(&format!("'{table}'")) && !sql.contains(&format!(" {table} ")),
                    "{} names {table}",
                    m.name
                );
            }
        }
    }

    #[test]
    fn folders_follow_each_other_and_a_name_in_two_is_refused() {
        let root = std::env::temp_dir().join(format!("migrations-{}", std::process::id()));
        let write = |dir: &str, file: &str| {
            let folder = root.join(dir).join("postgres");
            std::fs::create_dir_all(&folder).unwrap_or_else(|e| panic!("{e}"));
            std::fs::write(folder.join(file), "SELECT 1;").unwrap_or_else(|e| panic!("{e}"));
        };
        write("demo", "0002_b.sql");
        write("demo", "0001_a.sql");
        write("mine", "0001_c.sql");
        let names = |dirs: &[&str]| {
            let dirs: Vec<PathBuf> = dirs.iter().map(|d| root.join(d)).collect();
            all("postgres", &dirs).map(|list| {
                list.into_iter()
                    .filter(|m| m.name.starts_with("user/"))
                    .map(|m| m.name)
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(
            names(&["demo", "mine", "demo"]).ok(),
            Some(vec![
                "user/0001_a".to_owned(),
                "user/0002_b".to_owned(),
                "user/0001_c".to_owned()
            ])
        );
        write("mine", "0002_b.sql");
        let err = names(&["demo", "mine"]).err().map(|e| e.to_string());
        let _ = std::fs::remove_dir_all(&root);
        let err = err.unwrap_or_else(|| panic!("a name in two folders was accepted"));
        assert!(
            err.contains("demo/postgres/0002_b.sql")
                && err.contains("mine/postgres/0002_b.sql")
                && err.contains("user/0002_b"),
            "{err}"
        );
    }

    #[test]
    fn embedded_lists_are_sorted_and_split() {
        for list in [postgres(), clickhouse()] {
            let names: Vec<_> = list.iter().map(|m| m.name.clone()).collect();
            let mut sorted = names.clone();
            sorted.sort();
            assert_eq!(names, sorted);
        }
        let parts =
            statements("-- c\nCREATE TABLE a (x int);\n\nCREATE VIEW b AS\nSELECT 1;\n-- end\n");
        assert_eq!(
            parts,
            vec!["CREATE TABLE a (x int)", "CREATE VIEW b AS\nSELECT 1"]
        );
    }
}
