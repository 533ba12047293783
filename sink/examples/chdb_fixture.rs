//! The sink's side of the current-ClickHouse check (`scripts/chdb-check.sh`,
//! run by `scripts/test.sh`): PyPI's `chdb` carries a current ClickHouse
//! engine in-process but serves no HTTP, so this prints what the sink would
//! send a server and the Python side feeds it to that engine.
//!
//! - `chdb_fixture migrations VERSION`: every embedded ClickHouse migration's
//!   statements as `sink migrate` sends them to a server of that version
//!   (`caps.rs` decides), one per line group, separated by `-- ;;` lines.
//! - `chdb_fixture migrations VERSION CLUSTER`: what `sink migrate` sends in
//!   cluster mode (`CLICKHOUSE_CLUSTER=CLUSTER`, database `chk`): the
//!   database and the migrations' record, then every migration rendered `ON
//!   CLUSTER`, Replicated tables behind `Distributed` ones.
//! - `chdb_fixture shards N ID…`: the shard (1 to N, of N equal shards) the
//!   sink writes the row with source id ID to.
//! - `chdb_fixture sharding ENGINE_FULL`: how the sink reads a `Distributed`
//!   table's `engine_full` (its key column `id UInt64`): `local_table
//!   key_column hash`, or exit 1 with its reason.
//! - `chdb_fixture insert-format VERSION`: the format the sink's inserts
//!   into a server of that version use.
//! - `chdb_fixture encode [VERSION]`: reads `{"columns": [[name, type], …],
//!   "messages": [{…}, …]}` on stdin (types named as `system.columns` names
//!   them) and writes the body of the sink's insert on stdout: the rows as
//!   RowBinary, encoded by the sink's encoder, preceded by the
//!   `RowBinaryWithNamesAndTypes` header when a server of VERSION checks
//!   the types an insert declares (`caps.rs` decides); a message the
//!   encoder refuses exits 1 naming it.

use std::io::{Read, Write};
use std::process::ExitCode;

use bytes::BytesMut;
use serde_json::Value;
use sink::clickhouse::caps::ServerCaps;
use sink::clickhouse::cluster_ddl::ClusterDdl;
use sink::clickhouse::encode::{ColumnPlan, encode_row};
use sink::clickhouse::migrate::rendered;
use sink::clickhouse::schema::TablePlan;
use sink::clickhouse::sharding::{KeyHash, Slots};
use sink::clickhouse::types::ChType;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match args.first().map(String::as_str) {
        Some("migrations") => migrations(
            args.get(1).map_or("", String::as_str),
            args.get(2).map(String::as_str),
        ),
        Some("shards") => shards(&args[1..]),
        Some("sharding") => sharding(
            args.get(1).map_or("", String::as_str),
            args.get(2..).unwrap_or_default(),
        ),
        Some("insert-format") => {
            let caps = ServerCaps::from_version(args.get(1).map_or("", String::as_str));
            println!("{}", sink::clickhouse::writer::insert_format(&caps));
            Ok(())
        }
        Some("encode") => encode(args.get(1).map(String::as_str)),
        _ => Err(
            "usage: chdb_fixture migrations VERSION [CLUSTER] | shards N ID… | sharding ENGINE_FULL NAME TYPE… | insert-format VERSION | encode [VERSION]"
                .to_owned(),
        ),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chdb_fixture: {e}");
            ExitCode::FAILURE
        }
    }
}

fn migrations(version: &str, cluster: Option<&str>) -> Result<(), String> {
    let caps = ServerCaps::from_version(version);
    // The product has no ClickHouse migration of its own: the demo's tables
    // are the ones to check (their types cover what flows use).
    let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../demo/migrations");
    let all = flows::migrations::all("clickhouse", &[demo]).map_err(|e| e.to_string())?;
    let mut ddl = cluster.map(|cluster| ClusterDdl::new("chk", cluster));
    let mut out = std::io::stdout().lock();
    if let Some(ddl) = &ddl {
        for statement in [ddl.create_database(), ddl.migrations_table()] {
            writeln!(out, "-- outbox\n{statement}\n-- ;;").map_err(|e| e.to_string())?;
        }
    }
    for migration in all {
        let statements = rendered(&caps, ddl.as_mut(), &migration).map_err(|e| e.to_string())?;
        for statement in statements {
            writeln!(out, "-- {}\n{statement}\n-- ;;", migration.name)
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

fn shards(args: &[String]) -> Result<(), String> {
    let n: usize = args
        .first()
        .and_then(|n| n.parse().ok())
        .ok_or("shards N ID…")?;
    let slots = Slots::new(&vec![1; n]);
    for id in &args[1..] {
        let id: u64 = id.parse().map_err(|_| format!("not an id: {id}"))?;
        println!("{}", slots.shard_of(KeyHash::IntHash64, id) + 1);
    }
    Ok(())
}

/// `sharding ENGINE_FULL NAME TYPE…`: the table's columns as name, type.
fn sharding(engine_full: &str, columns: &[String]) -> Result<(), String> {
    let cluster = engine_full
        .trim_start_matches("Distributed(")
        .split(',')
        .next()
        .unwrap_or("")
        .trim()
        .trim_matches('\'');
    let columns: Vec<(String, String)> = columns
        .chunks(2)
        .map(|pair| (pair[0].clone(), pair.get(1).cloned().unwrap_or_default()))
        .collect();
    let sharding = sink::clickhouse::sharding::from_engine(engine_full, cluster, &columns)?;
    println!(
        "{} {} {:?}",
        sharding.local_table, sharding.key_column, sharding.hash
    );
    Ok(())
}

fn encode(version: Option<&str>) -> Result<(), String> {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .map_err(|e| e.to_string())?;
    let spec: Value = serde_json::from_str(&input).map_err(|e| e.to_string())?;
    let columns = spec["columns"]
        .as_array()
        .ok_or("no columns")?
        .iter()
        .map(|c| {
            let (name, ty_name) = (c[0].as_str().unwrap_or(""), c[1].as_str().unwrap_or(""));
            let ty = ChType::parse(ty_name).map_err(|e| format!("column {name}: {e}"))?;
            Ok(ColumnPlan {
                column: name.to_owned(),
                field: name.to_owned(),
                ty,
                type_name: ty_name.to_owned(),
                constant: None,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let plan = TablePlan::new("t".into(), "t", String::new(), columns, Vec::new());
    let mut out = BytesMut::new();
    if version.is_some_and(|v| ServerCaps::from_version(v).insert_checks_types) {
        out.extend_from_slice(&plan.types_header);
    }
    for (i, message) in spec["messages"]
        .as_array()
        .ok_or("no messages")?
        .iter()
        .enumerate()
    {
        let message = message.as_object().ok_or("a message is not an object")?;
        encode_row(&plan.columns, message, &mut out).map_err(|e| format!("message {i}: {e}"))?;
    }
    std::io::stdout().write_all(&out).map_err(|e| e.to_string())
}
