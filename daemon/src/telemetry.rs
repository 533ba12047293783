//! Logging set-up: human-readable by default, JSON with LOG_FORMAT=json,
//! levels from RUST_LOG (default `info`).

use tracing_subscriber::EnvFilter;

use flows::settings::{Env, LOG_FORMAT, SettingError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

pub fn log_format(env: &Env) -> Result<LogFormat, SettingError> {
    match LOG_FORMAT.get(env)? {
        "json" => Ok(LogFormat::Json),
        _ => Ok(LogFormat::Text),
    }
}

/// Installs the global subscriber. Safe to call more than once (later calls
/// do nothing), so tests can call it freely.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
