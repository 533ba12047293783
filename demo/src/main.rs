//! `outbox-demo` — thin binary: parse the command line, read the settings
//! (the same as the daemons': FLOWS_FILE, DATABASE_URL, CLICKHOUSE_*), hand
//! over to the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use flows::{Env, SettingError};
use outbox_cli::{bad_setting, failure, run_main, signals};

const NAME: &str = "outbox-demo";

/// The demo of outbox-relay: rows for its flows, the events watcher and the
/// sales dashboard.
///
/// Settings come from the environment, as the daemons read them: FLOWS_FILE
/// (the demo's is demo/flows.toml), DATABASE_URL, CLICKHOUSE_*, and for the
/// dashboard SINK_DASHBOARD_ADDR, RELAY_METRICS_ADDR, SINK_METRICS_ADDR.
#[derive(Parser)]
#[command(name = "outbox-demo", version)]
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
    /// The web dashboard on SINK_DASHBOARD_ADDR (default 127.0.0.1:9180):
    /// `sink dashboard`'s status per flow, and the seed 002 sales dashboard.
    Dashboard,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    run_main(NAME, cli.config, |env| async move {
        let outcome = match cli.command {
            Command::Generate { flow, rate, total } => generate(&env, &flow, rate, total).await,
            Command::Watch {
                interval_secs,
                from_start,
            } => watch(&env, interval_secs, from_start).await,
            Command::Dashboard => dashboard(&env).await,
        };
        outcome.unwrap_or_else(|code| code)
    })
}

fn setting<T>(result: Result<T, SettingError>) -> Result<T, ExitCode> {
    result.map_err(|e| bad_setting(NAME, &e))
}

async fn generate(
    env: &Env,
    flow: &str,
    rate: u64,
    total: Option<u64>,
) -> Result<ExitCode, ExitCode> {
    let catalog = setting(flows::settings::catalog(env))?;
    let target = setting(
        outbox_demo::generate::source_flow(&catalog, flow)
            .map_err(|e| SettingError::new("--flow", e)),
    )?;
    if rate == 0 {
        return Err(bad_setting(
            NAME,
            &SettingError::new("--rate", "must be greater than 0"),
        ));
    }
    let url = setting(connections::pg::database_url(env))?;
    let pool_config = setting(connections::pg_pool::PoolConfig::from_env(env))?;
    let shutdown = signals(NAME)?;
    let pool = connections::pg_pool::Pool::new(&url, &pool_config)
        .map_err(|e| bad_setting(NAME, &SettingError::new("DATABASE_URL", e.to_string())))?;
    let client = pool
        .get()
        .await
        .map_err(|e| failure("outbox-demo generate", &format!("postgres: {e}")))?;
    outbox_demo::generate::generate(&client, &target, rate, total, &shutdown)
        .await
        .map_err(|e| failure("outbox-demo generate", &connections::pg::detail(&e)))?;
    Ok(ExitCode::SUCCESS)
}

async fn watch(env: &Env, interval_secs: u64, from_start: bool) -> Result<ExitCode, ExitCode> {
    let cfg = setting(sink::config::clickhouse_config(env))?;
    if interval_secs == 0 {
        return Err(bad_setting(
            NAME,
            &SettingError::new("--interval-secs", "must be greater than 0"),
        ));
    }
    let shutdown = signals(NAME)?;
    let client = sink::clickhouse::client::client(&cfg, Some(&cfg.database));
    let interval = std::time::Duration::from_secs(interval_secs);
    outbox_demo::watch::watch(
        &client,
        interval,
        from_start,
        &mut std::io::stdout(),
        &shutdown,
    )
    .await
    .map_err(|e| failure("outbox-demo watch", &e))?;
    Ok(ExitCode::SUCCESS)
}

async fn dashboard(env: &Env) -> Result<ExitCode, ExitCode> {
    let config = setting(ops::dashboard::DashboardConfig::from_env(env))?;
    let shutdown = signals(NAME)?;
    let addr =
        ops::dashboard::serve_with(config, &[outbox_demo::dashboard::SALES], shutdown.clone())
            .await
            .map_err(|e| failure("outbox-demo dashboard", &format!("cannot serve: {e}")))?;
    tracing::info!(url = %format!("http://{addr}/"), "dashboard serving");
    shutdown.cancelled().await;
    Ok(ExitCode::SUCCESS)
}
