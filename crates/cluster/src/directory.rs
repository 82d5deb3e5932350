//! The range directory: which range holds a key.
//!
//! The data tier is one ordered keyspace; each subsystem owns a one-byte prefix. Ranges are
//! `[start, end)` intervals that tile it (`end` empty: the keyspace's end). A descriptor's
//! `epoch` changes on every split, merge and replica change: a request routed with an older
//! epoch is detected by the range and re-routed, never answered twice.
//!
//! Redis keys are `PREFIX_REDIS | slot (u16, big-endian) | key`: a hash slot is a contiguous
//! interval, and ranges under that prefix split only at slot boundaries ([`split_boundary`]),
//! so every slot lives in exactly one range.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The Redis keyspace's prefix.
pub const PREFIX_REDIS: u8 = b'r';
/// Redis Cluster's number of hash slots.
pub const SLOTS: u16 = 16384;

/// Where a range sits and who holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    pub id: u64,
    #[serde(with = "serde_bytes")]
    pub start: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub end: Vec<u8>,
    pub epoch: u64,
    /// Voting replicas, by node id.
    pub replicas: Vec<u64>,
    /// Replicas being caught up, not yet voting.
    pub learners: Vec<u64>,
    /// The version of `replicas` and `learners`: the log index of the range's membership
    /// they come from. `(epoch, conf)` only grows, so a stale report never replaces a newer
    /// one.
    pub conf: u64,
}

impl Descriptor {
    /// What orders two reports of the same range: newer span first, then newer replicas.
    pub fn version(&self) -> (u64, u64) {
        (self.epoch, self.conf)
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && (self.end.is_empty() || key < self.end.as_slice())
    }
}

/// A node of the data tier, as the meta group records it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    /// Advertised Redis URLs (`--advertise-redis-urls`).
    pub redis_urls: Vec<String>,
    /// Being removed: its replicas move off first.
    pub draining: bool,
    /// Joined with `--join`: a data node, a learner of the meta group (not counted against
    /// etcd's one-learner limit).
    pub data_only: bool,
}

/// A change to the directory, applied atomically by the meta group if every range in
/// `expect` still has the given epoch (a compare-and-swap: two placement decisions made from
/// the same view cannot both land). Bootstrap expects nothing and finds the directory empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DirectoryOp {
    Update {
        expect: Vec<(u64, u64)>,
        put: Vec<Descriptor>,
        remove: Vec<u64>,
    },
    /// Creates the first ranges; refused unless the directory is empty.
    Bootstrap {
        put: Vec<Descriptor>,
    },
    Node(NodeRecord),
    /// Forgets a node's record (it left the cluster).
    ForgetNode(u64),
    /// Reserves a range id never used before (for a split's new range); the answer carries it.
    Reserve,
}

/// Why a directory cannot be built from a set of descriptors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectoryError {
    /// Two descriptors cover some of the same keys.
    Overlap { a: u64, b: u64 },
    /// Keys between two descriptors belong to none.
    Gap { after: u64 },
    /// The first range does not start at the keyspace's start, or the last does not end at
    /// its end.
    Open,
}

impl std::fmt::Display for DirectoryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DirectoryError::Overlap { a, b } => write!(f, "ranges {a} and {b} overlap"),
            DirectoryError::Gap { after } => write!(f, "no range holds the keys after range {after}"),
            DirectoryError::Open => write!(f, "the ranges do not cover the whole keyspace"),
        }
    }
}

impl std::error::Error for DirectoryError {}

/// Every range, by start key: a lookup is one ordered-map search.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    by_start: BTreeMap<Vec<u8>, Descriptor>,
    /// Each id's first start key (a route being updated may hold pieces of one range), so a
    /// lookup by id is one hash probe: every node looks up each range it leads every 100 ms.
    by_id: std::collections::HashMap<u64, Vec<u8>>,
}

impl Directory {
    /// A directory of descriptors that tile the keyspace exactly, or why they do not.
    pub fn new(descs: impl IntoIterator<Item = Descriptor>) -> Result<Directory, DirectoryError> {
        let mut by_start = BTreeMap::new();
        for d in descs {
            if let Some(prev) = by_start.insert(d.start.clone(), d.clone()) {
                return Err(DirectoryError::Overlap { a: prev.id, b: d.id });
            }
        }
        let mut expect: Vec<u8> = Vec::new();
        let mut last: Option<&Descriptor> = None;
        for (start, d) in &by_start {
            if *start != expect {
                return Err(match last {
                    None => DirectoryError::Open,
                    Some(l) if start.as_slice() < l.end.as_slice() || l.end.is_empty() => {
                        DirectoryError::Overlap { a: l.id, b: d.id }
                    }
                    Some(l) => DirectoryError::Gap { after: l.id },
                });
            }
            if !d.end.is_empty() && d.end <= d.start {
                return Err(DirectoryError::Overlap { a: d.id, b: d.id });
            }
            if let Some(l) = last {
                if l.end.is_empty() {
                    return Err(DirectoryError::Overlap { a: l.id, b: d.id });
                }
            }
            expect = d.end.clone();
            last = Some(d);
        }
        match last {
            Some(l) if l.end.is_empty() => {
                let mut dir = Directory { by_start, by_id: Default::default() };
                dir.index();
                Ok(dir)
            }
            _ => Err(DirectoryError::Open),
        }
    }

    /// The range that holds `key`.
    pub fn lookup(&self, key: &[u8]) -> &Descriptor {
        self.by_start
            .range::<[u8], _>((std::ops::Bound::Unbounded, std::ops::Bound::Included(key)))
            .next_back()
            .map(|(_, d)| d)
            .expect("a directory tiles the keyspace from its start")
    }

    pub fn get(&self, id: u64) -> Option<&Descriptor> {
        self.by_start.get(self.by_id.get(&id)?)
    }

    fn index(&mut self) {
        self.by_id.clear();
        for (start, d) in &self.by_start {
            self.by_id.entry(d.id).or_insert_with(|| start.clone());
        }
    }

    pub fn len(&self) -> usize {
        self.by_start.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_start.is_empty()
    }

    /// Every range in key order.
    pub fn iter(&self) -> impl Iterator<Item = &Descriptor> {
        self.by_start.values()
    }

    /// Replaces what a newer descriptor covers (a route learned from a range after a split,
    /// merge or move). Ignored when not newer than every descriptor it overlaps.
    pub fn update(&mut self, d: Descriptor) -> bool {
        let overlapping: Vec<Vec<u8>> =
            self.by_start.iter().filter(|(_, o)| overlaps(o, &d)).map(|(k, _)| k.clone()).collect();
        if overlapping.iter().any(|k| self.by_start[k].id == d.id && self.by_start[k].epoch >= d.epoch) {
            return false;
        }
        let mut pieces = Vec::new();
        for k in overlapping {
            let o = self.by_start.remove(&k).expect("listed");
            // What the old descriptor covered outside the new one stays routed to it until
            // its own newer descriptor arrives.
            if o.start < d.start {
                pieces.push(Descriptor { end: d.start.clone(), ..o.clone() });
            }
            if !d.end.is_empty() && (o.end.is_empty() || o.end > d.end) {
                pieces.push(Descriptor { start: d.end.clone(), ..o });
            }
        }
        for p in pieces {
            self.by_start.insert(p.start.clone(), p);
        }
        self.by_start.insert(d.start.clone(), d);
        self.index();
        true
    }
}

fn overlaps(a: &Descriptor, b: &Descriptor) -> bool {
    let a_before_b_ends = b.end.is_empty() || a.start < b.end;
    let b_before_a_ends = a.end.is_empty() || b.start < a.end;
    a_before_b_ends && b_before_a_ends
}

/// The start key of a Redis hash slot's interval.
pub fn slot_start(slot: u16) -> Vec<u8> {
    let mut k = vec![PREFIX_REDIS];
    k.extend_from_slice(&slot.to_be_bytes());
    k
}

/// The hash slots a range covers, as an inclusive interval (`None`: none of its keys are
/// Redis keys).
pub fn slots_of(start: &[u8], end: &[u8]) -> Option<(u16, u16)> {
    let lo = slot_start(0);
    let hi = vec![PREFIX_REDIS + 1];
    if (!end.is_empty() && end <= lo.as_slice()) || start >= hi.as_slice() {
        return None;
    }
    let first = if start <= lo.as_slice() { 0 } else { slot_at(start) };
    let last = if end.is_empty() || end >= hi.as_slice() {
        SLOTS - 1
    } else {
        // `end` is exclusive: a range ending exactly at a slot's start does not hold it.
        let s = slot_at(end);
        if end == slot_start(s).as_slice() {
            s.checked_sub(1)?
        } else {
            s
        }
    };
    (first <= last).then_some((first, last))
}

/// The slot of a key under the Redis prefix (a key too short to name one is slot 0's).
fn slot_at(key: &[u8]) -> u16 {
    match key {
        [PREFIX_REDIS, a, b, ..] => u16::from_be_bytes([*a, *b]).min(SLOTS - 1),
        [PREFIX_REDIS, a] => u16::from_be_bytes([*a, 0]).min(SLOTS - 1),
        _ => 0,
    }
}

/// Whether range `[start, end)` has a legal split point at all: not when it holds Redis keys
/// of one hash slot only (a slot never splits).
pub fn splittable(start: &[u8], end: &[u8]) -> bool {
    let redis_only = start >= slot_start(0).as_slice() && !end.is_empty() && end <= [PREFIX_REDIS + 1].as_slice();
    !(redis_only && slots_of(start, end).is_some_and(|(a, b)| a == b))
}

/// Where a range `[start, end)` may split near `key` (its middle key): the key itself, except
/// under the Redis prefix, where it moves down to its slot's start (up to the next slot's
/// start when that would be the range's start). `None`: no legal split inside the range (a
/// range of one slot does not split).
pub fn split_boundary(start: &[u8], end: &[u8], key: &[u8]) -> Option<Vec<u8>> {
    let inside = |k: &[u8]| k > start && (end.is_empty() || k < end);
    if key.first() != Some(&PREFIX_REDIS) {
        return inside(key).then(|| key.to_vec());
    }
    let slot = slot_at(key);
    let down = slot_start(slot);
    if inside(&down) {
        return Some(down);
    }
    let up = if slot + 1 < SLOTS { slot_start(slot + 1) } else { vec![PREFIX_REDIS + 1] };
    inside(&up).then_some(up)
}

/// The fewest sampled requests a split by load is placed by: fewer say too little about where
/// the load is.
pub const LOAD_SPLIT_SAMPLES_MIN: usize = 20;

/// The least share of the sampled requests each half of a split by load must take.
pub const LOAD_SPLIT_SHARE_MIN: f64 = 0.25;

/// Where a range `[start, end)` may split so that its load divides best between the halves:
/// `samples` are the keys of requests sampled from its recent load (one per request), and the
/// boundaries tried are those [`split_boundary`] allows near each of them (under the Redis
/// prefix, the start of a sampled key's slot and of the next slot). `None` unless each half
/// would take at least [`LOAD_SPLIT_SHARE_MIN`] of the samples, or with fewer than
/// [`LOAD_SPLIT_SAMPLES_MIN`] of them: a load on one key or one hash slot cannot be divided,
/// and splitting it anyway (at the middle of the range's bytes) only set a cold range beside
/// the hot one, which then merged back and split again. CockroachDB's load-based splitter
/// refuses such a key the same way.
pub fn load_split_boundary(start: &[u8], end: &[u8], samples: &[Vec<u8>]) -> Option<Vec<u8>> {
    let inside = |k: &[u8]| k > start && (end.is_empty() || k < end);
    let mut keys: Vec<&[u8]> =
        samples.iter().map(Vec::as_slice).filter(|k| *k >= start && (end.is_empty() || *k < end)).collect();
    if keys.len() < LOAD_SPLIT_SAMPLES_MIN {
        return None;
    }
    keys.sort_unstable();
    let mut candidates: Vec<Vec<u8>> = Vec::new();
    for k in &keys {
        if k.first() == Some(&PREFIX_REDIS) {
            let slot = slot_at(k);
            candidates.push(slot_start(slot));
            candidates.push(if slot + 1 < SLOTS { slot_start(slot + 1) } else { vec![PREFIX_REDIS + 1] });
        } else {
            candidates.push(k.to_vec());
        }
    }
    candidates.retain(|b| inside(b));
    candidates.sort_unstable();
    candidates.dedup();
    let n = keys.len();
    // The boundary whose smaller half holds the most samples (the first such, in key order).
    let (share, at) = candidates
        .into_iter()
        .map(|b| {
            let left = keys.partition_point(|k| *k < b.as_slice());
            (left.min(n - left), b)
        })
        .min_by(|(a, x), (b, y)| b.cmp(a).then(x.cmp(y)))?;
    (share as f64 >= LOAD_SPLIT_SHARE_MIN * n as f64).then_some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_of_one_slot_is_not_splittable() {
        assert!(!splittable(&slot_start(5), &slot_start(6)));
        assert!(!splittable(&slot_start(SLOTS - 1), &[PREFIX_REDIS + 1]));
        assert!(splittable(&slot_start(5), &slot_start(7)));
        assert!(splittable(&slot_start(5), b""));
        assert!(splittable(b"", &slot_start(1)));
        assert!(splittable(b"a", b"b"));
    }

    /// A Redis key of `slot` (stored form), with `n` to tell keys of one slot apart.
    fn key_in(slot: u16, n: u32) -> Vec<u8> {
        let mut k = slot_start(slot);
        k.extend_from_slice(format!("key:{n}").as_bytes());
        k
    }

    #[test]
    fn a_split_by_load_divides_the_sampled_requests() {
        let (start, end) = (slot_start(0), slot_start(100));
        // Half the requests on slot 10, half on slot 20: the split goes between them.
        let mut samples: Vec<Vec<u8>> = (0..20).map(|i| key_in(10, i)).chain((0..20).map(|i| key_in(20, i))).collect();
        assert_eq!(load_split_boundary(&start, &end, &samples), Some(slot_start(11)));
        // 70/30 still divides well enough; 85/15 does not.
        samples = (0..28).map(|i| key_in(10, i)).chain((0..12).map(|i| key_in(20, i))).collect();
        assert_eq!(load_split_boundary(&start, &end, &samples), Some(slot_start(11)));
        samples = (0..34).map(|i| key_in(10, i)).chain((0..6).map(|i| key_in(20, i))).collect();
        assert_eq!(load_split_boundary(&start, &end, &samples), None);
        // Spread evenly over slots 0-99: near the middle.
        samples = (0..100).map(|s| key_in(s, 0)).collect();
        let at = load_split_boundary(&start, &end, &samples).unwrap();
        assert!((45..=55).contains(&slot_at(&at)), "{}", slot_at(&at));
        // Keys outside the range count for nothing.
        samples = (0..40).map(|i| key_in(200 + i as u16, 0)).collect();
        assert_eq!(load_split_boundary(&start, &end, &samples), None);
        // Outside the Redis prefix, the boundary is a sampled key itself.
        samples = (0..40u8).map(|i| vec![b'a', i]).collect();
        let at = load_split_boundary(b"a", b"b", &samples).unwrap();
        assert!(at.as_slice() > b"a".as_slice() && at.as_slice() < b"b".as_slice());
        assert_eq!(samples.iter().filter(|k| k.as_slice() < at.as_slice()).count(), 20);
    }

    #[test]
    fn a_load_on_one_slot_or_too_few_samples_does_not_split() {
        let (start, end) = (slot_start(0), slot_start(100));
        // redis-benchmark --cluster gives every key it sends one node the same hash tag.
        let one_slot: Vec<Vec<u8>> = (0..200).map(|i| key_in(42, i)).collect();
        assert_eq!(load_split_boundary(&start, &end, &one_slot), None);
        let few: Vec<Vec<u8>> = (0..LOAD_SPLIT_SAMPLES_MIN as u16 - 1).map(|s| key_in(s * 5, 0)).collect();
        assert_eq!(load_split_boundary(&start, &end, &few), None);
        let enough: Vec<Vec<u8>> = (0..LOAD_SPLIT_SAMPLES_MIN as u16).map(|s| key_in(s * 5, 0)).collect();
        assert!(load_split_boundary(&start, &end, &enough).is_some());
        // A range starting at the hot slot: the only boundary that could divide it is the
        // next slot's start, which leaves nothing on the right.
        assert_eq!(load_split_boundary(&slot_start(42), &end, &one_slot), None);
    }

    fn d(id: u64, start: &[u8], end: &[u8], epoch: u64) -> Descriptor {
        Descriptor {
            id,
            start: start.to_vec(),
            end: end.to_vec(),
            epoch,
            replicas: vec![1, 2, 3],
            learners: vec![],
            conf: 0,
        }
    }

    #[test]
    fn lookups_find_the_range_holding_a_key() {
        let dir = Directory::new([d(1, b"", b"m", 1), d(2, b"m", b"t", 1), d(3, b"t", b"", 1)]).unwrap();
        assert_eq!(dir.lookup(b"").id, 1);
        assert_eq!(dir.lookup(b"a").id, 1);
        assert_eq!(dir.lookup(b"m").id, 2);
        assert_eq!(dir.lookup(b"s\xff").id, 2);
        assert_eq!(dir.lookup(b"t").id, 3);
        assert_eq!(dir.lookup(b"\xff\xff").id, 3);
    }

    #[test]
    fn descriptors_must_tile_the_keyspace() {
        assert_eq!(
            Directory::new([d(1, b"", b"m", 1), d(2, b"n", b"", 1)]).unwrap_err(),
            DirectoryError::Gap { after: 1 }
        );
        assert_eq!(
            Directory::new([d(1, b"", b"n", 1), d(2, b"m", b"", 1)]).unwrap_err(),
            DirectoryError::Overlap { a: 1, b: 2 }
        );
        assert_eq!(Directory::new([d(1, b"a", b"", 1)]).unwrap_err(), DirectoryError::Open);
        assert_eq!(Directory::new([d(1, b"", b"m", 1)]).unwrap_err(), DirectoryError::Open);
        assert_eq!(Directory::new([]).unwrap_err(), DirectoryError::Open);
        assert!(Directory::new([d(1, b"", b"", 1)]).is_ok());
    }

    #[test]
    fn newer_descriptors_replace_what_they_cover() {
        let mut dir = Directory::new([d(1, b"", b"", 1)]).unwrap();
        // Range 1 split at "m": its right half is range 2. Learning only range 2's descriptor
        // routes "m".. to it, and the rest still to range 1.
        assert!(dir.update(d(2, b"m", b"", 2)));
        assert_eq!(dir.lookup(b"a").id, 1);
        assert_eq!(dir.lookup(b"z").id, 2);
        assert!(dir.update(d(1, b"", b"m", 2)));
        assert_eq!(dir.len(), 2);
        // An older descriptor of a range is ignored.
        assert!(!dir.update(d(1, b"", b"", 1)));
        assert_eq!(dir.lookup(b"z").id, 2);
        // A merge: range 1 takes range 2's keys back.
        assert!(dir.update(d(1, b"", b"", 3)));
        assert_eq!(dir.len(), 1);
        assert_eq!(dir.lookup(b"z").id, 1);
        assert!(Directory::new(dir.iter().cloned()).is_ok());
    }

    #[test]
    fn redis_ranges_split_only_at_slot_boundaries() {
        let start = slot_start(0);
        let end = vec![PREFIX_REDIS + 1];
        // A key in the middle of slot 100 splits at slot 100's start.
        let mut k = slot_start(100);
        k.extend_from_slice(b"user:1");
        assert_eq!(split_boundary(&start, &end, &k), Some(slot_start(100)));
        // A key in the range's first slot moves up to the next slot.
        let mut k = slot_start(0);
        k.extend_from_slice(b"a");
        assert_eq!(split_boundary(&start, &end, &k), Some(slot_start(1)));
        // A range of one slot does not split.
        let one = (slot_start(7), slot_start(8));
        let mut k = slot_start(7);
        k.extend_from_slice(b"x");
        assert_eq!(split_boundary(&one.0, &one.1, &k), None);
        // The last slot's next boundary is the prefix's end.
        let last = (slot_start(SLOTS - 2), vec![PREFIX_REDIS + 1]);
        let mut k = slot_start(SLOTS - 2);
        k.extend_from_slice(b"x");
        assert_eq!(split_boundary(&last.0, &last.1, &k), Some(slot_start(SLOTS - 1)));
        // Other prefixes split at the key itself.
        assert_eq!(split_boundary(b"s", b"t", b"s123"), Some(b"s123".to_vec()));
        assert_eq!(split_boundary(b"s", b"t", b"s"), None);
    }

    #[test]
    fn a_range_knows_its_slots() {
        assert_eq!(slots_of(b"", b""), Some((0, SLOTS - 1)));
        assert_eq!(slots_of(&slot_start(0), &slot_start(100)), Some((0, 99)));
        assert_eq!(slots_of(&slot_start(100), &[PREFIX_REDIS + 1]), Some((100, SLOTS - 1)));
        assert_eq!(slots_of(b"a", b"b"), None);
        assert_eq!(slots_of(&[PREFIX_REDIS + 1], b""), None);
        assert_eq!(slots_of(b"", &slot_start(0)), None);
    }

    proptest::proptest! {
        /// Split boundaries always fall strictly inside the range and, under the Redis prefix,
        /// on a slot's start (or the prefix's end).
        #[test]
        fn split_boundaries_are_legal(a in 0u16..SLOTS, len in 1u16..200, pick in 0u16..200, tail in proptest::collection::vec(0u8..=255, 0..4)) {
            let b = (a as u32 + len as u32).min(SLOTS as u32) as u16;
            let start = slot_start(a);
            let end = if b == SLOTS { vec![PREFIX_REDIS + 1] } else { slot_start(b) };
            let s = a + pick % (b - a);
            let mut key = slot_start(s);
            key.extend_from_slice(&tail);
            match split_boundary(&start, &end, &key) {
                Some(at) => {
                    proptest::prop_assert!(at > start && at < end);
                    proptest::prop_assert!(at.len() == 3 && at[0] == PREFIX_REDIS);
                }
                None => proptest::prop_assert_eq!(b - a, 1),
            }
        }
    }
}
