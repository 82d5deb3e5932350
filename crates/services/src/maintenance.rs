//! etcd's Maintenance service: status, alarms, hashes.

use openraft::async_runtime::WatchReceiver;
use std::sync::Arc;

use cairn_proto::etcdserverpb as pb;
use cairn_proto::peer::{forward_reply::Response as Fr, forward_request::Request as Fq};
use cairn_shard::{Op, Response};
use cairn_types::Error;

use crate::cluster::Cluster;

/// The etcd API level cairn implements; clients use it to decide which calls exist.
pub const ETCD_API_VERSION: &str = "3.5.0";

#[derive(Clone)]
pub struct Maintenance {
    c: Arc<Cluster>,
}

impl Maintenance {
    pub fn new(c: Arc<Cluster>) -> Self {
        Maintenance { c }
    }

    pub fn status(&self) -> pb::StatusResponse {
        let store = self.c.store();
        // The header borrows the Raft metrics itself: take it before borrowing them here. A
        // second borrow while holding one can deadlock against openraft publishing new metrics
        // (tokio's watch lock lets a waiting writer block new readers).
        let header = self.c.header(store.current_revision());
        let (leader, raft_index, raft_term, applied, is_learner) = {
            let m = self.c.raft().metrics();
            let m = m.borrow_watched();
            let is_voter = m.membership_config.membership().voter_ids().any(|v| v == self.c.id());
            (
                m.current_leader.unwrap_or(0),
                m.last_log_index.unwrap_or(0),
                m.current_term,
                m.last_applied.map_or(0, |l| l.index),
                !is_voter,
            )
        };
        let db = store.engine().size_bytes() as i64;
        pb::StatusResponse {
            header: Some(header),
            version: ETCD_API_VERSION.to_string(),
            db_size: db,
            leader,
            raft_index,
            raft_term,
            raft_applied_index: applied,
            errors: store
                .alarms()
                .into_iter()
                .map(|(member, t)| format!("memberID:{member} alarm:{}", alarm_name(t)))
                .collect(),
            db_size_in_use: db,
            is_learner,
        }
    }

    /// Alarm: GET is answered locally; ACTIVATE and DEACTIVATE go through the log.
    pub async fn alarm(&self, r: pb::AlarmRequest) -> Result<pb::AlarmResponse, Error> {
        if r.action == pb::alarm_request::AlarmAction::Get as i32 {
            let alarms = self
                .c
                .store()
                .alarms()
                .into_iter()
                .filter(|&(m, t)| (r.member_id == 0 || m == r.member_id) && (r.alarm == 0 || t == r.alarm))
                .map(|(member_id, alarm)| pb::AlarmMember { member_id, alarm })
                .collect();
            return Ok(pb::AlarmResponse { header: Some(self.c.header(0)), alarms });
        }
        let mut resp = self
            .c
            .on_leader(
                || Fq::Alarm(r),
                |d| self.alarm_on_leader(r, d),
                |x| match x {
                    Fr::Alarm(a) => Some(a),
                    _ => None,
                },
            )
            .await?;
        resp.header = Some(self.c.header(0));
        Ok(resp)
    }

    pub async fn alarm_on_leader(
        &self,
        r: pb::AlarmRequest,
        deadline: std::time::Instant,
    ) -> Result<pb::AlarmResponse, Error> {
        match self.c.propose(Op::Alarm(r), deadline).await? {
            Response::Alarm(a) => Ok(a),
            other => Err(crate::kv::unexpected(other)),
        }
    }

    /// HashKV: a CRC32C over every key-value record up to `revision` (0: current), so members
    /// can be compared with `etcdctl endpoint hashkv`.
    pub fn hash_kv(&self, revision: i64) -> Result<pb::HashKvResponse, Error> {
        let store = self.c.store();
        let current = store.current_revision();
        let rev = if revision > 0 { revision } else { current };
        let all = pb::RangeRequest { key: vec![0], range_end: vec![0], revision: rev, ..Default::default() };
        let r = store.range(&all)?;
        let mut crc = 0u32;
        for kv in &r.kvs {
            for part in [&kv.key[..], &kv.value[..], &kv.mod_revision.to_be_bytes(), &kv.create_revision.to_be_bytes()]
            {
                crc = crc32c::crc32c_append(crc, part);
            }
        }
        Ok(pb::HashKvResponse {
            header: Some(self.c.header(current)),
            hash: crc,
            compact_revision: store.compact_revision().max(0),
        })
    }
}

pub fn alarm_name(t: i32) -> &'static str {
    match pb::AlarmType::try_from(t) {
        Ok(pb::AlarmType::Nospace) => "NOSPACE",
        Ok(pb::AlarmType::Corrupt) => "CORRUPT",
        _ => "NONE",
    }
}
