//! A log store's newest entries, kept decoded (both the meta group's log and the ranges').

use std::collections::VecDeque;

use openraft::entry::RaftEntry;
use openraft::RaftTypeConfig;

/// The newest entries, decoded. Replication (on the leader) and apply (on every member) read
/// entries moments after they were appended; serving those reads from here saves decoding the
/// log's bytes again for each reader. Copies are cheap: a command's op is shared.
///
/// Holds a contiguous run of indexes ending at the log's last entry (when non-empty); mirrors
/// every append, truncation and purge of the log.
pub(crate) struct Recent<C: RaftTypeConfig>
where
    C::Entry: Clone,
{
    first: u64,
    /// Each entry with its encoded size (for the byte budget and for `max_bytes` of reads).
    entries: VecDeque<(C::Entry, usize)>,
    bytes: usize,
    /// Encoded bytes kept at most (but always the newest entry).
    max_bytes: usize,
}

impl<C: RaftTypeConfig> Recent<C>
where
    C::Entry: Clone,
{
    pub(crate) fn new(max_bytes: usize) -> Self {
        Recent { first: 0, entries: VecDeque::new(), bytes: 0, max_bytes }
    }

    fn end(&self) -> u64 {
        self.first + self.entries.len() as u64
    }

    pub(crate) fn push(&mut self, e: C::Entry, len: usize) {
        if self.entries.is_empty() || e.index() != self.end() {
            self.entries.clear();
            self.bytes = 0;
            self.first = e.index();
        }
        self.entries.push_back((e, len));
        self.bytes += len;
        while self.bytes > self.max_bytes && self.entries.len() > 1 {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some((_, len)) = self.entries.pop_front() {
            self.bytes -= len;
            self.first += 1;
        }
    }

    /// Drops entries from `index` on.
    pub(crate) fn truncate_from(&mut self, index: u64) {
        while self.end() > index.max(self.first) {
            match self.entries.pop_back() {
                Some((_, len)) => self.bytes -= len,
                None => break,
            }
        }
    }

    /// Drops entries up to and including `index`.
    pub(crate) fn purge_upto(&mut self, index: u64) {
        while !self.entries.is_empty() && self.first <= index {
            self.pop_front();
        }
    }

    /// Entries `[start, end)` as the log would return them (at most `max_bytes`, but at least
    /// one), if this holds them all; `None` sends the read to the log.
    pub(crate) fn get(&self, start: u64, end: u64, max_bytes: usize) -> Option<Vec<C::Entry>> {
        if start < self.first || start >= self.end() {
            return None;
        }
        let hi = end.min(self.end());
        let mut out = Vec::with_capacity((hi.saturating_sub(start)) as usize);
        let mut bytes = 0usize;
        for (e, len) in self.entries.range((start - self.first) as usize..(hi - self.first) as usize) {
            if !out.is_empty() && bytes + len > max_bytes {
                break;
            }
            bytes += len;
            out.push(e.clone());
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{LogId, TypeConfig};

    const RECENT_BYTES_MAX: usize = 32 * 1024 * 1024;

    fn entry(index: u64) -> crate::types::Entry {
        crate::types::Entry::new_blank(LogId::new(
            openraft::impls::leader_id_adv::LeaderId { term: 1, node_id: 1 },
            index,
        ))
    }

    fn indexes(r: &Recent<TypeConfig>, start: u64, end: u64, max_bytes: usize) -> Option<Vec<u64>> {
        r.get(start, end, max_bytes).map(|v| v.iter().map(|e| e.log_id.index).collect())
    }

    #[test]
    fn recent_serves_only_what_it_holds() {
        let mut r = Recent::new(RECENT_BYTES_MAX);
        assert_eq!(indexes(&r, 0, 10, usize::MAX), None);
        for i in 5..10 {
            r.push(entry(i), 10);
        }
        assert_eq!(indexes(&r, 5, 10, usize::MAX), Some(vec![5, 6, 7, 8, 9]));
        assert_eq!(indexes(&r, 7, u64::MAX, usize::MAX), Some(vec![7, 8, 9]));
        // Before the first held entry, or past the last: the log answers.
        assert_eq!(indexes(&r, 4, 10, usize::MAX), None);
        assert_eq!(indexes(&r, 10, 12, usize::MAX), None);
        // The byte budget of a read, but always at least one entry.
        assert_eq!(indexes(&r, 5, 10, 25), Some(vec![5, 6]));
        assert_eq!(indexes(&r, 5, 10, 1), Some(vec![5]));
    }

    #[test]
    fn recent_mirrors_truncation_purge_and_gaps() {
        let mut r = Recent::new(RECENT_BYTES_MAX);
        for i in 1..=6 {
            r.push(entry(i), 10);
        }
        r.truncate_from(4);
        assert_eq!(indexes(&r, 1, 10, usize::MAX), Some(vec![1, 2, 3]));
        r.push(entry(4), 10);
        assert_eq!(indexes(&r, 3, 10, usize::MAX), Some(vec![3, 4]));
        r.purge_upto(2);
        assert_eq!(indexes(&r, 2, 10, usize::MAX), None);
        assert_eq!(indexes(&r, 3, 10, usize::MAX), Some(vec![3, 4]));
        // Truncating below everything held empties it.
        r.truncate_from(1);
        assert_eq!(indexes(&r, 3, 10, usize::MAX), None);
        assert_eq!(r.bytes, 0);
        // A push that does not follow the last held entry starts a new run.
        r.push(entry(20), 10);
        r.push(entry(30), 10);
        assert_eq!(indexes(&r, 20, 40, usize::MAX), None);
        assert_eq!(indexes(&r, 30, 40, usize::MAX), Some(vec![30]));
        assert_eq!(r.bytes, 10);
    }

    #[test]
    fn recent_keeps_to_its_byte_budget() {
        let mut r = Recent::new(RECENT_BYTES_MAX);
        let big = RECENT_BYTES_MAX / 4;
        for i in 1..=10 {
            r.push(entry(i), big);
        }
        assert!(r.bytes <= RECENT_BYTES_MAX);
        assert_eq!(r.first, 7);
        assert_eq!(indexes(&r, 7, 11, usize::MAX), Some(vec![7, 8, 9, 10]));
        assert_eq!(indexes(&r, 6, 11, usize::MAX), None);
    }
}
