//! etcd's Maintenance service (status, alarms, hashes, defragment, leader transfer), and the
//! health, readiness and status answers of the HTTP endpoints.

use std::sync::Arc;
use std::time::Duration;

use cairn_proto::etcdserverpb as pb;
use cairn_proto::peer::{forward_reply::Response as Fr, forward_request::Request as Fq};
use cairn_state::{Op, Response};
use cairn_types::Error;

use crate::router::Router;

/// The etcd API level cairn implements; clients use it to decide which calls exist.
pub const ETCD_API_VERSION: &str = "3.5.0";

#[derive(Clone)]
pub struct Maintenance {
    c: Arc<Router>,
}

impl Maintenance {
    pub fn new(c: Arc<Router>) -> Self {
        Maintenance { c }
    }

    pub fn status(&self) -> pb::StatusResponse {
        let store = self.c.store();
        let header = self.c.header(store.current_revision());
        let st = self.c.node.status();
        let (leader, raft_index, raft_term, applied, is_learner) = (
            st.leader.unwrap_or(0),
            st.last_log_index,
            st.term,
            st.applied_index,
            !st.membership.voters.contains(&self.c.id()),
        );
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

impl Maintenance {
    /// Defragment. redb reuses freed pages itself, so there is nothing to rewrite yet.
    pub async fn defragment(&self) -> Result<pb::DefragmentResponse, Error> {
        Ok(pb::DefragmentResponse { header: Some(self.c.header(0)) })
    }

    /// MoveLeader: this member, which must lead, hands leadership to `target_id`.
    pub async fn move_leader(&self, r: pb::MoveLeaderRequest) -> Result<pb::MoveLeaderResponse, Error> {
        if !self.c.is_leader() {
            return Err(Error::NotLeader);
        }
        self.c.node.transfer_leader(r.target_id).await?;
        Ok(pb::MoveLeaderResponse { header: Some(self.c.header(0)) })
    }

    /// etcd's `/health`: healthy when there is a leader, no alarm is raised, and a
    /// linearizable read completes in time; else the reason, in etcd's words.
    pub async fn health(&self) -> Result<(), String> {
        let alarms = self.c.store().alarms();
        if !alarms.is_empty() {
            return Err(format!("ALARM {}", alarms.iter().map(|a| alarm_name(a.1)).collect::<Vec<_>>().join(",")));
        }
        if self.c.current_leader().is_none() {
            return Err("RAFT NO LEADER".to_string());
        }
        match tokio::time::timeout(HEALTH_READ_TIMEOUT, self.c.read_barrier()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("QGET ERROR: {e}")),
            Err(_) => Err("QGET TIMEOUT".to_string()),
        }
    }

    /// Ready to serve (etcd 3.5's `/readyz`): a leader is known, this member has published its
    /// name and client URLs through the log (etcd's `ReadyNotify`: until then `member list`
    /// shows it as unstarted), and a read-index round completes, so this member has applied
    /// everything committed before the check. A member that restarted and is still replaying or
    /// catching up from the leader is not ready.
    pub async fn ready(&self) -> Result<(), String> {
        if self.c.current_leader().is_none() {
            return Err("no leader".into());
        }
        if !self.c.store().members().contains_key(&self.c.id()) {
            return Err("member attributes not yet published".into());
        }
        match tokio::time::timeout(HEALTH_READ_TIMEOUT, self.c.read_barrier()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("not caught up with the leader".into()),
        }
    }

    /// The member at a glance, for `/v1/status` and `cairn status`: identity, Raft state,
    /// store sizes, alarms, and every member with its replication progress (on the leader).
    pub fn report(&self) -> serde_json::Value {
        let st = self.status();
        let raft = self.c.node.status();
        let hex = |id: u64| format!("{id:x}");
        let members: Vec<_> = crate::members::Members::new(self.c.clone())
            .list_local()
            .into_iter()
            .map(|m| {
                serde_json::json!({
                    "id": hex(m.id),
                    "name": m.name,
                    "peer_urls": m.peer_ur_ls,
                    "client_urls": m.client_ur_ls,
                    "is_learner": m.is_learner,
                    "is_leader": st.leader == m.id,
                    "matched_index": raft.matched.get(&m.id),
                    "last_ack_ms": raft.last_ack.get(&m.id).map(|d| d.as_millis() as u64),
                })
            })
            .collect();
        let store = self.c.store();
        serde_json::json!({
            "name": self.c.cfg.name,
            "member_id": hex(self.c.id()),
            "cluster_id": hex(self.c.cfg.cluster_id),
            "version": st.version,
            "leader": if st.leader == 0 { None } else { Some(hex(st.leader)) },
            "is_leader": st.leader == self.c.id(),
            "is_learner": st.is_learner,
            "raft_term": st.raft_term,
            "raft_index": st.raft_index,
            "raft_applied_index": st.raft_applied_index,
            "revision": store.current_revision(),
            "compact_revision": store.compact_revision(),
            "keys": store.key_count(),
            "db_size_bytes": st.db_size,
            "wal_size_bytes": self.c.node.wal.size_bytes(),
            "alarms": st.errors,
            "unsafe_no_fsync": self.c.cfg.unsafe_no_fsync,
            "members": members,
        })
    }
}

/// How long `/health` and `/ready` wait for a read-index round.
const HEALTH_READ_TIMEOUT: Duration = Duration::from_secs(1);

pub fn alarm_name(t: i32) -> &'static str {
    match pb::AlarmType::try_from(t) {
        Ok(pb::AlarmType::Nospace) => "NOSPACE",
        Ok(pb::AlarmType::Corrupt) => "CORRUPT",
        _ => "NONE",
    }
}
