//! `stage` — thin binary for Kafka → Kafka stages (the `etl` normaliser).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use outbox_cli::{bad_setting, run_main};
use stage::StageConfig;

const NAME: &str = "stage";

/// Exactly-once Kafka → Kafka stage: consumes a flow's input topics,
/// transforms, produces its output topic, committing consumer offsets in the
/// producer's transaction.
///
/// Settings come from the environment (KAFKA_BROKERS, FLOWS, STAGE_*);
/// docs/settings.md lists them with their defaults.
#[derive(Parser)]
#[command(name = "stage", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// A TOML settings file (sections `[relay]`, `[sink]`, `[stage]`,
    /// `[kafka]`, `[clickhouse]`); variables in the environment win.
    #[arg(long, global = true, value_name = "FILE", env = "OUTBOX_CONFIG")]
    config: Option<std::path::PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Print the effective configuration of `stage run`: every setting with
    /// its value (secrets redacted) and where it came from (default, file,
    /// environment). Exit 2 naming a bad setting.
    Config,
    /// Run the selected flows' stages until SIGTERM or SIGINT.
    Run,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    run_main(NAME, cli.config, |env| async move {
        let config = match StageConfig::from_env(&env) {
            Ok(c) => c,
            Err(e) => return bad_setting(NAME, &e),
        };
        if matches!(cli.command, Command::Config) {
            outbox_cli::print_effective(&env, flows::settings::Reader::Stage);
            return ExitCode::SUCCESS;
        }
        if let Err(code) = outbox_cli::check_kafka(NAME, &config.kafka).await {
            return code;
        }
        let shutdown = match outbox_cli::daemon_signals(NAME) {
            Ok(s) => s,
            Err(code) => return code,
        };
        match stage::run(config, daemon::metrics::Metrics::default(), shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(panic) => outbox_cli::panicked(NAME, &panic),
        }
    })
}
