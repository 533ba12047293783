//! JSON messages → ClickHouse RowBinary, column by column, checked against
//! the column's type. A value that does not fit is an [`EncodeError`] naming
//! the column; the caller dead-letters the message instead of failing the
//! whole insert. RowBinary carries no types: a batch is only ever inserted
//! into columns of the types it was encoded for, or [`convert`]ed to a
//! widened column's type first (see `schema::fit`).

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
    /// The type as the server names it (`system.columns`), e.g.
    /// `Decimal(9, 2)` for `Decimal32(2)`: what an insert declares where
    /// the server checks declared types (`caps::insert_checks_types`).
    pub type_name: String,
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
        ChType::Bool => out.put_u8(boolean(value)?),
        ChType::String => put_string(value, out)?,
        ChType::FixedString(n) => put_fixed_string(*n, value, out)?,
        ChType::Date => out.put_u16_le(days(value)?),
        ChType::DateTime => out.put_u32_le(
            u32::try_from(epoch_seconds(value)?)
                .map_err(|_| "time out of DateTime range".to_owned())?,
        ),
        ChType::DateTime64(precision) => out.put_i64_le(epoch_ticks(value, *precision)?),
        ChType::Decimal { bytes, scale } => put_decimal(*bytes, decimal(value, *scale)?, out)?,
        ChType::IPv4 => out.put_u32_le(u32::from(ipv4(value)?)),
        ChType::Uuid => put_uuid(value, out)?,
        ChType::Nullable(_) => return Err("nested Nullable is not supported".to_owned()),
    }
    Ok(())
}

fn boolean(value: &Value) -> Result<u8, String> {
    match value {
        Value::Bool(b) => Ok(u8::from(*b)),
        other => unsigned(other, 1)
            .map(|n| n as u8)
            .map_err(|_| expected("a boolean", other)),
    }
}

/// A string as is; an object or an array as its JSON text.
fn put_string(value: &Value, out: &mut BytesMut) -> Result<(), String> {
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
    Ok(())
}

/// Zero-padded to `n` bytes.
fn put_fixed_string(n: usize, value: &Value, out: &mut BytesMut) -> Result<(), String> {
    let Value::String(s) = value else {
        return Err(expected("a string", value));
    };
    if s.len() > n {
        return Err(format!("{} bytes do not fit FixedString({n})", s.len()));
    }
    out.put_slice(s.as_bytes());
    out.put_bytes(0, n - s.len());
    Ok(())
}

/// Days since the Unix epoch.
fn days(value: &Value) -> Result<u16, String> {
    let days = epoch_seconds(value)?.div_euclid(86_400);
    u16::try_from(days).map_err(|_| "date out of range".to_owned())
}

/// `scaled` (the decimal times 10^scale) in `bytes` bytes.
fn put_decimal(bytes: u8, scaled: i128, out: &mut BytesMut) -> Result<(), String> {
    let out_of_range = |_| "decimal out of range".to_owned();
    match bytes {
        4 => out.put_i32_le(i32::try_from(scaled).map_err(out_of_range)?),
        8 => out.put_i64_le(i64::try_from(scaled).map_err(out_of_range)?),
        _ => out.put_i128_le(scaled),
    }
    Ok(())
}

fn ipv4(value: &Value) -> Result<Ipv4Addr, String> {
    let Value::String(s) = value else {
        return Err(expected("an IPv4 address", value));
    };
    s.trim()
        .parse()
        .map_err(|_| format!("`{}` is not an IPv4 address", clip(s)))
}

/// A UUID as ClickHouse stores it: its high half, then its low half, each
/// little-endian.
fn put_uuid(value: &Value, out: &mut BytesMut) -> Result<(), String> {
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
    Ok(())
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

/// Rewrites `rows`, RowBinary encoded for the column types `from`, as
/// RowBinary for `to` (the same columns, in order): a batch encoded before
/// a column was widened goes in with the values it was encoded with. The
/// values are those ClickHouse's own `ALTER` gives rows stored before the
/// change: a `FixedString` keeps its zero padding, a `DateTime` gains no
/// fraction. Only widenings convert (`schema::fit` decides); anything else,
/// a value that does not fit or rows cut short is an error, never a guess.
pub fn convert(rows: &[u8], from: &[&ChType], to: &[&ChType]) -> Result<BytesMut, String> {
    if from.len() != to.len() {
        return Err(format!(
            "{} columns encoded, {} to write",
            from.len(),
            to.len()
        ));
    }
    let mut input = rows;
    let mut out = BytesMut::with_capacity(rows.len() + rows.len() / 2);
    while !input.is_empty() {
        for (from, to) in from.iter().zip(to) {
            convert_value(from, to, &mut input, &mut out)?;
        }
    }
    Ok(out)
}

/// `rows` (RowBinary for the column `types`) split into `parts` blocks,
/// each row going to `place(its value of column key)` — an integer
/// column's value in 64 bits, sign-extended where the type is signed.
/// Rows keep their order within a block; rows cut short are an error.
pub fn rows_by_key(
    rows: &[u8],
    types: &[&ChType],
    key: usize,
    parts: usize,
    mut place: impl FnMut(u64) -> usize,
) -> Result<Vec<BytesMut>, String> {
    let Some((width, signed)) = types.get(key).and_then(|ty| int_width(ty)) else {
        return Err("the sharding key's column is not an integer column".to_owned());
    };
    let mut out: Vec<BytesMut> = (0..parts).map(|_| BytesMut::new()).collect();
    let mut input = rows;
    while !input.is_empty() {
        let start = input;
        let mut value = 0u64;
        for (i, ty) in types.iter().enumerate() {
            if i == key {
                let n = if signed {
                    read_signed(&mut input, width)? as i64 as u64
                } else {
                    u64::from_le_bytes(widen_le(take(&mut input, width)?))
                };
                value = n;
                continue;
            }
            skip_value(ty, &mut input)?;
        }
        let row = &start[..start.len() - input.len()];
        let part = place(value);
        out.get_mut(part)
            .ok_or_else(|| format!("no block {part} of {parts}"))?
            .put_slice(row);
    }
    Ok(out)
}

/// Moves `input` past one value of type `ty`.
fn skip_value(ty: &ChType, input: &mut &[u8]) -> Result<(), String> {
    if let ChType::Nullable(inner) = ty {
        if take(input, 1)?[0] != 0 {
            return Ok(());
        }
        return skip_value(inner, input);
    }
    let len = value_len(ty, input)?;
    take(input, len).map(|_| ())
}

fn convert_value(
    from: &ChType,
    to: &ChType,
    input: &mut &[u8],
    out: &mut BytesMut,
) -> Result<(), String> {
    use ChType::*;
    match (from, to) {
        (Nullable(a), Nullable(b)) => {
            let null = take(input, 1)?[0];
            out.put_u8(null);
            if null == 0 {
                convert_value(a, b, input, out)?;
            }
        }
        (a, Nullable(b)) => {
            out.put_u8(0);
            convert_value(a, b, input, out)?;
        }
        (a, b) if a == b => {
            let len = value_len(a, input)?;
            out.put_slice(take(input, len)?);
        }
        (Float32, Float64) => out.put_f64_le(f64::from(f32::from_le_bytes(fixed(input)?))),
        (FixedString(n), String) => {
            put_varint(out, *n as u64);
            out.put_slice(take(input, *n)?);
        }
        (DateTime, DateTime64(precision)) => {
            let secs = u32::from_le_bytes(fixed(input)?);
            out.put_i64_le(i64::from(secs) * 10i64.pow(*precision));
        }
        (Decimal { bytes: a, scale: s }, Decimal { bytes: b, scale: t }) if s == t => {
            let n = read_signed(input, usize::from(*a))?;
            write_signed(n, usize::from(*b), out)?;
        }
        (a, b) => match (int_width(a), int_width(b)) {
            (Some((a_bytes, a_signed)), Some((b_bytes, b_signed))) => {
                let n = if a_signed {
                    read_signed(input, a_bytes)?
                } else {
                    i128::from(u64::from_le_bytes(widen_le(take(input, a_bytes)?)))
                };
                let fits = if b_signed {
                    let bits = b_bytes * 8 - 1;
                    (-(1i128 << bits)..(1i128 << bits)).contains(&n)
                } else {
                    (0..(1i128 << (b_bytes * 8))).contains(&n)
                };
                if !fits {
                    return Err(format!("{n} does not fit {b}"));
                }
                out.put_slice(&n.to_le_bytes()[..b_bytes]);
            }
            _ => return Err(format!("{a} cannot be converted to {b}")),
        },
    }
    Ok(())
}

/// Bytes and signedness of an integer type.
fn int_width(ty: &ChType) -> Option<(usize, bool)> {
    use ChType::*;
    Some(match ty {
        UInt8 => (1, false),
        UInt16 => (2, false),
        UInt32 => (4, false),
        UInt64 => (8, false),
        Int8 => (1, true),
        Int16 => (2, true),
        Int32 => (4, true),
        Int64 => (8, true),
        _ => return None,
    })
}

/// The length of the next value of type `ty` in `input` (not Nullable).
fn value_len(ty: &ChType, input: &[u8]) -> Result<usize, String> {
    use ChType::*;
    Ok(match ty {
        UInt8 | Int8 | Bool => 1,
        UInt16 | Int16 | Date => 2,
        UInt32 | Int32 | Float32 | DateTime | IPv4 => 4,
        UInt64 | Int64 | Float64 | DateTime64(_) => 8,
        Uuid => 16,
        FixedString(n) => *n,
        Decimal { bytes, .. } => usize::from(*bytes),
        String => {
            let (len, prefix) = read_varint(input)?;
            prefix + usize::try_from(len).map_err(|_| "string too long".to_owned())?
        }
        Nullable(_) => return Err("nested Nullable is not supported".to_owned()),
    })
}

fn take<'a>(input: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if input.len() < n {
        return Err("rows cut short".to_owned());
    }
    let (head, rest) = input.split_at(n);
    *input = rest;
    Ok(head)
}

fn fixed<const N: usize>(input: &mut &[u8]) -> Result<[u8; N], String> {
    let mut bytes = [0; N];
    bytes.copy_from_slice(take(input, N)?);
    Ok(bytes)
}

/// `bytes` little-endian bytes, zero-extended to 8.
fn widen_le(bytes: &[u8]) -> [u8; 8] {
    let mut wide = [0; 8];
    wide[..bytes.len()].copy_from_slice(bytes);
    wide
}

/// A little-endian two's complement integer of `width` bytes (1 to 16).
fn read_signed(input: &mut &[u8], width: usize) -> Result<i128, String> {
    let bytes = take(input, width)?;
    let fill = if bytes.last().is_some_and(|b| b & 0x80 != 0) {
        0xff
    } else {
        0
    };
    let mut wide = [fill; 16];
    wide[..width].copy_from_slice(bytes);
    Ok(i128::from_le_bytes(wide))
}

fn write_signed(n: i128, width: usize, out: &mut BytesMut) -> Result<(), String> {
    let bits = width * 8 - 1;
    if width < 16 && !(-(1i128 << bits)..(1i128 << bits)).contains(&n) {
        return Err(format!("{n} does not fit {width} bytes"));
    }
    out.put_slice(&n.to_le_bytes()[..width]);
    Ok(())
}

/// A LEB128 number at the start of `input`: (value, bytes it takes).
fn read_varint(input: &[u8]) -> Result<(u64, usize), String> {
    let mut n = 0u64;
    for (i, byte) in input.iter().enumerate().take(10) {
        n |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((n, i + 1));
        }
    }
    Err("rows cut short".to_owned())
}

/// LEB128, as RowBinary encodes string lengths.
pub fn put_varint(out: &mut BytesMut, mut n: u64) {
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
            type_name: ty.into(),
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

    #[test]
    fn rows_split_by_their_key_whatever_the_columns_before_it() {
        let cols = [
            plan("name", "Nullable(String)"),
            plan("n", "Int32"),
            plan("d", "Decimal32(2)"),
        ];
        let rows: Vec<Value> = (-3i32..4)
            .map(|n| json!({"name": if n % 2 == 0 { Value::Null } else { json!("x".repeat(n.unsigned_abs() as usize)) }, "n": n, "d": "1.50"}))
            .collect();
        let mut all = BytesMut::new();
        let mut expected: [Vec<u8>; 2] = Default::default();
        for row in &rows {
            let Value::Object(map) = row else { panic!() };
            let mut one = BytesMut::new();
            encode_row(&cols, map, &mut one).unwrap_or_else(|e| panic!("{e}"));
            let n = row["n"].as_i64().unwrap_or(0);
            expected[usize::from(n < 0)].extend_from_slice(&one);
            all.extend_from_slice(&one);
        }
        let types: Vec<&ChType> = cols.iter().map(|c| &c.ty).collect();
        // Negative values arrive sign-extended: their top bit is set.
        let parts = rows_by_key(&all, &types, 1, 2, |v| usize::from(v >> 63 == 1))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parts[0].to_vec(), expected[0]);
        assert_eq!(parts[1].to_vec(), expected[1]);
        assert!(rows_by_key(&all[..all.len() - 1], &types, 1, 2, |_| 0).is_err());
        assert!(rows_by_key(&all, &types, 0, 2, |_| 0).is_err());
    }

    /// Rows encoded for `from`, converted to `to`.
    fn converted(
        from: &[ColumnPlan],
        to: &[ColumnPlan],
        rows: &[Value],
    ) -> Result<Vec<u8>, String> {
        let mut encoded = BytesMut::new();
        for row in rows {
            let Value::Object(map) = row else {
                panic!("object expected")
            };
            encode_row(from, map, &mut encoded).map_err(|e| e.to_string())?;
        }
        let from: Vec<&ChType> = from.iter().map(|c| &c.ty).collect();
        let to: Vec<&ChType> = to.iter().map(|c| &c.ty).collect();
        convert(&encoded, &from, &to).map(|b| b.to_vec())
    }

    #[test]
    fn a_batch_converted_to_a_widened_column_holds_what_the_new_type_would() {
        let cases: &[(&str, &str, &[Value])] = &[
            (
                "Int32",
                "Int64",
                &[json!(-2147483648), json!(0), json!(2147483647)],
            ),
            ("UInt32", "Int64", &[json!(0), json!(4294967295u64)]),
            ("UInt8", "UInt64", &[json!(255)]),
            ("Int16", "Nullable(Int32)", &[json!(-32768), json!(7)]),
            (
                "Nullable(Int32)",
                "Nullable(Int64)",
                &[json!(null), json!(-1)],
            ),
            (
                "Decimal32(2)",
                "Decimal64(2)",
                &[json!("-21474836.48"), json!("19.99")],
            ),
            (
                "Decimal(9, 2)",
                "Decimal128(2)",
                &[json!("-0.01"), json!("21474836.47")],
            ),
            (
                "Decimal64(4)",
                "Decimal128(4)",
                &[json!("-922337203685477.5808")],
            ),
            ("Float32", "Float64", &[json!(1.5), json!(-0.25)]),
            ("DateTime", "DateTime64(3)", &[json!(1700000000), json!(0)]),
            ("String", "Nullable(String)", &[json!(""), json!("héllo")]),
            (
                "Nullable(String)",
                "Nullable(String)",
                &[json!(null), json!("x")],
            ),
            (
                "UUID",
                "UUID",
                &[json!("6f1c2b8e-0000-4000-8000-00000000abcd")],
            ),
        ];
        for (from, to, values) in cases {
            let old = [plan("id", "UInt64"), plan("x", from), plan("s", "String")];
            let new = [plan("id", "UInt64"), plan("x", to), plan("s", "String")];
            let rows: Vec<Value> = values
                .iter()
                .enumerate()
                .map(|(i, v)| json!({"id": i, "x": v, "s": "tail"}))
                .collect();
            let mut expected = BytesMut::new();
            for row in &rows {
                let Value::Object(map) = row else { panic!() };
                encode_row(&new, map, &mut expected).unwrap_or_else(|e| panic!("{e}"));
            }
            assert_eq!(
                converted(&old, &new, &rows),
                Ok(expected.to_vec()),
                "{from} -> {to}"
            );
        }
        // A FixedString keeps its padding, as ClickHouse's ALTER keeps it.
        let padded = converted(
            &[plan("f", "FixedString(4)")],
            &[plan("f", "String")],
            &[json!({"f": "ab"})],
        );
        assert_eq!(padded, Ok(vec![4, b'a', b'b', 0, 0]));
    }

    #[test]
    fn values_that_do_not_fit_and_types_that_do_not_convert_are_errors() {
        let one = |from: &str, to: &str, v: Value| {
            converted(&[plan("x", from)], &[plan("x", to)], &[json!({ "x": v })])
        };
        assert!(one("Int64", "Int32", json!(5_000_000_000i64)).is_err());
        assert!(one("Int32", "UInt32", json!(-1)).is_err());
        assert!(one("Decimal32(2)", "Decimal32(4)", json!("19.99")).is_err());
        assert!(one("Float64", "Float32", json!(1.5)).is_err());
        assert!(one("Int64", "Float64", json!(1)).is_err());
        assert!(one("Nullable(Int32)", "Int64", json!(1)).is_err());
        let cut = convert(&[1, 2, 3], &[&ChType::UInt32], &[&ChType::UInt64]);
        assert_eq!(cut, Err("rows cut short".to_owned()));
    }
}
