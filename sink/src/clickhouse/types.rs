//! ClickHouse column types the sink can fill, parsed from the type names the
//! server reports (`system.columns`).

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChType {
    UInt8,
    UInt16,
    UInt32,
    UInt64,
    Int8,
    Int16,
    Int32,
    Int64,
    Float32,
    Float64,
    Bool,
    String,
    FixedString(usize),
    Date,
    DateTime,
    /// Ticks of 10^-precision seconds.
    DateTime64(u32),
    /// `bytes` is 4, 8 or 16 (Decimal32/64/128).
    Decimal {
        bytes: u8,
        scale: u32,
    },
    IPv4,
    Uuid,
    Nullable(Box<ChType>),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unsupported ClickHouse type `{0}`")]
pub struct UnsupportedType(pub String);

impl ChType {
    pub fn parse(name: &str) -> Result<Self, UnsupportedType> {
        let name = name.trim();
        let unsupported = || UnsupportedType(name.to_owned());
        if let Some(inner) = unwrap_call(name, "Nullable") {
            return Ok(Self::Nullable(Box::new(Self::parse(inner)?)));
        }
        // LowCardinality changes storage, not the RowBinary encoding.
        if let Some(inner) = unwrap_call(name, "LowCardinality") {
            return Self::parse(inner);
        }
        if let Some(args) = unwrap_call(name, "FixedString") {
            return args
                .trim()
                .parse()
                .map(Self::FixedString)
                .map_err(|_| unsupported());
        }
        if let Some(args) = unwrap_call(name, "DateTime64") {
            let precision = args.split(',').next().unwrap_or("").trim();
            return precision
                .parse()
                .ok()
                .filter(|p| *p <= 9)
                .map(Self::DateTime64)
                .ok_or_else(unsupported);
        }
        if unwrap_call(name, "DateTime").is_some() {
            return Ok(Self::DateTime); // a time zone argument changes display only
        }
        for (prefix, bytes) in [("Decimal32", 4u8), ("Decimal64", 8), ("Decimal128", 16)] {
            if let Some(args) = unwrap_call(name, prefix) {
                let scale = args.trim().parse().map_err(|_| unsupported())?;
                return Ok(Self::Decimal { bytes, scale });
            }
        }
        if let Some(args) = unwrap_call(name, "Decimal") {
            let mut parts = args.split(',').map(str::trim);
            let precision: u32 = parts
                .next()
                .and_then(|p| p.parse().ok())
                .ok_or_else(unsupported)?;
            let scale: u32 = parts
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or_else(unsupported)?;
            let bytes = match precision {
                1..=9 => 4,
                10..=18 => 8,
                19..=38 => 16,
                _ => return Err(unsupported()),
            };
            return Ok(Self::Decimal { bytes, scale });
        }
        Ok(match name {
            "UInt8" => Self::UInt8,
            "UInt16" => Self::UInt16,
            "UInt32" => Self::UInt32,
            "UInt64" => Self::UInt64,
            "Int8" => Self::Int8,
            "Int16" => Self::Int16,
            "Int32" => Self::Int32,
            "Int64" => Self::Int64,
            "Float32" => Self::Float32,
            "Float64" => Self::Float64,
            "Bool" => Self::Bool,
            "String" => Self::String,
            "Date" => Self::Date,
            "DateTime" => Self::DateTime,
            "IPv4" => Self::IPv4,
            "UUID" => Self::Uuid,
            _ => return Err(unsupported()),
        })
    }
}

/// `Name(args)` → `args`.
fn unwrap_call<'a>(name: &'a str, func: &str) -> Option<&'a str> {
    name.strip_prefix(func)?
        .strip_prefix('(')?
        .strip_suffix(')')
}

impl fmt::Display for ChType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Nullable(inner) => write!(f, "Nullable({inner})"),
            Self::FixedString(n) => write!(f, "FixedString({n})"),
            Self::DateTime64(p) => write!(f, "DateTime64({p})"),
            Self::Decimal { bytes, scale } => {
                write!(f, "Decimal{}({scale})", u32::from(*bytes) * 8)
            }
            other => write!(f, "{other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_type_names() {
        assert_eq!(ChType::parse("UInt64"), Ok(ChType::UInt64));
        assert_eq!(
            ChType::parse("Nullable(String)"),
            Ok(ChType::Nullable(Box::new(ChType::String)))
        );
        assert_eq!(ChType::parse("LowCardinality(String)"), Ok(ChType::String));
        assert_eq!(ChType::parse("DateTime('UTC')"), Ok(ChType::DateTime));
        assert_eq!(
            ChType::parse("DateTime64(3, 'UTC')"),
            Ok(ChType::DateTime64(3))
        );
        assert_eq!(
            ChType::parse("Decimal(9, 2)"),
            Ok(ChType::Decimal { bytes: 4, scale: 2 })
        );
        assert_eq!(
            ChType::parse("Decimal32(2)"),
            Ok(ChType::Decimal { bytes: 4, scale: 2 })
        );
        assert_eq!(
            ChType::parse("Decimal(18, 4)"),
            Ok(ChType::Decimal { bytes: 8, scale: 4 })
        );
        assert!(ChType::parse("Array(String)").is_err());
        assert!(ChType::parse("Map(String, String)").is_err());
    }
}
