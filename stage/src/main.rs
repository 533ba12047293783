//! `stage` — thin binary for Kafka → Kafka stages (the `etl` normaliser).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use flows::Env;
use stage::StageConfig;

/// Exactly-once Kafka → Kafka stage: consumes a flow's input topics,
/// transforms, produces its output topic, committing consumer offsets in the
/// producer's transaction.
///
/// Settings come from the environment (KAFKA_BROKERS, FLOWS, STAGE_*);
/// README.md lists them with their defaults.
#[derive(Parser)]
#[command(name = "stage", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the selected flows' stages until SIGTERM or SIGINT.
    Run,
}

fn main() -> ExitCode {
    let Cli {
        command: Command::Run,
    } = Cli::parse();
    let env = Env::from_process();
    let config = match StageConfig::from_env(&env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("stage: {e}");
            return ExitCode::from(2);
        }
    };
    flows::telemetry::init(
        flows::telemetry::log_format(&env).unwrap_or(flows::telemetry::LogFormat::Text),
    );
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("stage: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let shutdown = match flows::shutdown::on_signals() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("stage: cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
        stage::run(config, flows::metrics::Metrics::default(), shutdown).await;
        ExitCode::SUCCESS
    })
}
