//! Cluster mode's DDL (`CLICKHOUSE_CLUSTER`): the migrations are written
//! once, for one server, and `sink migrate` renders each statement for the
//! cluster. A target table
//!
//! ```sql
//! CREATE TABLE IF NOT EXISTS t (…, id UInt64) ENGINE = ReplacingMergeTree ORDER BY (…, id)
//! ```
//!
//! becomes, on every server of the cluster (`ON CLUSTER`), a Replicated
//! table per shard holding the rows, and a `Distributed` table under the
//! name users query:
//!
//! ```sql
//! CREATE TABLE IF NOT EXISTS `db`.`t_local` ON CLUSTER `c` (…)
//!   ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/db/t_local', '{replica}') ORDER BY (…, id)
//! CREATE TABLE IF NOT EXISTS `db`.`t` ON CLUSTER `c` AS `db`.`t_local`
//!   ENGINE = Distributed('c', 'db', 't_local', intHash64(`id`))
//! ```
//!
//! The sharding key is the last column of the sort key — the source row's
//! id, which every copy of a row carries unchanged (pending outbox rows are
//! immutable) — so all copies of one source row land on one shard, where
//! the replacing merge and `FINAL` collapse them: `FINAL` through the
//! `Distributed` table stays exact. `ALTER TABLE t` changes of columns go
//! to the local table and re-create the `Distributed` one over it (`DROP`,
//! then `CREATE … AS` the altered local table, both `ON CLUSTER`: a server
//! refuses an `ALTER … ON CLUSTER` of a table that is not replicated on a
//! cluster whose shards replicate themselves — 18.16's
//! `INCONSISTENT_CLUSTER_DEFINITION`), other `ALTER`s to the local one.
//! The sharding key of a re-created table is the one its `CREATE TABLE`
//! rendered: the migrations are rendered in order, the ones applied already
//! too. A statement that says
//! `ON CLUSTER` itself is left as it is (`{{cluster}}` stands for the
//! cluster's name); anything else has no cluster form and is refused,
//! naming the migration.

/// The suffix of the local (Replicated) table behind a `Distributed` one.
pub const LOCAL_SUFFIX: &str = "_local";

/// Where the cluster's tables live: the database and the cluster; and
/// the sharding key of each table rendered so far.
pub struct ClusterDdl<'a> {
    pub database: &'a str,
    pub cluster: &'a str,
    keys: BTreeMap<String, String>,
}

use std::collections::BTreeMap;

fn quote(name: &str) -> String {
    format!("`{}`", name.replace('`', ""))
}

impl<'a> ClusterDdl<'a> {
    pub fn new(database: &'a str, cluster: &'a str) -> Self {
        Self {
            database,
            cluster,
            keys: BTreeMap::new(),
        }
    }

    /// `CREATE DATABASE` on every server.
    pub fn create_database(&self) -> String {
        format!(
            "CREATE DATABASE IF NOT EXISTS {} ON CLUSTER {}",
            quote(self.database),
            quote(self.cluster)
        )
    }

    /// The migrations' own record, replicated to every server of the
    /// cluster (one ZooKeeper path for all shards), so a `sink migrate`
    /// through any endpoint sees what was applied.
    pub fn migrations_table(&self) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {}.outbox_schema_migrations ON CLUSTER {} \
             (name String, applied_at DateTime DEFAULT now()) \
             ENGINE = ReplicatedMergeTree('/clickhouse/tables/all/{}/outbox_schema_migrations', '{{shard}}-{{replica}}') ORDER BY name",
            quote(self.database),
            quote(self.cluster),
            self.database
        )
    }

    /// The statements that do what `statement` (written for one server)
    /// does, on the cluster; `Err` says why it has no cluster form.
    pub fn render(&mut self, statement: &str) -> Result<Vec<String>, String> {
        let statement = without_comments(&statement.replace("{{cluster}}", self.cluster));
        let upper = statement.to_ascii_uppercase();
        if find_word(&upper, "ON CLUSTER").is_some() {
            return Ok(vec![statement]);
        }
        if upper.starts_with("CREATE TABLE") {
            return self.create_table(&statement);
        }
        if upper.starts_with("ALTER TABLE") {
            return self.alter_table(&statement);
        }
        Err(format!(
            "only CREATE TABLE … ENGINE = …MergeTree and ALTER TABLE have a cluster form; write this statement with ON CLUSTER {{{{cluster}}}}: {}",
            abridged(&statement)
        ))
    }

    fn create_table(&mut self, statement: &str) -> Result<Vec<String>, String> {
        let table = CreateTable::parse(statement)?;
        let engine = &table.engine;
        if !engine.ends_with("MergeTree") || engine.starts_with("Replicated") {
            return Err(format!(
                "table {}: engine {engine} has no cluster form (a …MergeTree engine becomes Replicated…MergeTree behind a Distributed table); write it with ON CLUSTER {{{{cluster}}}}",
                table.name
            ));
        }
        let key = table.shard_key()?;
        let (db, name) = (self.database, table.name.as_str());
        let local = format!("{name}{LOCAL_SUFFIX}");
        let mut args = format!("'/clickhouse/tables/{{shard}}/{db}/{local}', '{{replica}}'");
        if let Some(own) = table
            .engine_args
            .as_deref()
            .filter(|a| !a.trim().is_empty())
        {
            args.push_str(", ");
            args.push_str(own.trim());
        }
        let cluster = quote(self.cluster);
        Ok(vec![
            format!(
                "CREATE TABLE IF NOT EXISTS {}.{} ON CLUSTER {cluster} ({}) ENGINE = Replicated{engine}({args}) {}",
                quote(db),
                quote(&local),
                table.columns.trim(),
                table.rest.trim()
            )
            .trim_end()
            .to_owned(),
            self.distributed(name, &key),
        ])
    }

    /// The `Distributed` table `name` over its local table, sharded by
    /// `key`; remembered for re-creating it after an `ALTER`.
    fn distributed(&mut self, name: &str, key: &str) -> String {
        self.keys.insert(name.to_owned(), key.to_owned());
        let (db, local) = (self.database, format!("{name}{LOCAL_SUFFIX}"));
        format!(
            "CREATE TABLE IF NOT EXISTS {}.{} ON CLUSTER {} AS {}.{} ENGINE = Distributed('{}', '{db}', '{local}', intHash64({}))",
            quote(db),
            quote(name),
            quote(self.cluster),
            quote(db),
            quote(&local),
            self.cluster,
            quote(key)
        )
    }

    fn alter_table(&mut self, statement: &str) -> Result<Vec<String>, String> {
        let after = statement["ALTER TABLE".len()..].trim_start();
        let (name, ops) = split_name(after)
            .ok_or_else(|| format!("cannot read the table's name: {}", abridged(statement)))?;
        let (db, cluster) = (quote(self.database), quote(self.cluster));
        let local = quote(&format!("{name}{LOCAL_SUFFIX}"));
        let mut out = vec![format!(
            "ALTER TABLE {db}.{local} ON CLUSTER {cluster} {ops}"
        )];
        // Columns are the Distributed table's too (what queries and the
        // sink's plan read); data, indexes and mutations are the local's.
        let columns_only = split_top_level(ops, ',').iter().all(|op| {
            let op = op.trim_start().to_ascii_uppercase();
            [
                "ADD COLUMN",
                "DROP COLUMN",
                "MODIFY COLUMN",
                "COMMENT COLUMN",
            ]
            .iter()
            .any(|kind| op.starts_with(kind))
        });
        if columns_only {
            let key = self.keys.get(&name).cloned().ok_or_else(|| {
                format!(
                    "table {name} was not created by these migrations, so its Distributed table's sharding key is not known; write this statement with ON CLUSTER {{{{cluster}}}}: {}",
                    abridged(statement)
                )
            })?;
            out.push(format!(
                "DROP TABLE IF EXISTS {db}.{} ON CLUSTER {cluster}",
                quote(&name)
            ));
            out.push(self.distributed(&name, &key));
        }
        Ok(out)
    }
}

/// The parts of a `CREATE TABLE` statement.
#[derive(Debug)]
struct CreateTable {
    name: String,
    /// Inside the column list's parentheses.
    columns: String,
    engine: String,
    engine_args: Option<String>,
    /// After the engine: PARTITION BY, ORDER BY, SETTINGS …
    rest: String,
}

impl CreateTable {
    fn parse(statement: &str) -> Result<Self, String> {
        let bad = |what: &str| format!("cannot read {what}: {}", abridged(statement));
        let mut after = statement["CREATE TABLE".len()..].trim_start();
        if after.to_ascii_uppercase().starts_with("IF NOT EXISTS") {
            after = after["IF NOT EXISTS".len()..].trim_start();
        }
        let open = after.find('(').ok_or_else(|| bad("the column list"))?;
        let name = unquote(after[..open].trim().rsplit('.').next().unwrap_or(""));
        if name.is_empty() {
            return Err(bad("the table's name"));
        }
        let close = matching(after, open).ok_or_else(|| bad("the column list"))?;
        let columns = after[open + 1..close].to_owned();
        let tail = &after[close + 1..];
        let at = find_word(&tail.to_ascii_uppercase(), "ENGINE").ok_or_else(|| bad("ENGINE"))?;
        let tail = tail[at + "ENGINE".len()..].trim_start();
        let tail = tail
            .strip_prefix('=')
            .ok_or_else(|| bad("ENGINE ="))?
            .trim_start();
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let engine = tail[..end].to_owned();
        let mut rest = &tail[end..];
        let mut engine_args = None;
        if rest.starts_with('(') {
            let close = matching(rest, 0).ok_or_else(|| bad("the engine's arguments"))?;
            engine_args = Some(rest[1..close].to_owned());
            rest = &rest[close + 1..];
        }
        Ok(Self {
            name,
            columns,
            engine,
            engine_args,
            rest: rest.to_owned(),
        })
    }

    /// The column to shard by: the sort key's last, an integer column.
    fn shard_key(&self) -> Result<String, String> {
        let upper = self.rest.to_ascii_uppercase();
        let refuse = |why: String| {
            Err(format!(
                "table {}: {why}; cluster mode shards by the sort key's last column, the source row's id (an integer column), so that every copy of a row lands on one shard",
                self.name
            ))
        };
        let Some(at) = find_word(&upper, "ORDER BY") else {
            return refuse("no ORDER BY".into());
        };
        let key = &self.rest[at + "ORDER BY".len()..];
        let end = [
            "PARTITION BY",
            "PRIMARY KEY",
            "SAMPLE BY",
            "TTL",
            "SETTINGS",
        ]
        .iter()
        .filter_map(|word| find_word(&key.to_ascii_uppercase(), word))
        .min()
        .unwrap_or(key.len());
        let key = key[..end].trim();
        let key = key
            .strip_prefix('(')
            .and_then(|k| k.strip_suffix(')'))
            .unwrap_or(key);
        let last = split_top_level(key, ',')
            .last()
            .map(|k| unquote(k.trim()))
            .unwrap_or_default();
        let column = split_top_level(&self.columns, ',')
            .into_iter()
            .map(|def| {
                let mut words = def.split_whitespace();
                let name = unquote(words.next().unwrap_or(""));
                (name, words.next().unwrap_or("").to_owned())
            })
            .find(|(name, _)| *name == last);
        match column {
            Some((_, ty)) if is_integer(&ty) => Ok(last),
            Some((_, ty)) => refuse(format!("the sort key ends with {last}, of type {ty}")),
            None => refuse(format!(
                "the sort key ends with `{last}`, which is not a column"
            )),
        }
    }
}

fn is_integer(ty: &str) -> bool {
    [
        "UInt8", "UInt16", "UInt32", "UInt64", "Int8", "Int16", "Int32", "Int64",
    ]
    .contains(&ty)
}

/// `name rest` with `name` plain or quoted (a `db.` prefix dropped).
fn split_name(text: &str) -> Option<(String, &str)> {
    let end = text.find(char::is_whitespace)?;
    let name = unquote(text[..end].rsplit('.').next().unwrap_or(""));
    (!name.is_empty()).then(|| (name, text[end..].trim()))
}

fn unquote(name: &str) -> String {
    name.trim_matches(|c| c == '`' || c == '"').to_owned()
}

/// Where `word` (upper case, whole words) first stands outside quotes and
/// parentheses in `upper`.
fn find_word(upper: &str, word: &str) -> Option<usize> {
    let bytes = upper.as_bytes();
    let mut depth = 0i32;
    let mut quote: Option<u8> = None;
    for (i, &b) in bytes.iter().enumerate() {
        match (quote, b) {
            (Some(q), _) if b == q => quote = None,
            (Some(_), _) => {}
            (None, b'\'' | b'`' | b'"') => quote = Some(b),
            (None, b'(') => depth += 1,
            (None, b')') => depth -= 1,
            (None, _) if depth == 0 && upper[i..].starts_with(word) => {
                let before = i.checked_sub(1).map(|j| bytes[j]);
                let after = bytes.get(i + word.len()).copied();
                let boundary =
                    |c: Option<u8>| !c.is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_');
                if boundary(before) && boundary(after) {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// The index of the parenthesis closing the one at `open`.
fn matching(text: &str, open: usize) -> Option<usize> {
    let mut depth = 0i32;
    let mut quote: Option<u8> = None;
    for (i, &b) in text.as_bytes().iter().enumerate().skip(open) {
        match (quote, b) {
            (Some(q), _) if b == q => quote = None,
            (Some(_), _) => {}
            (None, b'\'' | b'`' | b'"') => quote = Some(b),
            (None, b'(') => depth += 1,
            (None, b')') => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// `text` split at `sep` outside quotes and parentheses.
fn split_top_level(text: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    let mut quote: Option<char> = None;
    for (i, c) in text.char_indices() {
        match (quote, c) {
            (Some(q), _) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '`' | '"') => quote = Some(c),
            (None, '(') => depth += 1,
            (None, ')') => depth -= 1,
            (None, c) if c == sep && depth == 0 => {
                parts.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// `statement` without `--` comments (outside quotes) to the ends of lines.
fn without_comments(statement: &str) -> String {
    let lines = statement.lines().map(|line| {
        let mut quote: Option<char> = None;
        let mut prev = ' ';
        for (i, c) in line.char_indices() {
            match (quote, c) {
                (Some(q), _) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '\'' | '`' | '"') => quote = Some(c),
                (None, '-') if prev == '-' => return line[..i - 1].trim_end(),
                _ => {}
            }
            prev = c;
        }
        line
    });
    lines.collect::<Vec<_>>().join("\n")
}

fn abridged(statement: &str) -> String {
    let line: String = statement.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(100) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ddl() -> ClusterDdl<'static> {
        ClusterDdl::new("shop", "two_by_two")
    }

    #[test]
    fn a_replacing_table_becomes_a_replicated_local_table_behind_a_distributed_one() {
        let sales = "CREATE TABLE IF NOT EXISTS sales (
    id UInt64,
    event_time DateTime,
    price Decimal32(2),
    processing_time DateTime DEFAULT now()
) ENGINE = ReplacingMergeTree PARTITION BY toYYYYMM(event_time) ORDER BY (event_time, product_id, id)";
        let out = ddl().render(sales).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out.len(), 2);
        assert!(
            out[0].starts_with("CREATE TABLE IF NOT EXISTS `shop`.`sales_local` ON CLUSTER `two_by_two` (id UInt64,"),
            "{}",
            out[0]
        );
        assert!(
            out[0].contains("processing_time DateTime DEFAULT now()"),
            "{}",
            out[0]
        );
        assert!(
            out[0].ends_with(") ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/shop/sales_local', '{replica}') PARTITION BY toYYYYMM(event_time) ORDER BY (event_time, product_id, id)"),
            "{}",
            out[0]
        );
        assert_eq!(
            out[1],
            "CREATE TABLE IF NOT EXISTS `shop`.`sales` ON CLUSTER `two_by_two` AS `shop`.`sales_local` ENGINE = Distributed('two_by_two', 'shop', 'sales_local', intHash64(`id`))"
        );
        // A version column stays the engine's argument, after the path.
        let versioned =
            "CREATE TABLE t (v UInt32, id Int64) ENGINE = ReplacingMergeTree(v) ORDER BY id";
        let out = ddl().render(versioned).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            out[0].contains("ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/shop/t_local', '{replica}', v) ORDER BY id"),
            "{}",
            out[0]
        );
    }

    #[test]
    fn comments_do_not_hide_the_key() {
        let commented = "CREATE TABLE t (\n  name String, -- who, e.g. 'a--b'\n  id UInt64 -- the source id\n) ENGINE = ReplacingMergeTree ORDER BY (name, id)";
        let out = ddl().render(commented).unwrap_or_else(|e| panic!("{e}"));
        assert!(out[1].ends_with("intHash64(`id`))"), "{}", out[1]);
        assert!(!out[0].contains("--"), "{}", out[0]);
    }

    #[test]
    fn alters_of_columns_reach_both_tables_others_the_local_one() {
        let mut ddl = ddl();
        let add = "ALTER TABLE user_logins ADD COLUMN device Nullable(String)";
        let unknown = ddl.render(add).err().unwrap_or_default();
        assert!(
            unknown.contains("table user_logins was not created by these migrations"),
            "{unknown}"
        );
        ddl.render("CREATE TABLE user_logins (name String, id UInt64) ENGINE = ReplacingMergeTree ORDER BY (name, id)")
            .unwrap_or_else(|e| panic!("{e}"));
        let out = ddl.render(add).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            out,
            [
                "ALTER TABLE `shop`.`user_logins_local` ON CLUSTER `two_by_two` ADD COLUMN device Nullable(String)",
                "DROP TABLE IF EXISTS `shop`.`user_logins` ON CLUSTER `two_by_two`",
                "CREATE TABLE IF NOT EXISTS `shop`.`user_logins` ON CLUSTER `two_by_two` AS `shop`.`user_logins_local` ENGINE = Distributed('two_by_two', 'shop', 'user_logins_local', intHash64(`id`))"
            ]
        );
        let out = ddl
            .render("ALTER TABLE user_logins DELETE WHERE id < 10")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            out,
            ["ALTER TABLE `shop`.`user_logins_local` ON CLUSTER `two_by_two` DELETE WHERE id < 10"]
        );
    }

    #[test]
    fn what_has_no_cluster_form_is_refused_and_on_cluster_is_left_alone() {
        let refused = [
            (
                "CREATE MATERIALIZED VIEW v AS SELECT 1",
                "only CREATE TABLE",
            ),
            (
                "CREATE TABLE t (id UInt64) ENGINE = Memory",
                "engine Memory has no cluster form",
            ),
            (
                "CREATE TABLE t (id UInt64, name String) ENGINE = ReplacingMergeTree ORDER BY (id, name)",
                "the sort key ends with name, of type String",
            ),
            (
                "CREATE TABLE t (d Date, id UInt64) ENGINE = MergeTree(d, (id), 8192)",
                "no ORDER BY",
            ),
        ];
        for (statement, why) in refused {
            match ddl().render(statement) {
                Err(e) => assert!(e.contains(why), "{statement}: {e}"),
                Ok(out) => panic!("{statement}: rendered {out:?}"),
            }
        }
        let own = "CREATE MATERIALIZED VIEW v ON CLUSTER {{cluster}} ENGINE = MergeTree ORDER BY id AS SELECT id FROM t_local";
        assert_eq!(
            ddl().render(own).unwrap_or_else(|e| panic!("{e}")),
            [
                "CREATE MATERIALIZED VIEW v ON CLUSTER two_by_two ENGINE = MergeTree ORDER BY id AS SELECT id FROM t_local"
            ]
        );
    }

    #[test]
    fn the_demo_tables_all_render() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../demo/migrations");
        let all = flows::migrations::all("clickhouse", &[dir]).unwrap_or_else(|e| panic!("{e}"));
        let caps = super::super::caps::ServerCaps::from_version("18.16.1");
        let mut tables = 0;
        let mut ddl = ddl();
        for migration in all {
            for statement in flows::migrations::statements(&caps.substitute(&migration.sql)) {
                let out = ddl
                    .render(&statement)
                    .unwrap_or_else(|e| panic!("{}: {e}", migration.name));
                assert_eq!(out.len(), 2, "{}", migration.name);
                tables += 1;
            }
        }
        assert_eq!(tables, 9);
    }
}
