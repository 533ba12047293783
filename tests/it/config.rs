//! Layered settings through the binaries: built-in defaults, a TOML
//! settings file (`--config FILE` or `OUTBOX_CONFIG`), the environment —
//! and `relay config`, `sink config`, `stage config` printing what each
//! daemon would run with and where every value came from. No services
//! needed: these commands only read settings.

use std::path::PathBuf;

use outbox_tests::daemon::run_for_output;
use outbox_tests::stack::demo_files;

fn settings_file(name: &str, text: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("outbox-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text)?;
    Ok(path)
}

fn line<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} in:\n{out}"))
}

/// One settings file read by `relay config --config FILE`, and by `sink
/// config` and `stage config` through `OUTBOX_CONFIG`: each prints its own
/// settings with value and source (file key, environment, default), the
/// environment winning over the file, secrets as `***` and never in the
/// output.
#[test]
fn the_file_sets_what_the_environment_does_not_and_config_says_where_each_came_from()
-> anyhow::Result<()> {
    let file = settings_file(
        "layers",
        "flows = [\"sales\", \"router\"]\n\
         [relay]\nbatch_size = 500\npoll_interval_ms = 250\n\
         [kafka]\nbrokers = \"file-broker:9092\"\n\
         [sink]\nflush_interval_ms = 40\n\
         [stage]\nbatch_size = 77\n",
    )?;
    let path = file.display().to_string();
    let (flows_file, _) = demo_files();
    let (code, out, err) = run_for_output(
        "relay",
        &["config", "--config", &path],
        &[
            (
                "DATABASE_URL",
                "postgres://u:pg-secret@db.example:5432/outbox",
            ),
            ("KAFKA_BROKERS", "env-broker:9092"),
            ("FLOWS_FILE", &flows_file),
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        line(&out, "RELAY_BATCH_SIZE"),
        format!("RELAY_BATCH_SIZE=500  # file: relay.batch_size in {path}")
    );
    assert!(line(&out, "RELAY_POLL_INTERVAL_MS").starts_with("RELAY_POLL_INTERVAL_MS=250  # file"));
    assert_eq!(
        line(&out, "KAFKA_BROKERS"),
        "KAFKA_BROKERS=env-broker:9092  # environment",
        "the environment wins over the file"
    );
    assert_eq!(
        line(&out, "FLOWS"),
        format!("FLOWS=sales,router  # file: flows in {path}")
    );
    assert_eq!(
        line(&out, "RELAY_STANDBY_RETRY_MS"),
        "RELAY_STANDBY_RETRY_MS=1000  # default"
    );
    let url = line(&out, "DATABASE_URL");
    assert!(
        url.contains("db.example") && url.contains("***") && url.ends_with("# environment"),
        "{url}"
    );
    assert!(!out.contains("pg-secret") && !err.contains("pg-secret"));
    // The relay shows its own settings only.
    assert!(!out.contains("SINK_FLUSH_INTERVAL_MS"), "{out}");

    // The same file through OUTBOX_CONFIG, read by the sink and the stage.
    let (code, out, err) = run_for_output(
        "sink",
        &["config"],
        &[
            ("OUTBOX_CONFIG", &path),
            ("CLICKHOUSE_URL", "http://ch.example:8123"),
            ("CLICKHOUSE_PASSWORD", "ch-secret"),
            ("FLOWS_FILE", &flows_file),
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        line(&out, "SINK_FLUSH_INTERVAL_MS"),
        format!("SINK_FLUSH_INTERVAL_MS=40  # file: sink.flush_interval_ms in {path}")
    );
    assert!(line(&out, "KAFKA_BROKERS").starts_with("KAFKA_BROKERS=file-broker:9092  # file"));
    assert_eq!(
        line(&out, "CLICKHOUSE_PASSWORD"),
        "CLICKHOUSE_PASSWORD=***  # environment"
    );
    assert!(!out.contains("ch-secret"));
    let (code, out, err) = run_for_output(
        "stage",
        &["config"],
        &[
            ("OUTBOX_CONFIG", &path),
            ("FLOWS", "etl"),
            ("FLOWS_FILE", &flows_file),
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(line(&out, "FLOWS"), "FLOWS=etl  # environment");
    assert!(line(&out, "STAGE_BATCH_SIZE").starts_with("STAGE_BATCH_SIZE=77  # file"));
    Ok(())
}

/// A misspelt key, a misspelt section, a value that does not parse, a
/// secret in the file, a misspelt variable, a file that is not there: exit
/// 2, one line, naming the key and the file (or the variable); the secret
/// not echoed.
#[test]
fn unknown_keys_bad_values_and_secrets_in_either_layer_exit_2_naming_them() -> anyhow::Result<()> {
    let (flows_file, _) = demo_files();
    let env = [
        ("DATABASE_URL", "postgres://u:pw@localhost/db"),
        ("KAFKA_BROKERS", "localhost:9092"),
        ("FLOWS_FILE", flows_file.as_str()),
    ];
    let refused = |file_text: &str, name: &str, extra: &[(&str, &str)]| -> anyhow::Result<String> {
        let file = settings_file(name, file_text)?;
        let path = file.display().to_string();
        let mut env = env.to_vec();
        env.extend_from_slice(extra);
        let (code, out, err) = run_for_output("relay", &["config", "--config", &path], &env);
        assert_eq!(code, Some(2), "{name}: {out}{err}");
        assert_eq!(err.trim().lines().count(), 1, "{name}: one line: {err}");
        Ok(err.replace(&path, "FILE"))
    };
    let err = refused("[relay]\nbatch_sze = 1\n", "misspelt_key", &[])?;
    assert!(
        err.contains("relay.batch_sze in FILE") && err.contains("unknown setting"),
        "{err}"
    );
    let err = refused("[realy]\nbatch_size = 1\n", "misspelt_section", &[])?;
    assert!(
        err.contains("realy in FILE") && err.contains("unknown key"),
        "{err}"
    );
    let err = refused("[relay]\nbatch_size = \"lots\"\n", "bad_value", &[])?;
    assert!(err.contains("relay.batch_size in FILE"), "{err}");
    let err = refused(
        "[clickhouse]\npassword = \"hunter2\"\n",
        "secret_in_file",
        &[],
    )?;
    assert!(
        err.contains("clickhouse.password in FILE") && !err.contains("hunter2"),
        "{err}"
    );
    // A misspelt variable is refused as before, whatever the file says.
    let err = refused(
        "[relay]\nbatch_size = 500\n",
        "env_typo",
        &[("RELAY_BATCH_SZE", "1")],
    )?;
    assert!(
        err.contains("RELAY_BATCH_SZE") && err.contains("unknown setting"),
        "{err}"
    );
    // A file that is not there is a setting to fix too.
    let (code, _, err) = run_for_output(
        "relay",
        &["config", "--config", "/nonexistent/outbox.toml"],
        &env,
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--config /nonexistent/outbox.toml"), "{err}");
    Ok(())
}

/// One settings file for all three daemons may hold the relay's producer
/// settings under `[kafka]`: the sink and the stage leave them to the relay
/// (they exited 2 naming `KAFKA_ACKS`, "unknown setting"); in the
/// environment such a variable is still refused.
#[test]
fn a_shared_settings_file_with_the_relays_producer_settings_serves_every_daemon()
-> anyhow::Result<()> {
    let (flows_file, _) = demo_files();
    let file = settings_file(
        "shared",
        &format!(
            "flows = [\"sales\", \"etl\"]\nflows_file = [\"{flows_file}\"]\n\
             [kafka]\nbrokers = \"b:9092\"\nacks = \"all\"\nlinger_ms = 5\n"
        ),
    )?;
    let path = file.display().to_string();
    let base = [
        ("DATABASE_URL", "postgres://u@db.example:5432/outbox"),
        ("CLICKHOUSE_URL", "http://ch.example:8123"),
        ("OUTBOX_CONFIG", path.as_str()),
    ];
    for daemon in ["relay", "sink", "stage"] {
        let (code, _, err) = run_for_output(daemon, &["config"], &base);
        assert_eq!(code, Some(0), "{daemon} with the shared file: {err}");
    }
    let mut env = base[..2].to_vec();
    env.push(("KAFKA_ACKS", "all"));
    let (code, _, err) = run_for_output("sink", &["config"], &env);
    assert_eq!(
        code,
        Some(2),
        "the sink refuses KAFKA_ACKS in its environment"
    );
    assert!(err.contains("KAFKA_ACKS"), "{err}");
    Ok(())
}
