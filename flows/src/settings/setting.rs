//! One declared setting: its name, who reads it, its kind, what holds when
//! it is unset, whether it is a secret, and its one-line doc — and the
//! typed getter the daemons read it with, so a default lives only in its
//! declaration (`table`).

use super::kind::{Ignored, Kind, Listen};
use super::{Env, SettingError};

/// The daemons. Each refuses a variable with one of its prefixes that is
/// not declared as read by it: a misspelt knob must not be silently
/// ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reader {
    Relay,
    Sink,
    Stage,
}

impl Reader {
    pub const ALL: [Reader; 3] = [Reader::Relay, Reader::Sink, Reader::Stage];

    pub const fn name(self) -> &'static str {
        match self {
            Reader::Relay => "relay",
            Reader::Sink => "sink",
            Reader::Stage => "stage",
        }
    }

    /// The prefixes whose unknown variables the daemon refuses.
    pub const fn prefixes(self) -> &'static [&'static str] {
        match self {
            Reader::Relay => &["RELAY_", "KAFKA_", "POSTGRES_"],
            Reader::Sink => &["SINK_", "CLICKHOUSE_", "KAFKA_", "POSTGRES_"],
            Reader::Stage => &["STAGE_", "KAFKA_"],
        }
    }
}

/// What holds when a setting is unset (or empty).
#[derive(Debug, Clone, Copy)]
pub enum Unset<D> {
    /// This default.
    Default(D),
    /// Nothing: the getter says it is required.
    Required,
    /// Nothing, meaning this (`all flows`, `the system's CAs`); the reader
    /// decides, or requires it in some cases (`required with SASL`).
    Means(&'static str),
}

/// A setting, declared once.
pub struct Setting<K: Kind> {
    /// The environment variable.
    pub name: &'static str,
    /// The daemons that know it (and their commands).
    pub read_by: &'static [Reader],
    pub kind: K,
    pub unset: Unset<K::Default>,
    /// Never shown by `config` nor accepted in the settings file; may be
    /// read from the file named by `NAME_FILE` instead.
    pub secret: bool,
    /// Environment only: the settings file has no key for it.
    pub env_only: bool,
    /// One line for `docs/settings.md`.
    pub doc: &'static str,
}

impl<K: Kind> Setting<K> {
    /// A setting known to `read_by`, neither secret nor environment-only.
    pub const fn new(
        name: &'static str,
        read_by: &'static [Reader],
        kind: K,
        unset: Unset<K::Default>,
        doc: &'static str,
    ) -> Self {
        Self {
            name,
            read_by,
            kind,
            unset,
            secret: false,
            env_only: false,
            doc,
        }
    }

    /// Marks it a secret (see [`Setting::secret`]).
    pub const fn as_secret(mut self) -> Self {
        self.secret = true;
        self
    }

    /// Marks it environment-only (see [`Setting::env_only`]).
    pub const fn environment_only(mut self) -> Self {
        self.env_only = true;
        self
    }

    /// The value, or the default; unset with none is an error saying it
    /// is required.
    pub fn get(&self, env: &Env) -> Result<K::Value, SettingError> {
        self.get_opt(env)?
            .ok_or_else(|| SettingError::new(self.name, "is required but not set"))
    }

    /// The value, or the default, or `None` when unset with none.
    pub fn get_opt(&self, env: &Env) -> Result<Option<K::Value>, SettingError> {
        match self.raw(env) {
            Some(raw) => self
                .kind
                .parse(raw)
                .map(Some)
                .map_err(|reason| SettingError::new(self.name, reason)),
            None => Ok(match self.unset {
                Unset::Default(default) => Some(self.kind.value(default)),
                Unset::Required | Unset::Means(_) => None,
            }),
        }
    }

    /// Whether it is set (to anything).
    pub fn is_set(&self, env: &Env) -> bool {
        self.raw(env).is_some()
    }

    /// The text as set, unparsed.
    pub fn raw<'e>(&self, env: &'e Env) -> Option<&'e str> {
        env.get(self.name)
    }
}

impl Setting<Ignored> {
    /// Why it is ignored, when it is set.
    pub fn ignored(&self, env: &Env) -> Option<&'static str> {
        self.is_set(env).then_some(self.kind.why)
    }
}

impl Setting<Listen> {
    /// The address to reach the daemon listening there, `host:port` (a
    /// name is allowed: resolved by whoever connects), or `None` for `off`.
    pub fn endpoint(&self, env: &Env) -> Result<Option<String>, SettingError> {
        let value = match (self.raw(env), self.unset) {
            (Some(raw), _) => raw.to_owned(),
            (None, Unset::Default(default)) => self.kind.show(default),
            (None, Unset::Required | Unset::Means(_)) => return Ok(None),
        };
        if value == "off" {
            return Ok(None);
        }
        match value.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Some(value))
            }
            _ => Err(SettingError::new(
                self.name,
                "expected host:port (e.g. 127.0.0.1:9101) or `off`",
            )),
        }
    }
}

/// A declared setting, whatever its kind: what the table, `config`, the
/// settings file and the reference need of it.
pub trait Declared: Sync {
    fn name(&self) -> &'static str;
    fn read_by(&self) -> &'static [Reader];
    fn secret(&self) -> bool;
    fn env_only(&self) -> bool;
    fn doc(&self) -> &'static str;
    /// The kind, for the reference.
    fn kind(&self) -> String;
    /// The default as written in the environment, if it has one.
    fn default_shown(&self) -> Option<String>;
    /// What holds when unset, for the reference.
    fn unset(&self) -> Unset<String>;
    /// Why it is ignored, for a setting no longer used.
    fn ignored_because(&self) -> Option<&'static str>;
    /// `raw` as `config` shows it: secrets never in clear.
    fn shown(&self, raw: &str) -> String;
    /// Whether `raw` is a valid value.
    fn check(&self, raw: &str) -> Result<(), String>;
    /// Whether the default, written out, parses back to itself.
    fn default_round_trips(&self) -> Result<(), String>;
}

impl<K: Kind> Declared for Setting<K>
where
    K::Default: 'static,
{
    fn name(&self) -> &'static str {
        self.name
    }
    fn read_by(&self) -> &'static [Reader] {
        self.read_by
    }
    fn secret(&self) -> bool {
        self.secret
    }
    fn env_only(&self) -> bool {
        self.env_only
    }
    fn doc(&self) -> &'static str {
        self.doc
    }
    fn kind(&self) -> String {
        self.kind.describe()
    }
    fn default_shown(&self) -> Option<String> {
        match self.unset {
            Unset::Default(default) => Some(self.kind.show(default)),
            Unset::Required | Unset::Means(_) => None,
        }
    }
    fn unset(&self) -> Unset<String> {
        match self.unset {
            Unset::Default(default) => Unset::Default(self.kind.show(default)),
            Unset::Required => Unset::Required,
            Unset::Means(means) => Unset::Means(means),
        }
    }
    fn ignored_because(&self) -> Option<&'static str> {
        self.kind.ignored_because()
    }
    fn shown(&self, raw: &str) -> String {
        if self.secret {
            self.kind.redact(raw)
        } else {
            raw.to_owned()
        }
    }
    fn check(&self, raw: &str) -> Result<(), String> {
        self.kind.parse(raw).map(|_| ())
    }
    fn default_round_trips(&self) -> Result<(), String> {
        let Unset::Default(default) = self.unset else {
            return Ok(());
        };
        let written = self.kind.show(default);
        if written.is_empty() {
            // Empty counts as unset: the default is what it stands for.
            return Ok(());
        }
        let parsed = self.kind.parse(&written)?;
        if parsed == self.kind.value(default) {
            Ok(())
        } else {
            Err(format!("{written} parses to {parsed:?}"))
        }
    }
}
