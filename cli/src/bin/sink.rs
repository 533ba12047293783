//! `sink` — thin binary: parse the command line, read settings, hand over to
//! the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use flows::{Env, SettingError};
use outbox_cli::{bad_setting, failure, run_main, signals};
use sink::{RunError, SinkConfig};

const NAME: &str = "sink";

/// Outbox sink: loads Kafka topics into ClickHouse in batches.
///
/// Settings come from the environment (CLICKHOUSE_URL, CLICKHOUSE_USER,
/// CLICKHOUSE_PASSWORD, CLICKHOUSE_DATABASE, KAFKA_BROKERS, FLOWS, SINK_*);
/// docs/settings.md lists them all with their defaults.
#[derive(Parser)]
#[command(name = "sink", version)]
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
    /// Print the effective configuration of `sink run`: every setting with
    /// its value (secrets redacted) and where it came from (default, file,
    /// environment). Exit 2 naming a bad setting.
    Config,
    /// Create the ClickHouse database and tables (idempotent).
    Migrate,
    /// Load the selected flows until SIGTERM or SIGINT.
    Run,
    /// Per flow: the consumer group's committed offset, end and lag per
    /// partition (asked of Kafka), rows per ClickHouse table, and (from the
    /// local daemon's SINK_METRICS_ADDR, if it answers) the last insert.
    Status,
    /// Per flow: the rows flagged sent in Postgres (DATABASE_URL) against
    /// the distinct source ids in ClickHouse, with sample ids of any
    /// difference. Exit 0 when they match, 1 when they differ.
    Reconcile,
    /// Move a flow's consumer-group offsets back, so the sink reads its
    /// topics again (ClickHouse rebuilt from them). Refused while a sink of
    /// the group runs. A partition whose committed offset is before the
    /// target keeps it (moving it would skip messages the sink never
    /// stored) unless --allow-forward is given.
    Rewind {
        /// The flow whose group to move.
        #[arg(long)]
        flow: String,
        /// `earliest`, a time (2026-11-23T10:00:00Z) or an age (2h: that
        /// long ago).
        #[arg(long, value_name = "WHEN")]
        to: String,
        /// Also move partitions forward to the target, skipping the
        /// messages before it that the sink has not stored (counted and
        /// printed as skipped=N).
        #[arg(long)]
        allow_forward: bool,
    },
    /// The web dashboard on SINK_DASHBOARD_ADDR (default 127.0.0.1:9180):
    /// each flow's pipeline status, read from the daemons' endpoints and
    /// ClickHouse.
    Dashboard,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    run_main(NAME, cli.config, |env| async move {
        let outcome = match cli.command {
            Command::Config => setting(SinkConfig::from_env(&env)).map(|_| {
                outbox_cli::print_effective(&env, flows::settings::Reader::Sink);
                ExitCode::SUCCESS
            }),
            Command::Migrate => migrate(&env).await,
            Command::Run => run(&env).await,
            Command::Status => status(&env).await,
            Command::Reconcile => reconcile(&env).await,
            Command::Dashboard => dashboard(&env).await,
            Command::Rewind {
                flow,
                to,
                allow_forward,
            } => rewind(&env, &flow, &to, allow_forward).await,
        };
        outcome.unwrap_or_else(|code| code)
    })
}

fn setting<T>(result: Result<T, SettingError>) -> Result<T, ExitCode> {
    result.map_err(|e| bad_setting(NAME, &e))
}

async fn migrate(env: &Env) -> Result<ExitCode, ExitCode> {
    let cfg = setting(sink::config::clickhouse_config(env))?;
    let dirs = setting(outbox_cli::migrations_dirs(env))?;
    let migrations = setting(
        flows::migrations::all("clickhouse", &dirs)
            .map_err(|e| SettingError::new("MIGRATIONS_DIR", e.to_string())),
    )?;
    let shutdown = signals(NAME)?;
    let applied = sink::migrate_with_retry(&cfg, &migrations, &shutdown)
        .await
        .map_err(|e| match e.is_setting() {
            // A cluster the servers lack, a migration without a cluster form.
            true => bad_setting(
                NAME,
                &SettingError::new("CLICKHOUSE_CLUSTER", e.to_string()),
            ),
            false => failure("sink migrate", &e),
        })?;
    tracing::info!(applied = ?applied, "clickhouse migrations up to date");
    Ok(ExitCode::SUCCESS)
}

async fn run(env: &Env) -> Result<ExitCode, ExitCode> {
    let config = setting(SinkConfig::from_env(env))?;
    outbox_cli::check_kafka(NAME, &config.kafka.endpoint).await?;
    let shutdown = outbox_cli::daemon_signals(NAME)?;
    tracing::info!(flows = ?config.flows.iter().map(|f| f.name.to_string()).collect::<Vec<_>>(), "sink starting");
    match sink::run(config, daemon::metrics::Metrics::default(), shutdown).await {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(RunError::Panicked(panic)) => Err(outbox_cli::panicked(NAME, &panic)),
        // Tables of another mode than CLICKHOUSE_CLUSTER says, or a
        // cluster the servers do not have: a configuration error.
        Err(RunError::Schema(e @ sink::clickhouse::schema::SchemaError::Cluster { .. })) => {
            Err(bad_setting(
                NAME,
                &SettingError::new("CLICKHOUSE_CLUSTER", e.to_string()),
            ))
        }
        Err(RunError::Cluster(e)) => Err(bad_setting(
            NAME,
            &SettingError::new("CLICKHOUSE_CLUSTER", e),
        )),
        // A flow contradicting its tables is a configuration error.
        Err(RunError::Schema(e)) => Err(bad_setting(
            NAME,
            &SettingError::new("FLOWS", e.to_string()),
        )),
        Err(e) => Err(failure(NAME, &e)),
    }
}

async fn status(env: &Env) -> Result<ExitCode, ExitCode> {
    let config = setting(SinkConfig::from_env(env))?;
    let ch = &config.clickhouse;
    let client = sink::clickhouse::client::client(ch, Some(&ch.database));
    let report = ops::sink_status::report(
        &config.kafka.endpoint,
        &client,
        &config.flows,
        config.metrics_addr,
    )
    .await
    .map_err(|e| failure("sink status", &format!("{e:#}")))?;
    print!("{report}");
    Ok(ExitCode::SUCCESS)
}

async fn reconcile(env: &Env) -> Result<ExitCode, ExitCode> {
    let config = setting(SinkConfig::from_env(env))?;
    let url = setting(connections::pg::database_url(env))?;
    let pool_config = setting(connections::pg_pool::PoolConfig::from_env(env))?;
    let ch = &config.clickhouse;
    let client = sink::clickhouse::client::client(ch, Some(&ch.database));
    let pool = connections::pg_pool::Pool::new(&url, &pool_config)
        .map_err(|e| bad_setting(NAME, &SettingError::new("DATABASE_URL", e.to_string())))?;
    let pg = pool
        .get()
        .await
        .map_err(|e| failure("sink reconcile", &format!("postgres: {e}")))?;
    let mut consistent = true;
    for (flow, source, target, column) in ops::reconcile::pairs(&config.flows) {
        let c = ops::reconcile::compare(&pg, &client, &flow, &source, &target, &column)
            .await
            .map_err(|e| failure("sink reconcile", &format!("{e:#}")))?;
        consistent &= c.consistent();
        println!("{}", c.line());
    }
    if consistent {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("sink reconcile: differences found");
        Ok(ExitCode::FAILURE)
    }
}

async fn dashboard(env: &Env) -> Result<ExitCode, ExitCode> {
    let config = setting(ops::dashboard::DashboardConfig::from_env(env))?;
    let shutdown = signals(NAME)?;
    let addr = ops::dashboard::serve(config, shutdown.clone())
        .await
        .map_err(|e| failure("sink dashboard", &format!("cannot serve: {e}")))?;
    tracing::info!(url = %format!("http://{addr}/"), "dashboard serving");
    shutdown.cancelled().await;
    Ok(ExitCode::SUCCESS)
}

async fn rewind(
    env: &Env,
    flow: &str,
    to: &str,
    allow_forward: bool,
) -> Result<ExitCode, ExitCode> {
    use ops::rewind::{Action, Forward};
    let config = setting(SinkConfig::from_env(env))?;
    let to = setting(ops::rewind::To::parse(to).map_err(|e| SettingError::new("--to", e)))?;
    let Some(flow) = config.flows.iter().find(|f| f.name.as_str() == flow) else {
        return Err(bad_setting(
            NAME,
            &SettingError::new("--flow", format!("no flow {flow} among the selected flows")),
        ));
    };
    let mut topics: Vec<String> = flow.targets.iter().map(|t| t.topic.clone()).collect();
    topics.sort_unstable();
    topics.dedup();
    let forward = if allow_forward {
        Forward::Allow
    } else {
        Forward::Keep
    };
    let (kafka, group) = (config.kafka.endpoint.clone(), flow.consumer_group.clone());
    let moved = tokio::task::spawn_blocking(move || {
        ops::rewind::rewind(&kafka, &group, &topics, to, forward)
    })
    .await
    .map_err(|e| failure("sink rewind", &e))?
    .map_err(|e| failure("sink rewind", &e))?;
    let (name, group) = (&flow.name, &flow.consumer_group);
    for m in &moved {
        let from = m.from.map_or_else(|| "none".to_owned(), |o| o.to_string());
        println!(
            "flow={name} group={group} topic={} partition={} from={from} target={} to={} action={} skipped={}",
            m.topic,
            m.partition,
            m.target,
            m.to,
            m.action.as_str(),
            m.skipped
        );
    }
    let count = |action: Action| moved.iter().filter(|m| m.action == action).count();
    let skipped: u64 = moved.iter().map(|m| m.skipped).sum();
    println!(
        "flow={name} group={group} partitions={} back={} unchanged={} kept={} forward={} skipped={skipped}",
        moved.len(),
        count(Action::Back),
        count(Action::Unchanged),
        count(Action::Kept),
        count(Action::Forward),
    );
    if count(Action::Kept) > 0 {
        eprintln!(
            "sink rewind: {} partition(s) kept their offset: the target is after what the group has stored, and moving there would skip messages; --allow-forward moves them and counts what it skips",
            count(Action::Kept)
        );
    }
    Ok(ExitCode::SUCCESS)
}
