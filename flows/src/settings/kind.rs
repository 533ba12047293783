//! What a setting's value is: how its text is parsed and checked, how a
//! default is written, and how the reference (`docs/settings.md`) names it.
//! A parse error is the reason only; the caller names the setting (and
//! never echoes a value that may hold a password).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

/// A kind of setting value.
pub trait Kind: Sync {
    /// What a daemon gets.
    type Value: PartialEq + std::fmt::Debug;
    /// How a default is declared: a constant the declaration can hold.
    type Default: Copy + Sync;
    /// The value of `raw` (never empty: empty counts as unset), or why not.
    fn parse(&self, raw: &str) -> Result<Self::Value, String>;
    /// The default as a value.
    fn value(&self, default: Self::Default) -> Self::Value;
    /// The default as it would be written in the environment.
    fn show(&self, default: Self::Default) -> String;
    /// The type column of the reference, e.g. `duration, ms`.
    fn describe(&self) -> String;
    /// How `config` shows a secret of this kind.
    fn redact(&self, _raw: &str) -> String {
        "***".to_owned()
    }
    /// Why the product ignores it, for a setting no longer used.
    fn ignored_because(&self) -> Option<&'static str> {
        None
    }
}

/// Free text.
pub struct Text;

impl Kind for Text {
    type Value = String;
    type Default = &'static str;
    fn parse(&self, raw: &str) -> Result<String, String> {
        Ok(raw.to_owned())
    }
    fn value(&self, default: &'static str) -> String {
        default.to_owned()
    }
    fn show(&self, default: &'static str) -> String {
        default.to_owned()
    }
    fn describe(&self) -> String {
        "text".to_owned()
    }
}

/// A whole number within bounds, of `unit`s.
pub struct Whole {
    pub min: u64,
    pub max: u64,
    /// `bytes`, or empty for a count.
    pub unit: &'static str,
}

impl Whole {
    /// 1 or more.
    pub const POSITIVE: Whole = Whole {
        min: 1,
        max: u64::MAX,
        unit: "",
    };
    /// A positive number of bytes.
    pub const BYTES: Whole = Whole {
        min: 1,
        max: u64::MAX,
        unit: "bytes",
    };
}

/// The reasons a whole number is refused, shared by [`Whole`] and [`Millis`].
fn whole(raw: &str, min: u64, max: u64) -> Result<u64, String> {
    let value: u64 = raw.trim().parse().map_err(|_| {
        if min > 0 {
            "expected a positive whole number".to_owned()
        } else {
            "expected a whole number".to_owned()
        }
    })?;
    if value < min {
        return Err(if min == 1 {
            "must be greater than 0".to_owned()
        } else {
            format!("must be at least {min}")
        });
    }
    if value > max {
        return Err(format!("must be at most {max}"));
    }
    Ok(value)
}

impl Kind for Whole {
    type Value = u64;
    type Default = u64;
    fn parse(&self, raw: &str) -> Result<u64, String> {
        whole(raw, self.min, self.max)
    }
    fn value(&self, default: u64) -> u64 {
        default
    }
    fn show(&self, default: u64) -> String {
        default.to_string()
    }
    fn describe(&self) -> String {
        let what = if self.unit.is_empty() {
            "integer"
        } else {
            self.unit
        };
        match (self.min, self.max) {
            (min, u64::MAX) => format!("{what} ≥ {min}"),
            (min, max) => format!("{what}, {min} to {max}"),
        }
    }
}

/// A duration written in whole milliseconds (the names end in `_MS`).
pub struct Millis {
    /// The shortest accepted, in milliseconds: 1 unless 0 makes sense.
    pub min: u64,
}

impl Millis {
    pub const POSITIVE: Millis = Millis { min: 1 };
    pub const ANY: Millis = Millis { min: 0 };
}

impl Kind for Millis {
    type Value = Duration;
    type Default = Duration;
    fn parse(&self, raw: &str) -> Result<Duration, String> {
        whole(raw, self.min, u64::MAX).map(Duration::from_millis)
    }
    fn value(&self, default: Duration) -> Duration {
        default
    }
    fn show(&self, default: Duration) -> String {
        default.as_millis().to_string()
    }
    fn describe(&self) -> String {
        format!("duration, ms ≥ {}", self.min)
    }
}

/// A duration in whole milliseconds where 0 turns the feature off (`None`).
pub struct MillisOrOff;

impl Kind for MillisOrOff {
    type Value = Option<Duration>;
    type Default = Option<Duration>;
    fn parse(&self, raw: &str) -> Result<Option<Duration>, String> {
        match raw.trim().parse::<u64>() {
            Ok(0) => Ok(None),
            Ok(ms) => Ok(Some(Duration::from_millis(ms))),
            Err(_) => Err("expected a whole number of milliseconds (0: off)".to_owned()),
        }
    }
    fn value(&self, default: Option<Duration>) -> Option<Duration> {
        default
    }
    fn show(&self, default: Option<Duration>) -> String {
        default.map_or(0, |d| d.as_millis()).to_string()
    }
    fn describe(&self) -> String {
        "duration, ms; 0 = off".to_owned()
    }
}

/// One of a few words; the value is the word as declared.
pub struct Choice {
    pub options: &'static [&'static str],
    /// `SASL_SSL` is `sasl_ssl`.
    pub ignore_case: bool,
}

impl Kind for Choice {
    type Value = &'static str;
    type Default = &'static str;
    fn parse(&self, raw: &str) -> Result<&'static str, String> {
        self.options
            .iter()
            .find(|o| {
                if self.ignore_case {
                    o.eq_ignore_ascii_case(raw)
                } else {
                    **o == raw
                }
            })
            .copied()
            .ok_or_else(|| format!("must be {}", alternatives(self.options)))
    }
    fn value(&self, default: &'static str) -> &'static str {
        default
    }
    fn show(&self, default: &'static str) -> String {
        default.to_owned()
    }
    fn describe(&self) -> String {
        let quoted: Vec<String> = self.options.iter().map(|o| format!("`{o}`")).collect();
        format!("one of {}", quoted.join(", "))
    }
}

/// `a`, `a or b`, `a, b or c`.
fn alternatives(options: &[&str]) -> String {
    match options {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

/// Comma-separated words (a list in the settings file); blanks dropped.
pub struct List;

impl Kind for List {
    type Value = Vec<String>;
    type Default = &'static [&'static str];
    fn parse(&self, raw: &str) -> Result<Vec<String>, String> {
        Ok(raw
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect())
    }
    fn value(&self, default: &'static [&'static str]) -> Vec<String> {
        default.iter().map(|s| (*s).to_owned()).collect()
    }
    fn show(&self, default: &'static [&'static str]) -> String {
        default.join(",")
    }
    fn describe(&self) -> String {
        "comma-separated list".to_owned()
    }
}

/// A file or directory; whoever reads it says what it must hold.
pub struct Path;

impl Kind for Path {
    type Value = PathBuf;
    type Default = &'static str;
    fn parse(&self, raw: &str) -> Result<PathBuf, String> {
        Ok(PathBuf::from(raw))
    }
    fn value(&self, default: &'static str) -> PathBuf {
        PathBuf::from(default)
    }
    fn show(&self, default: &'static str) -> String {
        default.to_owned()
    }
    fn describe(&self) -> String {
        "path".to_owned()
    }
}

/// A URL with one of `schemes` and a valid port; checked without echoing
/// it (it may carry a password), shown by `config` with the password
/// replaced.
pub struct Url {
    pub schemes: &'static [&'static str],
}

impl Kind for Url {
    type Value = String;
    type Default = &'static str;
    fn parse(&self, raw: &str) -> Result<String, String> {
        super::check_url("", raw, self.schemes).map_err(|e| e.reason)?;
        Ok(raw.to_owned())
    }
    fn value(&self, default: &'static str) -> String {
        default.to_owned()
    }
    fn show(&self, default: &'static str) -> String {
        default.to_owned()
    }
    fn describe(&self) -> String {
        let schemes: Vec<String> = self.schemes.iter().map(|s| format!("`{s}://`")).collect();
        format!("URL ({})", schemes.join(", "))
    }
    fn redact(&self, raw: &str) -> String {
        super::redact_url(raw)
    }
}

/// One URL or several separated by commas (each with one of `schemes`
/// and a valid port: `http://a:8123,http://b:8123`), checked and shown
/// like [`Url`]. The value is the text as given; its reader splits it.
pub struct UrlList {
    pub schemes: &'static [&'static str],
}

impl Kind for UrlList {
    type Value = String;
    type Default = &'static str;
    fn parse(&self, raw: &str) -> Result<String, String> {
        let entries: Vec<&str> = raw.split(',').map(str::trim).collect();
        for (i, entry) in entries.iter().enumerate() {
            if entry.is_empty() {
                return Err(format!("endpoint {} is empty", i + 1));
            }
            super::check_url("", entry, self.schemes).map_err(|e| match entries.len() {
                1 => e.reason,
                _ => format!("endpoint {}: {}", i + 1, e.reason),
            })?;
        }
        Ok(raw.to_owned())
    }
    fn value(&self, default: &'static str) -> String {
        default.to_owned()
    }
    fn show(&self, default: &'static str) -> String {
        default.to_owned()
    }
    fn describe(&self) -> String {
        let schemes: Vec<String> = self.schemes.iter().map(|s| format!("`{s}://`")).collect();
        format!("URLs ({}), comma-separated", schemes.join(", "))
    }
    fn redact(&self, raw: &str) -> String {
        super::redact_urls(raw)
    }
}

/// Kafka bootstrap servers: `host:port[,host:port…]`, each optionally with
/// a `scheme://`, no empty entry, ports that are numbers.
pub struct Brokers;

impl Kind for Brokers {
    type Value = String;
    type Default = &'static str;
    fn parse(&self, raw: &str) -> Result<String, String> {
        for broker in raw.split(',').map(str::trim) {
            let address = broker.split_once("://").map_or(broker, |(_, a)| a);
            if address.is_empty() {
                return Err("must be host:port[,host:port…] with no empty entry".to_owned());
            }
            super::check_port("", address).map_err(|e| e.reason)?;
        }
        Ok(raw.to_owned())
    }
    fn value(&self, default: &'static str) -> String {
        default.to_owned()
    }
    fn show(&self, default: &'static str) -> String {
        default.to_owned()
    }
    fn describe(&self) -> String {
        "`host:port,…`".to_owned()
    }
}

/// A socket address to listen on, or `off` (`None`).
pub struct Listen;

/// `127.0.0.1:port`, for declaring a default.
pub const fn loopback(port: u16) -> Option<SocketAddr> {
    Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)))
}

impl Kind for Listen {
    type Value = Option<SocketAddr>;
    type Default = Option<SocketAddr>;
    fn parse(&self, raw: &str) -> Result<Option<SocketAddr>, String> {
        if raw == "off" {
            return Ok(None);
        }
        raw.parse()
            .map(Some)
            .map_err(|_| "expected host:port (e.g. 127.0.0.1:9101) or `off`".to_owned())
    }
    fn value(&self, default: Option<SocketAddr>) -> Option<SocketAddr> {
        default
    }
    fn show(&self, default: Option<SocketAddr>) -> String {
        default.map_or_else(|| "off".to_owned(), |a| a.to_string())
    }
    fn describe(&self) -> String {
        "`ip:port` or `off`".to_owned()
    }
}

/// A name the product puts in SQL unquoted-safe (`flows::ident::Ident`).
pub struct Identifier;

impl Kind for Identifier {
    type Value = String;
    type Default = &'static str;
    fn parse(&self, raw: &str) -> Result<String, String> {
        crate::ident::Ident::new(raw)
            .map(String::from)
            .map_err(|e| e.to_string())
    }
    fn value(&self, default: &'static str) -> String {
        default.to_owned()
    }
    fn show(&self, default: &'static str) -> String {
        default.to_owned()
    }
    fn describe(&self) -> String {
        "identifier".to_owned()
    }
}

/// Part of a Kafka topic or group name: letters, digits, `.`, `_`, `-`.
pub struct KafkaName;

impl Kind for KafkaName {
    type Value = String;
    type Default = &'static str;
    fn parse(&self, raw: &str) -> Result<String, String> {
        crate::ident::check_kafka_name(raw).map_err(|e| e.to_string())?;
        Ok(raw.to_owned())
    }
    fn value(&self, default: &'static str) -> String {
        default.to_owned()
    }
    fn show(&self, default: &'static str) -> String {
        default.to_owned()
    }
    fn describe(&self) -> String {
        "Kafka name (letters, digits, `.`, `_`, `-`)".to_owned()
    }
}

/// Kafka topic configs as `name=value` pairs separated by commas, e.g.
/// `min.insync.replicas=2,retention.ms=604800000`. A piece without `=`
/// continues the value before it, so a value may hold commas
/// (`cleanup.policy=compact,delete`).
pub struct TopicConfigs;

impl Kind for TopicConfigs {
    type Value = Vec<(String, String)>;
    type Default = &'static [(&'static str, &'static str)];
    fn parse(&self, raw: &str) -> Result<Vec<(String, String)>, String> {
        parse_topic_configs(raw)
    }
    fn value(&self, default: Self::Default) -> Vec<(String, String)> {
        default
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }
    fn show(&self, default: Self::Default) -> String {
        let pairs: Vec<String> = default.iter().map(|(k, v)| format!("{k}={v}")).collect();
        pairs.join(",")
    }
    fn describe(&self) -> String {
        "`name=value` pairs, comma-separated".to_owned()
    }
}

/// See [`TopicConfigs`]; a name given twice is refused.
pub fn parse_topic_configs(raw: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for piece in raw.split(',') {
        match piece.split_once('=') {
            Some((name, value)) => {
                let name = name.trim();
                crate::ident::check_topic_config_name(name)?;
                if pairs.iter().any(|(n, _)| n == name) {
                    return Err(format!("topic config {name} given twice"));
                }
                pairs.push((name.to_owned(), value.trim().to_owned()));
            }
            None if piece.trim().is_empty() => {}
            None => match pairs.last_mut() {
                Some((_, value)) => {
                    value.push(',');
                    value.push_str(piece.trim());
                }
                None => return Err(format!("`{}` is not name=value", piece.trim())),
            },
        }
    }
    Ok(pairs)
}

/// Accepted and ignored: a setting the product no longer uses, kept so
/// that old deployments still start; `why` says what replaced it.
pub struct Ignored {
    pub why: &'static str,
}

impl Kind for Ignored {
    type Value = ();
    type Default = ();
    fn parse(&self, _: &str) -> Result<(), String> {
        Ok(())
    }
    fn value(&self, _: ()) {}
    fn show(&self, _: ()) -> String {
        String::new()
    }
    fn describe(&self) -> String {
        "ignored".to_owned()
    }
    fn ignored_because(&self) -> Option<&'static str> {
        Some(self.why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_refused_with_the_reason() {
        assert_eq!(Whole::POSITIVE.parse(" 12 "), Ok(12));
        assert_eq!(
            Whole::POSITIVE.parse("x"),
            Err("expected a positive whole number".to_owned())
        );
        assert_eq!(
            Whole::POSITIVE.parse("0"),
            Err("must be greater than 0".to_owned())
        );
        let bounded = Whole {
            min: 1,
            max: 100,
            unit: "",
        };
        assert_eq!(bounded.parse("101"), Err("must be at most 100".to_owned()));
        assert_eq!(
            Millis::POSITIVE.parse("250"),
            Ok(Duration::from_millis(250))
        );
        assert!(Millis::POSITIVE.parse("-1").is_err());
        assert_eq!(Millis { min: 0 }.parse("0"), Ok(Duration::ZERO));
        assert_eq!(MillisOrOff.parse("0"), Ok(None));
        assert_eq!(MillisOrOff.parse("5"), Ok(Some(Duration::from_millis(5))));
    }

    #[test]
    fn words_lists_and_addresses() {
        let protocol = Choice {
            options: &["plaintext", "ssl"],
            ignore_case: true,
        };
        assert_eq!(protocol.parse("SSL"), Ok("ssl"));
        assert_eq!(
            protocol.parse("tls"),
            Err("must be plaintext or ssl".to_owned())
        );
        let exact = Choice {
            options: &["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"],
            ignore_case: false,
        };
        assert_eq!(
            exact.parse("plain"),
            Err("must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512".to_owned())
        );
        assert_eq!(
            List.parse("a, ,b"),
            Ok(vec!["a".to_owned(), "b".to_owned()])
        );
        assert_eq!(Listen.parse("off"), Ok(None));
        assert_eq!(Listen.parse("127.0.0.1:9101"), Ok(loopback(9101)));
        assert!(Listen.parse("everywhere").is_err());
        assert!(Brokers.parse("h:1,,h:2").is_err());
        assert!(Brokers.parse("h:99999").is_err());
        assert!(Brokers.parse("SSL://h:1,h").is_ok());
        assert!(Url { schemes: &["http"] }.parse("http://h:port").is_err());
        let urls = UrlList {
            schemes: &["http", "https"],
        };
        assert!(urls.parse("http://a:8123, https://b:8443").is_ok());
        assert_eq!(
            urls.parse("http://a:8123,b:8123"),
            Err("endpoint 2: expected a URL starting with http://".to_owned())
        );
        assert_eq!(
            urls.parse("http://a:8123,,http://b"),
            Err("endpoint 2 is empty".to_owned())
        );
        assert_eq!(
            urls.redact("http://u:pw@a:1,http://b:2"),
            "http://u:***@a:1,http://b:2"
        );
        assert!(Identifier.parse("a;b").is_err());
        assert!(KafkaName.parse("a b").is_err());
    }

    #[test]
    fn topic_configs_are_pairs_whose_values_may_hold_commas() {
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert_eq!(
            TopicConfigs.parse("min.insync.replicas=2, cleanup.policy=compact,delete"),
            Ok(pairs(&[
                ("min.insync.replicas", "2"),
                ("cleanup.policy", "compact,delete")
            ]))
        );
        assert!(TopicConfigs.parse("compact").is_err());
        assert!(TopicConfigs.parse("a=1,a=2").is_err());
        assert!(TopicConfigs.parse("Bad Name=1").is_err());
    }
}
