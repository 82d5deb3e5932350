//! etcd's Lease service, and the leader's lessor that decides when leases expire.
//!
//! Every replica knows which leases exist, their granted TTLs and their keys: grants and
//! revocations go through the log (`cairn_state::Op::LeaseGrant` / `LeaseRevoke`). *When* a
//! lease expires is known only to the leader, as in etcd: it keeps an expiry instant per lease
//! (monotonic clock), pushes it forward on every keep-alive, and when one passes it proposes
//! the lease's revocation, which deletes the attached keys on every replica in one revision.
//! Keep-alives and time-to-live queries are therefore answered by the leader (a follower
//! forwards them).
//!
//! Failover: a new leader knows no expiry instants. It gives every lease its full TTL again,
//! counted from when it took over, plus an election timeout (etcd's `Promote(extend)`), so no
//! lease expires early because its leader changed; a lease can at worst live up to one TTL
//! longer than its last keep-alive asked for.
//!
//! A lease whose expiry has passed is not renewed by a late keep-alive (it answers TTL 0, "not
//! found", as etcd): its revocation may already be on its way through the log.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_proto::etcdserverpb as pb;
use cairn_proto::peer::{forward_reply::Response as Fr, forward_request::Request as Fq};
use cairn_state::{Op, Response};
use cairn_types::limits::LEASE_TTL_MAX_SECS;
use cairn_types::Error;
use parking_lot::Mutex;

use crate::kv::unexpected;
use crate::router::Router;

/// How often the leader looks for expired leases.
const EXPIRY_CHECK: Duration = Duration::from_millis(100);
/// Revocations the leader proposes per check at most (etcd revokes up to 1000 per second).
const REVOKES_PER_CHECK: usize = 100;

/// etcd's minimum lease TTL: one and a half election timeouts, in whole seconds, so a lease
/// cannot expire during a normal election.
pub fn min_ttl_secs(election_timeout: Duration) -> i64 {
    ((election_timeout.as_secs_f64() * 1.5).ceil() as i64).max(1)
}

/// The leader's expiry clock for each lease.
///
/// Expiry work is proportional to the leases that expire: instants sit in a min-heap (stale
/// entries, left behind by renewals, are skipped when they surface), each check pops only what
/// is due, and a lease whose revocation is in flight is not proposed again until that one
/// fails. The store's leases are read in full only when this member starts to lead, or when
/// their number differs from the table's (a lease applied that this leader did not grant).
#[derive(Default)]
pub struct Lessor {
    inner: Mutex<LessorState>,
}

#[derive(Default)]
struct LessorState {
    /// The term in which this member leads and these expiries were set; `None` when it does
    /// not lead.
    term: Option<u64>,
    expiries: HashMap<i64, Instant>,
    /// (expiry, lease) for every instant set; an entry whose instant is no longer the lease's
    /// is stale.
    heap: BinaryHeap<Reverse<(Instant, i64)>>,
    /// Leases whose revocation has been proposed and not yet answered.
    revoking: HashSet<i64>,
}

/// What the lessor needs to know of the store's leases.
pub trait LeaseView {
    fn count(&self) -> usize;
    /// Every lease with its TTL (read in full only to resynchronise).
    fn all(&self) -> Vec<(i64, i64)>;
    fn exists(&self, id: i64) -> bool;
}

impl LeaseView for cairn_state::Store {
    fn count(&self) -> usize {
        self.lease_count()
    }
    fn all(&self) -> Vec<(i64, i64)> {
        self.leases()
    }
    fn exists(&self, id: i64) -> bool {
        self.has_lease(id)
    }
}

impl LeaseView for [(i64, i64)] {
    fn count(&self) -> usize {
        self.len()
    }
    fn all(&self) -> Vec<(i64, i64)> {
        self.to_vec()
    }
    fn exists(&self, id: i64) -> bool {
        self.iter().any(|(l, _)| *l == id)
    }
}

impl LessorState {
    /// Starts a new expiry table when this member begins to lead in `term`: instants set in an
    /// earlier term of leadership are stale (other leaders renewed the leases since).
    fn promote(&mut self, term: u64) {
        if self.term != Some(term) {
            self.term = Some(term);
            self.expiries.clear();
            self.heap.clear();
            self.revoking.clear();
        }
    }

    fn set(&mut self, id: i64, at: Instant) {
        self.expiries.insert(id, at);
        self.heap.push(Reverse((at, id)));
    }
}

impl Lessor {
    /// Keeps the expiry table in step with leadership and the store, and returns the leases
    /// whose expiry has passed and whose revocation is not yet in flight (at most
    /// [`REVOKES_PER_CHECK`]); the caller proposes them and reports with [`Lessor::revoked`].
    /// `leading` is the term this member leads in, if it does.
    fn tick<V: LeaseView + ?Sized>(
        &self,
        leading: Option<u64>,
        leases: &V,
        extend: Duration,
        now: Instant,
    ) -> Vec<i64> {
        let mut st = self.inner.lock();
        let Some(term) = leading else {
            *st = LessorState::default();
            return Vec::new();
        };
        st.promote(term);
        if st.expiries.len() != leases.count() {
            // A lease with no expiry in this term is one this leader inherited: its full TTL
            // from now, plus an election timeout. (The only other way to lack one is a grant
            // applied a moment before `granted` records it, which then overrides this.)
            let all = leases.all();
            let live: HashSet<i64> = all.iter().map(|(id, _)| *id).collect();
            st.expiries.retain(|id, _| live.contains(id));
            for (id, ttl) in all {
                if !st.expiries.contains_key(&id) {
                    st.set(id, now + secs(ttl) + extend);
                }
            }
        }
        let mut expired = Vec::new();
        while expired.len() < REVOKES_PER_CHECK {
            let Some(&Reverse((at, id))) = st.heap.peek() else { break };
            if at > now {
                break;
            }
            st.heap.pop();
            if st.expiries.get(&id) != Some(&at) || st.revoking.contains(&id) {
                continue; // renewed since, or already being revoked
            }
            if !leases.exists(id) {
                st.expiries.remove(&id);
                continue;
            }
            st.revoking.insert(id);
            expired.push(id);
        }
        expired
    }

    /// The answer to a revocation proposed by [`Lessor::tick`]: done, or to be proposed again at
    /// the next check.
    fn revoked(&self, id: i64, done: bool) {
        let mut st = self.inner.lock();
        if !st.revoking.remove(&id) {
            return; // leadership changed meanwhile
        }
        if done {
            st.expiries.remove(&id);
        } else if let Some(&at) = st.expiries.get(&id) {
            st.heap.push(Reverse((at, id)));
        }
    }

    /// A keep-alive on the leader of `term`: the lease's new TTL, or 0 if it is unknown or has
    /// expired.
    fn renew(&self, term: u64, id: i64, ttl: Option<i64>, now: Instant) -> i64 {
        let Some(ttl) = ttl else { return 0 };
        let mut st = self.inner.lock();
        st.promote(term);
        match st.expiries.get(&id) {
            Some(e) if *e <= now => 0,
            _ => {
                st.set(id, now + secs(ttl));
                ttl
            }
        }
    }

    /// A grant applied by the leader of `term`: its TTL counts from now.
    fn granted(&self, term: u64, id: i64, ttl: i64, now: Instant) {
        let mut st = self.inner.lock();
        st.promote(term);
        st.set(id, now + secs(ttl));
    }

    /// A lease revoked by a client on the leader of `term`.
    fn forget(&self, term: u64, id: i64) {
        let mut st = self.inner.lock();
        if st.term == Some(term) {
            st.expiries.remove(&id);
        }
    }

    /// Seconds left, rounded up; -1 if the lease has expired; `ttl` if no expiry is set yet.
    fn remaining(&self, id: i64, ttl: i64, now: Instant) -> i64 {
        match self.inner.lock().expiries.get(&id) {
            Some(e) if *e <= now => -1,
            Some(e) => (e.duration_since(now).as_secs_f64().ceil() as i64).max(1),
            None => ttl,
        }
    }
}

fn secs(ttl: i64) -> Duration {
    if cairn_types::faults::bug("lease-ignore-ttl") {
        // The defect (failpoints builds only): leases die long before their holders expect.
        return Duration::from_millis(300);
    }
    Duration::from_secs(ttl.max(0) as u64)
}

/// The leader's expiry loop (one per member; idle unless it leads).
pub(crate) async fn expiry_loop(cluster: std::sync::Weak<Router>) {
    let mut tick = tokio::time::interval(EXPIRY_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(c) = cluster.upgrade() else { return };
        let leading = c.leading_term();
        let extend = c.cfg.election_timeout;
        let expired = c.lessor.tick(leading, &**c.store(), extend, cairn_types::clock::now());
        for id in expired {
            let c = c.clone();
            tokio::spawn(async move {
                let r = c.propose(Op::LeaseRevoke(pb::LeaseRevokeRequest { id }), c.deadline()).await;
                let done = match r {
                    Ok(Response::LeaseRevoke(_)) | Ok(Response::Error(Error::LeaseNotFound)) => {
                        tracing::debug!(lease = format!("{id:x}"), "lease expired and revoked");
                        true
                    }
                    Ok(other) => {
                        tracing::warn!(lease = format!("{id:x}"), response = ?other, "revoking an expired lease");
                        false
                    }
                    Err(e) => {
                        tracing::debug!(lease = format!("{id:x}"), error = %e, "revoking an expired lease failed; will retry");
                        false
                    }
                };
                c.lessor.revoked(id, done);
            });
        }
    }
}

/// etcd's Lease service.
#[derive(Clone)]
pub struct Leases {
    c: Arc<Router>,
}

impl Leases {
    pub fn new(c: Arc<Router>) -> Self {
        Leases { c }
    }

    fn fill(&self, h: &mut Option<pb::ResponseHeader>) {
        let rev = h.as_ref().map_or(0, |h| h.revision);
        *h = Some(self.c.header(rev));
    }

    pub async fn grant(&self, r: pb::LeaseGrantRequest) -> Result<pb::LeaseGrantResponse, Error> {
        if r.ttl > LEASE_TTL_MAX_SECS {
            return Err(Error::LeaseTtlTooLarge);
        }
        let mut resp = self
            .c
            .on_leader(
                || Fq::LeaseGrant(r),
                |d| self.grant_on_leader(r, d),
                |x| match x {
                    Fr::LeaseGrant(p) => Some(p),
                    _ => None,
                },
            )
            .await?;
        self.c.caught_up(resp.header.as_ref().map_or(0, |h| h.revision)).await;
        self.fill(&mut resp.header);
        Ok(resp)
    }

    pub async fn grant_on_leader(
        &self,
        mut r: pb::LeaseGrantRequest,
        deadline: Instant,
    ) -> Result<pb::LeaseGrantResponse, Error> {
        if r.ttl > LEASE_TTL_MAX_SECS {
            return Err(Error::LeaseTtlTooLarge);
        }
        // etcd grants at least the minimum TTL rather than refusing a shorter one.
        r.ttl = r.ttl.max(min_ttl_secs(self.c.cfg.election_timeout));
        let pick = r.id == 0;
        for _ in 0..8 {
            if pick {
                // A random positive ID; a collision is refused by apply and retried.
                r.id = (rand_u64() >> 1).max(1) as i64;
            }
            match self.c.propose(Op::LeaseGrant(r), deadline).await? {
                Response::LeaseGrant(g) => {
                    if let Some(term) = self.c.leading_term() {
                        self.c.lessor.granted(term, g.id, g.ttl, cairn_types::clock::now());
                    }
                    return Ok(g);
                }
                Response::Error(Error::LeaseExist) if pick => continue,
                Response::Error(e) => return Err(e),
                other => return Err(unexpected(other)),
            }
        }
        Err(Error::LeaseExist)
    }

    pub async fn revoke(&self, r: pb::LeaseRevokeRequest) -> Result<pb::LeaseRevokeResponse, Error> {
        let mut resp = self
            .c
            .on_leader(
                || Fq::LeaseRevoke(r),
                |d| self.revoke_on_leader(r, d),
                |x| match x {
                    Fr::LeaseRevoke(p) => Some(p),
                    _ => None,
                },
            )
            .await?;
        self.c.caught_up(resp.header.as_ref().map_or(0, |h| h.revision)).await;
        self.fill(&mut resp.header);
        Ok(resp)
    }

    pub async fn revoke_on_leader(
        &self,
        r: pb::LeaseRevokeRequest,
        deadline: Instant,
    ) -> Result<pb::LeaseRevokeResponse, Error> {
        let id = r.id;
        match self.c.propose(Op::LeaseRevoke(r), deadline).await? {
            Response::LeaseRevoke(p) => {
                if let Some(term) = self.c.leading_term() {
                    self.c.lessor.forget(term, id);
                }
                Ok(p)
            }
            Response::Error(e) => Err(e),
            other => Err(unexpected(other)),
        }
    }

    /// One keep-alive: the lease's TTL after renewal, or 0 if it does not exist (any more).
    pub async fn keep_alive(&self, r: pb::LeaseKeepAliveRequest) -> Result<pb::LeaseKeepAliveResponse, Error> {
        let mut resp = self
            .c
            .on_leader_idempotent(
                || Fq::LeaseKeepAlive(r),
                |_| self.keep_alive_on_leader(r),
                |x| match x {
                    Fr::LeaseKeepAlive(p) => Some(p),
                    _ => None,
                },
            )
            .await?;
        self.fill(&mut resp.header);
        Ok(resp)
    }

    pub async fn keep_alive_on_leader(
        &self,
        r: pb::LeaseKeepAliveRequest,
    ) -> Result<pb::LeaseKeepAliveResponse, Error> {
        // The store must have applied everything committed: a lease granted a moment ago (its
        // grant committed, perhaps not yet applied here) must be found.
        self.c.read_barrier().await?;
        let term = self.c.leading_term().ok_or(Error::NotLeader)?;
        let store = self.c.store();
        let ttl = store.lease(r.id).map(|l| l.ttl);
        let ttl = self.c.lessor.renew(term, r.id, ttl, cairn_types::clock::now());
        let header = Some(pb::ResponseHeader { revision: store.current_revision(), ..Default::default() });
        Ok(pb::LeaseKeepAliveResponse { header, id: r.id, ttl })
    }

    pub async fn time_to_live(&self, r: pb::LeaseTimeToLiveRequest) -> Result<pb::LeaseTimeToLiveResponse, Error> {
        let mut resp = self
            .c
            .on_leader_idempotent(
                || Fq::LeaseTimeToLive(r),
                |_| self.time_to_live_on_leader(r),
                |x| match x {
                    Fr::LeaseTimeToLive(p) => Some(p),
                    _ => None,
                },
            )
            .await?;
        self.fill(&mut resp.header);
        Ok(resp)
    }

    pub async fn time_to_live_on_leader(
        &self,
        r: pb::LeaseTimeToLiveRequest,
    ) -> Result<pb::LeaseTimeToLiveResponse, Error> {
        self.c.read_barrier().await?;
        let store = self.c.store();
        let header = Some(pb::ResponseHeader { revision: store.current_revision(), ..Default::default() });
        // etcd: an unknown (or expired and revoked) lease answers TTL -1, not an error.
        let Some(l) = store.lease(r.id) else {
            return Ok(pb::LeaseTimeToLiveResponse { header, id: r.id, ttl: -1, granted_ttl: 0, keys: vec![] });
        };
        let ttl = self.c.lessor.remaining(r.id, l.ttl, cairn_types::clock::now());
        let keys = if r.keys { l.keys.into_iter().collect() } else { Vec::new() };
        Ok(pb::LeaseTimeToLiveResponse { header, id: r.id, ttl, granted_ttl: l.ttl, keys })
    }

    /// Every lease (a linearizable read of this member's state).
    pub async fn leases(&self) -> Result<pb::LeaseLeasesResponse, Error> {
        self.c.read_barrier().await?;
        let store = self.c.store();
        let leases = store.leases().into_iter().map(|(id, _)| pb::LeaseStatus { id }).collect();
        let mut resp = pb::LeaseLeasesResponse {
            header: Some(pb::ResponseHeader { revision: store.current_revision(), ..Default::default() }),
            leases,
        };
        self.fill(&mut resp.header);
        Ok(resp)
    }
}

/// A random u64 for lease IDs (from the OS's hasher seed: no RNG crate needed for this).
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_ttl_follows_etcd() {
        // etcd's defaults (1 s election timeout): 1.5 s, rounded up.
        assert_eq!(min_ttl_secs(Duration::from_millis(1000)), 2);
        assert_eq!(min_ttl_secs(Duration::from_millis(500)), 1);
        assert_eq!(min_ttl_secs(Duration::from_millis(5000)), 8);
    }

    #[test]
    fn lessor_expires_refreshes_on_promotion_and_never_renews_the_expired() {
        let l = Lessor::default();
        let t0 = Instant::now();
        let extend = Duration::from_millis(500);
        // Not leading: nothing expires, nothing is tracked.
        assert!(l.tick(None, &[(1, 5)][..], extend, t0).is_empty());
        // Promoted at t0: TTL + extend from now.
        assert!(l.tick(Some(3), &[(1, 5)][..], extend, t0).is_empty());
        assert!(l.tick(Some(3), &[(1, 5)][..], extend, t0 + Duration::from_millis(5400)).is_empty());
        assert_eq!(l.tick(Some(3), &[(1, 5)][..], extend, t0 + Duration::from_millis(5600)), vec![1]);
        // A keep-alive after expiry does not resurrect it.
        assert_eq!(l.renew(3, 1, Some(5), t0 + Duration::from_millis(5700)), 0);
        assert_eq!(l.remaining(1, 5, t0 + Duration::from_millis(5700)), -1);
        // A new term (another promotion) starts the clock again.
        assert!(l.tick(Some(4), &[(1, 5)][..], extend, t0 + Duration::from_secs(6)).is_empty());
        assert_eq!(l.remaining(1, 5, t0 + Duration::from_secs(6)), 6);
        // Renewals push expiry forward.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(l.renew(4, 1, Some(5), t1), 5);
        assert!(l.tick(Some(4), &[(1, 5)][..], extend, t1 + Duration::from_millis(4900)).is_empty());
        // A lease gone from the store is forgotten; an unknown one renews to 0.
        assert!(l.tick(Some(4), &[][..], extend, t1).is_empty());
        assert_eq!(l.renew(4, 1, None, t1), 0);
        // Losing leadership forgets everything.
        l.granted(4, 2, 5, t1);
        l.tick(None, &[(2, 5)][..], extend, t1);
        assert_eq!(l.remaining(2, 5, t1), 5, "no expiry known: the full TTL");
    }

    #[test]
    fn a_grant_in_a_new_term_before_the_first_tick_gets_no_extension() {
        let l = Lessor::default();
        let t0 = Instant::now();
        let extend = Duration::from_secs(1);
        // Leading in term 7 already, but the expiry loop has not ticked yet.
        l.granted(7, 1, 30, t0);
        assert!(l.tick(Some(7), &[(1, 30), (2, 30)][..], extend, t0).is_empty());
        assert_eq!(l.remaining(1, 30, t0), 30);
        // The inherited lease gets the extension.
        assert_eq!(l.remaining(2, 30, t0), 31);
        // A keep-alive in a later term drops the stale instants of the earlier one.
        assert_eq!(l.renew(9, 2, Some(30), t0 + Duration::from_secs(40)), 30);
        assert_eq!(l.remaining(1, 30, t0 + Duration::from_secs(40)), 30, "term 7's expired instant is gone");
    }

    #[test]
    fn one_revocation_in_flight_per_lease_and_renewals_leave_stale_entries_behind() {
        let l = Lessor::default();
        let t0 = Instant::now();
        let no = Duration::ZERO;
        let leases = [(1, 5), (2, 5), (3, 5)];
        assert!(l.tick(Some(1), &leases[..], no, t0).is_empty());
        // Lease 2 is renewed twice: its old heap entries are stale.
        l.renew(1, 2, Some(5), t0 + Duration::from_secs(2));
        l.renew(1, 2, Some(5), t0 + Duration::from_secs(3));
        let t = t0 + Duration::from_secs(6);
        assert_eq!(l.tick(Some(1), &leases[..], no, t), vec![1, 3]);
        // In flight: not proposed again.
        assert!(l.tick(Some(1), &leases[..], no, t + Duration::from_millis(100)).is_empty());
        // Lease 1's revocation failed: proposed again at the next check; 3's succeeded.
        l.revoked(1, false);
        l.revoked(3, true);
        let left = [(1, 5), (2, 5)];
        assert_eq!(l.tick(Some(1), &left[..], no, t + Duration::from_millis(200)), vec![1]);
        // Lease 2 expires at its last renewal + 5 s, once.
        assert_eq!(l.tick(Some(1), &left[..], no, t0 + Duration::from_millis(8100)), vec![2]);
        assert!(l.inner.lock().heap.len() <= 2, "stale entries are dropped as they surface");
    }
}
