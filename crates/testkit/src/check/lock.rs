//! The lock workload's checker: fenced critical sections.
//!
//! Clients take a lock (etcd's Lock service, with a lease they keep alive), learn their fencing
//! token (the lock key's create revision), write a shared key with fenced Txns (compare the lock
//! key's create revision with the token), and unlock. Two properties are checked:
//!
//! - **Mutual exclusion**: no two critical sections overlap in time. A section runs from the
//!   moment its Lock call returned to the moment its client invoked Unlock; every time is read
//!   from the harness's one monotonic clock. With a correct lock, the next holder's Lock can only
//!   return after the previous key was deleted, which happens after its Unlock was invoked (or
//!   after its lease expired — which a client that keeps renewing in time never lets happen).
//! - **Fencing**: the shared key's versions, read back in revision order after the run, carry
//!   non-decreasing tokens: a write with an older token never lands after a newer one. This holds
//!   even when the lock itself fails, which is the point of fencing.

use serde::{Deserialize, Serialize};

/// One critical section.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Hold {
    pub client: u64,
    /// The lock key's create revision.
    pub token: i64,
    /// Milliseconds since the run started: when Lock returned.
    pub acquired_ms: u64,
    /// When Unlock was invoked (or the client gave the section up).
    pub released_ms: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LockHistory {
    pub holds: Vec<Hold>,
    /// Fenced writes: (token, outcome).
    pub writes: Vec<(i64, FencedOutcome)>,
    /// The shared key's tokens, in revision order, read after the run.
    pub data: Vec<i64>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum FencedOutcome {
    /// The Txn's compare held: written.
    Written,
    /// The compare failed: the lock key was gone (the lock was lost).
    Fenced,
    Failed,
    Unknown,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum LockAnomaly {
    /// Two critical sections overlapped.
    Overlap { a: Hold, b: Hold },
    /// The shared key took an older token after a newer one.
    FenceInversion { index: usize, before: i64, after: i64 },
    /// Two sections got the same token.
    DuplicateToken { token: i64 },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockReport {
    pub holds: usize,
    pub written: usize,
    pub fenced: usize,
    pub anomalies: Vec<LockAnomaly>,
}

impl std::fmt::Display for LockReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "lock: {} critical sections, {} fenced writes landed, {} refused by the fence, {} anomalies",
            self.holds,
            self.written,
            self.fenced,
            self.anomalies.len()
        )?;
        for a in self.anomalies.iter().take(20) {
            match a {
                LockAnomaly::Overlap { a, b } => writeln!(
                    f,
                    "  overlap: client {} held token {} during {}..{} ms, client {} held token {} during {}..{} ms",
                    a.client, a.token, a.acquired_ms, a.released_ms, b.client, b.token, b.acquired_ms, b.released_ms
                )?,
                LockAnomaly::FenceInversion { index, before, after } => {
                    writeln!(f, "  fence inversion: version {index} of the data has token {after} after {before}")?
                }
                LockAnomaly::DuplicateToken { token } => writeln!(f, "  token {token} was handed out twice")?,
            }
        }
        Ok(())
    }
}

pub fn check_lock(h: &LockHistory) -> LockReport {
    let mut anomalies = Vec::new();
    let mut holds = h.holds.clone();
    holds.sort_by_key(|x| (x.acquired_ms, x.token));
    for (i, a) in holds.iter().enumerate() {
        for b in &holds[i + 1..] {
            if b.acquired_ms >= a.released_ms {
                break;
            }
            anomalies.push(LockAnomaly::Overlap { a: a.clone(), b: b.clone() });
        }
    }
    let mut tokens: Vec<i64> = holds.iter().map(|x| x.token).collect();
    tokens.sort_unstable();
    for w in tokens.windows(2) {
        if w[0] == w[1] {
            anomalies.push(LockAnomaly::DuplicateToken { token: w[0] });
        }
    }
    for (i, w) in h.data.windows(2).enumerate() {
        if w[1] < w[0] {
            anomalies.push(LockAnomaly::FenceInversion { index: i + 1, before: w[0], after: w[1] });
        }
    }
    LockReport {
        holds: holds.len(),
        written: h.writes.iter().filter(|(_, o)| *o == FencedOutcome::Written).count(),
        fenced: h.writes.iter().filter(|(_, o)| *o == FencedOutcome::Fenced).count(),
        anomalies,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(client: u64, token: i64, a: u64, r: u64) -> Hold {
        Hold { client, token, acquired_ms: a, released_ms: r }
    }

    #[test]
    fn sequential_sections_and_growing_tokens_pass() {
        let h = LockHistory {
            holds: vec![hold(1, 5, 0, 100), hold(2, 9, 101, 200), hold(1, 12, 250, 300)],
            writes: vec![(5, FencedOutcome::Written), (9, FencedOutcome::Written), (3, FencedOutcome::Fenced)],
            data: vec![5, 5, 9, 12],
        };
        let r = check_lock(&h);
        assert!(r.anomalies.is_empty(), "{r}");
        assert_eq!((r.holds, r.written, r.fenced), (3, 2, 1));
    }

    #[test]
    fn overlapping_sections_are_caught() {
        let h = LockHistory {
            holds: vec![hold(1, 5, 0, 100), hold(2, 9, 60, 200), hold(3, 20, 300, 400)],
            ..Default::default()
        };
        let r = check_lock(&h);
        assert_eq!(r.anomalies, vec![LockAnomaly::Overlap { a: hold(1, 5, 0, 100), b: hold(2, 9, 60, 200) }]);
    }

    #[test]
    fn a_section_inside_another_is_caught_even_when_not_adjacent() {
        let h = LockHistory {
            holds: vec![hold(1, 5, 0, 1000), hold(2, 9, 100, 200), hold(3, 12, 300, 400)],
            ..Default::default()
        };
        assert_eq!(check_lock(&h).anomalies.len(), 2);
    }

    #[test]
    fn fence_inversions_and_duplicate_tokens_are_caught() {
        let h =
            LockHistory { holds: vec![hold(1, 5, 0, 10), hold(2, 5, 20, 30)], writes: vec![], data: vec![5, 9, 7, 9] };
        let r = check_lock(&h);
        assert!(r.anomalies.contains(&LockAnomaly::DuplicateToken { token: 5 }));
        assert!(r.anomalies.contains(&LockAnomaly::FenceInversion { index: 2, before: 9, after: 7 }));
        assert_eq!(r.anomalies.len(), 2);
    }
}
