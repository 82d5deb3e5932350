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

use std::collections::HashMap;
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
}

impl LessorState {
    /// Starts a new expiry table when this member begins to lead in `term`: instants set in an
    /// earlier term of leadership are stale (other leaders renewed the leases since).
    fn promote(&mut self, term: u64) {
        if self.term != Some(term) {
            self.term = Some(term);
            self.expiries.clear();
        }
    }
}

impl Lessor {
    /// Keeps the expiry table in step with leadership and the store, and returns the leases
    /// whose expiry has passed. `leading` is the term this member leads in, if it does.
    fn tick(&self, leading: Option<u64>, leases: &[(i64, i64)], extend: Duration, now: Instant) -> Vec<i64> {
        let mut st = self.inner.lock();
        let Some(term) = leading else {
            st.term = None;
            st.expiries.clear();
            return Vec::new();
        };
        st.promote(term);
        // A lease with no expiry in this term is one this leader inherited: its full TTL from
        // now, plus an election timeout. (The only other way to lack one is a grant applied a
        // moment before `granted` records it, which then overrides this.)
        let mut live = HashMap::with_capacity(leases.len());
        for &(id, ttl) in leases {
            let e = st.expiries.get(&id).copied().unwrap_or_else(|| now + secs(ttl) + extend);
            live.insert(id, e);
        }
        st.expiries = live;
        let mut expired: Vec<i64> = st.expiries.iter().filter(|(_, e)| **e <= now).map(|(id, _)| *id).collect();
        expired.sort_unstable();
        expired.truncate(REVOKES_PER_CHECK);
        expired
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
                st.expiries.insert(id, now + secs(ttl));
                ttl
            }
        }
    }

    /// A grant applied by the leader of `term`: its TTL counts from now.
    fn granted(&self, term: u64, id: i64, ttl: i64, now: Instant) {
        let mut st = self.inner.lock();
        st.promote(term);
        st.expiries.insert(id, now + secs(ttl));
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
        let leases = c.store().leases();
        let expired = c.lessor.tick(leading, &leases, extend, Instant::now());
        for id in expired {
            let c = c.clone();
            tokio::spawn(async move {
                let r = c.propose(Op::LeaseRevoke(pb::LeaseRevokeRequest { id }), c.deadline()).await;
                match r {
                    Ok(Response::LeaseRevoke(_)) | Ok(Response::Error(Error::LeaseNotFound)) => {
                        tracing::debug!(lease = format!("{id:x}"), "lease expired and revoked")
                    }
                    Ok(other) => {
                        tracing::warn!(lease = format!("{id:x}"), response = ?other, "revoking an expired lease")
                    }
                    Err(e) => {
                        tracing::debug!(lease = format!("{id:x}"), error = %e, "revoking an expired lease failed; will retry")
                    }
                }
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
                        self.c.lessor.granted(term, g.id, g.ttl, Instant::now());
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
        match self.c.propose(Op::LeaseRevoke(r), deadline).await? {
            Response::LeaseRevoke(p) => Ok(p),
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
        let ttl = self.c.lessor.renew(term, r.id, ttl, Instant::now());
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
        let ttl = self.c.lessor.remaining(r.id, l.ttl, Instant::now());
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
        assert!(l.tick(None, &[(1, 5)], extend, t0).is_empty());
        // Promoted at t0: TTL + extend from now.
        assert!(l.tick(Some(3), &[(1, 5)], extend, t0).is_empty());
        assert!(l.tick(Some(3), &[(1, 5)], extend, t0 + Duration::from_millis(5400)).is_empty());
        assert_eq!(l.tick(Some(3), &[(1, 5)], extend, t0 + Duration::from_millis(5600)), vec![1]);
        // A keep-alive after expiry does not resurrect it.
        assert_eq!(l.renew(3, 1, Some(5), t0 + Duration::from_millis(5700)), 0);
        assert_eq!(l.remaining(1, 5, t0 + Duration::from_millis(5700)), -1);
        // A new term (another promotion) starts the clock again.
        assert!(l.tick(Some(4), &[(1, 5)], extend, t0 + Duration::from_secs(6)).is_empty());
        assert_eq!(l.remaining(1, 5, t0 + Duration::from_secs(6)), 6);
        // Renewals push expiry forward.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(l.renew(4, 1, Some(5), t1), 5);
        assert!(l.tick(Some(4), &[(1, 5)], extend, t1 + Duration::from_millis(4900)).is_empty());
        // A lease gone from the store is forgotten; an unknown one renews to 0.
        assert!(l.tick(Some(4), &[], extend, t1).is_empty());
        assert_eq!(l.renew(4, 1, None, t1), 0);
        // Losing leadership forgets everything.
        l.granted(4, 2, 5, t1);
        l.tick(None, &[(2, 5)], extend, t1);
        assert_eq!(l.remaining(2, 5, t1), 5, "no expiry known: the full TTL");
    }

    #[test]
    fn a_grant_in_a_new_term_before_the_first_tick_gets_no_extension() {
        let l = Lessor::default();
        let t0 = Instant::now();
        let extend = Duration::from_secs(1);
        // Leading in term 7 already, but the expiry loop has not ticked yet.
        l.granted(7, 1, 30, t0);
        assert!(l.tick(Some(7), &[(1, 30), (2, 30)], extend, t0).is_empty());
        assert_eq!(l.remaining(1, 30, t0), 30);
        // The inherited lease gets the extension.
        assert_eq!(l.remaining(2, 30, t0), 31);
        // A keep-alive in a later term drops the stale instants of the earlier one.
        assert_eq!(l.renew(9, 2, Some(30), t0 + Duration::from_secs(40)), 30);
        assert_eq!(l.remaining(1, 30, t0 + Duration::from_secs(40)), 30, "term 7's expired instant is gone");
    }
}
