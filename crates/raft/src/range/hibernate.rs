//! Hibernation: a range that does nothing costs nothing.
//!
//! Every range is its own Raft group, and a Raft group left alone still heartbeats: its leader
//! sends one message per follower per heartbeat interval, and every replica runs a timer. With
//! a thousand ranges per node that is thousands of messages and wakeups a second for no work
//! (TiKV's 30,000 regions per store burn a CPU this way). So:
//!
//! - **One beat per node pair.** Every heartbeat interval ([`beat_every`]) each node sends each node it shares a
//!   range with one small message ([`Beat`]) naming the ranges it leads that the peer holds a
//!   replica of. That is the liveness signal for all of them at once.
//! - **Followers do not tick** while their leader's node beats and names the range: a follower
//!   needs its election timer only when its leader is gone, and the beat says it is not. Once
//!   the leader's node is silent for [`silent_after`] (or stops naming the range: it lost
//!   leadership, or its group stopped), the follower's timer starts again and it elects as
//!   usual.
//! - **Idle leaders do not tick**: a leader with no client request for [`IDLE_AFTER`], whose
//!   followers all hold its whole log and whose membership is not changing, stops its timer
//!   and so its heartbeats. A request wakes it at once. Nothing else needs its timer: writes
//!   replicate as they come, and a read under a lapsed lease sends its own heartbeat round.
//! - **A node coming back** (a beat after silence) wakes the ranges led here that it holds a
//!   replica of, so their heartbeats tell its replicas who leads before their election timers
//!   run out.
//!
//! Safety does not rest on any of this: stopping a timer only ever delays an election, and
//! every vote and append is still checked by Raft. The beat decides liveness only.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::range::types::RangeId;

/// How long a range leader waits without a client request before it stops ticking.
pub const IDLE_AFTER: Duration = Duration::from_secs(2);

/// How long a node may go unheard before its ranges' followers elect: the groups' longest
/// election timeout (openraft's leader lease), so a follower wakes no sooner than an
/// unhibernated one would start to count down.
pub fn silent_after(election_timeout_max_ms: u64) -> Duration {
    Duration::from_millis(election_timeout_max_ms)
}

/// The beat a node sends each node it shares a range with.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Beat {
    /// The sending node.
    pub from: u64,
    /// The ranges the sender leads that the receiver holds a replica of.
    pub leading: Vec<RangeId>,
}

/// What this node last heard from one peer.
struct Heard {
    at: Instant,
    leading: HashSet<RangeId>,
}

/// The beats this node has heard, by node.
#[derive(Default)]
pub struct Liveness {
    heard: Mutex<HashMap<u64, Heard>>,
}

impl Liveness {
    /// Records `beat` heard at `now`. True when its sender was silent before (or never heard):
    /// the ranges led here that it holds should heartbeat now.
    pub fn record(&self, beat: Beat, now: Instant, silent: Duration) -> bool {
        let mut heard = self.heard.lock();
        let back = heard.get(&beat.from).is_none_or(|h| now.saturating_duration_since(h.at) >= silent);
        heard.insert(beat.from, Heard { at: now, leading: beat.leading.into_iter().collect() });
        back
    }

    /// Whether node `leader` beat within `silent` of `now` and named `range` as one it leads.
    pub fn vouches(&self, leader: u64, range: RangeId, now: Instant, silent: Duration) -> bool {
        self.heard
            .lock()
            .get(&leader)
            .is_some_and(|h| now.saturating_duration_since(h.at) < silent && h.leading.contains(&range))
    }
}

/// One replica as the hibernation pass sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// It leads the range.
    Leader {
        /// No client request for [`IDLE_AFTER`], and nothing asked it to stay awake.
        idle: bool,
        /// Every other replica holds its whole log, and its membership is not changing.
        settled: bool,
    },
    /// It follows (or learns from) `leader`, which `vouched` for the range by beat.
    Follower { vouched: bool },
    /// A candidate, or a replica that knows no leader.
    Other,
}

/// Whether a replica in `role` may stop its Raft timer.
pub fn may_sleep(role: Role) -> bool {
    match role {
        Role::Leader { idle, settled } => idle && settled,
        Role::Follower { vouched } => vouched,
        Role::Other => false,
    }
}

/// How often a node beats to its peers, and the hibernation pass runs: the ranges' heartbeat
/// interval.
pub fn beat_every(heartbeat_ms: u64) -> Duration {
    Duration::from_millis(heartbeat_ms.max(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follower_sleeps_only_while_its_leader_beats_and_names_the_range() {
        let l = Liveness::default();
        let t0 = Instant::now();
        let silent = Duration::from_millis(750);
        assert!(!l.vouches(2, 7, t0, silent), "never heard");
        assert!(l.record(Beat { from: 2, leading: vec![7, 9] }, t0, silent), "first beat: the node is back");
        assert!(l.vouches(2, 7, t0 + Duration::from_millis(700), silent));
        assert!(!l.vouches(2, 8, t0, silent), "a range it does not lead");
        assert!(!l.vouches(2, 7, t0 + silent, silent), "silent too long");
        assert!(!l.record(Beat { from: 2, leading: vec![9] }, t0 + Duration::from_millis(100), silent));
        assert!(!l.vouches(2, 7, t0 + Duration::from_millis(200), silent), "it stopped naming range 7");
        assert!(
            l.record(Beat { from: 2, leading: vec![7] }, t0 + Duration::from_secs(5), silent),
            "back after silence"
        );
    }

    #[test]
    fn leaders_sleep_only_when_idle_and_settled_and_others_never() {
        assert!(may_sleep(Role::Leader { idle: true, settled: true }));
        assert!(!may_sleep(Role::Leader { idle: false, settled: true }));
        assert!(!may_sleep(Role::Leader { idle: true, settled: false }));
        assert!(may_sleep(Role::Follower { vouched: true }));
        assert!(!may_sleep(Role::Follower { vouched: false }));
        assert!(!may_sleep(Role::Other));
    }
}
