//! Requests forwarded to this member by others, run here only if this member leads.
//!
//! **Who asks.** A forwarded request names the client it runs for (`auth_user`, checked by the
//! forwarding member at `auth_revision`), and the leader proposes its writes guarded by them
//! (`Op::Guarded`). Those are plain fields: anyone who reaches the peer port could write them.
//! So the leader believes them only from a member that authenticated itself with a TLS client
//! certificate (`--peer-client-cert-auth`); from any other connection it checks the request as
//! if the client had called it directly: the client's token (`auth_token`, signed with the
//! cluster's auth secret) must prove that user, the user must have the request's permissions in
//! the leader's auth store, and the write is guarded by the leader's auth revision. A request that would write and names no client at
//! all is refused rather than proposed unguarded; only what members send on their own behalf
//! (read indexes, their published attributes, raising an alarm) and lease keep-alives (which
//! etcd does not check either) go without.

use std::sync::Arc;

use cairn_proto::peer::{
    forward_reply::Response as Fr, forward_request::Request as Fq, ClusterInfoReply, ForwardReply, ForwardRequest,
    ReadIndexReply, SetMemberAttrsReply,
};
use cairn_raft::{PeerHandler, Sender};
use cairn_state::{validate, MemberAttrs, Op};
use cairn_types::Error;
use tonic::Status;

use crate::access::Access;
use crate::auth::Guard;
use crate::kv::Kv;
use crate::lease::Leases;
use crate::maintenance::Maintenance;
use crate::members::Members;
use crate::router::Router;

/// The gRPC status for an error: etcd's code and message (the one mapping table lives in
/// `cairn_types::Error::to_etcd`).
pub fn status(e: Error) -> Status {
    let (code, msg) = e.to_etcd();
    Status::new(tonic::Code::from_i32(code), msg)
}

pub struct Forwarded {
    c: Arc<Router>,
}

impl Forwarded {
    pub fn new(c: Arc<Router>) -> Self {
        Forwarded { c }
    }

    async fn run(&self, req: Fq) -> Result<Fr, Error> {
        if !self.c.is_leader() {
            return Err(Error::NotLeader);
        }
        let d = self.c.deadline();
        let kv = Kv::new(self.c.clone());
        let members = Members::new(self.c.clone());
        let limits = self.c.limits();
        Ok(match req {
            Fq::Range(_) => return Err(Error::Internal("ranges are not forwarded".into())),
            Fq::ReadIndex(_) => {
                let log_id = self.c.local_read_index().await?;
                Fr::ReadIndex(ReadIndexReply { log_id: postcard::to_allocvec(&log_id).expect("serializable").into() })
            }
            Fq::Put(r) => {
                validate::put(&r, limits)?;
                Fr::Put(kv.put_on_leader(r, d).await?)
            }
            Fq::DeleteRange(r) => {
                validate::delete_range(&r, limits)?;
                Fr::DeleteRange(kv.delete_on_leader(r, d).await?)
            }
            Fq::Txn(r) => {
                validate::txn(&r, limits)?;
                Fr::Txn(kv.txn_on_leader(r, d).await?)
            }
            Fq::Compact(r) => Fr::Compact(kv.compact_on_leader(r, d).await?),
            Fq::Alarm(r) => Fr::Alarm(Maintenance::new(self.c.clone()).alarm_on_leader(r, d).await?),
            Fq::LeaseGrant(r) => Fr::LeaseGrant(Leases::new(self.c.clone()).grant_on_leader(r, d).await?),
            Fq::LeaseRevoke(r) => Fr::LeaseRevoke(Leases::new(self.c.clone()).revoke_on_leader(r, d).await?),
            Fq::LeaseKeepAlive(r) => Fr::LeaseKeepAlive(Leases::new(self.c.clone()).keep_alive_on_leader(r).await?),
            Fq::LeaseTimeToLive(r) => Fr::LeaseTimeToLive(Leases::new(self.c.clone()).time_to_live_on_leader(r).await?),
            Fq::MemberAdd(r) => Fr::MemberAdd(members.add_on_leader(r).await?),
            Fq::MemberRemove(r) => Fr::MemberRemove(members.remove_on_leader(r).await?),
            Fq::MemberUpdate(r) => Fr::MemberUpdate(members.update_on_leader(r).await?),
            Fq::MemberPromote(r) => Fr::MemberPromote(members.promote_on_leader(r).await?),
            Fq::Propose(b) => {
                let op: Op =
                    postcard::from_bytes(&b).map_err(|e| Error::Internal(format!("forwarded proposal: {e}")))?;
                // Auth changes (checked by the guard like any client request), and the data
                // tier's directory changes, which members make on their own behalf (node
                // records, what the ranges they lead have become, range id reservations) and
                // which the meta group checks itself (compare-and-swap on epochs, tiling).
                if !matches!(op, Op::Auth(_) | Op::Directory(_)) {
                    return Err(Error::Internal(
                        "only auth changes and directory changes are forwarded as proposals".into(),
                    ));
                }
                let r = self.c.propose(op, d).await?;
                Fr::Proposed(postcard::to_allocvec(&r).expect("serializable").into())
            }
            Fq::SetMemberAttrs(a) => {
                let attrs = MemberAttrs { name: a.name, client_urls: a.client_urls };
                self.c.propose(Op::SetMemberAttrs { id: a.id, attrs }, d).await?;
                Fr::SetMemberAttrs(SetMemberAttrsReply {})
            }
        })
    }
}

impl Forwarded {
    /// The guard a forwarded request runs under, once its claim of who it runs for checked out
    /// (see the module docs).
    fn guard(&self, req: &ForwardRequest, sender: Sender) -> Result<Option<Guard>, Status> {
        let Some(revision) = req.auth_revision else {
            use cairn_proto::etcdserverpb::alarm_request::AlarmAction;
            return match &req.request {
                Some(Fq::ReadIndex(_) | Fq::SetMemberAttrs(_) | Fq::LeaseKeepAlive(_) | Fq::LeaseTimeToLive(_)) => {
                    Ok(None)
                }
                Some(Fq::Alarm(a)) if a.action == AlarmAction::Activate as i32 => Ok(None),
                // A data tier node publishing its own record, reporting the ranges it leads or
                // reserving a range id: members' own business (the meta group checks directory
                // changes itself: epochs compared and swapped, the keyspace tiled).
                Some(Fq::Propose(b)) if matches!(postcard::from_bytes::<Op>(b), Ok(Op::Directory(_))) => Ok(None),
                _ => Err(Status::permission_denied(
                    "etcdserver: forwarded request names no client (no auth guard); refused rather than applied unchecked",
                )),
            };
        };
        if sender == Sender::Authenticated {
            return Ok(Some(Guard { revision, user: req.auth_user.clone(), token: None }));
        }
        // Anyone could have sent this: check the client here exactly as if it had called this
        // member itself, with its own token, against this member's auth store.
        let token = Some(req.auth_token.as_str()).filter(|t| !t.is_empty());
        let (who, guard) = Access::new(self.c.clone()).caller(token).map_err(status)?;
        if let Some(w) = &who {
            if w.user() != req.auth_user {
                return Err(status(Error::InvalidAuthToken));
            }
            let checked = match &req.request {
                Some(Fq::Put(r)) => w.put(r),
                Some(Fq::DeleteRange(r)) => w.delete(r),
                Some(Fq::Txn(r)) => w.txn(r),
                Some(Fq::MemberAdd(_) | Fq::MemberRemove(_) | Fq::MemberUpdate(_) | Fq::MemberPromote(_)) => w.admin(),
                // Apply checks the rest: auth changes need root, a lease revoke write access to
                // the lease's keys; etcd checks nothing for the others.
                _ => Ok(()),
            };
            checked.map_err(status)?;
        }
        Ok(Some(guard))
    }
}

#[tonic::async_trait]
impl PeerHandler for Forwarded {
    async fn forward(&self, req: ForwardRequest, sender: Sender) -> Result<ForwardReply, Status> {
        let guard = self.guard(&req, sender)?;
        let req_origin = (req.origin_member, req.origin_id);
        let req = req.request.ok_or_else(|| Status::invalid_argument("empty forwarded request"))?;
        // Only writes answered from the forwarding member's apply carry an origin (see
        // `Router::on_leader_write`); any other request ignores one.
        let (member, id) = match req {
            Fq::Put(_) | Fq::DeleteRange(_) | Fq::Txn(_) => req_origin,
            _ => (0, 0),
        };
        let run = crate::router::originated(member, id, self.run(req));
        crate::auth::guarded(guard, run).await.map(|r| ForwardReply { response: Some(r) }).map_err(status)
    }

    async fn forward_batch(&self, reqs: Vec<ForwardRequest>, sender: Sender) -> Vec<Result<ForwardReply, Status>> {
        // Concurrently, so the batch's proposals reach Raft together and share log appends.
        futures::future::join_all(reqs.into_iter().map(|r| self.forward(r, sender))).await
    }

    async fn cluster_info(&self) -> Result<ClusterInfoReply, Status> {
        Ok(ClusterInfoReply { cluster_id: self.c.cfg.cluster_id, members: Members::new(self.c.clone()).list_local() })
    }
}
