//! `sink reconcile`: per flow, the source rows flagged sent in Postgres
//! against the distinct source ids stored in ClickHouse. Compared range by
//! range of ids (count and sum of each side), so a large table costs a few
//! aggregate queries; ids are listed only for ranges that differ, and a few
//! of each kind are reported as samples.
//!
//! Rows in flight (published, not yet stored) show as missing: run it on a
//! quiet pipeline, or run it twice.

use std::fmt::Write;

use flows::Flow;

/// Ids compared per query.
const RANGE: i64 = 100_000;
/// Sample ids reported per kind of difference.
const SAMPLES: usize = 10;

/// One source table against one ClickHouse table.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Comparison {
    pub flow: String,
    pub source: String,
    pub target: String,
    pub sent: i64,
    pub stored: i64,
    /// Flagged sent in Postgres, absent from ClickHouse.
    pub missing: i64,
    pub missing_sample: Vec<i64>,
    /// In ClickHouse, not flagged sent in Postgres.
    pub unexpected: i64,
    pub unexpected_sample: Vec<i64>,
}

impl Comparison {
    pub fn consistent(&self) -> bool {
        self.missing == 0 && self.unexpected == 0
    }

    pub fn line(&self) -> String {
        let mut line = format!(
            "flow={} source={} target={} sent={} stored_distinct={} missing={} unexpected={}",
            self.flow,
            self.source,
            self.target,
            self.sent,
            self.stored,
            self.missing,
            self.unexpected
        );
        let join = |ids: &[i64]| ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
        if !self.missing_sample.is_empty() {
            let _ = write!(line, " missing_sample={}", join(&self.missing_sample));
        }
        if !self.unexpected_sample.is_empty() {
            let _ = write!(line, " unexpected_sample={}", join(&self.unexpected_sample));
        }
        line
    }
}

/// Every (source table, target table, ClickHouse id column) of `flows`: the
/// targets fed by a source's topic, with the column that receives the
/// message's `id` field.
pub fn pairs(flows: &[Flow]) -> Vec<(String, String, String, String)> {
    let mut out = Vec::new();
    for flow in flows {
        for source in &flow.sources {
            for target in flow.targets.iter().filter(|t| t.topic == source.topic) {
                let column = target
                    .columns
                    .iter()
                    .find(|(_, field)| field.as_str() == "id")
                    .map_or_else(|| "id".to_owned(), |(column, _)| column.as_str().to_owned());
                out.push((
                    flow.name.to_string(),
                    source.table.as_str().to_owned(),
                    target.table.as_str().to_owned(),
                    column,
                ));
            }
        }
    }
    out
}

pub async fn compare(
    pg: &tokio_postgres::Client,
    ch: &clickhouse::Client,
    flow: &str,
    source: &str,
    target: &str,
    column: &str,
) -> anyhow::Result<Comparison> {
    let t = flows::ident::Ident::new(source)?.pg();
    let tbl = flows::ident::Ident::new(target)?.ch();
    let col = flows::ident::Ident::new(column)?.ch();
    let row = pg
        .query_one(
            &format!("SELECT coalesce(min(\"id\"), 0)::int8, coalesce(max(\"id\"), -1)::int8, count(*) FROM {t} WHERE sent_to_kafka"),
            &[],
        )
        .await?;
    let (pg_min, pg_max, sent): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    let (ch_min, ch_max, stored): (i64, i64, u64) = ch
        .query(&format!(
            "SELECT if(count() = 0, 0, min(toInt64({col}))), if(count() = 0, -1, max(toInt64({col}))), uniqExact({col}) FROM {tbl}"
        ))
        .fetch_one()
        .await?;
    let mut out = Comparison {
        flow: flow.into(),
        source: source.into(),
        target: target.into(),
        sent,
        stored: i64::try_from(stored).unwrap_or(i64::MAX),
        ..Comparison::default()
    };
    let (lo, hi) = match (sent > 0, stored > 0) {
        (false, false) => return Ok(out),
        (true, false) => (pg_min, pg_max),
        (false, true) => (ch_min, ch_max),
        (true, true) => (pg_min.min(ch_min), pg_max.max(ch_max)),
    };
    let mut start = lo;
    while start <= hi {
        let end = start.saturating_add(RANGE);
        let row = pg
            .query_one(
                &format!("SELECT count(*), coalesce(sum(\"id\"), 0)::int8 FROM {t} WHERE sent_to_kafka AND \"id\" >= $1::int8 AND \"id\" < $2::int8"),
                &[&start, &end],
            )
            .await?;
        let (pg_count, pg_sum): (i64, i64) = (row.get(0), row.get(1));
        let (ch_count, ch_sum): (u64, i64) = ch
            .query(&format!(
                "SELECT count(), toInt64(sum(c)) FROM (SELECT DISTINCT toInt64({col}) AS c FROM {tbl} WHERE toInt64({col}) >= ? AND toInt64({col}) < ?)"
            ))
            .bind(start)
            .bind(end)
            .fetch_one()
            .await?;
        if i64::try_from(ch_count).ok() != Some(pg_count) || ch_sum != pg_sum {
            let pg_ids: Vec<i64> = pg
                .query(
                    &format!("SELECT \"id\"::int8 FROM {t} WHERE sent_to_kafka AND \"id\" >= $1::int8 AND \"id\" < $2::int8 ORDER BY 1"),
                    &[&start, &end],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            let ch_ids: Vec<i64> = ch
                .query(&format!(
                    "SELECT DISTINCT toInt64({col}) AS c FROM {tbl} WHERE c >= ? AND c < ? ORDER BY c"
                ))
                .bind(start)
                .bind(end)
                .fetch_all()
                .await?;
            diff_sorted(&pg_ids, &ch_ids, &mut out);
        }
        start = end;
    }
    Ok(out)
}

/// Records ids only in `sent` (missing) and only in `stored` (unexpected).
fn diff_sorted(sent: &[i64], stored: &[i64], out: &mut Comparison) {
    let (mut i, mut j) = (0, 0);
    let missing = |id: i64, out: &mut Comparison| {
        out.missing += 1;
        if out.missing_sample.len() < SAMPLES {
            out.missing_sample.push(id);
        }
    };
    while i < sent.len() || j < stored.len() {
        match (sent.get(i), stored.get(j)) {
            (Some(a), Some(b)) if a == b => {
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a < b => {
                missing(*a, out);
                i += 1;
            }
            (Some(a), None) => {
                missing(*a, out);
                i += 1;
            }
            (_, Some(b)) => {
                out.unexpected += 1;
                if out.unexpected_sample.len() < SAMPLES {
                    out.unexpected_sample.push(*b);
                }
                j += 1;
            }
            (None, None) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_both_ways_with_samples() {
        let mut c = Comparison::default();
        diff_sorted(&[1, 2, 3, 5, 8], &[2, 3, 4, 8, 9], &mut c);
        assert_eq!((c.missing, c.unexpected), (2, 2));
        assert_eq!(c.missing_sample, vec![1, 5]);
        assert_eq!(c.unexpected_sample, vec![4, 9]);
        assert!(
            c.line()
                .contains("missing=2 unexpected=2 missing_sample=1,5 unexpected_sample=4,9")
        );
    }

    #[test]
    fn identical_sets_are_consistent() {
        let mut c = Comparison::default();
        diff_sorted(&[1, 2, 3], &[1, 2, 3], &mut c);
        assert!(c.consistent());
    }
}
