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
    /// Put rows set aside in outbox_dead_rows back in their flow.
    Replay {
        /// The flow whose set-aside rows to replay.
        #[arg(long)]
        flow: String,
        /// Only this source row id (default: all of the flow's).
        #[arg(long)]
        id: Option<i64>,
    },
    /// Insert realistic rows into a flow's source tables at a steady rate
    /// (the demos' emitters, through Postgres); prints the rate every second.
    Generate {
        /// The flow whose source tables get rows (e.g. sales, router).
        #[arg(long)]
        flow: String,
        /// Rows per second.
        #[arg(long, default_value_t = 10)]
        rate: u64,
        /// Stop after this many rows (default: run until SIGTERM/SIGINT).
        #[arg(long)]
        total: Option<u64>,
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
            eprintln!("relay: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match cli.command {
            Command::Migrate => migrate(&env).await,
            Command::Run => run(&env).await,
            Command::Generate { flow, rate, total } => generate(&env, &flow, rate, total).await,
            Command::Replay { flow, id } => replay(&env, &flow, id).await,
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

async fn generate(env: &Env, flow: &str, rate: u64, total: Option<u64>) -> ExitCode {
    let pg = match relay::config::postgres_config(env) {
        Ok(c) => c,
        Err(e) => return bad_setting(&e),
    };
    let catalog = match flows::FlowCatalog::load(env.get("FLOWS_FILE").map(std::path::Path::new)) {
        Ok(c) => c,
        Err(e) => return bad_setting(&SettingError::new("FLOWS_FILE", e.to_string())),
    };
    let target = match relay::generate::source_flow(&catalog, flow) {
        Ok(f) => f,
        Err(e) => return bad_setting(&SettingError::new("--flow", e)),
    };
    if rate == 0 {
        return bad_setting(&SettingError::new("--rate", "must be greater than 0"));
    }
    let Ok(shutdown) = flows::shutdown::on_signals() else {
        return ExitCode::FAILURE;
    };
    let Some(client) = relay::pg::connect(&pg.url, "generate", &shutdown).await else {
        return ExitCode::SUCCESS;
    };
    match relay::generate::generate(&client, &target, rate, total, &shutdown).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relay generate: {}", relay::error::pg_detail(&e));
            ExitCode::FAILURE
        }
    }
}

async fn replay(env: &Env, flow: &str, id: Option<i64>) -> ExitCode {
    let pg = match relay::config::postgres_config(env) {
        Ok(c) => c,
        Err(e) => return bad_setting(&e),
    };
    let catalog = match flows::FlowCatalog::load(env.get("FLOWS_FILE").map(std::path::Path::new)) {
        Ok(c) => c,
        Err(e) => return bad_setting(&SettingError::new("FLOWS_FILE", e.to_string())),
    };
    let Some(flow) = catalog
        .flows()
        .iter()
        .find(|f| f.name.as_str() == flow)
        .cloned()
    else {
        return bad_setting(&SettingError::new(
            "--flow",
            format!("unknown flow `{flow}`"),
        ));
    };
    let Ok(shutdown) = flows::shutdown::on_signals() else {
        return ExitCode::FAILURE;
    };
    let Some(mut client) = relay::pg::connect(&pg.url, "replay", &shutdown).await else {
        return ExitCode::SUCCESS;
    };
    match relay::dead_rows::replay(&mut client, &flow, id).await {
        Ok(n) => {
            println!("flow={} replayed={n}", flow.name);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("relay replay: {}", relay::error::pg_detail(&e));
            ExitCode::FAILURE
        }
    }
}

fn bad_setting(e: &SettingError) -> ExitCode {
    eprintln!("relay: {e}");
    ExitCode::from(2)
}
