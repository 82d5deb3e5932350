//! A uniform sample of the keys a range's requests touched: where a split by load should cut
//! (`cairn_cluster::directory::load_split_boundary`). CockroachDB's load-based splitter
//! samples its request spans the same way.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Keys kept per window.
pub const LOAD_SAMPLES: usize = 64;

/// Up to [`LOAD_SAMPLES`] keys, each request of the window equally likely to be among them
/// (Vitter's algorithm R). Past the first [`LOAD_SAMPLES`] requests, a request's key is only
/// asked for when it takes a sample's place, which gets rarer as the window fills: a hot
/// range decodes a few hundred of its requests' keys per window, not all of them.
pub struct KeySample {
    seen: u64,
    /// A slot holds `None` when the request sampled there named no key (a SCAN): it still
    /// takes its share of the sample, or a key it replaced would be over-weighted.
    keys: Vec<Option<Vec<u8>>>,
    rng: StdRng,
}

impl Default for KeySample {
    fn default() -> Self {
        KeySample::seeded(rand::random())
    }
}

impl KeySample {
    /// A sample whose choices follow `seed` (tests).
    pub fn seeded(seed: u64) -> KeySample {
        KeySample { seen: 0, keys: Vec::new(), rng: StdRng::seed_from_u64(seed) }
    }

    /// Counts one request; `key` gives its key if it is sampled (`None`: it names none). The
    /// caller may hold a lock: `key` runs for a few hundred requests per window (see above).
    pub fn offer(&mut self, key: impl FnOnce() -> Option<Vec<u8>>) {
        self.seen += 1;
        let at = if self.keys.len() < LOAD_SAMPLES {
            self.keys.len()
        } else {
            match self.rng.random_range(0..self.seen) {
                j if j < LOAD_SAMPLES as u64 => j as usize,
                _ => return,
            }
        };
        let k = key();
        if at == self.keys.len() {
            self.keys.push(k);
        } else {
            self.keys[at] = k;
        }
    }

    /// The keys sampled in this window.
    pub fn keys(&self) -> impl Iterator<Item = &Vec<u8>> {
        self.keys.iter().flatten()
    }

    /// The keys sampled, and a new window begun.
    pub fn take(&mut self) -> Vec<Vec<u8>> {
        self.seen = 0;
        std::mem::take(&mut self.keys).into_iter().flatten().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_is_bounded_and_follows_the_load() {
        let mut s = KeySample::seeded(7);
        let mut asked = 0;
        for i in 0..100_000u32 {
            // The first half of the window on key "a", the second on keys of their own: a
            // sample that kept its first keys would hold "a" only.
            let key = if i < 50_000 { b"a".to_vec() } else { i.to_be_bytes().to_vec() };
            s.offer(|| {
                asked += 1;
                Some(key)
            });
        }
        assert_eq!(s.keys().count(), LOAD_SAMPLES);
        let a = s.keys().filter(|k| k.as_slice() == b"a").count();
        assert!((16..=48).contains(&a), "{a} of {LOAD_SAMPLES} samples on the key with half the load");
        // About LOAD_SAMPLES * (1 + ln(100_000 / LOAD_SAMPLES)) keys decoded, not 100,000.
        assert!(asked < 1_000, "{asked} keys asked for");
        assert_eq!(s.take().len(), LOAD_SAMPLES);
        assert_eq!(s.keys().count(), 0);
        // A new window fills from its own requests.
        s.offer(|| Some(b"b".to_vec()));
        s.offer(|| None);
        assert_eq!(s.keys().collect::<Vec<_>>(), [&b"b".to_vec()]);
    }

    #[test]
    fn requests_that_name_no_key_take_their_share_of_the_sample() {
        // One request in two names no key (a SCAN): about half the slots hold none. A sample
        // that kept the replaced key in such a slot would fill with keys again.
        let mut s = KeySample::seeded(11);
        for i in 0..100_000u32 {
            s.offer(|| (i % 2 == 0).then(|| i.to_be_bytes().to_vec()));
        }
        let keyed = s.keys().count();
        assert!((16..=48).contains(&keyed), "{keyed} of {LOAD_SAMPLES} slots hold a key");
    }
}
