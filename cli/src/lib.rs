//! What every binary's `main` does before handing over: read the settings
//! (the environment over the optional settings file), set up logging, build
//! the runtime; and how it reports a bad setting (one line, exit code 2).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::OnceLock;

use tokio_util::sync::CancellationToken;

use flows::settings::{Env, Reader, SettingError, Source};

/// Where the settings file's values came from (variable → `key in FILE`),
/// so that a bad value is reported under the name the operator wrote.
static ORIGINS: OnceLock<BTreeMap<String, String>> = OnceLock::new();

/// The settings: the environment over the settings file `config` (the
/// `--config` argument, else `OUTBOX_CONFIG`), secrets read from their
/// `…_FILE`s.
pub fn settings(config: Option<PathBuf>) -> Result<Env, SettingError> {
    let mut env = Env::from_process();
    let file = config.or_else(|| env.get("OUTBOX_CONFIG").map(PathBuf::from));
    if let Some(path) = file {
        let from_file = flows::config_file::read(&path)?;
        let _ = ORIGINS.set(
            from_file
                .iter()
                .map(|s| (s.var.clone(), s.origin.clone()))
                .collect(),
        );
        env = env.over_file(from_file);
    }
    env.with_secret_files()
}

/// Runs `body` on a multi-threaded runtime with logging set up, the
/// settings read from the environment over the settings file `config`.
pub fn run_main<F, Fut>(name: &str, config: Option<PathBuf>, body: F) -> ExitCode
where
    F: FnOnce(Env) -> Fut,
    Fut: Future<Output = ExitCode>,
{
    let env = match settings(config) {
        Ok(env) => env,
        Err(e) => return bad_setting(name, &e),
    };
    let format = match daemon::telemetry::log_format(&env) {
        Ok(f) => f,
        Err(e) => return bad_setting(name, &e),
    };
    daemon::telemetry::init(format);
    daemon::failpoint::announce();
    match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime.block_on(body(env)),
        Err(e) => {
            eprintln!("{name}: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// MIGRATIONS_DIR: the folders of the flows' own migrations (each with
/// `postgres/` and `clickhouse/`), applied in that order after the
/// product's.
pub fn migrations_dirs(env: &Env) -> Result<Vec<PathBuf>, SettingError> {
    Ok(flows::settings::MIGRATIONS_DIR
        .get_opt(env)?
        .unwrap_or_default()
        .into_iter()
        .map(PathBuf::from)
        .collect())
}

/// One line naming the setting (the settings file's key when it came from
/// there), exit code 2.
pub fn bad_setting(name: &str, e: &SettingError) -> ExitCode {
    match ORIGINS.get().and_then(|origins| origins.get(&e.name)) {
        Some(origin) => eprintln!("{name}: invalid setting {origin}: {}", e.reason),
        None => eprintln!("{name}: {e}"),
    }
    ExitCode::from(2)
}

/// `relay config` (and the sink's and stage's): every setting declared for
/// the daemon, with its value (secrets redacted) and where it came from,
/// one `NAME=value  # source` per line.
pub fn print_effective(env: &Env, reader: Reader) {
    for setting in env.effective(reader) {
        let value = setting.shown.unwrap_or_default();
        let source = match setting.source {
            Source::Default => "default".to_owned(),
            Source::Environment => "environment".to_owned(),
            Source::File(origin) => format!("file: {origin}"),
        };
        match setting.ignored {
            Some(why) => println!("{}={value}  # {source}; ignored: {why}", setting.name),
            None => println!("{}={value}  # {source}", setting.name),
        }
    }
}

/// One warning per setting that is set but no longer used (see
/// `Env::ignored`), at a daemon's start.
pub fn warn_ignored(ignored: &[(&str, &str)]) {
    for (name, why) in ignored {
        tracing::warn!(setting = name, "{name} is no longer used: {why}");
    }
}

/// Any other failure: one line, exit code 1.
pub fn failure(name: &str, e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("{name}: {e}");
    ExitCode::FAILURE
}

/// The SIGTERM/SIGINT token, or the exit code to return.
pub fn signals(name: &str) -> Result<CancellationToken, ExitCode> {
    daemon::shutdown::on_signals()
        .map_err(|e| failure(name, &format!("cannot install signal handlers: {e}")))
}

/// For a daemon's `run`: the SIGTERM/SIGINT token, which a panic anywhere
/// in the process cancels too (see `daemon::workers`).
pub fn daemon_signals(name: &str) -> Result<CancellationToken, ExitCode> {
    let shutdown = signals(name)?;
    daemon::workers::stop_on_panic(&shutdown);
    Ok(shutdown)
}

/// A worker panicked: one line, exit code 101 (as a Rust `main` that
/// panics).
pub fn panicked(name: &str, panic: &daemon::workers::Panic) -> ExitCode {
    eprintln!("{name}: {panic}");
    ExitCode::from(daemon::workers::PANIC_EXIT)
}

/// Exit code 2 naming the setting when Kafka refuses the credentials or
/// certificates (see `KafkaEndpoint::check_credentials`); brokers that do
/// not answer within 10 s are left to the daemon's retries.
pub async fn check_kafka(
    name: &str,
    kafka: &connections::kafka::KafkaEndpoint,
) -> Result<(), ExitCode> {
    let endpoint = kafka.clone();
    match tokio::task::spawn_blocking(move || {
        endpoint.check_credentials(std::time::Duration::from_secs(10))
    })
    .await
    {
        Ok(Err(e)) => Err(bad_setting(name, &e)),
        _ => Ok(()),
    }
}
