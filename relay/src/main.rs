//! `relay` — thin binary: parse the command line, read settings, set up
//! logging, hand over to the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use flows::{Env, SettingError};
use relay::{RelayConfig, RelayError};

/// Outbox relay: publishes pending Postgres rows to Kafka in transactions.
///
/// Settings come from the environment (DATABASE_URL, KAFKA_BROKERS, FLOWS,
/// RELAY_*, KAFKA_*); README.md lists them all with their defaults.
#[derive(Parser)]
#[command(name = "relay", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply the Postgres migrations (idempotent: records what it applied).
    Migrate,
    /// Relay the selected flows until SIGTERM or SIGINT.
    Run,
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
            eprintln!("relay: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match cli.command {
            Command::Migrate => migrate(&env).await,
            Command::Run => run(&env).await,
        }
    })
}

async fn migrate(env: &Env) -> ExitCode {
    let pg = match relay::config::postgres_config(env) {
        Ok(c) => c,
        Err(e) => return bad_setting(&e),
    };
    let Ok(shutdown) = flows::shutdown::on_signals() else {
        return ExitCode::FAILURE;
    };
    let Some(mut client) = relay::pg::connect(&pg.url, "migrate", &shutdown).await else {
        return ExitCode::SUCCESS;
    };
    let user_dir = env.get("MIGRATIONS_DIR").map(std::path::PathBuf::from);
    let migrations = match flows::migrations::all("postgres", user_dir.as_deref()) {
        Ok(m) => m,
        Err(e) => return bad_setting(&SettingError::new("MIGRATIONS_DIR", e.to_string())),
    };
    match relay::migrate::migrate(&mut client, &migrations).await {
        Ok(applied) => {
            tracing::info!(applied = ?applied, "postgres migrations up to date");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("relay migrate: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(env: &Env) -> ExitCode {
    let config = match RelayConfig::from_env(env) {
        Ok(c) => c,
        Err(e) => return bad_setting(&e),
    };
    let shutdown = match flows::shutdown::on_signals() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("relay: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(flows = ?config.flows.iter().map(|f| f.name.to_string()).collect::<Vec<_>>(), "relay starting");
    match relay::run(config, flows::metrics::Metrics::default(), shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(RelayError::Source(e)) => {
            eprintln!("relay: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("relay: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bad_setting(e: &SettingError) -> ExitCode {
    eprintln!("relay: {e}");
    ExitCode::from(2)
}
