//! The in-memory key index (etcd's `keyIndex`): for every key, the revisions at which it was
//! written, grouped into generations (a generation runs from a create to a delete).
//!
//! Values live in the engine, keyed by revision; the index maps a key and a read revision to the
//! revision holding the value. It is rebuilt from the engine at start-up.

use crate::rev::Rev;
use cairn_types::Revision;

/// A key as the index holds it. Keys up to 24 bytes are stored inline, inside the B-tree's
/// nodes: looking a key up then compares bytes the node already holds, instead of following a
/// pointer (a likely cache miss) for every key compared on the way down. That search was 3.5% of
/// a member's CPU under a put load on 100,000 keys; longer keys spill to the heap as before.
pub type IndexKey = smallvec::SmallVec<[u8; 24]>;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Generation {
    /// Revision of the put that created the key in this generation.
    created: Rev,
    /// Changes made in this generation so far, including ones dropped by compaction: the
    /// version of the newest change.
    ver: i64,
    /// Changes still held, ascending. In a closed generation (not the last) the final entry is
    /// the tombstone.
    revs: Vec<Rev>,
}

/// The history of one key. Invariant: `gens` is never empty; only the last generation may be
/// empty, meaning the key is currently deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyIndex {
    gens: Vec<Generation>,
}

impl Default for KeyIndex {
    fn default() -> Self {
        KeyIndex { gens: vec![Generation::default()] }
    }
}

/// Where a key stood at some revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyAt {
    pub modified: Rev,
    pub created: Rev,
    pub version: i64,
}

impl KeyIndex {
    fn current(&mut self) -> &mut Generation {
        self.gens.last_mut().expect("gens is never empty")
    }

    fn last_rev(&self) -> Option<Rev> {
        self.gens.iter().rev().find_map(|g| g.revs.last().copied())
    }

    fn push(&mut self, rev: Rev) {
        if let Some(last) = self.last_rev() {
            assert!(rev > last, "change at {rev:?} not after {last:?}");
        }
        let g = self.current();
        if g.revs.is_empty() {
            g.created = rev;
            g.ver = 0;
        }
        g.revs.push(rev);
        g.ver += 1;
    }

    /// Records a put at `rev`; returns the key's new create revision and version.
    pub fn put(&mut self, rev: Rev) -> (Rev, i64) {
        self.push(rev);
        let g = self.current();
        (g.created, g.ver)
    }

    /// Records a delete at `rev`. The key must be live.
    pub fn tombstone(&mut self, rev: Rev) {
        assert!(self.is_live(), "tombstone of a deleted key");
        self.push(rev);
        self.gens.push(Generation::default());
    }

    /// Rebuilds a put from its stored record (whose create revision and version are known even
    /// when compaction dropped the earlier changes of the generation).
    pub fn restore(&mut self, rev: Rev, created: Revision, version: i64) {
        self.push(rev);
        let g = self.current();
        if g.revs.len() == 1 {
            g.created = Rev::new(created, 0);
        }
        g.ver = version;
    }

    /// True if the key currently exists.
    pub fn is_live(&self) -> bool {
        !self.gens.last().expect("gens is never empty").revs.is_empty()
    }

    /// The key as of store revision `at`, or `None` if it did not exist then.
    pub fn get(&self, at: Revision) -> Option<KeyAt> {
        let n = self.gens.len();
        for (i, g) in self.gens.iter().enumerate().rev() {
            if g.revs.is_empty() || g.revs[0].main > at {
                continue;
            }
            let pos = g.revs.partition_point(|r| r.main <= at) - 1;
            let closed = i + 1 < n;
            if closed && pos == g.revs.len() - 1 {
                return None; // the tombstone is what `at` sees
            }
            let version = g.ver - (g.revs.len() - 1 - pos) as i64;
            return Some(KeyAt { modified: g.revs[pos], created: g.created, version });
        }
        None
    }

    /// Drops history that no read at or after `at` can see, pushing the dropped revisions (whose
    /// engine records can be deleted) onto `removed`. Returns true if nothing is left, in which
    /// case the key can be removed from the index.
    pub fn compact(&mut self, at: Revision, removed: &mut Vec<Rev>) -> bool {
        // Whole generations that ended (tombstone) at or before `at` are invisible from `at` on.
        let mut drop = 0;
        while drop + 1 < self.gens.len() {
            let tomb = *self.gens[drop].revs.last().expect("closed generations are non-empty");
            if tomb.main > at {
                break;
            }
            removed.extend_from_slice(&self.gens[drop].revs);
            drop += 1;
        }
        self.gens.drain(..drop);
        // In the first remaining generation, only the newest change at or before `at` is needed.
        let g = &mut self.gens[0];
        if !g.revs.is_empty() && g.revs[0].main <= at {
            let keep = g.revs.partition_point(|r| r.main <= at) - 1;
            removed.extend(g.revs.drain(..keep));
        }
        self.gens.len() == 1 && self.gens[0].revs.is_empty()
    }

    /// Every revision still held (for tests and consistency checks).
    pub fn revisions(&self) -> Vec<Rev> {
        self.gens.iter().flat_map(|g| g.revs.iter().copied()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(main: i64) -> Rev {
        Rev::new(main, 0)
    }

    #[test]
    fn versions_and_generations() {
        let mut k = KeyIndex::default();
        assert_eq!(k.get(10), None);
        assert_eq!(k.put(r(2)), (r(2), 1));
        assert_eq!(k.put(r(4)), (r(2), 2));
        k.tombstone(r(6));
        assert_eq!(k.put(r(8)), (r(8), 1), "version restarts after a delete");
        assert_eq!(k.get(1), None);
        assert_eq!(k.get(2), Some(KeyAt { modified: r(2), created: r(2), version: 1 }));
        assert_eq!(k.get(5), Some(KeyAt { modified: r(4), created: r(2), version: 2 }));
        assert_eq!(k.get(6), None, "deleted at 6");
        assert_eq!(k.get(7), None);
        assert_eq!(k.get(8), Some(KeyAt { modified: r(8), created: r(8), version: 1 }));
        assert!(k.is_live());
    }

    #[test]
    fn compaction_keeps_what_reads_at_or_after_can_see() {
        let mut k = KeyIndex::default();
        for m in [2, 3, 4] {
            k.put(r(m));
        }
        k.tombstone(r(5));
        k.put(r(7));
        k.put(r(9));
        let mut removed = vec![];
        assert!(!k.compact(3, &mut removed));
        assert_eq!(removed, vec![r(2)]);
        assert_eq!(k.get(3), Some(KeyAt { modified: r(3), created: r(2), version: 2 }), "versions survive compaction");
        assert_eq!(k.get(4).unwrap().version, 3);
        removed.clear();
        assert!(!k.compact(8, &mut removed));
        assert_eq!(removed, vec![r(3), r(4), r(5)]);
        assert_eq!(k.revisions(), vec![r(7), r(9)]);
        removed.clear();
        k.tombstone(r(10));
        assert!(k.compact(10, &mut removed), "a key deleted at the compaction point disappears");
        assert_eq!(removed, vec![r(7), r(9), r(10)]);
    }

    #[test]
    fn restore_rebuilds_what_put_built() {
        let mut built = KeyIndex::default();
        for m in [2, 3, 4, 6] {
            built.put(r(m));
        }
        let mut removed = vec![];
        built.compact(4, &mut removed);
        // After compaction the engine holds revisions 4 (version 3) and 6 (version 4).
        let mut restored = KeyIndex::default();
        restored.restore(r(4), 2, 3);
        restored.restore(r(6), 2, 4);
        for at in 4..8 {
            assert_eq!(restored.get(at), built.get(at), "at {at}");
        }
    }

    #[test]
    #[should_panic(expected = "tombstone of a deleted key")]
    fn tombstone_of_deleted_key_is_a_bug() {
        KeyIndex::default().tombstone(r(3));
    }
}
