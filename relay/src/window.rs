//! Where the active relay reads a source table next: *transaction-id
//! windows*, the way PgQ cuts its event batches.
//!
//! Every source row carries `outbox_txid`, the id of the transaction that
//! wrote it (its column default, `pg_current_xact_id()`; a row set pending
//! again gets the id of the transaction that did that, by trigger — see
//! migration `0010_txid_windows`). The relay keeps a *floor*: a snapshot
//! (`pg_current_snapshot()`) such that every transaction visible in it had
//! its rows published. A window runs from the floor to a newer snapshot,
//! its *end*: it holds the rows of the transactions visible in the end and
//! not in the floor — those that committed in between. Its rows are locked
//! in `(outbox_txid, id)` order, batch after batch, through an index on
//! those two columns; when every batch of the window committed, its end is
//! the new floor and the next window starts.
//!
//! Why this is sound whatever order ids were taken in: a transaction is in
//! exactly one window, decided by when it *committed* (became visible), not
//! by its rows' ids — an id from a sequence cache, from the application, or
//! taken long before the insert changes nothing. A transaction still
//! running at a window's end is excluded from it (it is listed in the end's
//! `xip`) and belongs to the window in which it commits.
//!
//! Why it keeps order: if transaction B began after A committed (one
//! session's transactions, or any writer that saw A's commit), B's id is
//! above A's and B is in A's window or a later one; within a window rows go
//! out in transaction-id order, then id order. So a key's rows go out in
//! their transactions' commit order whenever each transaction began after
//! the previous one of that key committed (always the case for rows one
//! session writes).
//!
//! The window's rows are found by two index probes: transactions that were
//! running at the floor and have ended since (the floor's `xip` minus the
//! end's, a few ids: `late`), and the id range from the floor's `xmax` to
//! the end's. Rows already sent in between are skipped by the fetch's
//! condition (a long transaction's window walks the rows published while
//! it ran, once).
//!
//! The floor is saved in `outbox_scan_positions` (at most once a second),
//! so the next leader — after a crash, a hand-over, a failover to a standby
//! whose data holds the saved floor — starts there and takes again only
//! what was not flagged sent.

use std::time::{Duration, Instant};

/// How often the floor is saved, at most.
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// A Postgres snapshot (`pg_snapshot`): transactions below `xmin` have
/// ended, those from `xmax` on had not started, those in `xip` (between)
/// were running; any other had ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub xmin: i64,
    pub xmax: i64,
    /// Ascending.
    pub xip: Vec<i64>,
}

impl Snapshot {
    /// Sees no transaction: the floor of a table never relayed.
    pub fn nothing() -> Self {
        Self {
            xmin: 0,
            xmax: 0,
            xip: Vec::new(),
        }
    }

    /// From `pg_snapshot` text: `xmin:xmax:xip,xip,…`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("not a pg_snapshot: `{text}`");
        let mut parts = text.trim().splitn(3, ':');
        let mut number =
            || -> Result<i64, String> { parts.next().ok_or_else(bad)?.parse().map_err(|_| bad()) };
        let (xmin, xmax) = (number()?, number()?);
        let mut xip = match parts.next() {
            None | Some("") => Vec::new(),
            Some(list) => list
                .split(',')
                .map(|x| x.parse().map_err(|_| bad()))
                .collect::<Result<Vec<i64>, _>>()?,
        };
        xip.sort_unstable();
        if xmin > xmax || xip.iter().any(|&x| x < xmin || x >= xmax) {
            return Err(bad());
        }
        Ok(Self { xmin, xmax, xip })
    }

    /// As `pg_snapshot` text.
    pub fn text(&self) -> String {
        let xip: Vec<String> = self.xip.iter().map(i64::to_string).collect();
        format!("{}:{}:{}", self.xmin, self.xmax, xip.join(","))
    }

    /// Whether transaction `txid` had ended when this snapshot was taken
    /// (committed or not: a rolled-back one left no row to find).
    pub fn sees(&self, txid: i64) -> bool {
        txid < self.xmin || (txid < self.xmax && self.xip.binary_search(&txid).is_err())
    }

    /// A snapshot that sees what both see: a floor valid for the rows of
    /// both (shards merged, see `OutboxSource::starting_scan`).
    pub fn common(&self, other: &Self) -> Self {
        let xmax = self.xmax.min(other.xmax);
        let mut xip: Vec<i64> = self
            .xip
            .iter()
            .chain(&other.xip)
            .copied()
            .filter(|&x| x < xmax)
            .collect();
        xip.sort_unstable();
        xip.dedup();
        Self {
            xmin: self.xmin.min(other.xmin),
            xmax,
            xip,
        }
    }
}

/// What one fetch may lock: rows after `after` in (`outbox_txid`, id)
/// order, of transactions below `below`, from `from` on or in `late`, and
/// none in `running`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bounds {
    pub after: (i64, i64),
    pub below: i64,
    pub from: i64,
    pub late: Vec<i64>,
    pub running: Vec<i64>,
}

#[derive(Debug, Clone)]
struct Window {
    end: Snapshot,
    /// Running at the floor, ended by the end.
    late: Vec<i64>,
}

/// One scan unit's windows (a table, or a shard of it).
#[derive(Debug, Clone)]
pub struct Scan {
    floor: Snapshot,
    window: Option<Window>,
    /// The last (`outbox_txid`, id) locked in the window.
    cursor: (i64, i64),
    /// The last one whose batch committed in Postgres: where a failed turn
    /// goes back to.
    committed: (i64, i64),
    /// A fetch found fewer rows than asked: the window holds no more.
    exhausted: bool,
    saved: Option<(Snapshot, Instant)>,
}

impl Scan {
    pub fn from_floor(floor: Snapshot) -> Self {
        Self {
            floor,
            window: None,
            cursor: (0, 0),
            committed: (0, 0),
            exhausted: true,
            saved: None,
        }
    }

    /// Whether the next fetch needs a new window (a fresh snapshot, see
    /// [`Scan::open`]): there is none, or every batch of the current one
    /// committed — its end is then the floor.
    pub fn needs_window(&mut self) -> bool {
        if self.window.is_some() && !(self.exhausted && self.cursor == self.committed) {
            return false;
        }
        if let Some(done) = self.window.take() {
            self.floor = done.end;
        }
        true
    }

    /// Opens the window from the floor to `end`.
    pub fn open(&mut self, end: Snapshot) {
        if end.xmax < self.floor.xmax {
            // An older snapshot than the floor (a server whose clock of
            // transaction ids is behind the saved floor's): nothing in it
            // is new; the floor stays.
            self.window = Some(Window {
                end: self.floor.clone(),
                late: Vec::new(),
            });
            self.exhausted = true;
            return;
        }
        let late: Vec<i64> = self
            .floor
            .xip
            .iter()
            .copied()
            .filter(|&x| end.sees(x))
            .collect();
        let from = self.floor.xmax;
        let start = late.first().copied().unwrap_or(from).min(from);
        self.cursor = (start.saturating_sub(1), i64::MAX);
        self.committed = self.cursor;
        self.exhausted = late.is_empty() && end.xmax <= from;
        self.window = Some(Window { end, late });
    }

    /// What the next fetch may lock; `None` when the window holds no more.
    pub fn next(&self) -> Option<Bounds> {
        let window = self.window.as_ref()?;
        if self.exhausted {
            return None;
        }
        Some(Bounds {
            after: self.cursor,
            below: window.end.xmax,
            from: self.floor.xmax,
            late: window.late.clone(),
            running: window.end.xip.clone(),
        })
    }

    /// A fetch locked rows up to `last` (`None`: none), `full` when it got
    /// as many as it asked for.
    pub fn locked(&mut self, last: Option<(i64, i64)>, full: bool) {
        if let Some(last) = last {
            self.cursor = self.cursor.max(last);
        }
        if !full {
            self.exhausted = true;
        }
    }

    /// The batch ending at `end` committed in Postgres.
    pub fn committed(&mut self, end: (i64, i64)) {
        self.committed = self.committed.max(end);
    }

    /// A turn failed: batches after the last commit were rolled back, their
    /// rows pending again; the window goes on from the last commit.
    pub fn rewind(&mut self) {
        if self.cursor != self.committed || self.exhausted {
            self.cursor = self.committed;
            self.exhausted = self.window.is_none();
        }
    }

    /// The floor to save now, if it moved (at most once a second: an older
    /// floor is safe too, only less far along).
    pub fn unsaved(&self) -> Option<Snapshot> {
        match &self.saved {
            Some((saved, at)) if *saved == self.floor || at.elapsed() < SAVE_EVERY => None,
            _ => Some(self.floor.clone()),
        }
    }

    pub fn saved(&mut self, floor: Snapshot) {
        self.saved = Some((floor, Instant::now()));
    }

    pub fn floor(&self) -> &Snapshot {
        &self.floor
    }

    /// Transactions the window waits for (running at its end).
    pub fn running(&self) -> usize {
        self.window.as_ref().map_or(0, |w| w.end.xip.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(text: &str) -> Snapshot {
        Snapshot::parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn snapshots_parse_print_and_tell_what_they_see() {
        let s = snap("100:110:105,102");
        assert_eq!(s.xip, vec![102, 105]);
        assert_eq!(s.text(), "100:110:102,105");
        assert!(s.sees(99) && s.sees(101) && s.sees(109));
        assert!(!s.sees(102) && !s.sees(105) && !s.sees(110) && !s.sees(200));
        assert_eq!(snap("7:7:").text(), "7:7:");
        for bad in ["", "1", "a:2:", "5:3:", "1:5:9", "1:5:x"] {
            assert!(Snapshot::parse(bad).is_err(), "{bad}");
        }
        assert!(!Snapshot::nothing().sees(3));
    }

    #[test]
    fn the_common_snapshot_sees_only_what_both_see() {
        let a = snap("100:120:101,110");
        let b = snap("95:115:95,112");
        let c = a.common(&b);
        for x in 90..130 {
            assert_eq!(c.sees(x), a.sees(x) && b.sees(x), "txid {x}");
        }
    }

    #[test]
    fn a_window_holds_the_transactions_that_ended_between_floor_and_end() {
        let mut scan = Scan::from_floor(snap("100:110:102,105"));
        assert!(scan.needs_window());
        scan.open(snap("105:120:105,115"));
        let bounds = scan.next().unwrap_or_else(|| panic!("a window"));
        assert_eq!(
            bounds,
            Bounds {
                after: (101, i64::MAX),
                below: 120,
                from: 110,
                late: vec![102],
                running: vec![105, 115],
            },
            "102 ended since the floor, 105 still runs; 110–119 but 115 are new"
        );
        // Exactly the transactions visible in the end and not in the floor.
        let (floor, end) = (snap("100:110:102,105"), snap("105:120:105,115"));
        for x in 90..130 {
            let fetched = x > bounds.after.0
                && x < bounds.below
                && (x >= bounds.from || bounds.late.contains(&x))
                && !bounds.running.contains(&x);
            assert_eq!(fetched, end.sees(x) && !floor.sees(x), "txid {x}");
        }
    }

    #[test]
    fn batches_follow_the_cursor_and_the_end_becomes_the_floor_once_all_committed() {
        let mut scan = Scan::from_floor(snap("10:10:"));
        assert!(scan.needs_window());
        scan.open(snap("10:20:"));
        scan.locked(Some((12, 7)), true);
        assert_eq!(scan.next().map(|b| b.after), Some((12, 7)));
        scan.locked(Some((15, 3)), false);
        assert_eq!(
            scan.next(),
            None,
            "a short fetch: nothing more in the window"
        );
        assert!(!scan.needs_window(), "batches not committed yet");
        scan.committed((12, 7));
        assert!(!scan.needs_window());
        scan.committed((15, 3));
        assert!(scan.needs_window());
        assert_eq!(scan.floor(), &snap("10:20:"));
        assert_eq!(scan.unsaved(), Some(snap("10:20:")));
    }

    #[test]
    fn a_failed_turn_goes_on_from_the_last_committed_batch() {
        let mut scan = Scan::from_floor(snap("10:10:"));
        scan.needs_window();
        scan.open(snap("10:20:"));
        scan.locked(Some((11, 5)), true);
        scan.committed((11, 5));
        scan.locked(Some((13, 1)), false);
        scan.rewind();
        assert_eq!(scan.next().map(|b| b.after), Some((11, 5)));
        assert!(!scan.needs_window());
    }

    #[test]
    fn an_empty_window_needs_no_fetch() {
        let mut scan = Scan::from_floor(snap("10:12:"));
        scan.needs_window();
        scan.open(snap("12:12:"));
        assert_eq!(scan.next(), None);
        assert!(scan.needs_window());
        scan.open(snap("9:11:"));
        assert_eq!(scan.next(), None, "an end behind the floor holds nothing");
        assert!(scan.needs_window());
        assert_eq!(scan.floor(), &snap("12:12:"), "and the floor stays");
    }

    #[test]
    fn the_floor_is_saved_when_it_moved_and_at_most_once_a_second() {
        let mut scan = Scan::from_floor(snap("1:1:"));
        let first = scan.unsaved().unwrap_or_else(|| panic!("never saved"));
        scan.saved(first);
        scan.needs_window();
        scan.open(snap("1:5:"));
        scan.locked(None, false);
        assert!(scan.needs_window());
        assert_eq!(scan.unsaved(), None, "saved less than a second ago");
    }
}
