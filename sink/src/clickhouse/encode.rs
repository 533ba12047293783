//! JSON messages → ClickHouse RowBinary, column by column, checked against
//! the column's type. A value that does not fit is an [`EncodeError`] naming
//! the column; the caller dead-letters the message instead of failing the
//! whole insert.

use std::net::Ipv4Addr;

use bytes::{BufMut, BytesMut};
use daemon::time::parse_time;
use serde_json::{Map, Value};

use super::types::ChType;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("column {column}: {reason}")]
pub struct EncodeError {
    pub column: String,
    pub reason: String,
}

/// One target column: its name, its type, and what fills it: the message
/// field `field`, or the same `constant` for every row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnPlan {
    pub column: String,
    pub field: String,
    pub ty: ChType,
    pub constant: Option<Value>,
}

/// Appends one row to `out`. On error `out` is left as it was.
pub fn encode_row(
    columns: &[ColumnPlan],
    message: &Map<String, Value>,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let start = out.len();
    for plan in columns {
        let (value, missing) = match &plan.constant {
            Some(constant) => (constant, false),
            None => (
                message.get(&plan.field).unwrap_or(&Value::Null),
                !message.contains_key(&plan.field),
            ),
        };
        if let Err(reason) = encode_value(&plan.ty, value, missing, out) {
            out.truncate(start);
            return Err(EncodeError {
                column: plan.column.clone(),
                reason,
            });
        }
    }
    Ok(())
}

fn encode_value(
    ty: &ChType,
    value: &Value,
    missing: bool,
    out: &mut BytesMut,
) -> Result<(), String> {
    if let ChType::Nullable(inner) = ty {
        if value.is_null() {
            out.put_u8(1);
            return Ok(());
        }
        out.put_u8(0);
        return encode_value(inner, value, missing, out);
    }
    if value.is_null() {
        return Err(if missing {
            "missing required field"
        } else {
            "null in a non-Nullable column"
        }
        .to_owned());
    }
    match ty {
        ChType::UInt8 => out.put_u8(unsigned(value, u64::from(u8::MAX))? as u8),
        ChType::UInt16 => out.put_u16_le(unsigned(value, u64::from(u16::MAX))? as u16),
        ChType::UInt32 => out.put_u32_le(unsigned(value, u64::from(u32::MAX))? as u32),
        ChType::UInt64 => out.put_u64_le(unsigned(value, u64::MAX)?),
        ChType::Int8 => out.put_i8(signed(value, i64::from(i8::MIN), i64::from(i8::MAX))? as i8),
        ChType::Int16 => {
            out.put_i16_le(signed(value, i64::from(i16::MIN), i64::from(i16::MAX))? as i16)
        }
        ChType::Int32 => {
            out.put_i32_le(signed(value, i64::from(i32::MIN), i64::from(i32::MAX))? as i32)
        }
        ChType::Int64 => out.put_i64_le(signed(value, i64::MIN, i64::MAX)?),
        ChType::Float32 => out.put_f32_le(float(value)? as f32),
        ChType::Float64 => out.put_f64_le(float(value)?),
        ChType::Bool => out.put_u8(match value {
            Value::Bool(b) => u8::from(*b),
            other => match unsigned(other, 1) {
                Ok(n) => n as u8,
                Err(_) => return Err(expected("a boolean", other)),
            },
        }),
        ChType::String => {
            let owned;
            let bytes = match value {
                Value::String(s) => s.as_bytes(),
                Value::Object(_) | Value::Array(_) => {
                    owned = value.to_string();
                    owned.as_bytes()
                }
                other => return Err(expected("a string", other)),
            };
            put_varint(out, bytes.len() as u64);
            out.put_slice(bytes);
        }
        ChType::FixedString(n) => {
            let Value::String(s) = value else {
                return Err(expected("a string", value));
            };
            if s.len() > *n {
                return Err(format!("{} bytes do not fit FixedString({n})", s.len()));
            }
            out.put_slice(s.as_bytes());
            out.put_bytes(0, n - s.len());
        }
        ChType::Date => {
            let secs = epoch_seconds(value)?;
            let days = secs.div_euclid(86_400);
            out.put_u16_le(u16::try_from(days).map_err(|_| "date out of range".to_owned())?);
        }
        ChType::DateTime => {
            let secs = epoch_seconds(value)?;
            out.put_u32_le(
                u32::try_from(secs).map_err(|_| "time out of DateTime range".to_owned())?,
            );
        }
        ChType::DateTime64(precision) => {
            let ticks = epoch_ticks(value, *precision)?;
            out.put_i64_le(ticks);
        }
        ChType::Decimal { bytes, scale } => {
            let scaled = decimal(value, *scale)?;
            match bytes {
                4 => out.put_i32_le(
                    i32::try_from(scaled).map_err(|_| "decimal out of range".to_owned())?,
                ),
                8 => out.put_i64_le(
                    i64::try_from(scaled).map_err(|_| "decimal out of range".to_owned())?,
                ),
                _ => out.put_i128_le(scaled),
            }
        }
        ChType::IPv4 => {
            let Value::String(s) = value else {
                return Err(expected("an IPv4 address", value));
            };
            let ip: Ipv4Addr = s
                .trim()
                .parse()
                .map_err(|_| format!("`{}` is not an IPv4 address", clip(s)))?;
            out.put_u32_le(u32::from(ip));
        }
        ChType::Uuid => {
            let Value::String(s) = value else {
                return Err(expected("a UUID", value));
            };
            let hex: String = s.chars().filter(|c| *c != '-').collect();
            let n = u128::from_str_radix(&hex, 16)
                .ok()
                .filter(|_| hex.len() == 32)
                .ok_or_else(|| format!("`{}` is not a UUID", clip(s)))?;
            out.put_u64_le((n >> 64) as u64);
            out.put_u64_le(n as u64);
        }
        ChType::Nullable(_) => unreachable_nullable()?,
    }
    Ok(())
}

fn unreachable_nullable() -> Result<(), String> {
    Err("nested Nullable is not supported".to_owned())
}

fn expected(what: &str, got: &Value) -> String {
    let kind = match got {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    format!("expected {what}, got {kind}")
}

/// At most 40 characters of a bad value, for error messages.
fn clip(s: &str) -> String {
    s.chars().take(40).collect()
}

fn unsigned(value: &Value, max: u64) -> Result<u64, String> {
    let n = match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| expected("an unsigned integer", value))?;
    if n > max {
        return Err(format!("{n} is out of range (max {max})"));
    }
    Ok(n)
}

fn signed(value: &Value, min: i64, max: i64) -> Result<i64, String> {
    let n = match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| expected("an integer", value))?;
    if n < min || n > max {
        return Err(format!("{n} is out of range ({min}..={max})"));
    }
    Ok(n)
}

fn float(value: &Value) -> Result<f64, String> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| expected("a number", value))
}

/// Exact decimal parsing from the number's text, scaled by 10^scale; digits
/// beyond the scale are rounded half away from zero.
fn decimal(value: &Value, scale: u32) -> Result<i128, String> {
    let text = match value {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.trim().to_owned(),
        other => return Err(expected("a decimal number", other)),
    };
    parse_decimal(&text, scale).ok_or_else(|| format!("`{}` is not a decimal number", clip(&text)))
}

fn parse_decimal(text: &str, scale: u32) -> Option<i128> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    // Scientific notation (from float serialisation) goes through f64.
    if digits.contains(['e', 'E']) {
        let f: f64 = text.parse().ok()?;
        let scaled = (f * 10f64.powi(scale as i32)).round();
        return (scaled.is_finite() && scaled.abs() < 1e38).then_some(scaled as i128);
    }
    let (int_part, frac_part) = digits.split_once('.').unwrap_or((digits, ""));
    if int_part.is_empty() && frac_part.is_empty()
        || !int_part.chars().all(|c| c.is_ascii_digit())
        || !frac_part.chars().all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let scale = scale as usize;
    let mut kept: String = frac_part.chars().take(scale).collect();
    while kept.len() < scale {
        kept.push('0');
    }
    let round_up = frac_part.chars().nth(scale).is_some_and(|c| c >= '5');
    let mut n: i128 = format!(
        "{}{}",
        if int_part.is_empty() { "0" } else { int_part },
        kept
    )
    .parse()
    .ok()?;
    if round_up {
        n = n.checked_add(1)?;
    }
    Some(if negative { -n } else { n })
}

/// Unix seconds from a number (seed 003's format; fractions are dropped) or a
/// date-time string parsed best-effort (taken as UTC when it has no offset).
pub fn epoch_seconds(value: &Value) -> Result<i64, String> {
    match value {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite())
                    .map(|f| f.floor() as i64)
            })
            .ok_or_else(|| "time out of range".to_owned()),
        Value::String(s) => parse_time(s)
            .map(|(secs, _)| secs)
            .ok_or_else(|| format!("`{}` is not a date-time", clip(s))),
        other => Err(expected("a Unix time or a date-time string", other)),
    }
}

fn epoch_ticks(value: &Value, precision: u32) -> Result<i64, String> {
    let per_second = 10i64.pow(precision);
    match value {
        Value::Number(n) => {
            let f = n.as_f64().ok_or_else(|| "time out of range".to_owned())?;
            Ok((f * per_second as f64).round() as i64)
        }
        Value::String(s) => {
            let (secs, nanos) =
                parse_time(s).ok_or_else(|| format!("`{}` is not a date-time", clip(s)))?;
            Ok(secs * per_second + i64::from(nanos) / (1_000_000_000 / per_second))
        }
        other => Err(expected("a Unix time or a date-time string", other)),
    }
}

/// LEB128, as RowBinary encodes string lengths.
fn put_varint(out: &mut BytesMut, mut n: u64) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.put_u8(byte);
            return;
        }
        out.put_u8(byte | 0x80);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plan(column: &str, ty: &str) -> ColumnPlan {
        ColumnPlan {
            column: column.into(),
            field: column.into(),
            ty: ChType::parse(ty).unwrap_or_else(|e| panic!("{e}")),
            constant: None,
        }
    }

    fn encode(columns: &[ColumnPlan], v: Value) -> Result<Vec<u8>, EncodeError> {
        let mut out = BytesMut::new();
        let Value::Object(map) = v else {
            panic!("object expected")
        };
        encode_row(columns, &map, &mut out).map(|()| out.to_vec())
    }

    #[test]
    fn user_logins_row() {
        let cols = [
            plan("id", "UInt64"),
            plan("username", "Nullable(String)"),
            plan("event_time", "Nullable(DateTime)"),
        ];
        let bytes = encode(
            &cols,
            json!({"id": 7, "username": "é\"", "event_time": 1700000000.5}),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let mut expected = vec![7, 0, 0, 0, 0, 0, 0, 0, 0, 3];
        expected.extend_from_slice("é\"".as_bytes());
        expected.push(0);
        expected.extend_from_slice(&1_700_000_000u32.to_le_bytes());
        assert_eq!(bytes, expected);

        let nulls =
            encode(&cols, json!({"id": 1, "username": null})).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(nulls, vec![1, 0, 0, 0, 0, 0, 0, 0, 1, 1]);
    }

    #[test]
    fn type_errors_name_the_column() {
        let cols = [plan("id", "UInt64"), plan("n", "UInt32")];
        let err = encode(&cols, json!({"id": "abc", "n": 1})).err();
        assert_eq!(err.map(|e| e.column), Some("id".to_owned()));
        let err = encode(&cols, json!({"id": 1})).err().map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("column n: missing required field"));
        let err = encode(&cols, json!({"id": 1, "n": 5_000_000_000u64})).err();
        assert!(err.is_some());
        let err = encode(&cols, json!({"id": -1, "n": 1})).err();
        assert!(err.is_some());
    }

    #[test]
    fn decimals_are_exact() {
        assert_eq!(parse_decimal("9.99", 2), Some(999));
        assert_eq!(parse_decimal("-0.005", 2), Some(-1));
        assert_eq!(parse_decimal("12", 2), Some(1200));
        assert_eq!(parse_decimal("999.994", 2), Some(99999));
        assert_eq!(parse_decimal("1e2", 2), Some(10000));
        assert_eq!(parse_decimal("abc", 2), None);
        assert_eq!(parse_decimal(".", 2), None);
    }

    #[test]
    fn ipv4_uuid_and_datetime64() {
        let cols = [
            plan("ip", "IPv4"),
            plan("u", "UUID"),
            plan("t", "DateTime64(3)"),
        ];
        let bytes = encode(
            &cols,
            json!({"ip": "1.2.3.4", "u": "00000000-0000-0001-0000-000000000002", "t": "2024-01-02 03:04:05.250"}),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&bytes[..4], &0x0102_0304u32.to_le_bytes());
        assert_eq!(&bytes[4..12], &1u64.to_le_bytes());
        assert_eq!(&bytes[12..20], &2u64.to_le_bytes());
        assert_eq!(&bytes[20..28], &1_704_164_645_250i64.to_le_bytes());
        assert!(encode(&cols[..1], json!({"ip": "300.1.1.1"})).is_err());
    }
}
