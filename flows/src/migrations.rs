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

const POSTGRES: &[(&str, &str)] = embed!("postgres", "0001_outbox_notify", "0002_user_logins");
const CLICKHOUSE: &[(&str, &str)] = embed!("clickhouse", "0001_user_logins");

fn owned(list: &[(&str, &str)]) -> Vec<Migration> {
    list.iter()
        .map(|(name, sql)| Migration { name: (*name).to_owned(), sql: (*sql).to_owned() })
        .collect()
}

pub fn postgres() -> Vec<Migration> {
    owned(POSTGRES)
}

pub fn clickhouse() -> Vec<Migration> {
    owned(CLICKHOUSE)
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
        let parts = statements("-- c\nCREATE TABLE a (x int);\n\nCREATE VIEW b AS\nSELECT 1;\n-- end\n");
        assert_eq!(parts, vec!["CREATE TABLE a (x int)", "CREATE VIEW b AS\nSELECT 1"]);
    }
}
