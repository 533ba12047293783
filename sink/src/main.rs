//! `sink` — thin binary: parse the command line, read settings, set up
//! logging, hand over to the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use flows::{Env, SettingError};
use sink::{RunError, SinkConfig};

/// Outbox sink: loads Kafka topics into ClickHouse in batches.
///
/// Settings come from the environment (CLICKHOUSE_URL, CLICKHOUSE_USER,
/// CLICKHOUSE_PASSWORD, CLICKHOUSE_DATABASE, KAFKA_BROKERS, FLOWS, SINK_*);
/// README.md lists them all with their defaults.
#[derive(Parser)]
#[command(name = "sink", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the ClickHouse database and tables (idempotent).
    Migrate,
    /// Load the selected flows until SIGTERM or SIGINT.
    Run,
    /// The events watcher (seed 000): print new entries of the `events`
    /// journal every few seconds, reading only ClickHouse.
    Watch {
        /// Seconds between polls.
        #[arg(long, default_value_t = 3)]
        interval_secs: u64,
        /// Print the entries already there too.
        #[arg(long)]
        from_start: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = Env::from_process();
    let format = match flows::telemetry::log_format(&env) {
        Ok(f) => f,
        Err(e) => return bad_setting(&e),
    };
    flows::telemetry::init(format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sink: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match cli.command {
            Command::Migrate => migrate(&env).await,
            Command::Run => run(&env).await,
            Command::Watch {
                interval_secs,
                from_start,
            } => watch(&env, interval_secs, from_start).await,
        }
    })
}

async fn migrate(env: &Env) -> ExitCode {
    let cfg = match sink::config::clickhouse_config(env) {
        Ok(c) => c,
        Err(e) => return bad_setting(&e),
    };
    let Ok(shutdown) = flows::shutdown::on_signals() else {
        return ExitCode::FAILURE;
    };
    let user_dir = env.get("MIGRATIONS_DIR").map(std::path::PathBuf::from);
    let migrations = match flows::migrations::all("clickhouse", user_dir.as_deref()) {
        Ok(m) => m,
        Err(e) => return bad_setting(&SettingError::new("MIGRATIONS_DIR", e.to_string())),
    };
    match sink::migrate_with_retry(&cfg, &migrations, &shutdown).await {
        Ok(applied) => {
            tracing::info!(applied = ?applied, "clickhouse migrations up to date");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sink migrate: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(env: &Env) -> ExitCode {
    let config = match SinkConfig::from_env(env) {
        Ok(c) => c,
        Err(e) => return bad_setting(&e),
    };
    let shutdown = match flows::shutdown::on_signals() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sink: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(flows = ?config.flows.iter().map(|f| f.name.to_string()).collect::<Vec<_>>(), "sink starting");
    match sink::run(config, flows::metrics::Metrics::default(), shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(RunError::Schema(e)) => {
            eprintln!("sink: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("sink: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn watch(env: &Env, interval_secs: u64, from_start: bool) -> ExitCode {
    let cfg = match sink::config::clickhouse_config(env) {
        Ok(c) => c,
        Err(e) => return bad_setting(&e),
    };
    if interval_secs == 0 {
        return bad_setting(&SettingError::new(
            "--interval-secs",
            "must be greater than 0",
        ));
    }
    let Ok(shutdown) = flows::shutdown::on_signals() else {
        return ExitCode::FAILURE;
    };
    let client = sink::clickhouse::client::client(&cfg, Some(&cfg.database));
    let interval = std::time::Duration::from_secs(interval_secs);
    match sink::watch::watch(
        &client,
        interval,
        from_start,
        &mut std::io::stdout(),
        &shutdown,
    )
    .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sink watch: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bad_setting(e: &SettingError) -> ExitCode {
    eprintln!("sink: {e}");
    ExitCode::from(2)
}
