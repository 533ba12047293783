//! `kafka-mock` — runs librdkafka's mock Kafka cluster for the local stack
//! (no broker can be installed on the dev machine). Prints the bootstrap
//! address, optionally writes it to a file, and serves until SIGTERM/SIGINT.

use std::io::Write;
use std::path::PathBuf;

use clap::Parser;

/// Mock Kafka cluster for local development and tests.
#[derive(Parser)]
#[command(name = "kafka-mock", version)]
struct Cli {
    /// Number of brokers.
    #[arg(long, default_value_t = 3)]
    brokers: i32,
    /// Write the bootstrap address to this file once ready.
    #[arg(long)]
    bootstrap_file: Option<PathBuf>,
    /// Topics to create up front, as name:partitions (repeatable).
    #[arg(long = "topic")]
    topics: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mock = devstack::MockKafka::start(cli.brokers)?;
    for spec in &cli.topics {
        let (name, partitions) = spec.split_once(':').unwrap_or((spec, "4"));
        mock.create_topic(name, partitions.parse()?)?;
    }
    let bootstrap = mock.bootstrap_servers().to_owned();
    devstack::wait_ready(&bootstrap, std::time::Duration::from_secs(10))?;
    if let Some(path) = &cli.bootstrap_file {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &bootstrap)?;
        std::fs::rename(&tmp, path)?;
    }
    println!("{bootstrap}");
    std::io::stdout().flush()?;
    // Serve until killed: SIGTERM/SIGINT's default action ends the process,
    // and with it the brokers; there is no state worth saving.
    let _mock = mock;
    loop {
        std::thread::park();
    }
}
