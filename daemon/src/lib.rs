//! What a daemon of the product runs on, whatever it moves: metrics
//! (`prometheus-client`), health and `/readyz`, the HTTP endpoint (axum)
//! and client, systemd's notify protocol and watchdog, telemetry, shutdown
//! on signals, backoff, crash points for the fault tests, time formats, and
//! the workers' skeleton every `run` ends in (a failure or panic stops all).

pub mod backoff;
pub mod failpoint;
pub mod health;
pub mod http;
pub mod metrics;
pub mod shutdown;
pub mod systemd;
pub mod telemetry;
pub mod time;
pub mod workers;
