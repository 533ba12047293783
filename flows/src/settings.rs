//! Settings come from the environment, over an optional settings file
//! (`config_file`), over built-in defaults. Each daemon lists the variables
//! it knows; a missing, malformed or unknown one is a [`SettingError`] naming
//! the variable, or the file's key (never echoing its value, which may hold
//! a password), and the binaries turn that into one line on stderr and exit
//! code 2. An [`Env`] remembers every setting the daemon consulted and where
//! its value came from, which `relay config` (and the sink's and stage's)
//! print.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use crate::definition::{Flow, FlowCatalog};

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

/// Settings that hold secrets: each may instead be read from the file named
/// by the same name + `_FILE` (Docker and systemd credentials), so the secret
/// never sits in the environment or a unit file.
pub const SECRET_VARS: &[&str] = &[
    "DATABASE_URL",
    "CLICKHOUSE_PASSWORD",
    "KAFKA_SASL_PASSWORD",
    "KAFKA_SSL_KEY_PASSWORD",
];

/// A snapshot of the settings: environment variables over the settings
/// file. Empty values count as unset.
#[derive(Clone, Debug, Default)]
pub struct Env {
    vars: BTreeMap<String, String>,
    /// Where a variable that is not from the environment came from (the
    /// file's key), for messages and `config`.
    origins: BTreeMap<String, String>,
    /// Every setting read so far, with the default used when unset.
    consulted: Arc<Mutex<BTreeMap<String, Option<String>>>>,
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

    fn consult(&self, name: &str, default: Option<String>) {
        let mut consulted = self
            .consulted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = consulted.entry(name.to_owned()).or_insert(None);
        if default.is_some() {
            *entry = default;
        }
    }

    /// Every setting consulted so far: its value (secrets redacted), or the
    /// default, and where it came from. Call after building a daemon's
    /// configuration from this `Env`.
    pub fn effective(&self) -> Vec<Effective> {
        let consulted = self
            .consulted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        consulted
            .into_iter()
            .map(|(name, default)| match self.vars.get(&name) {
                Some(value) => Effective {
                    shown: Some(shown(&name, value)),
                    source: match self.origins.get(&name) {
                        Some(origin) => Source::File(origin.clone()),
                        None => Source::Environment,
                    },
                    name,
                },
                None => Effective {
                    name,
                    shown: default,
                    source: Source::Default,
                },
            })
            .collect()
    }

    /// Reads every `NAME_FILE` of [`SECRET_VARS`] into `NAME` (one trailing
    /// newline dropped). Setting both, or a file that cannot be read, is an
    /// error naming the variable — never the secret.
    pub fn with_secret_files(mut self) -> Result<Self, SettingError> {
        for name in SECRET_VARS {
            let file_var = format!("{name}_FILE");
            let Some(path) = self.vars.remove(&file_var) else {
                continue;
            };
            if self.vars.contains_key(*name) {
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
            self.vars.insert((*name).to_owned(), secret.to_owned());
        }
        Ok(self)
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.consult(name, None);
        self.vars.get(name).map(String::as_str)
    }

    pub fn required(&self, name: &str) -> Result<String, SettingError> {
        self.get(name)
            .map(str::to_owned)
            .ok_or_else(|| SettingError::new(name, "is required but not set"))
    }

    pub fn string_or(&self, name: &str, default: &str) -> String {
        self.consult(name, Some(default.to_owned()));
        self.get(name).unwrap_or(default).to_owned()
    }

    /// Parses the variable, or returns `default` when it is unset.
    pub fn parse_or<T: FromStr + std::fmt::Display>(
        &self,
        name: &str,
        default: T,
    ) -> Result<T, SettingError> {
        self.consult(name, Some(default.to_string()));
        match self.get(name) {
            None => Ok(default),
            Some(raw) => raw.trim().parse().map_err(|_| {
                SettingError::new(name, format!("expected {}", std::any::type_name::<T>()))
            }),
        }
    }

    /// A positive whole number, or `default` when unset.
    pub fn positive_or(&self, name: &str, default: u64) -> Result<u64, SettingError> {
        let value: u64 = self
            .parse_or(name, default)
            .map_err(|_| SettingError::new(name, "expected a positive whole number"))?;
        if value == 0 {
            return Err(SettingError::new(name, "must be greater than 0"));
        }
        Ok(value)
    }

    /// A comma-separated list; `None` when unset.
    pub fn list(&self, name: &str) -> Option<Vec<String>> {
        self.get(name).map(|raw| {
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
    }

    /// Rejects variables that start with one of `prefixes` but are in none
    /// of the `known` lists: a misspelt knob must not be silently ignored.
    pub fn reject_unknown(&self, prefixes: &[&str], known: &[&[&str]]) -> Result<(), SettingError> {
        for name in self.vars.keys() {
            if prefixes.iter().any(|p| name.starts_with(p))
                && !known.iter().any(|list| list.contains(&name.as_str()))
            {
                return Err(self.explain(SettingError::new(name, "unknown setting (misspelt?)")));
            }
        }
        Ok(())
    }
}

/// A setting's value as `config` shows it: secrets never in clear.
fn shown(name: &str, value: &str) -> String {
    match name {
        "DATABASE_URL" => redact_url(value),
        _ if SECRET_VARS.contains(&name) => "***".to_owned(),
        _ => value.to_owned(),
    }
}

/// The built-in flows plus those of FLOWS_FILE.
pub fn catalog(env: &Env) -> Result<FlowCatalog, SettingError> {
    let file = env.get("FLOWS_FILE").map(PathBuf::from);
    FlowCatalog::load(file.as_deref()).map_err(|e| SettingError::new("FLOWS_FILE", e.to_string()))
}

/// The flows selected by FLOWS (default all), from the built-in catalogue
/// plus FLOWS_FILE, with KAFKA_TOPIC_PREFIX and KAFKA_GROUP_PREFIX applied.
pub fn selected_flows(env: &Env) -> Result<Vec<Flow>, SettingError> {
    let catalog = catalog(env)?.with_prefixes(
        &env.string_or("KAFKA_TOPIC_PREFIX", ""),
        &env.string_or("KAFKA_GROUP_PREFIX", ""),
    );
    let selection = env.list("FLOWS");
    let flows = catalog
        .select(selection.as_deref())
        .map_err(|e| SettingError::new("FLOWS", e.to_string()))?;
    if flows.is_empty() {
        return Err(SettingError::new("FLOWS", "selects no flow"));
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
    fn parse_and_name_the_variable() {
        let env = Env::from_pairs([("A", "12"), ("B", "x"), ("C", "0"), ("E", "")]);
        assert_eq!(env.positive_or("A", 5), Ok(12));
        assert_eq!(env.positive_or("Z", 5), Ok(5));
        assert_eq!(env.positive_or("E", 5), Ok(5), "empty counts as unset");
        let err = env.positive_or("B", 5).err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("invalid setting B: expected a positive whole number")
        );
        assert!(env.positive_or("C", 5).is_err());
        assert!(env.required("MISSING").is_err());
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
        let err = env
            .reject_unknown(&["RELAY_"], &[&["RELAY_BATCH_SIZE"]])
            .err();
        assert_eq!(err.map(|e| e.name), Some("RELAY_BATCH_SIZ".to_owned()));
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
    }
}
