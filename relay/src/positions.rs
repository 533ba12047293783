//! Where each scan stands, kept in `outbox_scan_positions`: a floor (see
//! `window`) per scan unit — a table's name for a whole flow,
//! `table/shard-1-of-4` for a shard (`Shard::position_key`).

use tokio_postgres::GenericClient;

use crate::shard::Shard;
use crate::window::Snapshot;

/// The database's snapshot now (a statement of its own: call outside a
/// transaction).
pub async fn current_snapshot(
    client: &impl GenericClient,
) -> Result<Snapshot, tokio_postgres::Error> {
    let text: String = client
        .query_one("SELECT pg_current_snapshot()::text", &[])
        .await?
        .get(0);
    Ok(Snapshot::parse(&text).unwrap_or_else(|_| Snapshot::nothing()))
}

/// Every saved floor of `table`'s units: (key, floor).
async fn saved_floors(
    client: &impl GenericClient,
    table: &str,
) -> Result<Vec<(String, Snapshot)>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT source_table, published FROM outbox_scan_positions \
             WHERE source_table = $1 OR starts_with(source_table, $1 || '/shard-')",
            &[&table],
        )
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let key: String = r.get(0);
            let floor = Snapshot::parse(r.get(1)).ok()?;
            Some((key, floor))
        })
        .collect())
}

/// Below it, every row of `table` is published when the flow is split in
/// `shards` shards: the whole table's floor if it has one, else the common
/// floor of a complete set of shards (this count's, or an earlier one's),
/// else none.
fn floor_of_whole(saved: &[(String, Snapshot)], table: &str, shards: u16) -> Option<Snapshot> {
    let of = |key: &str| saved.iter().find(|(k, _)| k == key).map(|(_, f)| f.clone());
    let complete = |count: u16| -> Option<Snapshot> {
        let floors: Option<Vec<Snapshot>> = Shard::all(count)
            .map(|s| of(&s.position_key(table)))
            .collect();
        floors?.into_iter().reduce(|a, b| a.common(&b))
    };
    if shards > 1
        && let Some(floor) = complete(shards)
    {
        return Some(floor);
    }
    if let Some(whole) = of(table) {
        return Some(whole);
    }
    // Counts some earlier configuration may have used.
    let counts: std::collections::BTreeSet<u16> = saved
        .iter()
        .filter_map(|(k, _)| k.rsplit_once("-of-")?.1.parse().ok())
        .collect();
    counts
        .into_iter()
        .filter_map(complete)
        .max_by_key(|floor| floor.xmin)
}

/// Where unit `shard` of `table` starts: its own saved floor, else one that
/// holds for the whole table (see [`floor_of_whole`]), else nothing
/// published yet (the first window reads every row with a transaction id).
pub async fn starting_floor(
    client: &impl GenericClient,
    table: &str,
    shard: Shard,
) -> Result<Snapshot, tokio_postgres::Error> {
    let saved = saved_floors(client, table).await?;
    let own = shard.position_key(table);
    if let Some((_, floor)) = saved.iter().find(|(k, _)| *k == own) {
        return Ok(floor.clone());
    }
    Ok(floor_of_whole(&saved, table, 1).unwrap_or_else(Snapshot::nothing))
}

/// The floor below which `table`'s rows are all published, for a flow in
/// `shards` shards (the backlog probe reads from its `xmin`).
pub async fn published_floor(
    client: &impl GenericClient,
    table: &str,
    shards: u16,
) -> Result<Option<Snapshot>, tokio_postgres::Error> {
    let saved = saved_floors(client, table).await?;
    Ok(floor_of_whole(&saved, table, shards))
}

/// Saves where the next leader of unit `key` may start.
pub async fn save_floor(
    client: &impl GenericClient,
    key: &str,
    flow: &str,
    floor: &Snapshot,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO outbox_scan_positions (source_table, flow, published) VALUES ($1, $2, $3) \
             ON CONFLICT (source_table) DO UPDATE \
             SET flow = EXCLUDED.flow, published = EXCLUDED.published, updated_at = now()",
            &[&key, &flow, &floor.text()],
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(text: &str) -> Snapshot {
        Snapshot::parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn saved(list: &[(&str, &str)]) -> Vec<(String, Snapshot)> {
        list.iter()
            .map(|(k, f)| ((*k).to_owned(), snap(f)))
            .collect()
    }

    #[test]
    fn a_split_flow_starts_from_the_whole_tables_floor_or_a_complete_set_of_shards() {
        let s = saved(&[("t", "10:10:")]);
        assert_eq!(floor_of_whole(&s, "t", 2), Some(snap("10:10:")));
        let s = saved(&[
            ("t/shard-0-of-2", "20:25:21"),
            ("t/shard-1-of-2", "18:22:"),
            ("t/shard-0-of-4", "30:30:"),
        ]);
        assert_eq!(
            floor_of_whole(&s, "t", 2),
            Some(snap("18:22:21")),
            "both shards' common floor"
        );
        assert_eq!(
            floor_of_whole(&s, "t", 4),
            Some(snap("18:22:21")),
            "4 shards incomplete: the complete set of 2"
        );
        assert_eq!(
            floor_of_whole(&saved(&[("t/shard-0-of-2", "5:5:")]), "t", 2),
            None
        );
        assert_eq!(floor_of_whole(&saved(&[("tt", "5:5:")]), "t", 1), None);
    }
}
