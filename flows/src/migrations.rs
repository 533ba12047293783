//! The SQL migrations of both databases, embedded in the binaries. Each
//! runner records what it applied by name, so `migrate` is idempotent.

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

const POSTGRES: &[(&str, &str)] = embed!(
    "postgres",
    "0001_outbox_notify",
    "0002_user_logins",
    "0003_my_table",
    "0004_router",
    "0005_sales",
    "0006_outbox_dead_rows",
    "0007_pending_rows_immutable",
    "0008_keyset_relay",
    "0009_rescan_ranges",
    "0010_txid_windows",
    "0011_partition_detaches",
    "0012_changed_sent_rows",
);
const CLICKHOUSE: &[(&str, &str)] = embed!(
    "clickhouse",
    "0001_user_logins",
    "0002_my_table",
    "0003_router",
    "0004_sales",
    "0005_etl",
);

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
pub fn from_dir(dir: &std::path::Path, kind: &str) -> std::io::Result<Vec<Migration>> {
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
            Ok(Migration {
                name: format!("user/{stem}"),
                sql: std::fs::read_to_string(&path)?,
            })
        })
        .collect()
}

/// Built-in migrations of `kind`, then those under MIGRATIONS_DIR if set.
pub fn all(kind: &str, user_dir: Option<&std::path::Path>) -> std::io::Result<Vec<Migration>> {
    let mut list = if kind == "postgres" {
        postgres()
    } else {
        clickhouse()
    };
    if let Some(dir) = user_dir {
        list.extend(from_dir(dir, kind)?);
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
