//! Which shard a row belongs to, computed as the `Distributed` table
//! computes it, so that the sink can write each row straight into its
//! shard's local table and a row inserted through the `Distributed` table
//! (or again by the sink) lands on the same shard.
//!
//! ClickHouse's `Distributed` engine evaluates the sharding key, takes it
//! modulo the sum of the shards' weights and maps that slot to a shard, each
//! shard owning as many consecutive slots as its weight, in the order of the
//! cluster's definition. The sink computes the keys it can compute exactly:
//! `intHash64(c)`, and `cityHash64(c)` — ClickHouse hashes a single
//! integer argument with `intHash64` too — of an integer column `c`, or
//! an unsigned integer column itself.

use bytes::BytesMut;

use super::encode::{ColumnPlan, rows_by_key};

/// How the key column's value becomes the sharding key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyHash {
    /// `intHash64(c)` (or `cityHash64(c)` of one integer column).
    IntHash64,
    /// The unsigned column itself.
    Identity,
}

/// How one target table is spread: its local table and its sharding key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sharding {
    /// The database and table each shard stores the rows in.
    pub local_database: String,
    pub local_table: String,
    pub key_column: String,
    pub hash: KeyHash,
}

/// What a `Distributed` table's engine says (`system.tables.engine_full`):
/// `Distributed('cluster', 'db', 'table', key)`. `columns`: the table's
/// (name, type). `Err` says why the sink cannot write rows to their shards.
pub fn from_engine(
    engine_full: &str,
    cluster: &str,
    columns: &[(String, String)],
) -> Result<Sharding, String> {
    let args = engine_full
        .trim()
        .strip_prefix("Distributed(")
        .and_then(|a| a.strip_suffix(')'))
        .ok_or_else(|| format!("not a Distributed table ({engine_full})"))?;
    let args: Vec<String> = split_args(args);
    let [named_cluster, database, table, key] = args.as_slice() else {
        return Err(format!(
            "a Distributed table without a sharding key writes each insert to a random shard ({engine_full})"
        ));
    };
    if named_cluster != cluster {
        return Err(format!(
            "its Distributed table spreads over cluster {named_cluster}, not CLICKHOUSE_CLUSTER={cluster}"
        ));
    }
    let unsupported = || {
        format!(
            "it is sharded by {key}, which the sink cannot compute; shard by intHash64(<the source id column>) so that every copy of a row lands on one shard (as `sink migrate` does)"
        )
    };
    let (function, column) = match key.split_once('(') {
        Some((f, rest)) => (f, rest.strip_suffix(')').ok_or_else(unsupported)?.trim()),
        None => ("", key.as_str()),
    };
    let column = column.trim_matches('`');
    let ty = columns
        .iter()
        .find(|(name, _)| name == column)
        .map(|(_, ty)| ty.as_str())
        .ok_or_else(unsupported)?;
    let unsigned = ["UInt8", "UInt16", "UInt32", "UInt64"].contains(&ty);
    let signed = ["Int8", "Int16", "Int32", "Int64"].contains(&ty);
    let hash = match function {
        // intHash64 converts a signed value to 64 bits keeping its sign.
        "intHash64" if unsigned || signed => KeyHash::IntHash64,
        // cityHash64 hashes an integer's bytes zero-extended to 64 bits:
        // the same as intHash64 where that is the value's own extension.
        "cityHash64" if unsigned || ty == "Int64" => KeyHash::IntHash64,
        "" if unsigned => KeyHash::Identity,
        _ => return Err(unsupported()),
    };
    Ok(Sharding {
        local_database: database.clone(),
        local_table: table.clone(),
        key_column: column.to_owned(),
        hash,
    })
}

/// `'a', 'b', f(x, y)` → `a`, `b`, `f(x, y)` (quotes dropped).
fn split_args(args: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut depth, mut current, mut quoted) = (0, String::new(), false);
    for c in args.chars() {
        match c {
            '\'' => quoted = !quoted,
            '(' if !quoted => {
                depth += 1;
                current.push(c);
            }
            ')' if !quoted => {
                depth -= 1;
                current.push(c);
            }
            ',' if !quoted && depth == 0 => {
                out.push(current.trim().to_owned());
                current.clear();
            }
            c => current.push(c),
        }
    }
    out.push(current.trim().to_owned());
    out
}

/// ClickHouse's SQL function `intHash64`: the value XORed with a constant,
/// then MurmurHash3's 64-bit finaliser (its `IntHash64Impl` over
/// `intHash64` of `Common/HashTable/Hash.h`).
pub fn int_hash64(value: u64) -> u64 {
    let mut x = value ^ 0x4cf2_d2ba_ae6d_a887;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    x
}

/// The slots of a cluster's shards: shard `i` owns `weights[i]`
/// consecutive slots, in order, as the `Distributed` engine counts them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slots(Vec<usize>);

impl Slots {
    /// `weights`: each shard's, in the cluster's order (`shard_num`).
    pub fn new(weights: &[u32]) -> Self {
        let slots = weights
            .iter()
            .enumerate()
            .flat_map(|(shard, &w)| std::iter::repeat_n(shard, w.max(1) as usize))
            .collect();
        Self(slots)
    }

    pub fn shards(&self) -> usize {
        self.0.last().map_or(0, |last| last + 1)
    }

    /// The shard (index, from 0) of the row whose key column holds `value`
    /// (an integer column's value, as two's complement in 64 bits).
    pub fn shard_of(&self, hash: KeyHash, value: u64) -> usize {
        let key = match hash {
            KeyHash::IntHash64 => int_hash64(value),
            KeyHash::Identity => value,
        };
        self.0[(key % self.0.len() as u64) as usize]
    }

    /// `rows` (RowBinary for `columns`) split into one block per shard, in
    /// their order.
    pub fn split(
        &self,
        sharding: &Sharding,
        columns: &[ColumnPlan],
        rows: &[u8],
    ) -> Result<Vec<BytesMut>, String> {
        let key = columns
            .iter()
            .position(|c| c.column == sharding.key_column)
            .ok_or_else(|| {
                format!(
                    "the sharding key's column {} is not among the columns the sink fills",
                    sharding.key_column
                )
            })?;
        let types: Vec<_> = columns.iter().map(|c| &c.ty).collect();
        rows_by_key(rows, &types, key, self.shards(), |value| {
            self.shard_of(sharding.hash, value)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
            .collect()
    }

    /// Values ClickHouse 18.16 computes: `SELECT intHash64(toUInt64(5))`,
    /// `intHash64(toInt8(-5))`.
    #[test]
    fn int_hash64_is_clickhouses() {
        assert_eq!(int_hash64(5), 15_228_578_409_069_794_350);
        assert_eq!(int_hash64((-5i64) as u64), 13_263_830_642_547_698_461);
        assert_eq!(int_hash64((-1i64) as u64), 14_600_443_904_207_254_319);
    }

    #[test]
    fn the_engine_names_the_local_table_and_a_key_the_sink_computes() {
        let cols = columns(&[("id", "UInt64"), ("name", "String"), ("n", "Int32")]);
        let sharding = from_engine(
            "Distributed('c', 'db', 't_local', intHash64(id))",
            "c",
            &cols,
        );
        assert_eq!(
            sharding,
            Ok(Sharding {
                local_database: "db".into(),
                local_table: "t_local".into(),
                key_column: "id".into(),
                hash: KeyHash::IntHash64,
            })
        );
        let city = from_engine("Distributed('c', 'db', 't', cityHash64(id))", "c", &cols);
        assert_eq!(city.map(|s| s.hash), Ok(KeyHash::IntHash64));
        let signed = from_engine("Distributed('c', 'db', 't', intHash64(n))", "c", &cols);
        assert_eq!(signed.map(|s| s.hash), Ok(KeyHash::IntHash64));
        let plain = from_engine("Distributed('c', 'db', 't', id)", "c", &cols);
        assert_eq!(plain.map(|s| s.hash), Ok(KeyHash::Identity));
        for (engine, why) in [
            ("Distributed('c', 'db', 't', rand())", "cannot compute"),
            (
                "Distributed('c', 'db', 't', cityHash64(name))",
                "cannot compute",
            ),
            ("Distributed('c', 'db', 't', n)", "cannot compute"),
            (
                "Distributed('c', 'db', 't', cityHash64(n))",
                "cannot compute",
            ),
            ("Distributed('c', 'db', 't')", "random shard"),
            (
                "Distributed('other', 'db', 't', id)",
                "not CLICKHOUSE_CLUSTER=c",
            ),
            ("ReplacingMergeTree ORDER BY id", "not a Distributed table"),
        ] {
            match from_engine(engine, "c", &cols) {
                Err(e) => assert!(e.contains(why), "{engine}: {e}"),
                Ok(s) => panic!("{engine}: {s:?}"),
            }
        }
    }

    #[test]
    fn slots_follow_the_weights() {
        let even = Slots::new(&[1, 1]);
        assert_eq!(even.shards(), 2);
        // intHash64(5) is even: shard 0 of 2.
        assert_eq!(even.shard_of(KeyHash::IntHash64, 5), 0);
        assert_eq!(even.shard_of(KeyHash::Identity, 5), 1);
        let weighted = Slots::new(&[1, 2]);
        let counts = (0..3000u64).fold([0; 2], |mut n, v| {
            n[weighted.shard_of(KeyHash::Identity, v)] += 1;
            n
        });
        assert_eq!(counts, [1000, 2000]);
    }
}
