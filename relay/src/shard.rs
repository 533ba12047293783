//! Shards: a flow split by message key so several relay processes share its
//! work (`shards = N` in the flow's definition).
//!
//! Row → shard is a hash of the message key (the `id` when the key is
//! NULL) that Postgres computes: `hashtextextended(key::text, 0)` modulo N,
//! the function hash partitioning uses, so it is the same on every server
//! and architecture. All rows of one key are in one shard, so per-key order
//! holds within a shard exactly as it does for a whole flow.
//!
//! Each shard is led like a whole flow is (see `flow_relay`): by whichever
//! relay holds its advisory locks, with its own windows, saved floor and
//! Kafka `transactional.id`. A relay *prefers* some shards
//! (`RELAY_SHARDS`, default all): it tries their locks at every standby
//! retry and, while standing by or leading, holds the shard's *claim* lock.
//! It leads a shard it does not prefer only while no live relay claims it,
//! and hands it back within a turn once one does. So relay A with
//! `RELAY_SHARDS=0,1` and relay B with `RELAY_SHARDS=2,3` split a 4-shard
//! flow, and each is the other's standby.
//!
//! Every relay of a flow must run with the same N: the locks, positions and
//! transactional ids of N shards are not those of another N (changing N is
//! a stop of the flow's relays, an edit, a start; see README "Shards").

use flows::SettingError;

/// One shard of a flow: `index` of `count`. A flow with one shard is led
/// exactly as before shards existed (the same locks, position and
/// transactional id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u16,
    pub count: u16,
}

impl Shard {
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// Every shard of a flow split in `count`.
    pub fn all(count: u16) -> impl Iterator<Item = Shard> {
        (0..count.max(1)).map(move |index| Shard {
            index,
            count: count.max(1),
        })
    }

    pub fn is_whole(self) -> bool {
        self.count <= 1
    }

    /// How logs, the watchdog and producers name it: `flow` or
    /// `flow/shard-1-of-4`.
    pub fn unit(self, flow: &str) -> String {
        if self.is_whole() {
            flow.to_owned()
        } else {
            format!("{flow}/{}", self.suffix())
        }
    }

    fn suffix(self) -> String {
        format!("shard-{}-of-{}", self.index, self.count)
    }

    /// The advisory-lock key of a lane: a relay leads the shard only while
    /// it holds every lane's key.
    pub fn lane_key(self, flow: &str, lane: usize) -> String {
        let base = format!("outbox-relay/{}", self.unit(flow));
        match lane {
            0 => base,
            n => format!("{base}/lane-{}", n + 1),
        }
    }

    /// Held by every live relay that prefers this shard (see the module).
    pub fn claim_key(self, flow: &str) -> String {
        format!("outbox-relay/{}/claim", self.unit(flow))
    }

    /// Its row in `outbox_scan_positions`: the table's name for a whole
    /// flow, `table/shard-1-of-4` for a shard.
    pub fn position_key(self, table: &str) -> String {
        if self.is_whole() {
            table.to_owned()
        } else {
            format!("{table}/{}", self.suffix())
        }
    }

    /// The SQL condition selecting this shard's rows of `alias`, `None`
    /// for a whole flow. `key` is the key column, quoted.
    ///
    /// Written "the remainder is none of the other shards'" (`<> ALL`), not
    /// "= this shard's": the planner has no statistics on the expression
    /// and takes an equality to match 0.5% of rows, so it sorted the whole
    /// table instead of walking the primary key (measured: a 1M-row
    /// backlog not drained in 10 minutes); `<> ALL` it takes as matching
    /// most rows, which is right for any N up to `flows::definition::MAX_SHARDS`.
    pub fn condition(self, alias: &str, key: &str) -> Option<String> {
        let (expr, others) = self.remainder(alias, key)?;
        Some(format!("{expr} <> ALL('{{{others}}}'::int8[])"))
    }

    /// The SQL condition selecting the other shards' rows of `alias`.
    pub fn others_condition(self, alias: &str, key: &str) -> Option<String> {
        let (expr, others) = self.remainder(alias, key)?;
        Some(format!("{expr} = ANY('{{{others}}}'::int8[])"))
    }

    /// The row's remainder expression and the other shards' indexes.
    fn remainder(self, alias: &str, key: &str) -> Option<(String, String)> {
        if self.is_whole() {
            return None;
        }
        let n = i64::from(self.count);
        let expr = format!(
            "((hashtextextended(coalesce(({alias}.{key})::text, {alias}.\"id\"::text), 0) % {n}) + {n}) % {n}"
        );
        let others: Vec<String> = (0..self.count)
            .filter(|&i| i != self.index)
            .map(|i| i.to_string())
            .collect();
        Some((expr, others.join(",")))
    }
}

/// Which shards a relay prefers (`RELAY_SHARDS`): every shard, or the
/// listed indexes (a flow with fewer shards ignores the rest).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Preferred {
    #[default]
    All,
    Listed(Vec<u16>),
}

impl Preferred {
    /// `all`, or indexes separated by commas (`0,2`), ranges allowed
    /// (`0-3`).
    pub fn parse(text: &str) -> Result<Self, SettingError> {
        let text = text.trim();
        if text.is_empty() || text.eq_ignore_ascii_case("all") {
            return Ok(Preferred::All);
        }
        let bad = || {
            SettingError::new(
                "RELAY_SHARDS",
                "must be `all` or shard indexes such as `0,2` or `0-3`",
            )
        };
        let mut listed = Vec::new();
        for part in text.split(',').map(str::trim) {
            let (lo, hi) = match part.split_once('-') {
                Some((lo, hi)) => (lo.trim(), hi.trim()),
                None => (part, part),
            };
            let lo: u16 = lo.parse().map_err(|_| bad())?;
            let hi: u16 = hi.parse().map_err(|_| bad())?;
            if lo > hi {
                return Err(bad());
            }
            listed.extend(lo..=hi);
        }
        listed.sort_unstable();
        listed.dedup();
        Ok(Preferred::Listed(listed))
    }

    pub fn prefers(&self, shard: Shard) -> bool {
        match self {
            Preferred::All => true,
            Preferred::Listed(listed) => shard.is_whole() || listed.contains(&shard.index),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_flow_keeps_the_names_it_had_before_shards() {
        let whole = Shard::WHOLE;
        assert_eq!(whole.lane_key("f", 0), "outbox-relay/f");
        assert_eq!(whole.lane_key("f", 1), "outbox-relay/f/lane-2");
        assert_eq!(whole.position_key("t"), "t");
        assert_eq!(whole.unit("f"), "f");
        assert_eq!(whole.condition("src", "\"k\""), None);
    }

    #[test]
    fn each_shard_has_its_own_locks_position_and_condition() {
        let shards: Vec<Shard> = Shard::all(4).collect();
        assert_eq!(shards.len(), 4);
        let s = shards[1];
        assert_eq!(s.lane_key("f", 0), "outbox-relay/f/shard-1-of-4");
        assert_eq!(s.lane_key("f", 1), "outbox-relay/f/shard-1-of-4/lane-2");
        assert_eq!(s.claim_key("f"), "outbox-relay/f/shard-1-of-4/claim");
        assert_eq!(s.position_key("t"), "t/shard-1-of-4");
        let remainder =
            "((hashtextextended(coalesce((src.\"k\")::text, src.\"id\"::text), 0) % 4) + 4) % 4";
        assert_eq!(
            s.condition("src", "\"k\""),
            Some(format!("{remainder} <> ALL('{{0,2,3}}'::int8[])"))
        );
        assert_eq!(
            s.others_condition("src", "\"k\""),
            Some(format!("{remainder} = ANY('{{0,2,3}}'::int8[])"))
        );
        let keys: std::collections::BTreeSet<String> =
            shards.iter().map(|s| s.lane_key("f", 0)).collect();
        assert_eq!(keys.len(), 4);
    }

    #[test]
    fn preferred_shards_parse_lists_and_ranges_and_name_the_setting() {
        assert_eq!(Preferred::parse("all").ok(), Some(Preferred::All));
        assert_eq!(Preferred::parse("").ok(), Some(Preferred::All));
        assert_eq!(
            Preferred::parse("3, 0-1,1").ok(),
            Some(Preferred::Listed(vec![0, 1, 3]))
        );
        for bad in ["x", "2-1", "-1", "0,,1"] {
            assert_eq!(
                Preferred::parse(bad).err().map(|e| e.name),
                Some("RELAY_SHARDS".into()),
                "{bad}"
            );
        }
        let listed = Preferred::Listed(vec![1]);
        assert!(listed.prefers(Shard { index: 1, count: 2 }));
        assert!(!listed.prefers(Shard { index: 0, count: 2 }));
        assert!(listed.prefers(Shard::WHOLE), "a whole flow is everyone's");
    }
}
