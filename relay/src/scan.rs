//! Where the active relay reads a source table next: a keyset scan over the
//! primary key, so no index has to cover the `sent_to_kafka` flag and
//! flipping it is a HOT update (migration `0008_keyset_relay`).
//!
//! The scan locks pending rows with ids above its *cursor*, in id order, and
//! moves the cursor to the last id it locked. An id it passed over without
//! locking — a row of a transaction still running (a long or late-committing
//! insert), an id a rolled-back insert used, a row someone else had locked —
//! becomes part of a *hole*. Holes are looked into at the start of every
//! turn (one statement, a primary-key range probe per hole):
//! - a hole holding committed pending rows is locked and published first;
//! - every batch also takes, first, the committed rows of the holes below
//!   its range, looked up after its own fetch: a transaction with a row in
//!   the batch has committed by then, so its rows in lower holes are seen,
//!   and a key's rows committed together go out in id order;
//! - a hole is closed once it holds no pending row *and* every transaction
//!   that could still add one there has ended. That is known from
//!   transaction ids: at the first look the hole is given a transaction id
//!   assigned during that look (above every id assigned before it) as its
//!   guard; at a later look whose snapshot `xmin` (the oldest transaction
//!   still running) has reached the guard, every transaction that had taken
//!   an id in the hole — and had written anything — before the first look
//!   has ended, so its rows, if committed, were visible to that look. (Not
//!   the snapshot's `xmax`: that is one past the latest *completed*
//!   transaction, and transactions running above it are not listed, so it
//!   let a hole close under a still-running insert — found by the sharded
//!   test, `tests/shards.rs`, as rows left to the sweep.)
//!
//! So in the normal path no row is skipped and none is locked twice. What
//! keysets cannot see — an id taken from the sequence in one transaction and
//! inserted by a later one, ids supplied out of order by the application, a
//! flag set back to false by hand — the *sweep* finds: every
//! `RELAY_SWEEP_INTERVAL_MS` a scan of the whole table on a pooled session
//! reports pending rows below the cursor, which become one-id holes.
//!
//! The position below which everything is settled (`safe_below`) is saved
//! in `outbox_scan_positions` once per turn, so the next leader starts
//! there.

use std::time::{Duration, Instant};

/// How often the position is saved, and rescans read, at most.
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// Holes kept at most; beyond it the two closest are merged (a wider
/// range to probe, nothing lost).
const MAX_HOLES: usize = 1_000;

/// An id range the cursor moved past without locking all of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Hole {
    lo: i64,
    hi: i64,
    /// Closable once a look's `xmin` reaches it; set at the first look.
    guard: Option<i64>,
}

/// The scan shared by a flow's lanes and its sweep, locked for a moment
/// (never across an await); a panic elsewhere does not poison it for good.
pub fn lock(scan: &std::sync::Mutex<Scan>) -> std::sync::MutexGuard<'_, Scan> {
    scan.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What to lock next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    /// Pending rows with ids above `after`, in id order.
    Keyset { after: i64 },
    /// Pending rows with ids in `lo..=hi` (a hole found holding some).
    Hole { lo: i64, hi: i64 },
}

impl Range {
    /// The ids to lock: above `.0`, at most `.1`.
    pub fn bounds(self) -> (i64, i64) {
        match self {
            Range::Keyset { after } => (after, i64::MAX),
            Range::Hole { lo, hi } => (lo.saturating_sub(1), hi),
        }
    }
}

/// What one look into the holes saw (see [`Scan::looked`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Look {
    /// The look's snapshot: oldest transaction still running.
    pub xmin: i64,
    /// Above every transaction id assigned before the look (an id the look
    /// took for itself), when a hole needed a guard; else unused.
    pub xmax: i64,
    /// Per hole (in [`Scan::holes`] order): holds committed pending rows.
    pub pending: Vec<bool>,
}

#[derive(Debug, Clone)]
pub struct Scan {
    cursor: i64,
    /// The cursor as of the last keyset batch committed in Postgres: where
    /// a failed turn goes back to.
    committed: i64,
    holes: Vec<Hole>,
    /// Holes the last look found holding pending rows, to lock first.
    due: Vec<(i64, i64)>,
    /// The position last saved, and when.
    saved: Option<(i64, Instant)>,
    /// When `outbox_scan_rescans` was last read.
    rescans_read: Option<Instant>,
}

impl Scan {
    /// A scan whose every id below `safe_below` is settled.
    pub fn starting_below(safe_below: i64) -> Self {
        let cursor = safe_below.saturating_sub(1);
        Self {
            cursor,
            committed: cursor,
            holes: Vec::new(),
            due: Vec::new(),
            saved: None,
            rescans_read: None,
        }
    }

    /// A scan that settles nothing yet (a table the relay has no position
    /// for): every id up to `cursor` forms one hole. Not only from the
    /// lowest id seen: a transaction still running may hold a lower one
    /// (found by `tests/keyset.rs`, a relay starting while such an insert
    /// was open: its row was never looked for).
    pub fn unsettled(cursor: i64) -> Self {
        let lo = i64::MIN + 1;
        let mut scan = Self::starting_below(lo);
        scan.cursor = cursor.max(scan.cursor);
        scan.committed = scan.cursor;
        if lo <= scan.cursor {
            scan.holes.push(Hole {
                lo,
                hi: scan.cursor,
                guard: None,
            });
        }
        scan
    }

    /// The next range to lock: a due hole first, else the keyset.
    pub fn next_range(&mut self) -> Range {
        match self.due.pop() {
            Some((lo, hi)) => Range::Hole { lo, hi },
            None => Range::Keyset { after: self.cursor },
        }
    }

    /// Records the ids (ascending) locked from `range`, and the ids of
    /// other shards' rows the fetch saw (ascending; see `shard`). Returns
    /// where the cursor stands once this batch commits (`None` for a
    /// hole's batch).
    pub fn locked(&mut self, range: Range, ids: &[i64], passed: &[i64]) -> Option<i64> {
        let after = match range {
            Range::Keyset { after } => after,
            Range::Hole { hi, .. } => {
                // The rest of the hole, after what this batch took.
                if let Some(&last) = ids.last().filter(|&&last| last < hi) {
                    self.due.push((last + 1, hi));
                }
                return None;
            }
        };
        let Some(&last) = ids.last() else {
            return Some(self.cursor);
        };
        let mut expected = after.saturating_add(1);
        for id in merged(ids, passed).take_while(|&id| id <= last) {
            if id > expected {
                self.add_hole(expected, id - 1, None);
            }
            expected = expected.max(id.saturating_add(1));
        }
        {
            self.cursor = self.cursor.max(last);
        }
        Some(self.cursor)
    }

    /// Rows `lo..=hi` the keyset fetched but left pending, their locks
    /// rolled back (rows in the holes go first): a hole, looked into like
    /// any other.
    pub fn left_pending(&mut self, lo: i64, hi: i64) {
        self.add_hole(lo, hi, None);
    }

    /// A keyset batch ending at `end` committed in Postgres.
    pub fn committed(&mut self, end: i64) {
        self.committed = self.committed.max(end);
    }

    /// A turn failed: batches after the last commit were rolled back, so
    /// their rows are pending again: they become a hole (the cursor stays,
    /// and the hole's first look finds them).
    pub fn rewind(&mut self) {
        if self.cursor > self.committed {
            self.add_hole(self.committed + 1, self.cursor, None);
            self.committed = self.cursor;
        }
        self.due.clear();
    }

    /// A keyset fetch found nothing, yet the table's ids reach `last`: rows
    /// inserted already sent, ids of rolled-back inserts, rows still being
    /// written. The cursor moves to `last` and the range becomes a hole, so
    /// the next fetch does not walk the same rows again.
    pub fn skip_to(&mut self, last: i64) {
        if last > self.cursor {
            self.add_hole(self.cursor + 1, last, None);
            self.cursor = last;
        }
    }

    /// Id ranges (`lo..=hi`) holding rows pending again below the cursor (a
    /// sweep's finds, one id each; `relay replay`, `relay resend`): looked
    /// into like holes, closable as soon as a look finds them sent. The
    /// part above the cursor is the keyset's anyway.
    pub fn add_strays(&mut self, ranges: &[(i64, i64)]) {
        let cursor = self.cursor;
        for &(lo, hi) in ranges.iter().filter(|&&(lo, _)| lo <= cursor) {
            self.add_hole(lo, hi.min(cursor), Some(i64::MIN));
        }
    }

    /// Whether a hole awaits its guard (its first look).
    pub fn needs_guard(&self) -> bool {
        self.holes.iter().any(|h| h.guard.is_none())
    }

    /// The holes' ids at most `upto`, as (lows, highs): what a batch of a
    /// range above `upto` takes first (see `pipeline::Lanes::lock_batch`).
    pub fn holes_below(&self, upto: i64) -> (Vec<i64>, Vec<i64>) {
        self.holes
            .iter()
            .filter(|h| h.lo <= upto)
            .map(|h| (h.lo, h.hi.min(upto)))
            .unzip()
    }
    /// The holes to look into, as (lows, highs).
    pub fn holes(&self) -> (Vec<i64>, Vec<i64>) {
        self.holes.iter().map(|h| (h.lo, h.hi)).unzip()
    }

    /// Applies a look at the holes taken in [`Scan::holes`] order (a look
    /// taken before holes changed is ignored: nothing closes).
    pub fn looked(&mut self, look: &Look) {
        if look.pending.len() != self.holes.len() {
            return;
        }
        let mut kept = Vec::with_capacity(self.holes.len());
        self.due.clear();
        for (hole, &pending) in self.holes.iter().zip(&look.pending) {
            match hole.guard {
                Some(guard) if !pending && look.xmin >= guard => continue,
                _ => {}
            }
            if pending {
                self.due.push((hole.lo, hole.hi));
            }
            kept.push(Hole {
                guard: hole.guard.or(Some(look.xmax)),
                ..*hole
            });
        }
        self.holes = kept;
        // Lowest first: `next_range` pops from the end.
        self.due.sort_unstable_by(|a, b| b.cmp(a));
    }

    /// Every id below it is settled: sent, or never to be pending through
    /// the normal path. Valid between turns (no batch locked: a failed
    /// turn's batches are holes by then, see [`Scan::rewind`]).
    pub fn safe_below(&self) -> i64 {
        let holes = self.holes.iter().map(|h| h.lo).min().unwrap_or(i64::MAX);
        self.cursor.saturating_add(1).min(holes)
    }

    /// The position to save now, if it moved (at most once a second:
    /// an older position is safe too, only less far along).
    pub fn unsaved(&self) -> Option<i64> {
        let position = self.safe_below();
        match self.saved {
            Some((saved, at)) if saved == position || at.elapsed() < SAVE_EVERY => None,
            _ => Some(position),
        }
    }

    /// Whether to read `outbox_scan_rescans` now (once a second).
    pub fn rescans_due(&mut self) -> bool {
        if self
            .rescans_read
            .is_some_and(|at| at.elapsed() < SAVE_EVERY)
        {
            return false;
        }
        self.rescans_read = Some(Instant::now());
        true
    }

    pub fn saved(&mut self, position: i64) {
        self.saved = Some((position, Instant::now()));
    }

    pub fn cursor(&self) -> i64 {
        self.cursor
    }

    pub fn open_holes(&self) -> usize {
        self.holes.len()
    }

    fn add_hole(&mut self, lo: i64, hi: i64, guard: Option<i64>) {
        self.holes.push(Hole { lo, hi, guard });
        if self.holes.len() > MAX_HOLES {
            self.merge_closest();
        }
    }

    /// Merges the two holes with the smallest gap between them; the merged
    /// hole waits for the later guard.
    fn merge_closest(&mut self) {
        self.holes.sort_unstable_by_key(|h| h.lo);
        let Some(i) = (0..self.holes.len() - 1)
            .min_by_key(|&i| self.holes[i + 1].lo.saturating_sub(self.holes[i].hi))
        else {
            return;
        };
        let next = self.holes.remove(i + 1);
        let hole = &mut self.holes[i];
        hole.hi = hole.hi.max(next.hi);
        hole.guard = match (hole.guard, next.guard) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
    }
}

/// Two ascending id lists as one ascending sequence.
fn merged<'a>(a: &'a [i64], b: &'a [i64]) -> impl Iterator<Item = i64> + 'a {
    let (mut a, mut b) = (a.iter().copied().peekable(), b.iter().copied().peekable());
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some(&x), Some(&y)) if y < x => b.next(),
        (Some(_), _) => a.next(),
        (None, _) => b.next(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn look(xmin: i64, xmax: i64, pending: &[bool]) -> Look {
        Look {
            xmin,
            xmax,
            pending: pending.to_vec(),
        }
    }

    #[test]
    fn ids_passed_over_become_holes_and_the_cursor_moves_to_the_last_locked() {
        let mut scan = Scan::starting_below(1);
        let range = scan.next_range();
        assert_eq!(range, Range::Keyset { after: 0 });
        assert_eq!(scan.locked(range, &[1, 2, 5, 6, 9], &[]), Some(9));
        assert_eq!(scan.holes(), (vec![3, 7], vec![4, 8]));
        assert_eq!(scan.next_range(), Range::Keyset { after: 9 });
        scan.committed(9);
        assert_eq!(scan.safe_below(), 3, "the first hole holds it back");
    }

    #[test]
    fn other_shards_rows_the_fetch_saw_are_no_holes() {
        let mut scan = Scan::starting_below(1);
        let range = scan.next_range();
        // Locked 1, 4 and 9; saw 2, 3 and 7 of other shards (and 12,
        // beyond the batch); never saw 5, 6 and 8.
        assert_eq!(scan.locked(range, &[1, 4, 9], &[2, 3, 7, 12]), Some(9));
        assert_eq!(scan.holes(), (vec![5, 8], vec![6, 8]));
        assert_eq!(
            scan.locked(Range::Keyset { after: 9 }, &[], &[10]),
            Some(9),
            "nothing locked: the cursor stays"
        );
    }

    #[test]
    fn a_hole_closes_only_after_a_later_look_sees_its_writers_ended() {
        let mut scan = Scan::starting_below(1);
        let range = scan.next_range();
        scan.locked(range, &[1, 3], &[]);
        scan.committed(3);
        // First look: nothing pending in 2..=2 yet, transaction 100 next.
        scan.looked(&look(90, 100, &[false]));
        assert_eq!(scan.open_holes(), 1, "its writer may still be running");
        // Transaction 95 (holding id 2) still runs: xmin below the guard.
        scan.looked(&look(95, 120, &[false]));
        assert_eq!(scan.open_holes(), 1);
        // Everything before the first look has ended; still nothing there.
        scan.looked(&look(100, 130, &[false]));
        assert_eq!(scan.open_holes(), 0);
        assert_eq!(scan.safe_below(), 4);
    }

    #[test]
    fn a_hole_holding_committed_rows_is_locked_before_the_keyset_and_kept() {
        let mut scan = Scan::starting_below(1);
        let range = scan.next_range();
        scan.locked(range, &[1, 4, 8], &[]);
        scan.committed(8);
        scan.looked(&look(50, 60, &[true, true]));
        assert_eq!(scan.next_range(), Range::Hole { lo: 2, hi: 3 });
        assert_eq!(scan.next_range(), Range::Hole { lo: 5, hi: 7 });
        assert_eq!(scan.locked(Range::Hole { lo: 5, hi: 7 }, &[5], &[]), None);
        assert_eq!(
            scan.next_range(),
            Range::Hole { lo: 6, hi: 7 },
            "the rest of the hole"
        );
        assert_eq!(scan.locked(Range::Hole { lo: 6, hi: 7 }, &[], &[]), None);
        assert_eq!(scan.next_range(), Range::Keyset { after: 8 });
        // The rows went out: the next look finds them sent, past the guard.
        scan.looked(&look(60, 70, &[false, false]));
        assert_eq!(scan.open_holes(), 0);
    }

    #[test]
    fn a_failed_turns_uncommitted_batches_become_a_hole_looked_into_first() {
        let mut scan = Scan::starting_below(11);
        let first = scan.next_range();
        let end = scan.locked(first, &[11, 12], &[]).unwrap_or_default();
        scan.committed(end);
        let second = scan.next_range();
        scan.locked(second, &[13, 14], &[]);
        scan.rewind();
        assert_eq!(scan.holes(), (vec![13], vec![14]));
        assert_eq!(scan.safe_below(), 13);
        scan.looked(&look(5, 6, &[true]));
        assert_eq!(scan.next_range(), Range::Hole { lo: 13, hi: 14 });
        assert_eq!(scan.next_range(), Range::Keyset { after: 14 });
    }

    #[test]
    fn an_empty_fetch_skips_to_the_last_id_and_leaves_a_hole() {
        let mut scan = Scan::starting_below(1);
        scan.skip_to(500);
        assert_eq!(scan.next_range(), Range::Keyset { after: 500 });
        assert_eq!(scan.holes(), (vec![1], vec![500]));
        scan.skip_to(400);
        assert_eq!(scan.cursor(), 500, "never backwards");
        scan.looked(&look(1, 9, &[false]));
        scan.looked(&look(9, 12, &[false]));
        assert_eq!(scan.safe_below(), 501);
    }

    #[test]
    fn the_position_is_saved_when_it_moved_and_at_most_once_a_second() {
        let mut scan = Scan::starting_below(1);
        assert_eq!(scan.unsaved(), Some(1), "never saved");
        scan.saved(1);
        assert_eq!(scan.unsaved(), None);
        scan.skip_to(10);
        scan.looked(&look(1, 2, &[false]));
        scan.looked(&look(2, 3, &[false]));
        assert_eq!(scan.unsaved(), None, "saved less than a second ago");
    }

    #[test]
    fn strays_below_the_cursor_are_looked_into_and_close_once_sent() {
        let mut scan = Scan::starting_below(101);
        scan.add_strays(&[(7, 7), (90, 120), (500, 500)]);
        assert_eq!(
            scan.holes(),
            (vec![7, 90], vec![7, 100]),
            "a range up to the cursor; 500 is ahead of it"
        );
        scan.looked(&look(1, 2, &[false, false]));
        scan.add_strays(&[(7, 7)]);
        assert_eq!(scan.safe_below(), 7);
        scan.looked(&look(1, 2, &[true]));
        assert_eq!(scan.next_range(), Range::Hole { lo: 7, hi: 7 });
        scan.looked(&look(1, 2, &[false]));
        assert_eq!(scan.open_holes(), 0);
    }

    #[test]
    fn a_look_taken_before_the_holes_changed_closes_nothing() {
        let mut scan = Scan::starting_below(1);
        let range = scan.next_range();
        scan.locked(range, &[1, 3], &[]);
        scan.looked(&look(1, 2, &[false]));
        let range = scan.next_range();
        scan.locked(range, &[5], &[]);
        scan.looked(&look(10, 20, &[false]));
        assert_eq!(scan.holes(), (vec![2, 4], vec![2, 4]));
    }

    #[test]
    fn too_many_holes_merge_into_wider_ones_without_dropping_any_id() {
        let mut scan = Scan::starting_below(1);
        let ids: Vec<i64> = (0..=(MAX_HOLES as i64 + 5)).map(|i| 1 + 2 * i).collect();
        let range = scan.next_range();
        scan.locked(range, &ids, &[]);
        assert_eq!(scan.open_holes(), MAX_HOLES);
        let (lo, hi) = scan.holes();
        for gap in (0..(MAX_HOLES as i64 + 5)).map(|i| 2 + 2 * i) {
            assert!(
                lo.iter().zip(&hi).any(|(l, h)| (*l..=*h).contains(&gap)),
                "id {gap} left no hole"
            );
        }
    }

    #[test]
    fn an_unsettled_table_is_one_hole_up_to_its_last_id() {
        let scan = Scan::unsettled(900);
        assert_eq!(scan.holes(), (vec![i64::MIN + 1], vec![900]));
        assert_eq!(scan.clone().next_range(), Range::Keyset { after: 900 });
        assert_eq!(scan.safe_below(), i64::MIN + 1);
    }

    #[test]
    fn a_batch_takes_the_holes_below_its_range_clipped_to_it() {
        let mut scan = Scan::starting_below(1);
        let range = scan.next_range();
        scan.locked(range, &[1, 4, 8, 12], &[]);
        assert_eq!(scan.holes(), (vec![2, 5, 9], vec![3, 7, 11]));
        assert_eq!(
            scan.holes_below(Range::Hole { lo: 6, hi: 7 }.bounds().0),
            (vec![2, 5], vec![3, 5]),
            "a hole's batch: the holes below it, the one it is in up to it"
        );
        assert_eq!(
            scan.holes_below(scan.clone().next_range().bounds().0),
            scan.holes(),
            "a keyset batch: every hole"
        );
    }
}
