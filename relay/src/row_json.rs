//! How a source row becomes its JSON message: Postgres sends each column as
//! text (cheap output functions), the relay writes the JSON object.
//!
//! Building the JSON in Postgres (`json_build_object(...)::text`) cost about
//! half of the relay's SQL time and ran on the same cores as everything
//! else; text columns and a small writer here cost a fraction of it.
//! Types without a plain text form that is also JSON (arrays, composites,
//! ranges…) still go through Postgres' own `to_json`.

use flows::definition::TimeFormat;

/// How one column's text becomes a JSON value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Integers, numeric, floats: a JSON number (NaN and ±Infinity, which
    /// JSON lacks, become strings, as Postgres' `to_json` does).
    Number,
    /// `true`/`false` (Postgres' text output of boolean is `t`/`f`).
    Bool,
    /// A JSON string.
    Text,
    /// Already JSON (json, jsonb, or `to_json` of any other type).
    Raw,
}

/// One column of the message: its key (already JSON-escaped, with the
/// colon) and how its text is written.
#[derive(Debug, Clone)]
pub struct Field {
    key: String,
    kind: Kind,
}

/// The SQL expression that fetches `column` (a quoted identifier of type
/// `data_type`) as text, and how to write it.
pub fn select(column: &str, data_type: &str, times: TimeFormat) -> (String, Kind) {
    let text = |expr: String, kind| (format!("({expr})::text"), kind);
    match (data_type, times) {
        ("smallint" | "integer" | "bigint" | "numeric" | "real" | "double precision", _) => {
            text(column.into(), Kind::Number)
        }
        ("boolean", _) => text(column.into(), Kind::Bool),
        ("text" | "character varying" | "character" | "uuid" | "name" | "citext", _) => {
            text(column.into(), Kind::Text)
        }
        ("json" | "jsonb", _) => text(column.into(), Kind::Raw),
        // seed 003: times travel as Unix seconds (fractional when the value
        // has sub-second precision); `timestamp` without zone is taken as UTC.
        ("timestamp without time zone", TimeFormat::Unix) => text(
            format!("date_part('epoch', {column} AT TIME ZONE 'UTC')"),
            Kind::Number,
        ),
        ("timestamp with time zone", TimeFormat::Unix) => {
            text(format!("date_part('epoch', {column})"), Kind::Number)
        }
        ("date", TimeFormat::Unix) => text(
            format!("date_part('epoch', {column}::timestamp AT TIME ZONE 'UTC')"),
            Kind::Number,
        ),
        ("timestamp without time zone", TimeFormat::Text) => text(
            format!("to_char({column}, 'YYYY-MM-DD HH24:MI:SS')"),
            Kind::Text,
        ),
        ("timestamp with time zone", TimeFormat::Text) => text(
            format!("to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')"),
            Kind::Text,
        ),
        ("date", TimeFormat::Text) => text(format!("to_char({column}, 'YYYY-MM-DD')"), Kind::Text),
        _ => (format!("to_json({column})::text"), Kind::Raw),
    }
}

impl Field {
    pub fn new(name: &str, kind: Kind) -> Self {
        let mut key = String::with_capacity(name.len() + 3);
        write_string(&mut key, name);
        key.push(':');
        Self { key, kind }
    }
}

/// Writes one JSON object from the columns' texts (`None` is SQL NULL).
pub fn write_object<'a>(
    out: &mut String,
    fields: &[Field],
    values: impl Iterator<Item = Option<&'a str>>,
) {
    out.push('{');
    for (i, (field, value)) in fields.iter().zip(values).enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&field.key);
        match (value, field.kind) {
            (None, _) => out.push_str("null"),
            (Some(v), Kind::Number) if is_json_number(v) => out.push_str(v),
            (Some(v), Kind::Number | Kind::Text) => write_string(out, v),
            (Some(v), Kind::Bool) => out.push_str(if v == "t" { "true" } else { "false" }),
            (Some(v), Kind::Raw) => out.push_str(v),
        }
    }
    out.push('}');
}

/// Postgres' number output is JSON except NaN and the infinities.
fn is_json_number(v: &str) -> bool {
    v.bytes()
        .next()
        .is_some_and(|b| b == b'-' || b.is_ascii_digit())
        && !v.ends_with("Infinity")
}

/// A JSON string literal.
fn write_string(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            out.push_str(&format!("\\u{b:04x}"));
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(fields: &[(&str, Kind)], values: &[Option<&str>]) -> serde_json::Value {
        let fields: Vec<Field> = fields.iter().map(|(n, k)| Field::new(n, *k)).collect();
        let mut out = String::new();
        write_object(&mut out, &fields, values.iter().copied());
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{out}: {e}"))
    }

    #[test]
    fn writes_each_kind_as_postgres_to_json_would() {
        let v = object(
            &[
                ("id", Kind::Number),
                ("price", Kind::Number),
                ("ratio", Kind::Number),
                ("ok", Kind::Bool),
                ("name", Kind::Text),
                ("doc", Kind::Raw),
                ("gone", Kind::Text),
            ],
            &[
                Some("42"),
                Some("-12.50"),
                Some("NaN"),
                Some("t"),
                Some("say \"hi\"\n\\ \u{1}é"),
                Some("{\"a\": [1, 2]}"),
                None,
            ],
        );
        assert_eq!(
            v,
            serde_json::json!({
                "id": 42, "price": -12.50, "ratio": "NaN", "ok": true,
                "name": "say \"hi\"\n\\ \u{1}é", "doc": {"a": [1, 2]}, "gone": null
            })
        );
    }

    #[test]
    fn infinities_become_strings() {
        let v = object(
            &[("a", Kind::Number), ("b", Kind::Number), ("c", Kind::Bool)],
            &[Some("Infinity"), Some("-Infinity"), Some("f")],
        );
        assert_eq!(
            v,
            serde_json::json!({"a": "Infinity", "b": "-Infinity", "c": false})
        );
    }

    #[test]
    fn unknown_types_go_through_to_json() {
        let (expr, kind) = select("\"tags\"", "ARRAY", TimeFormat::Unix);
        assert_eq!(expr, "to_json(\"tags\")::text");
        assert_eq!(kind, Kind::Raw);
        let (expr, kind) = select("\"at\"", "timestamp with time zone", TimeFormat::Unix);
        assert_eq!(expr, "(date_part('epoch', \"at\"))::text");
        assert_eq!(kind, Kind::Number);
    }
}
