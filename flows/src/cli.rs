//! What every binary's `main` does before handing over: snapshot the
//! environment, set up logging, build the runtime; and how it reports a bad
//! setting (one line, exit code 2).

use std::future::Future;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use crate::settings::{Env, SettingError};

/// Runs `body` on a multi-threaded runtime with logging set up.
pub fn run_main<F, Fut>(name: &str, body: F) -> ExitCode
where
    F: FnOnce(Env) -> Fut,
    Fut: Future<Output = ExitCode>,
{
    let env = match Env::from_process().with_secret_files() {
        Ok(env) => env,
        Err(e) => return bad_setting(name, &e),
    };
    let format = match crate::telemetry::log_format(&env) {
        Ok(f) => f,
        Err(e) => return bad_setting(name, &e),
    };
    crate::telemetry::init(format);
    match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime.block_on(body(env)),
        Err(e) => {
            eprintln!("{name}: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One line naming the setting, exit code 2.
pub fn bad_setting(name: &str, e: &SettingError) -> ExitCode {
    eprintln!("{name}: {e}");
    ExitCode::from(2)
}

/// Any other failure: one line, exit code 1.
pub fn failure(name: &str, e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("{name}: {e}");
    ExitCode::FAILURE
}

/// The SIGTERM/SIGINT token, or the exit code to return.
pub fn signals(name: &str) -> Result<CancellationToken, ExitCode> {
    crate::shutdown::on_signals()
        .map_err(|e| failure(name, &format!("cannot install signal handlers: {e}")))
}

/// Exit code 2 naming the setting when Kafka refuses the credentials or
/// certificates (see `KafkaEndpoint::check_credentials`); brokers that do
/// not answer within 10 s are left to the daemon's retries.
pub async fn check_kafka(name: &str, kafka: &crate::kafka::KafkaEndpoint) -> Result<(), ExitCode> {
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
