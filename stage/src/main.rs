//! `stage` — thin binary for Kafka → Kafka stages (the `etl` normaliser).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use flows::cli::{bad_setting, run_main, signals};
use stage::StageConfig;

const NAME: &str = "stage";

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
    run_main(NAME, |env| async move {
        let config = match StageConfig::from_env(&env) {
            Ok(c) => c,
            Err(e) => return bad_setting(NAME, &e),
        };
        if let Err(code) = flows::cli::check_kafka(NAME, &config.kafka).await {
            return code;
        }
        let shutdown = match signals(NAME) {
            Ok(s) => s,
            Err(code) => return code,
        };
        stage::run(config, flows::metrics::Metrics::default(), shutdown).await;
        ExitCode::SUCCESS
    })
}
