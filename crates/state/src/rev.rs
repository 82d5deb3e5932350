//! Revisions and where they come from.

use cairn_types::Revision;

/// A revision of one change: `main` is the store revision of the write request, `sub` orders
/// the changes within it (a transaction with three puts has subs 0, 1, 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Rev {
    pub main: Revision,
    pub sub: i64,
}

impl Rev {
    pub const fn new(main: Revision, sub: i64) -> Self {
        Rev { main, sub }
    }

    /// Engine key: big-endian main then sub, so byte order is revision order.
    pub fn to_key(self) -> [u8; 16] {
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&self.main.to_be_bytes());
        k[8..].copy_from_slice(&self.sub.to_be_bytes());
        k
    }

    pub fn from_key(k: &[u8]) -> Option<Rev> {
        if k.len() != 16 {
            return None;
        }
        let main = i64::from_be_bytes(k[..8].try_into().ok()?);
        let sub = i64::from_be_bytes(k[8..].try_into().ok()?);
        Some(Rev { main, sub })
    }
}

/// The source of store revisions.
///
/// With one Raft group the revision is the count of applied write requests, kept by the store
/// itself ([`LocalRevisions`]). When the keyspace is split across groups, revisions must come
/// from a cluster-wide source (a timestamp oracle on the meta group, or HLC), so apply asks
/// this trait and nothing else.
pub trait RevisionSource: Send + Sync {
    /// The latest revision handed out (1 on an empty store).
    fn current(&self) -> Revision;
    /// The revision the next write request will take, without taking it.
    fn peek_next(&self) -> Revision;
    /// Marks `rev` (which must be `peek_next()`) as taken.
    fn take(&mut self, rev: Revision);
}

/// The single-group revision source: a counter persisted with the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalRevisions {
    current: Revision,
}

impl LocalRevisions {
    pub fn new(current: Revision) -> Self {
        assert!(current >= 1, "store revisions start at 1, got {current}");
        LocalRevisions { current }
    }
}

impl RevisionSource for LocalRevisions {
    fn current(&self) -> Revision {
        self.current
    }

    fn peek_next(&self) -> Revision {
        self.current + 1
    }

    fn take(&mut self, rev: Revision) {
        assert_eq!(rev, self.current + 1, "revisions are taken in order");
        self.current = rev;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_encoding_orders_like_revisions() {
        let revs = [Rev::new(1, 0), Rev::new(1, 5), Rev::new(2, 0), Rev::new(256, 1), Rev::new(i64::MAX, 0)];
        for w in revs.windows(2) {
            assert!(w[0].to_key() < w[1].to_key(), "{:?} vs {:?}", w[0], w[1]);
            assert_eq!(Rev::from_key(&w[0].to_key()), Some(w[0]));
        }
        assert_eq!(Rev::from_key(&[0; 15]), None);
    }

    #[test]
    fn local_revisions_count_up_from_one() {
        let mut r = LocalRevisions::new(1);
        assert_eq!(r.peek_next(), 2);
        r.take(2);
        assert_eq!(r.current(), 2);
    }
}
