//! `relay` — thin binary: parse the command line, read settings, hand over
//! to the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use flows::{Env, SettingError};
use outbox_cli::{bad_setting, failure, run_main, signals};
use relay::{RelayConfig, RelayError};

const NAME: &str = "relay";

/// Outbox relay: publishes pending Postgres rows to Kafka in transactions.
///
/// Settings come from the environment (DATABASE_URL, KAFKA_BROKERS, FLOWS,
/// RELAY_*, KAFKA_*); docs/settings.md lists them all with their defaults.
#[derive(Parser)]
#[command(name = "relay", version)]
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
    /// Print the effective configuration of `relay run`: every setting with
    /// its value (secrets redacted) and where it came from (default, file,
    /// environment). Exit 2 naming a bad setting.
    Config,
    /// Apply the Postgres migrations (idempotent: records what it applied);
    /// with KAFKA_BROKERS set, also create the flows' topics that do not
    /// exist (KAFKA_TOPIC_*; existing ones are left as they are).
    Migrate,
    /// Relay the selected flows until SIGTERM or SIGINT.
    Run,
    /// Per flow: the active relay, pending rows and the oldest pending id
    /// per table, and (from the local daemon's RELAY_METRICS_ADDR, if it
    /// answers) the oldest pending row's age and the last publish.
    Status,
    /// Put rows set aside in outbox_dead_rows back in their flow.
    Replay {
        /// The flow whose set-aside rows to replay.
        #[arg(long)]
        flow: String,
        /// Only this source row id (default: all of the flow's).
        #[arg(long)]
        id: Option<i64>,
    },
    /// Publish rows already sent once more (through the normal
    /// transactional path; the sinks' tables absorb the repeat): an id
    /// range, or the rows since a time (by the sources' `time_column`).
    Resend {
        /// The flow whose rows to resend.
        #[arg(long)]
        flow: String,
        /// Ids A..B (both included).
        #[arg(
            long,
            value_name = "A..B",
            conflicts_with = "since",
            required_unless_present = "since"
        )]
        ids: Option<String>,
        /// A time (2026-11-23T10:00:00Z) or an age (2h: that long ago).
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
        /// Leave out rows changed after they were sent (without it, such
        /// rows refuse the whole resend, named: a target table ordered by
        /// a changed column would keep both copies).
        #[arg(long)]
        skip_changed: bool,
    },
    /// Delete a flow's sent rows older than its `retention` (or
    /// --older-than), in short statements that never touch a pending row;
    /// what the active relay does every RELAY_PRUNE_INTERVAL_MS.
    Prune {
        /// The flow whose source tables to prune.
        #[arg(long)]
        flow: String,
        /// An age such as 7d, 12h or 30m (default: the flow's retention).
        #[arg(long, value_name = "AGE")]
        older_than: Option<String>,
        /// Count what would be deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    run_main(NAME, cli.config, |env| async move {
        let outcome = match cli.command {
            Command::Config => setting(RelayConfig::from_env(&env)).map(|_| {
                outbox_cli::print_effective(&env, flows::settings::Reader::Relay);
                ExitCode::SUCCESS
            }),
            Command::Migrate => migrate(&env).await,
            Command::Run => run(&env).await,
            Command::Status => status(&env).await,
            Command::Replay { flow, id } => replay(&env, &flow, id).await,
            Command::Resend {
                flow,
                ids,
                since,
                skip_changed,
            } => resend(&env, &flow, ids.as_deref(), since.as_deref(), skip_changed).await,
            Command::Prune {
                flow,
                older_than,
                dry_run,
            } => prune(&env, &flow, older_than.as_deref(), dry_run).await,
        };
        outcome.unwrap_or_else(|code| code)
    })
}

fn setting<T>(result: Result<T, SettingError>) -> Result<T, ExitCode> {
    result.map_err(|e| bad_setting(NAME, &e))
}

/// A pooled session on DATABASE_URL, or the exit code: `migrate` waits
/// for Postgres (retried while unreachable; 0 if SIGTERM came first), the
/// other commands give up after `POSTGRES_CONNECT_TIMEOUT_MS` (exit 1).
async fn connect(
    env: &Env,
    purpose: &str,
) -> Result<
    (
        connections::pg_pool::Session,
        tokio_util::sync::CancellationToken,
    ),
    ExitCode,
> {
    let pg = setting(relay::config::postgres_config(env))?;
    let shutdown = signals(NAME)?;
    let pool = connections::pg_pool::Pool::new(&pg.url, &pg.pool)
        .map_err(|e| bad_setting(NAME, &SettingError::new("DATABASE_URL", e.to_string())))?;
    let session = if purpose == "migrate" {
        pool.get_retrying(purpose, &shutdown)
            .await
            .ok_or(ExitCode::SUCCESS)?
    } else {
        pool.get()
            .await
            .map_err(|e| failure(&format!("relay {purpose}"), &format!("postgres: {e}")))?
    };
    Ok((session, shutdown))
}

async fn migrate(env: &Env) -> Result<ExitCode, ExitCode> {
    let dirs = setting(outbox_cli::migrations_dirs(env))?;
    let migrations = flows::migrations::all("postgres", &dirs)
        .map_err(|e| bad_setting(NAME, &SettingError::new("MIGRATIONS_DIR", e.to_string())))?;
    let kafka = setting(topics_to_create(env))?;
    let (mut client, shutdown) = connect(env, "migrate").await?;
    let applied = relay::migrate::migrate(&mut client, &migrations)
        .await
        .map_err(|e| failure("relay migrate", &connections::pg::detail(&e)))?;
    tracing::info!(applied = ?applied, "postgres migrations up to date");
    if let Some((endpoint, flows, spec)) = kafka {
        outbox_cli::check_kafka(NAME, &endpoint).await?;
        let topics = connections::topics::Topics::new(&endpoint)
            .map_err(|e| failure("relay migrate", &format!("kafka: {e}")))?;
        let made = relay::migrate::create_topics(&topics, &flows, &spec, &shutdown)
            .await
            .map_err(|e| match e.setting() {
                Some(name) => bad_setting(NAME, &SettingError::new(name, e.to_string())),
                None => failure("relay migrate", &e),
            })?;
        tracing::info!(topics = ?made, "kafka topics exist");
    } else {
        tracing::info!("KAFKA_BROKERS not set: no topics created");
    }
    Ok(ExitCode::SUCCESS)
}

/// With KAFKA_BROKERS set, `migrate` creates the selected flows' topics:
/// the brokers, the flows and what topics are created with.
fn topics_to_create(
    env: &Env,
) -> Result<
    Option<(
        connections::kafka::KafkaEndpoint,
        Vec<flows::Flow>,
        connections::topics::TopicSpec,
    )>,
    SettingError,
> {
    if !flows::settings::KAFKA_BROKERS.is_set(env) {
        return Ok(None);
    }
    Ok(Some((
        connections::kafka::KafkaEndpoint::from_env(env)?,
        flows::settings::selected_flows(env)?,
        connections::topics::TopicSpec::from_env(env)?,
    )))
}

async fn run(env: &Env) -> Result<ExitCode, ExitCode> {
    let config = setting(RelayConfig::from_env(env))?;
    outbox_cli::warn_ignored(&config.ignored);
    outbox_cli::check_kafka(NAME, &config.kafka.endpoint).await?;
    let shutdown = outbox_cli::daemon_signals(NAME)?;
    tracing::info!(flows = ?config.flows.iter().map(|f| f.name.to_string()).collect::<Vec<_>>(), "relay starting");
    match relay::run(config, daemon::metrics::Metrics::default(), shutdown).await {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(RelayError::Panicked(panic)) => Err(outbox_cli::panicked(NAME, &panic)),
        // A flow contradicting its tables is a configuration error.
        Err(RelayError::Source(e)) => Err(bad_setting(
            NAME,
            &SettingError::new("FLOWS", e.to_string()),
        )),
        Err(e) => Err(failure(NAME, &e)),
    }
}

async fn status(env: &Env) -> Result<ExitCode, ExitCode> {
    let flows = setting(flows::settings::selected_flows(env))?;
    let daemon = setting(flows::settings::RELAY_METRICS_ADDR.get(env))?;
    let (client, _) = connect(env, "status").await?;
    let report = ops::relay_status::report(&client, &flows, daemon)
        .await
        .map_err(|e| failure("relay status", &connections::pg::detail(&e)))?;
    print!("{report}");
    Ok(ExitCode::SUCCESS)
}

async fn replay(env: &Env, flow: &str, id: Option<i64>) -> Result<ExitCode, ExitCode> {
    let flow = one_flow(env, flow)?;
    let (mut client, _) = connect(env, "replay").await?;
    let n = ops::replay::replay(&mut client, &flow, id)
        .await
        .map_err(|e| failure("relay replay", &connections::pg::detail(&e)))?;
    println!("flow={} replayed={n}", flow.name);
    Ok(ExitCode::SUCCESS)
}

async fn prune(
    env: &Env,
    flow: &str,
    older_than: Option<&str>,
    dry_run: bool,
) -> Result<ExitCode, ExitCode> {
    let flow = &one_flow(env, flow)?;
    let age = match (older_than, flow.retention) {
        (Some(text), _) => {
            setting(flows::parse_age(text).map_err(|e| SettingError::new("--older-than", e)))?
        }
        (None, Some(retention)) => retention,
        (None, None) => {
            return Err(bad_setting(
                NAME,
                &SettingError::new(
                    "--older-than",
                    format!("flow {} has no retention: give --older-than", flow.name),
                ),
            ));
        }
    };
    let mut prunes = Vec::new();
    for source in &flow.sources {
        let prune = relay::prune::Prune::of(source, dry_run).ok_or_else(|| {
            bad_setting(
                NAME,
                &SettingError::new(
                    "--flow",
                    format!(
                        "source table {} of flow {} has no time_column to tell a row's age",
                        source.table, flow.name
                    ),
                ),
            )
        })?;
        prunes.push(prune);
    }
    let (client, _) = connect(env, "prune").await?;
    for prune in &prunes {
        let done = prune
            .run(&**client, age, |_| {})
            .await
            .map_err(|e| failure("relay prune", &connections::pg::detail(&e)))?;
        let verb = if dry_run { "would_prune" } else { "pruned" };
        println!(
            "flow={} table={} {verb}={} partitions={} statements={}",
            flow.name, prune.table, done.rows, done.partitions, done.stretches
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn resend(
    env: &Env,
    flow: &str,
    ids: Option<&str>,
    since: Option<&str>,
    skip_changed: bool,
) -> Result<ExitCode, ExitCode> {
    let flow = &one_flow(env, flow)?;
    let which = match (ids, since) {
        (Some(ids), _) => {
            let (lo, hi) =
                setting(ops::resend::parse_ids(ids).map_err(|e| SettingError::new("--ids", e)))?;
            ops::resend::Which::Ids(lo, hi)
        }
        (None, Some(since)) => {
            if let Some(source) = flow.sources.iter().find(|s| s.time_column.is_none()) {
                return Err(bad_setting(
                    NAME,
                    &SettingError::new(
                        "--since",
                        format!(
                            "source table {} of flow {} has no time_column; give --ids",
                            source.table, flow.name
                        ),
                    ),
                ));
            }
            ops::resend::Which::Since(setting(
                flows::parse_time(since).map_err(|e| SettingError::new("--since", e)),
            )?)
        }
        (None, None) => {
            return Err(bad_setting(
                NAME,
                &SettingError::new("--ids", "give --ids A..B or --since WHEN"),
            ));
        }
    };
    let (mut client, _) = connect(env, "resend").await?;
    let resent = match ops::resend::resend(&mut client, flow, which, skip_changed).await {
        Ok(resent) => resent,
        Err(e @ ops::resend::ResendError::Postgres(_)) => return Err(failure("relay resend", &e)),
        Err(e) => {
            let option = if matches!(e, ops::resend::ResendError::Changed { .. }) {
                "--skip-changed"
            } else {
                "--flow"
            };
            return Err(bad_setting(NAME, &SettingError::new(option, e.to_string())));
        }
    };
    for (table, rows) in resent {
        println!("flow={} table={table} resent={rows}", flow.name);
    }
    Ok(ExitCode::SUCCESS)
}

/// The flow `--flow` names, from the catalog (exit 2 naming `--flow` when
/// there is none).
fn one_flow(env: &Env, name: &str) -> Result<flows::Flow, ExitCode> {
    let catalog = setting(flows::settings::catalog(env))?;
    setting(
        catalog
            .select(Some(&[name.to_owned()]))
            .map_err(|e| SettingError::new("--flow", e.to_string())),
    )?
    .into_iter()
    .next()
    .ok_or_else(|| bad_setting(NAME, &SettingError::new("--flow", "no such flow")))
}
