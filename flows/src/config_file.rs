//! The optional settings file (`--config FILE`, or `OUTBOX_CONFIG`): TOML,
//! read with the `config` crate, naming the same settings as the
//! environment variables. `[relay] batch_size = 500` is `RELAY_BATCH_SIZE`,
//! `[kafka] brokers = "…"` is `KAFKA_BROKERS`, a top-level
//! `flows = ["sales"]` is `FLOWS`: one file holds the settings of relay,
//! sink and stage, each daemon reading its own. Layers, lowest first:
//! built-in defaults, this file, the environment.
//!
//! Refused here (exit 2, naming the key and the file): a section or a
//! top-level key the product does not have, and secrets — those come only
//! from the environment or a `…_file` key naming a file that holds them.
//! A misspelt key inside a section is refused by the daemon that owns the
//! section, like a misspelt variable.

use std::path::Path;

use crate::settings::{Declared, SettingError};

/// Sections, each the prefix of its variables (`[sink]` → `SINK_…`).
pub const SECTIONS: &[&str] = &["relay", "sink", "stage", "kafka", "clickhouse"];

/// Where `setting` goes in the file: `relay.batch_size`, a top-level
/// `flows`, `database_url_file` for a secret; `None` when the file has no
/// key for it (environment-only settings, those of no section).
pub fn key(setting: &dyn Declared) -> Option<String> {
    if setting.env_only() {
        return None;
    }
    let name = setting.name().to_lowercase();
    let name = if setting.secret() {
        format!("{name}_file")
    } else {
        name
    };
    match SECTIONS
        .iter()
        .find_map(|s| Some((s, name.strip_prefix(s)?.strip_prefix('_')?)))
    {
        Some((section, key)) => Some(format!("{section}.{key}")),
        None => Some(name),
    }
}

/// The keys outside any section, as the file writes them.
pub fn top_level() -> Vec<String> {
    crate::settings::all()
        .filter_map(key)
        .filter(|k| !k.contains('.'))
        .collect()
}

/// One setting the file sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSetting {
    /// The environment variable it stands for.
    pub var: String,
    pub value: String,
    /// Where it came from, for messages: `relay.batch_size in FILE`.
    pub origin: String,
}

/// Reads `path` into the variables it sets.
pub fn read(path: &Path) -> Result<Vec<FileSetting>, SettingError> {
    let shown = path.display().to_string();
    let file_error = |reason: String| SettingError::new(&format!("--config {shown}"), reason);
    let table = config::Config::builder()
        .add_source(config::File::from(path).format(config::FileFormat::Toml))
        .build()
        .map_err(|e| file_error(e.to_string()))?
        .cache
        .into_table()
        .map_err(|e| file_error(e.to_string()))?;
    let mut settings = Vec::new();
    for (key, value) in table {
        if SECTIONS.contains(&key.as_str()) {
            let section = value.into_table().map_err(|_| {
                SettingError::new(&format!("{key} in {shown}"), "expected a [section]")
            })?;
            for (name, value) in section {
                let origin = format!("{key}.{name} in {shown}");
                let var = format!("{key}_{name}").to_uppercase();
                settings.push(setting(var, value, origin)?);
            }
        } else if top_level().contains(&key) || top_level().contains(&format!("{key}_file")) {
            // A secret's own name is known here to be refused as a secret.
            let origin = format!("{key} in {shown}");
            settings.push(setting(key.to_uppercase(), value, origin)?);
        } else {
            return Err(SettingError::new(
                &format!("{key} in {shown}"),
                format!(
                    "unknown key (sections: {}; top-level keys: {})",
                    SECTIONS.join(", "),
                    top_level().join(", ")
                ),
            ));
        }
    }
    Ok(settings)
}

fn setting(var: String, value: config::Value, origin: String) -> Result<FileSetting, SettingError> {
    if crate::settings::find(&var).is_some_and(|s| s.secret()) {
        return Err(SettingError::new(
            &origin,
            format!(
                "a secret: set {var} in the environment, or name a file holding it with {}_file",
                origin.split(' ').next().unwrap_or_default()
            ),
        ));
    }
    let value = match value.kind {
        config::ValueKind::Array(items) => items
            .into_iter()
            .map(|item| item.into_string())
            .collect::<Result<Vec<_>, _>>()
            .map(|items| items.join(",")),
        _ => value.into_string(),
    }
    .map_err(|_| SettingError::new(&origin, "expected a value or a list of values"))?;
    Ok(FileSetting { var, value, origin })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_text(text: &str) -> Result<Vec<FileSetting>, SettingError> {
        let dir = std::env::temp_dir().join(format!("outbox-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let path = dir.join(format!("{}.toml", text.len()));
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
        read(&path)
    }

    #[test]
    fn sections_become_the_variables() {
        let settings = read_text(
            "flows = [\"sales\", \"router\"]\n[relay]\nbatch_size = 500\n[kafka]\nbrokers = \"k:9092\"\n[sink]\nflush_interval_ms = 50\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let pairs: Vec<(&str, &str)> = settings
            .iter()
            .map(|s| (s.var.as_str(), s.value.as_str()))
            .collect();
        assert!(pairs.contains(&("FLOWS", "sales,router")), "{pairs:?}");
        assert!(pairs.contains(&("RELAY_BATCH_SIZE", "500")), "{pairs:?}");
        assert!(pairs.contains(&("KAFKA_BROKERS", "k:9092")), "{pairs:?}");
        assert!(
            pairs.contains(&("SINK_FLUSH_INTERVAL_MS", "50")),
            "{pairs:?}"
        );
        let origin = settings
            .iter()
            .find(|s| s.var == "RELAY_BATCH_SIZE")
            .map(|s| s.origin.clone())
            .unwrap_or_default();
        assert!(origin.starts_with("relay.batch_size in "), "{origin}");
    }

    #[test]
    fn the_top_level_keys_are_those_of_no_section() {
        assert_eq!(
            top_level(),
            [
                "flows",
                "flows_file",
                "migrations_dir",
                "log_format",
                "database_url_file"
            ]
        );
        let batch = crate::settings::find("RELAY_BATCH_SIZE").map(key);
        assert_eq!(batch, Some(Some("relay.batch_size".to_owned())));
        let pool = crate::settings::find("POSTGRES_POOL_SIZE").map(key);
        assert_eq!(pool, Some(None), "environment only");
    }

    #[test]
    fn unknown_sections_keys_and_secrets_are_refused_naming_them() {
        let err = read_text("[realy]\nbatch_size = 1\n").err();
        assert!(
            err.as_ref()
                .is_some_and(|e| e.name.starts_with("realy in ")),
            "{err:?}"
        );
        let err = read_text("batch_size = 1\n").err();
        assert!(
            err.as_ref()
                .is_some_and(|e| e.name.starts_with("batch_size in ")),
            "{err:?}"
        );
        let err = read_text("[clickhouse]\npassword = \"hunter2\"\n").err();
        assert!(
            err.as_ref()
                .is_some_and(|e| e.name.starts_with("clickhouse.password in ")
                    && e.reason.contains("clickhouse.password_file")
                    && !e.to_string().contains("hunter2")),
            "{err:?}"
        );
        let err = read_text("database_url = \"postgres://u:hunter2@h/db\"\n").err();
        assert!(
            err.as_ref()
                .is_some_and(|e| e.name.starts_with("database_url in ")
                    && e.reason.contains("database_url_file")
                    && !e.to_string().contains("hunter2")),
            "{err:?}"
        );
        let err = read_text("[relay\n").err();
        assert!(
            err.as_ref()
                .is_some_and(|e| e.name.starts_with("--config ")),
            "{err:?}"
        );
        // A secret's file is fine.
        let ok = read_text("[clickhouse]\npassword_file = \"/run/secrets/ch\"\n")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ok[0].var, "CLICKHOUSE_PASSWORD_FILE");
    }
}
