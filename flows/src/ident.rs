//! Identifiers that come from configuration end up in SQL. They are checked
//! against a conservative pattern when loaded and quoted when used, so a flow
//! definition can never inject SQL.

use std::fmt;

/// A table, column, topic-safe name: ASCII letters, digits and `_`, not
/// starting with a digit, at most 63 bytes (Postgres' limit).
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Deserialize, serde::Serialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct Ident(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "`{0}` is not a valid identifier (letters, digits and _, not starting with a digit, at most 63 bytes)"
)]
pub struct InvalidIdent(pub String);

impl Ident {
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidIdent> {
        let name = name.into();
        let mut chars = name.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if first_ok && rest_ok && name.len() <= 63 {
            Ok(Self(name))
        } else {
            Err(InvalidIdent(name))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Double-quoted for Postgres.
    pub fn pg(&self) -> String {
        format!("\"{}\"", self.0)
    }

    /// Back-quoted for ClickHouse.
    pub fn ch(&self) -> String {
        format!("`{}`", self.0)
    }
}

impl TryFrom<String> for Ident {
    type Error = InvalidIdent;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<Ident> for String {
    fn from(value: Ident) -> Self {
        value.0
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Kafka topic and group names: letters, digits, `.`, `_`, `-`, 1..=249 bytes.
pub fn check_kafka_name(name: &str) -> Result<(), InvalidIdent> {
    let ok = !name.is_empty()
        && name.len() <= 249
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(InvalidIdent(name.to_owned()))
    }
}

/// A Kafka topic config's name (`min.insync.replicas`, `retention.ms`):
/// lower-case letters, digits, `.`, `_`, `-`.
pub fn check_topic_config_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a topic config name (like min.insync.replicas)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_names_and_rejects_injection() {
        assert!(Ident::new("user_logins").is_ok());
        assert!(Ident::new("_x1").is_ok());
        assert!(Ident::new("1abc").is_err());
        assert!(Ident::new("a\"; DROP TABLE x; --").is_err());
        assert!(Ident::new("a`b").is_err());
        assert!(Ident::new("").is_err());
        assert!(Ident::new("x".repeat(64)).is_err());
        assert_eq!(Ident::new("t").map(|i| i.pg()), Ok("\"t\"".to_owned()));
        assert_eq!(Ident::new("t").map(|i| i.ch()), Ok("`t`".to_owned()));
    }

    #[test]
    fn kafka_names() {
        assert!(check_kafka_name("user_events.dlq").is_ok());
        assert!(check_kafka_name("a b").is_err());
        assert!(check_kafka_name("").is_err());
    }
}
