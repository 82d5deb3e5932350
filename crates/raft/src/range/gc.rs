//! How far each range purges its log: as TiKV's raft log GC does, a leader keeps the entries
//! its followers still need, within bounds.
//!
//! openraft's own policy purges a fixed count behind each snapshot
//! (`max_in_snapshot_log_to_keep`), whether or not a follower still needs those entries; a
//! follower that lagged past the purge point then gets the whole range as a snapshot (a scan,
//! an encoding and a copy of up to `--range-split-bytes`), which loads the node further, so it
//! lags again. Under a bulk load of 15 KB values on 2 cores that was a quarter of the nodes'
//! time (BENCHMARKS.md, the 10 GiB data set). So openraft's policy is off
//! (`max_in_snapshot_log_to_keep = u64::MAX`) and [`purge_to`] decides instead, every
//! [`EVERY`], from the replica's metrics:
//!
//! - never past the last snapshot (openraft refuses that anyway), and `keep` entries behind it
//!   (what a follower that becomes leader has for the others);
//! - a leader keeps what each follower has not matched yet, unless the follower lags more than
//!   `lag_max` entries (dead or far behind: a snapshot is then the cheaper catch-up) or the
//!   node's shared log holds more than [`HOLD_BYTES_MAX`] (the bound in bytes);
//! - it purges only once [`BATCH`] entries or more would go, not a few at a time.

use std::time::Duration;

/// How often each range's purge point is decided.
pub const EVERY: Duration = Duration::from_secs(1);
/// Past this many bytes of shared log on the node, no follower holds a leader's log back.
pub const HOLD_BYTES_MAX: u64 = 1 << 30;
/// Entries purged at once, at least.
pub const BATCH: u64 = 64;

/// What a replica's metrics say about its log (openraft's indexes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogView {
    /// The last entry the last snapshot covers.
    pub snapshot: Option<u64>,
    /// The last entry purged.
    pub purged: Option<u64>,
    /// The last entry in the log.
    pub last: Option<u64>,
    /// Leading: the last entry each other member has matched (`None`: not known yet).
    pub followers: Option<Vec<Option<u64>>>,
}

/// The bounds [`purge_to`] works within.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Entries kept behind the snapshot.
    pub keep: u64,
    /// A follower lagging more entries than this holds nothing back.
    pub lag_max: u64,
    /// The node's shared log is past [`HOLD_BYTES_MAX`]: no follower holds anything back.
    pub log_full: bool,
}

/// The index to purge the log up to (inclusive), or `None` to leave it as it is.
pub fn purge_to(v: &LogView, l: Limits) -> Option<u64> {
    let snapshot = v.snapshot?;
    let mut to = snapshot.checked_sub(l.keep)?;
    if let (Some(followers), false) = (&v.followers, l.log_full) {
        let last = v.last.unwrap_or(0);
        for matched in followers {
            let needs_from = matched.map_or(0, |m| m + 1);
            if last.saturating_sub(needs_from) > l.lag_max {
                continue;
            }
            // It needs `needs_from` onwards: purge up to the entry before, at most.
            to = to.min(needs_from.checked_sub(1)?);
        }
    }
    let first_kept = v.purged.map_or(0, |p| p + 1);
    (to + 1 >= first_kept + BATCH).then_some(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits { keep: 100, lag_max: 2000, log_full: false };

    fn view(snapshot: u64, purged: Option<u64>, last: u64, followers: Option<Vec<Option<u64>>>) -> LogView {
        LogView { snapshot: Some(snapshot), purged, last: Some(last), followers }
    }

    #[test]
    fn a_follower_purges_keep_entries_behind_its_snapshot_in_batches() {
        assert_eq!(purge_to(&view(1000, None, 1100, None), L), Some(900));
        assert_eq!(purge_to(&view(1000, Some(899), 1100, None), L), None, "nothing new to purge");
        assert_eq!(purge_to(&view(1000, Some(880), 1100, None), L), None, "fewer than a batch");
        assert_eq!(purge_to(&view(1000, Some(836), 1100, None), L), Some(900), "a batch exactly");
        assert_eq!(purge_to(&LogView::default(), L), None, "no snapshot");
        assert_eq!(purge_to(&view(50, None, 60, None), L), None, "the snapshot is within keep");
    }

    #[test]
    fn a_leader_keeps_what_a_close_follower_still_needs() {
        // Both followers caught up: as a follower would.
        assert_eq!(purge_to(&view(1000, None, 1100, Some(vec![Some(1100), Some(1090)])), L), Some(900));
        // One follower has matched 500: entries from 501 stay.
        assert_eq!(purge_to(&view(1000, None, 1100, Some(vec![Some(1100), Some(500)])), L), Some(500));
        assert_eq!(purge_to(&view(1000, Some(480), 1100, Some(vec![Some(1100), Some(500)])), L), None);
        // Not known yet, or nothing matched: it needs the whole log.
        assert_eq!(purge_to(&view(1000, None, 1100, Some(vec![Some(1100), None])), L), None);
    }

    #[test]
    fn a_far_follower_or_a_full_log_holds_nothing_back() {
        // 3000 behind, past lag_max: it will get a snapshot.
        assert_eq!(purge_to(&view(4000, None, 4100, Some(vec![Some(4100), Some(1100)])), L), Some(3900));
        assert_eq!(purge_to(&view(4000, None, 4100, Some(vec![Some(4100), None])), L), Some(3900));
        // Just within lag_max, it holds.
        assert_eq!(purge_to(&view(4000, None, 4100, Some(vec![Some(2099)])), L), Some(2099));
        let full = Limits { log_full: true, ..L };
        assert_eq!(purge_to(&view(1000, None, 1100, Some(vec![Some(1100), Some(500)])), full), Some(900));
    }
}
