//! Settings come from the environment, over an optional settings file
//! (`config_file`), over built-in defaults. Every setting is declared once
//! in [`table`] — name, who reads it, kind, default, secret or not, doc —
//! and read with its declaration's getter (`RELAY_BATCH_SIZE.get(&env)?`).
//! A missing, malformed or unknown one is a [`SettingError`] naming the
//! variable, or the file's key (never echoing its value, which may hold a
//! password), and the binaries turn that into one line on stderr and exit
//! code 2. `relay config` (and the sink's and stage's) print the declared
//! settings of the daemon from an [`Env`], with where each value came from.

mod doc;
mod kind;
mod setting;
mod table;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::definition::{Flow, FlowCatalog};

pub use doc::markdown;
pub use kind::{
    Brokers, Choice, Identifier, Ignored, KafkaName, Kind, List, Listen, Millis, MillisOrOff, Path,
    Text, TopicConfigs, Url, UrlList, Whole, parse_topic_configs,
};
pub use setting::{Declared, Reader, Setting, Unset};
pub use table::*;

/// A setting that is missing, malformed or not known.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid setting {name}: {reason}")]
pub struct SettingError {
    pub name: String,
    pub reason: String,
}

impl SettingError {
    pub fn new(name: &str, reason: impl Into<String>) -> Self {
        Self {
            name: name.to_owned(),
            reason: reason.into(),
        }
    }
}

/// A snapshot of the settings: environment variables over the settings
/// file. Empty values count as unset.
#[derive(Clone, Debug, Default)]
pub struct Env {
    vars: BTreeMap<String, String>,
    /// Where a variable that is not from the environment came from (the
    /// file's key), for messages and `config`.
    origins: BTreeMap<String, String>,
    /// Every variable read so far (see [`Env::read_names`]).
    read: Arc<Mutex<BTreeSet<String>>>,
}

/// Where an effective setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    File(String),
    Environment,
}

/// One line of the effective configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effective {
    pub name: String,
    /// The value as shown: secrets redacted; `None` when unset with no
    /// default.
    pub shown: Option<String>,
    pub source: Source,
    /// Why the daemon ignores it, for a setting no longer used.
    pub ignored: Option<&'static str>,
}

impl Env {
    pub fn from_process() -> Self {
        Self::from_pairs(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        )
    }

    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .filter(|(_, v): &(String, String)| !v.is_empty())
                .collect(),
            ..Self::default()
        }
    }

    /// The settings file's values under this environment's (a variable set
    /// in the environment wins).
    pub fn over_file(mut self, file: Vec<crate::config_file::FileSetting>) -> Self {
        for setting in file {
            if setting.value.is_empty() || self.vars.contains_key(&setting.var) {
                continue;
            }
            self.origins.insert(setting.var.clone(), setting.origin);
            self.vars.insert(setting.var, setting.value);
        }
        self
    }

    /// Where `name`'s value came from when not from the environment (the
    /// settings file's key), for messages.
    pub fn origin(&self, name: &str) -> Option<&str> {
        self.origins.get(name).map(String::as_str)
    }

    /// `error` naming the file's key when the setting came from the file.
    pub fn explain(&self, error: SettingError) -> SettingError {
        match self.origin(&error.name) {
            Some(origin) => SettingError {
                name: origin.to_owned(),
                reason: error.reason,
            },
            None => error,
        }
    }

    /// The names of every variable read so far, for tests that check a
    /// daemon reads only settings declared for it.
    pub fn read_names(&self) -> Vec<String> {
        self.read
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// Every setting `reader` knows: its value (secrets redacted), or the
    /// default, and where it came from; sorted by name. A setting no
    /// longer used is listed only when set.
    pub fn effective(&self, reader: Reader) -> Vec<Effective> {
        let mut effective: Vec<Effective> = table::all()
            .filter(|s| s.read_by().contains(&reader))
            .filter(|s| s.ignored_because().is_none() || self.vars.contains_key(s.name()))
            .map(|setting| {
                let name = setting.name().to_owned();
                let ignored = setting.ignored_because();
                match self.vars.get(&name) {
                    Some(value) => Effective {
                        shown: Some(setting.shown(value)),
                        source: match self.origins.get(&name) {
                            Some(origin) => Source::File(origin.clone()),
                            None => Source::Environment,
                        },
                        name,
                        ignored,
                    },
                    None => Effective {
                        name,
                        shown: setting.default_shown(),
                        source: Source::Default,
                        ignored,
                    },
                }
            })
            .collect();
        effective.sort_by(|a, b| a.name.cmp(&b.name));
        effective
    }

    /// Each setting `reader` no longer uses that is set, with why it is
    /// ignored: (name, why), for a warning at start-up.
    pub fn ignored(&self, reader: Reader) -> Vec<(&'static str, &'static str)> {
        table::all()
            .filter(|s| s.read_by().contains(&reader) && self.vars.contains_key(s.name()))
            .filter_map(|s| Some((s.name(), s.ignored_because()?)))
            .collect()
    }

    /// Reads every `NAME_FILE` of a declared secret into `NAME` (one
    /// trailing newline dropped). Setting both, or a file that cannot be
    /// read, is an error naming the variable — never the secret.
    pub fn with_secret_files(mut self) -> Result<Self, SettingError> {
        for name in table::all().filter(|s| s.secret()).map(|s| s.name()) {
            let file_var = format!("{name}_FILE");
            let Some(path) = self.vars.remove(&file_var) else {
                continue;
            };
            if self.vars.contains_key(name) {
                return Err(SettingError::new(
                    &file_var,
                    format!("set either {name} or {file_var}, not both"),
                ));
            }
            let text = std::fs::read_to_string(&path).map_err(|e| {
                SettingError::new(&file_var, format!("cannot read {path}: {}", e.kind()))
            })?;
            let secret = text.strip_suffix('\n').unwrap_or(&text);
            let secret = secret.strip_suffix('\r').unwrap_or(secret);
            if secret.is_empty() {
                return Err(SettingError::new(&file_var, format!("{path} is empty")));
            }
            self.vars.insert(name.to_owned(), secret.to_owned());
        }
        Ok(self)
    }

    /// The variable's text as set (empty counts as unset); the daemons
    /// read declared settings through their getters instead.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.read
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.to_owned());
        self.vars.get(name).map(String::as_str)
    }

    /// Refuses a variable that starts with one of `reader`'s prefixes but
    /// is not declared as read by it: a misspelt knob must not be silently
    /// ignored.
    pub fn reject_unknown(&self, reader: Reader) -> Result<(), SettingError> {
        for name in self.vars.keys() {
            // One settings file serves all three daemons: a key another
            // daemon reads (the relay's producer settings under [kafka]) is
            // not the sink's mistake.
            let shared_file_key = self.origins.contains_key(name) && table::find(name).is_some();
            if reader.prefixes().iter().any(|p| name.starts_with(p))
                && !shared_file_key
                && !table::find(name).is_some_and(|s| s.read_by().contains(&reader))
            {
                return Err(self.explain(SettingError::new(name, "unknown setting (misspelt?)")));
            }
        }
        Ok(())
    }
}

/// The flows of FLOWS_FILE: one file, or several (a later one adding flows
/// or replacing earlier ones by name). The product ships none: without it
/// there is nothing to run.
pub fn catalog(env: &Env) -> Result<FlowCatalog, SettingError> {
    let files: Vec<PathBuf> = FLOWS_FILE
        .get_opt(env)?
        .unwrap_or_default()
        .into_iter()
        .map(PathBuf::from)
        .collect();
    if files.is_empty() {
        return Err(SettingError::new(
            FLOWS_FILE.name,
            "is required: the file defining your flows (the demo's: demo/flows.toml)",
        ));
    }
    FlowCatalog::load(&files).map_err(|e| SettingError::new(FLOWS_FILE.name, e.to_string()))
}

/// The flows selected by FLOWS (default all) from FLOWS_FILE, with
/// KAFKA_TOPIC_PREFIX and KAFKA_GROUP_PREFIX applied.
pub fn selected_flows(env: &Env) -> Result<Vec<Flow>, SettingError> {
    let catalog =
        catalog(env)?.with_prefixes(&KAFKA_TOPIC_PREFIX.get(env)?, &KAFKA_GROUP_PREFIX.get(env)?);
    let selection = FLOWS.get_opt(env)?;
    let flows = catalog
        .select(selection.as_deref())
        .map_err(|e| SettingError::new(FLOWS.name, e.to_string()))?;
    if flows.is_empty() {
        return Err(SettingError::new(FLOWS.name, "selects no flow"));
    }
    Ok(flows)
}

/// Checks that `url` parses as a URL with one of `schemes`, without putting
/// the URL (which may carry a password) in the error.
pub fn check_url(name: &str, url: &str, schemes: &[&str]) -> Result<(), SettingError> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(SettingError::new(
            name,
            format!("expected a URL starting with {}://", schemes[0]),
        ));
    };
    if !schemes.contains(&scheme) {
        return Err(SettingError::new(
            name,
            format!("scheme must be one of {}", schemes.join(", ")),
        ));
    }
    if rest.is_empty() || rest.starts_with('/') && scheme.starts_with("http") {
        return Err(SettingError::new(name, "has no host"));
    }
    // host[:port][,host[:port]…] after any user:password@ — a port that is
    // not a number is a setting to fix, not a server to wait for.
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let hosts = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    for host in hosts.split(',') {
        check_port(name, host)?;
    }
    Ok(())
}

/// `host`, `host:port` or `[v6]:port`: the port, if any, must be a number
/// from 0 to 65535. The host is not echoed (it may sit next to a password).
pub fn check_port(name: &str, host: &str) -> Result<(), SettingError> {
    let port = match host.strip_prefix('[') {
        Some(v6) => v6.split_once(']').and_then(|(_, p)| p.strip_prefix(':')),
        None => host.rsplit_once(':').map(|(_, p)| p),
    };
    match port {
        Some(p) if p.parse::<u16>().is_err() => Err(SettingError::new(
            name,
            "has a port that is not a number from 0 to 65535",
        )),
        _ => Ok(()),
    }
}

/// [`redact_url`] of each URL of a comma-separated list (`CLICKHOUSE_URL`).
pub fn redact_urls(urls: &str) -> String {
    let each: Vec<String> = urls.split(',').map(|u| redact_url(u.trim())).collect();
    each.join(",")
}

/// `url` with any password replaced by `***`, for logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<unparsable url>".to_owned();
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    // Query parameters can carry passwords too (libpq's `password=`).
    let path = match path.split_once('?') {
        Some((p, _)) => format!("{p}?***"),
        None => path.to_owned(),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => format!("{scheme}://{authority}{path}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn getters_parse_and_name_the_variable() {
        let env = Env::from_pairs([
            ("RELAY_BATCH_SIZE", "12"),
            ("STAGE_BATCH_SIZE", "x"),
            ("SINK_BATCH_ROWS", "0"),
            ("SINK_BATCH_BYTES", ""),
        ]);
        assert_eq!(RELAY_BATCH_SIZE.get(&env), Ok(12));
        assert_eq!(POSTGRES_POOL_SIZE.get(&env), Ok(4), "the default");
        assert_eq!(
            SINK_BATCH_BYTES.get(&env),
            Ok(16 * 1024 * 1024),
            "empty counts as unset"
        );
        let err = STAGE_BATCH_SIZE.get(&env).err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("invalid setting STAGE_BATCH_SIZE: expected a positive whole number")
        );
        assert!(SINK_BATCH_ROWS.get(&env).is_err());
        let err = KAFKA_BROKERS.get(&env).err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("invalid setting KAFKA_BROKERS: is required but not set")
        );
        assert_eq!(CLICKHOUSE_PASSWORD.get_opt(&env), Ok(None));
        assert_eq!(
            RELAY_POLL_INTERVAL_MS.get(&env),
            Ok(std::time::Duration::from_secs(1))
        );
    }

    #[test]
    fn config_shows_the_declared_settings_of_the_daemon_with_their_source() {
        let env = Env::from_pairs([
            ("RELAY_BATCH_SIZE", "500"),
            ("KAFKA_SASL_PASSWORD", "hunter2"),
            ("DATABASE_URL", "postgres://u:hunter2@h/db"),
        ]);
        let relay = env.effective(Reader::Relay);
        let line = |name: &str| relay.iter().find(|e| e.name == name).cloned();
        assert_eq!(
            line("RELAY_BATCH_SIZE").map(|e| (e.shown, e.source)),
            Some((Some("500".to_owned()), Source::Environment))
        );
        assert_eq!(
            line("RELAY_POLL_INTERVAL_MS").map(|e| (e.shown, e.source)),
            Some((Some("1000".to_owned()), Source::Default))
        );
        assert_eq!(
            line("KAFKA_SASL_PASSWORD").and_then(|e| e.shown),
            Some("***".to_owned())
        );
        assert_eq!(
            line("DATABASE_URL").and_then(|e| e.shown),
            Some("postgres://u:***@h/db".to_owned())
        );
        assert!(line("SINK_BATCH_ROWS").is_none(), "the sink's");
        assert!(line("RELAY_SWEEP_INTERVAL_MS").is_none(), "ignored, unset");
        let names: Vec<&str> = relay.iter().map(|e| e.name.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted);
    }

    #[test]
    fn a_setting_no_longer_used_is_named_when_set() {
        assert!(Env::default().ignored(Reader::Relay).is_empty());
        let env = Env::from_pairs([("RELAY_SWEEP_INTERVAL_MS", "500")]);
        let ignored = env.ignored(Reader::Relay);
        assert_eq!(ignored.len(), 1);
        assert_eq!(ignored[0].0, "RELAY_SWEEP_INTERVAL_MS");
        assert!(ignored[0].1.contains("sweep"), "{ignored:?}");
        assert_eq!(env.reject_unknown(Reader::Relay), Ok(()), "accepted");
        assert!(env.ignored(Reader::Sink).is_empty());
        let shown = env.effective(Reader::Relay);
        assert!(
            shown
                .iter()
                .any(|e| e.name == "RELAY_SWEEP_INTERVAL_MS" && e.ignored.is_some()),
            "{shown:?}"
        );
    }

    #[test]
    fn secrets_come_from_files() {
        let dir = std::env::temp_dir().join(format!("outbox-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let file = dir.join("password");
        std::fs::write(&file, "s3cret\n").unwrap_or_else(|e| panic!("{e}"));
        let path = file.display().to_string();
        let env = Env::from_pairs([("CLICKHOUSE_PASSWORD_FILE", path.as_str())])
            .with_secret_files()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(env.get("CLICKHOUSE_PASSWORD"), Some("s3cret"));
        assert_eq!(env.get("CLICKHOUSE_PASSWORD_FILE"), None, "consumed");

        let both = Env::from_pairs([
            ("CLICKHOUSE_PASSWORD_FILE", path.as_str()),
            ("CLICKHOUSE_PASSWORD", "x"),
        ])
        .with_secret_files()
        .err();
        assert_eq!(
            both.map(|e| e.name),
            Some("CLICKHOUSE_PASSWORD_FILE".to_owned())
        );
        let missing = Env::from_pairs([("KAFKA_SASL_PASSWORD_FILE", "/nonexistent/pw")])
            .with_secret_files()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            missing.starts_with("invalid setting KAFKA_SASL_PASSWORD_FILE: cannot read"),
            "{missing}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn unknown_prefixed_variables_are_refused() {
        let env = Env::from_pairs([("RELAY_BATCH_SIZ", "1"), ("PATH", "/bin")]);
        let err = env.reject_unknown(Reader::Relay).err();
        assert_eq!(err.map(|e| e.name), Some("RELAY_BATCH_SIZ".to_owned()));
        // Another daemon's prefix is not the relay's business…
        let env = Env::from_pairs([("SINK_BATCH_ROW", "1")]);
        assert_eq!(env.reject_unknown(Reader::Relay), Ok(()));
        assert!(env.reject_unknown(Reader::Sink).is_err());
        // …but a declared setting under a prefix it polices is refused
        // where it is not read (the relay's producer setting in the sink).
        let env = Env::from_pairs([("KAFKA_LINGER_MS", "1")]);
        assert_eq!(env.reject_unknown(Reader::Relay), Ok(()));
        assert!(env.reject_unknown(Reader::Sink).is_err());
    }

    #[test]
    fn urls_are_checked_without_echo_and_redacted() {
        let err = check_url(
            "DATABASE_URL",
            "mysql://u:secret@h/db",
            &["postgres", "postgresql"],
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("DATABASE_URL") && !err.contains("secret"));
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db?password=x"),
            "postgres://u:***@h:5432/db?***"
        );
        assert_eq!(redact_url("http://h:8123"), "http://h:8123");
        // Several Postgres hosts (a failover pair): one URL.
        assert_eq!(
            redact_url(
                "postgres://u:secret@pg-a:5432,pg-b:5432/db?target_session_attrs=read-write"
            ),
            "postgres://u:***@pg-a:5432,pg-b:5432/db?***"
        );
        assert!(
            check_url(
                "DATABASE_URL",
                "postgres://u:secret@pg-a:5432,pg-b:5432/db?target_session_attrs=read-write",
                &["postgres", "postgresql"],
            )
            .is_ok()
        );
        assert_eq!(
            redact_urls("http://h:8123,http://u:secret@g:8123"),
            "http://h:8123,http://u:***@g:8123"
        );
    }
}
