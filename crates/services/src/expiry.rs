//! Active expiry of Redis keys, as Redis's own expire cycle: a key whose time has passed is
//! already invisible to every read (reads compare it with the leader's clock), but it keeps
//! its space until something deletes it. So on every node, for each range it leads, a task
//! looks at the next few keys after where it stopped last time, and for each expired one
//! proposes `DataCmd::ExpireDelete` through the range's log. That command deletes the key only
//! if it still has the expiry that was seen and that time has passed at the entry's stamp, so
//! a write racing in between (a new SET) is kept, and every replica deletes the same keys.
//!
//! The walk costs at most [`SAMPLE`] keys per led range per round, and at most
//! [`ROUND_BYTES`] of stored records per round on the node, whatever the number of ranges and
//! the size of their values (the ranges take turns starting the round); only each record's
//! header is decoded. A hibernating range (see `cairn_raft::range::hibernate`) is walked every
//! [`SLEEPING_EVERY`] rounds only, and is woken only when it holds an expired key.
//!
//! Without the byte bound, a node leading 40 ranges of 15 KB values read 64 x 40 x 15 KB four
//! times a second (150 MB/s) looking for expiries: 13 % of the nodes' time in the 10 GiB load
//! of BENCHMARKS.md, growing with the number of ranges.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_range::cmd::{DataCmd, WriteReq};
use cairn_range::keys;
use cairn_range::record::Record;

use crate::data::DataTier;

/// Keys looked at per led range per round, at most.
pub const SAMPLE: usize = 64;
/// Bytes of stored keys and records looked at per round on a node, at most (1 MiB/s at
/// [`EVERY`]).
pub const ROUND_BYTES: usize = 256 * 1024;
/// A hibernating range is walked once in this many rounds.
pub const SLEEPING_EVERY: u64 = 40;

/// Expired keys this node deleted since it started (`cairn_redis_expired_keys` in /metrics).
pub static EXPIRED_KEYS: AtomicU64 = AtomicU64::new(0);

/// How often a round runs (a hibernating range: every [`SLEEPING_EVERY`] rounds, 10 s).
pub const EVERY: Duration = Duration::from_millis(250);

/// Starts the expiry walk on this node, one round every `every` (`Duration::ZERO`: off).
pub fn start(tier: Arc<DataTier>, every: Duration) {
    if every.is_zero() {
        return;
    }
    let weak = Arc::downgrade(&tier);
    drop(tier);
    tokio::spawn(async move {
        // Where the walk of each range stopped: the next stored key to look at.
        let mut cursors: HashMap<u64, Vec<u8>> = HashMap::new();
        let mut round = 0u64;
        loop {
            tokio::time::sleep(every).await;
            let Some(tier) = weak.upgrade() else { return };
            round += 1;
            let me = tier.node_id();
            let mut budget = ROUND_BYTES;
            let mut all = tier.host().replicas();
            // The ranges take turns going first, so a spent budget does not always spare the same.
            if !all.is_empty() {
                let turn = (round as usize) % all.len();
                all.rotate_left(turn);
            }
            for r in all {
                if budget == 0 {
                    break;
                }
                if r.leader() != Some(me) || r.sm.frozen() || (r.asleep() && !round.is_multiple_of(SLEEPING_EVERY)) {
                    continue;
                }
                let desc = r.sm.desc();
                let from = cursors.remove(&desc.id).filter(|k| desc.contains(k)).unwrap_or_else(|| desc.start.clone());
                let now = cairn_types::clock::wall_ms() as i64;
                let mut walk = Walk::default();
                let walked = r.sm.read(|view| walk.run(view, &from, &desc.end, now, &mut budget));
                let Walk { expired, seen, last } = walk;
                if !matches!(walked, Ok(Ok(()))) {
                    continue;
                }
                // The next round starts after the last key seen, or over from the start once the
                // walk reached the range's end.
                if let (false, Some(mut k)) = (seen == Seen::End, last) {
                    k.push(0);
                    cursors.insert(desc.id, k);
                }
                for (key, expire_at_ms) in expired {
                    let stored = keys::encode(&key);
                    let req = WriteReq::Cmd(DataCmd::ExpireDelete { key, expire_at_ms });
                    let bytes = postcard::to_allocvec(&req).expect("serializable");
                    match tier.execute(&stored, false, bytes).await {
                        Ok(b) => {
                            if postcard::from_bytes::<cairn_range::Reply>(&b) == Ok(cairn_range::Reply::Int(1)) {
                                EXPIRED_KEYS.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(e) => {
                            tracing::debug!(range = desc.id, error = %e, "active expiry: delete not done");
                            break;
                        }
                    }
                }
            }
        }
    });
}

/// Where a walk of one range stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Seen {
    /// At the end of the range.
    #[default]
    End,
    /// After [`SAMPLE`] keys, or with the round's byte budget spent.
    Stopped,
}

/// One walk of one range: the expired keys it found (with the expiry seen), whether it reached
/// the end, and the last stored key it looked at.
#[derive(Default)]
struct Walk {
    expired: Vec<(Vec<u8>, i64)>,
    seen: Seen,
    last: Option<Vec<u8>>,
}

impl Walk {
    /// Looks at the keys of `[from, end)` in order, stopping after [`SAMPLE`] of them or once
    /// `budget` (bytes of keys and records) is spent; takes what it read from `budget`.
    fn run(
        &mut self,
        view: &dyn cairn_raft::range::DataView,
        from: &[u8],
        end: &[u8],
        now: i64,
        budget: &mut usize,
    ) -> std::io::Result<()> {
        let mut n = 0;
        self.seen = Seen::End;
        view.scan(from, end, &mut |k, v| {
            n += 1;
            *budget = budget.saturating_sub(k.len() + v.len());
            self.last = Some(k.to_vec());
            if let (Some(user), Ok(Some(at))) = (keys::decode(k), Record::expiry_of(v)) {
                if at <= now {
                    self.expired.push((user.to_vec(), at));
                }
            }
            if n >= SAMPLE || *budget == 0 {
                self.seen = Seen::Stopped;
                return false;
            }
            true
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    struct View(BTreeMap<Vec<u8>, Vec<u8>>);

    impl cairn_raft::range::DataView for View {
        fn get(&self, key: &[u8]) -> std::io::Result<Option<Vec<u8>>> {
            Ok(self.0.get(key).cloned())
        }
        fn scan(&self, from: &[u8], to: &[u8], visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> std::io::Result<()> {
            for (k, v) in self.0.range(from.to_vec()..) {
                if !to.is_empty() && k.as_slice() >= to {
                    break;
                }
                if !visit(k, v) {
                    break;
                }
            }
            Ok(())
        }
    }

    fn view(n: usize, value: usize, expired: impl Fn(usize) -> bool) -> View {
        View(
            (0..n)
                .map(|i| {
                    let at = expired(i).then_some(5);
                    (keys::encode(format!("k{i:04}").as_bytes()), Record::string(vec![b'v'; value], at, 1).encode())
                })
                .collect(),
        )
    }

    #[test]
    fn a_walk_stops_at_the_sample_or_the_byte_budget_and_finds_expired_keys() {
        // Small values: the sample ends the walk, and every other key is expired.
        let v = view(100, 10, |i| i % 2 == 0);
        let (mut w, mut budget) = (Walk::default(), ROUND_BYTES);
        w.run(&v, b"", b"", 10, &mut budget).unwrap();
        assert_eq!(w.seen, Seen::Stopped);
        let want = v.0.values().take(SAMPLE).filter(|r| Record::expiry_of(r) == Ok(Some(5))).count();
        assert!(want > 0 && want < SAMPLE);
        assert_eq!(w.expired.len(), want);
        assert!(w.expired.iter().all(|(_, at)| *at == 5));
        // Not expired yet at 5 - 1.
        let (mut w, mut budget) = (Walk::default(), ROUND_BYTES);
        w.run(&v, b"", b"", 4, &mut budget).unwrap();
        assert!(w.expired.is_empty());
        // Large values: the budget ends the walk long before the sample.
        let v = view(100, 15_000, |_| true);
        let (mut w, mut budget) = (Walk::default(), ROUND_BYTES);
        w.run(&v, b"", b"", 10, &mut budget).unwrap();
        assert_eq!(budget, 0);
        assert_eq!(w.seen, Seen::Stopped);
        let n = w.expired.len();
        assert!((ROUND_BYTES / 15_100..=ROUND_BYTES / 15_000 + 1).contains(&n), "{n} records of 15 KB");
        // A spent budget reads one record at most; a short range is walked to its end.
        let mut w = Walk::default();
        w.run(&v, b"", b"", 10, &mut 0).unwrap();
        assert_eq!(w.expired.len(), 1);
        let v = view(3, 10, |_| false);
        let (mut w, mut budget) = (Walk::default(), ROUND_BYTES);
        w.run(&v, b"", b"", 10, &mut budget).unwrap();
        assert_eq!(w.seen, Seen::End);
    }
}
