//! etcd's KV service.

use std::sync::Arc;

use cairn_proto::etcdserverpb as pb;
use cairn_proto::peer::{forward_reply::Response as Fr, forward_request::Request as Fq};
use cairn_state::{validate, Op, Response};
use cairn_types::Error;
use prost::Message;

use crate::router::Router;

#[derive(Clone)]
pub struct Kv {
    c: Arc<Router>,
}

/// True if a transaction only reads (recursively).
pub fn txn_is_read_only(t: &pb::TxnRequest) -> bool {
    use pb::request_op::Request;
    t.success.iter().chain(&t.failure).all(|op| match &op.request {
        Some(Request::RequestRange(_)) | None => true,
        Some(Request::RequestTxn(n)) => txn_is_read_only(n),
        Some(Request::RequestPut(_)) | Some(Request::RequestDeleteRange(_)) => false,
    })
}

/// True if every read of a read-only transaction asked for serializable consistency.
fn txn_is_serializable(t: &pb::TxnRequest) -> bool {
    use pb::request_op::Request;
    t.success.iter().chain(&t.failure).all(|op| match &op.request {
        Some(Request::RequestRange(r)) => r.serializable,
        Some(Request::RequestTxn(n)) => txn_is_serializable(n),
        _ => true,
    })
}

/// True if a transaction reads a range of keys (not only single keys), recursively.
fn txn_has_ranges(t: &pb::TxnRequest) -> bool {
    use pb::request_op::Request;
    t.success.iter().chain(&t.failure).any(|op| match &op.request {
        Some(Request::RequestRange(r)) => !r.range_end.is_empty(),
        Some(Request::RequestTxn(n)) => txn_has_ranges(n),
        _ => false,
    })
}

fn txn_has_puts(t: &pb::TxnRequest) -> bool {
    use pb::request_op::Request;
    t.success.iter().chain(&t.failure).any(|op| match &op.request {
        Some(Request::RequestPut(_)) => true,
        Some(Request::RequestTxn(n)) => txn_has_puts(n),
        _ => false,
    })
}

impl Kv {
    pub fn new(c: Arc<Router>) -> Self {
        Kv { c }
    }

    fn fill(&self, h: &mut Option<pb::ResponseHeader>) {
        let rev = h.as_ref().map_or(0, |h| h.revision);
        *h = Some(self.c.header(rev));
    }

    /// `fill` for a write: first waits until this member has applied it (see
    /// [`Router::caught_up`]).
    async fn fill_written(&self, h: &mut Option<pb::ResponseHeader>) {
        self.c.caught_up(h.as_ref().map_or(0, |h| h.revision)).await;
        self.fill(h);
    }

    /// Range: linearizable unless the request asks for `serializable`.
    pub async fn range(&self, r: pb::RangeRequest) -> Result<pb::RangeResponse, Error> {
        validate::range(&r, self.c.limits())?;
        // `stale-read` (failpoints builds only): the defect the chaos harness must catch.
        if !r.serializable && !cairn_types::faults::bug("stale-read") {
            self.c.read_barrier().await?;
        }
        let mut resp = if r.range_end.is_empty() {
            self.c.store().range(&r)?
        } else {
            // A range may cover every key: its chunks run on the blocking pool, so a Range over a
            // million keys does not hold one of the runtime's few workers for seconds.
            let store = self.c.store().clone();
            tokio::task::spawn_blocking(move || store.range(&r)).await.map_err(|e| Error::Internal(e.to_string()))??
        };
        self.fill(&mut resp.header);
        Ok(resp)
    }

    /// Refuses writes that would take the store past its quota, raising etcd's NOSPACE alarm.
    fn check_quota(&self, request_bytes: usize) -> Result<(), Error> {
        let store = self.c.store();
        if store.alarms().iter().any(|&(_, t)| t == pb::AlarmType::Nospace as i32) {
            return Err(Error::NoSpace);
        }
        let quota = self.c.limits().quota_backend_bytes;
        // What the store holds (every revision not compacted away, buffered or in the engine;
        // not the file's free pages) plus etcd's cost estimate: the request and some overhead.
        let size = store.space().in_use_bytes + request_bytes as u64 + 256;
        if size > quota {
            tracing::warn!(size, quota, "backend quota exceeded; raising the NOSPACE alarm");
            let c = self.c.clone();
            tokio::spawn(async move {
                let alarm = pb::AlarmRequest {
                    action: pb::alarm_request::AlarmAction::Activate as i32,
                    member_id: c.id(),
                    alarm: pb::AlarmType::Nospace as i32,
                };
                if let Err(e) = crate::maintenance::Maintenance::new(c).alarm(alarm).await {
                    tracing::warn!(error = %e, "could not raise the NOSPACE alarm");
                }
            });
            return Err(Error::NoSpace);
        }
        Ok(())
    }

    pub async fn put(&self, r: pb::PutRequest) -> Result<pb::PutResponse, Error> {
        validate::put(&r, self.c.limits())?;
        self.check_quota(r.encoded_len())?;
        let mut resp = self
            .c
            .on_leader_write(
                || Fq::Put(r.clone()),
                |d| self.put_on_leader(r.clone(), d),
                |x| match x {
                    Fr::Put(p) => Some(p),
                    _ => None,
                },
                |x| match x {
                    Response::Put(p) => Some(p),
                    _ => None,
                },
            )
            .await?;
        self.fill_written(&mut resp.header).await;
        Ok(resp)
    }

    pub async fn put_on_leader(
        &self,
        r: pb::PutRequest,
        deadline: std::time::Instant,
    ) -> Result<pb::PutResponse, Error> {
        if cairn_types::faults::bug("early-ack") {
            // The defect: answer before the write is committed (failpoints builds only).
            let c = self.c.clone();
            let revision = c.store().current_revision() + 1;
            tokio::spawn(async move {
                let _ = c.propose(Op::Put(r), deadline).await;
            });
            return Ok(pb::PutResponse {
                header: Some(pb::ResponseHeader { revision, ..Default::default() }),
                prev_kv: None,
            });
        }
        match self.c.propose(Op::Put(r), deadline).await? {
            Response::Put(p) => Ok(p),
            other => Err(unexpected(other)),
        }
    }

    pub async fn delete_range(&self, r: pb::DeleteRangeRequest) -> Result<pb::DeleteRangeResponse, Error> {
        validate::delete_range(&r, self.c.limits())?;
        let mut resp = self
            .c
            .on_leader_write(
                || Fq::DeleteRange(r.clone()),
                |d| self.delete_on_leader(r.clone(), d),
                |x| match x {
                    Fr::DeleteRange(p) => Some(p),
                    _ => None,
                },
                |x| match x {
                    Response::DeleteRange(p) => Some(p),
                    _ => None,
                },
            )
            .await?;
        self.fill_written(&mut resp.header).await;
        Ok(resp)
    }

    pub async fn delete_on_leader(
        &self,
        r: pb::DeleteRangeRequest,
        deadline: std::time::Instant,
    ) -> Result<pb::DeleteRangeResponse, Error> {
        match self.c.propose(Op::DeleteRange(r), deadline).await? {
            Response::DeleteRange(p) => Ok(p),
            other => Err(unexpected(other)),
        }
    }

    /// Txn: a transaction that only reads is served locally after a read barrier (none if all its
    /// reads are serializable); one that writes goes through the log.
    pub async fn txn(&self, r: pb::TxnRequest) -> Result<pb::TxnResponse, Error> {
        validate::txn(&r, self.c.limits())?;
        if txn_is_read_only(&r) {
            if !txn_is_serializable(&r) && !cairn_types::faults::bug("stale-read") {
                self.c.read_barrier().await?;
            }
            // Its ranges are read in chunks; like a Range's, on the blocking pool.
            let mut resp = if txn_has_ranges(&r) {
                let store = self.c.store().clone();
                tokio::task::spawn_blocking(move || store.txn_read_only(&r))
                    .await
                    .map_err(|e| Error::Internal(e.to_string()))??
            } else {
                self.c.store().txn_read_only(&r)?
            };
            self.fill(&mut resp.header);
            return Ok(resp);
        }
        if txn_has_puts(&r) {
            self.check_quota(r.encoded_len())?;
        }
        let mut resp = self
            .c
            .on_leader_write(
                || Fq::Txn(r.clone()),
                |d| self.txn_on_leader(r.clone(), d),
                |x| match x {
                    Fr::Txn(p) => Some(p),
                    _ => None,
                },
                |x| match x {
                    Response::Txn(p) => Some(p),
                    _ => None,
                },
            )
            .await?;
        self.fill_written(&mut resp.header).await;
        Ok(resp)
    }

    pub async fn txn_on_leader(
        &self,
        r: pb::TxnRequest,
        deadline: std::time::Instant,
    ) -> Result<pb::TxnResponse, Error> {
        match self.c.propose(Op::Txn(r), deadline).await? {
            Response::Txn(p) => Ok(p),
            other => Err(unexpected(other)),
        }
    }

    pub async fn compact(&self, r: pb::CompactionRequest) -> Result<pb::CompactionResponse, Error> {
        let mut resp = self
            .c
            .on_leader(
                || Fq::Compact(r),
                |d| self.compact_on_leader(r, d),
                |x| match x {
                    Fr::Compact(p) => Some(p),
                    _ => None,
                },
            )
            .await?;
        // A compaction does not move the revision, so `fill_written` does not wait for it: wait
        // for this member to apply it, so a watch or read here right after sees it, as etcd.
        if self.c.store().compact_revision() < r.revision {
            crate::auth::guarded(None, self.c.read_barrier()).await?;
        }
        // etcd's `physical`: answer once the compacted history is gone from this member.
        if r.physical {
            let deadline = std::time::Instant::now() + PHYSICAL_COMPACTION_WAIT;
            if !self.c.store().wait_compacted(r.revision, deadline).await {
                return Err(Error::Timeout);
            }
        }
        self.fill_written(&mut resp.header).await;
        Ok(resp)
    }

    pub async fn compact_on_leader(
        &self,
        r: pb::CompactionRequest,
        deadline: std::time::Instant,
    ) -> Result<pb::CompactionResponse, Error> {
        match self.c.propose(Op::Compact(r), deadline).await? {
            Response::Compact(p) => Ok(p),
            other => Err(unexpected(other)),
        }
    }
}

/// How long a `physical` Compact waits for the history to be removed.
const PHYSICAL_COMPACTION_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

pub(crate) fn unexpected(r: Response) -> Error {
    Error::Internal(format!("unexpected apply response {r:?}"))
}
