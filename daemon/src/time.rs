//! Date-time text parsed best-effort, as ClickHouse's
//! `parseDateTimeBestEffort` would: shared by the sink (DateTime columns) and
//! the normalising stage (event timestamps).

use chrono::{DateTime, NaiveDate, NaiveDateTime};

/// Best-effort date-time parsing: RFC 3339 / ISO 8601 (with `T` or a space,
/// optional fraction and offset), `YYYY-MM-DD HH:MM[:SS]`, `YYYY-MM-DD`, or
/// digits of Unix seconds. Returns (seconds, nanoseconds).
pub fn parse_time(text: &str) -> Option<(i64, u32)> {
    let s = text.trim();
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return Some((dt.timestamp(), dt.timestamp_subsec_nanos()));
    }
    for fmt in [
        "%Y-%m-%d %H:%M:%S%.f%:z",
        "%Y-%m-%d %H:%M:%S%.f%#z",
        "%Y-%m-%dT%H:%M:%S%.f%#z",
    ] {
        if let Ok(dt) = DateTime::parse_from_str(s, fmt) {
            return Some((dt.timestamp(), dt.timestamp_subsec_nanos()));
        }
    }
    let naive = s.strip_suffix('Z').unwrap_or(s);
    for fmt in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M",
        "%d.%m.%Y %H:%M:%S",
        "%Y/%m/%d %H:%M:%S",
    ] {
        if let Ok(dt) = NaiveDateTime::parse_from_str(naive, fmt) {
            let utc = dt.and_utc();
            return Some((utc.timestamp(), utc.timestamp_subsec_nanos()));
        }
    }
    for fmt in ["%Y-%m-%d", "%d.%m.%Y", "%Y/%m/%d"] {
        if let Ok(d) = NaiveDate::parse_from_str(naive, fmt) {
            return Some((d.and_hms_opt(0, 0, 0)?.and_utc().timestamp(), 0));
        }
    }
    if !s.is_empty() && s.len() <= 10 && s.chars().all(|c| c.is_ascii_digit()) {
        return Some((s.parse().ok()?, 0));
    }
    None
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) for Unix seconds.
pub fn format_utc(seconds: i64) -> Option<String> {
    DateTime::from_timestamp(seconds, 0).map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_best_effort() {
        assert_eq!(
            parse_time("2024-01-02 03:04:05").map(|t| t.0),
            Some(1_704_164_645)
        );
        assert_eq!(
            parse_time("2024-01-02T03:04:05Z").map(|t| t.0),
            Some(1_704_164_645)
        );
        assert_eq!(
            parse_time("2024-01-02T05:04:05+02:00").map(|t| t.0),
            Some(1_704_164_645)
        );
        assert_eq!(
            parse_time("2024-01-02T03:04:05.250").map(|t| t.1),
            Some(250_000_000)
        );
        assert_eq!(parse_time("2024-01-02").map(|t| t.0), Some(1_704_153_600));
        assert_eq!(parse_time("1704164645").map(|t| t.0), Some(1_704_164_645));
        assert_eq!(parse_time("yesterday"), None);
    }

    #[test]
    fn formats_utc() {
        assert_eq!(
            format_utc(1_704_164_645).as_deref(),
            Some("2024-01-02 03:04:05")
        );
    }
}
