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
        let space = store.space();
        pb::StatusResponse {
            header: Some(header),
            version: ETCD_API_VERSION.to_string(),
            db_size: space.file_bytes as i64,
            leader,
            raft_index,
            raft_term,
            raft_applied_index: applied,
            errors: store
                .alarms()
                .into_iter()
                .map(|(member, t)| format!("memberID:{member} alarm:{}", alarm_name(t)))
                .collect(),
            db_size_in_use: space.in_use_bytes as i64,
            is_learner,
        }
    }

    /// Alarm: GET is answered locally; ACTIVATE and DEACTIVATE go through the log. The answer
    /// carries a header as etcd 3.5's does (etcd 3.4 sends none).
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
            return Ok(pb::AlarmResponse { header: Some(self.c.header(self.c.store().current_revision())), alarms });
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
        resp.header = Some(self.c.header(self.c.store().current_revision()));
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
    /// can be compared with `etcdctl endpoint hashkv`. As etcd's `HashByRev`: the compaction
    /// revision itself can no longer be hashed, and `compact_revision` is -1 before any
    /// compaction.
    pub async fn hash_kv(&self, revision: i64) -> Result<pb::HashKvResponse, Error> {
        let store = self.c.store();
        let current = store.current_revision();
        let compacted = store.compact_revision();
        if revision > 0 && revision <= compacted {
            return Err(Error::Compacted);
        }
        let rev = if revision > 0 { revision } else { current };
        let all = pb::RangeRequest { key: vec![0], range_end: vec![0], revision: rev, ..Default::default() };
        let r = {
            // Every key: read on the blocking pool (see `Kv::range`).
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.range(&all))
                .await
                .map_err(|e| Error::Internal(e.to_string()))??
        };
        let mut crc = 0u32;
        for kv in &r.kvs {
            for part in [&kv.key[..], &kv.value[..], &kv.mod_revision.to_be_bytes(), &kv.create_revision.to_be_bytes()]
            {
                crc = crc32c::crc32c_append(crc, part);
            }
        }
        Ok(pb::HashKvResponse { header: Some(self.c.header(current)), hash: crc, compact_revision: compacted })
    }
}

/// How long defragment waits for a snapshot or backup being read to finish.
const DEFRAGMENT_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Bytes of a backup per `SnapshotResponse`: well under any client's message limit (grpc-go's
/// default is 4 MiB), large enough that the stream is not dominated by per-message costs.
const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
/// Chunks queued for a slow reader before the copy waits: memory per stream stays bounded.
const SNAPSHOT_QUEUE: usize = 4;

/// Sends what is written to it as chunks of a snapshot stream; fails once the receiver is gone.
struct ChunkSender {
    tx: tokio::sync::mpsc::Sender<Result<Vec<u8>, Error>>,
    buf: Vec<u8>,
}

impl ChunkSender {
    fn send_buf(&mut self) -> std::io::Result<()> {
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(SNAPSHOT_CHUNK_BYTES));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client gone"))
    }
}

impl std::io::Write for ChunkSender {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = b.len().min(SNAPSHOT_CHUNK_BYTES - self.buf.len());
        self.buf.extend_from_slice(&b[..n]);
        if self.buf.len() == SNAPSHOT_CHUNK_BYTES {
            self.send_buf()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            self.send_buf()?;
        }
        Ok(())
    }
}

impl Maintenance {
    /// Snapshot: a backup of this member's store (`cairn_state::backup`: a point-in-time copy
    /// with a trailing sha256, as etcd's), streamed in chunks of 1 MiB. The copy runs on a thread
    /// of its own and waits while the client is slow (at most four chunks queued); it holds no
    /// lock of the store, so writes go on. `remaining_bytes` is an estimate (the store's size
    /// less what was sent) until the last message, where it is 0.
    pub fn snapshot(&self) -> tokio::sync::mpsc::Receiver<Result<pb::SnapshotResponse, Error>> {
        let (chunks_tx, mut chunks) = tokio::sync::mpsc::channel(SNAPSHOT_QUEUE);
        let (tx, rx) = tokio::sync::mpsc::channel(SNAPSHOT_QUEUE);
        let c = self.c.clone();
        let estimate = c.store().engine().size_bytes();
        let now_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let (cluster, member) = (c.cfg.cluster_id, c.id());
        let store = c.store().clone();
        tokio::task::spawn_blocking(move || {
            let out = ChunkSender { tx: chunks_tx.clone(), buf: Vec::with_capacity(SNAPSHOT_CHUNK_BYTES) };
            match cairn_state::backup::write_backup(&store, cluster, member, now_ms, out) {
                Ok((_, len, h)) => {
                    tracing::info!(bytes = len, revision = h.revision, "sent a snapshot");
                }
                Err(e) => {
                    let _ = chunks_tx.blocking_send(Err(Error::Internal(format!("snapshot: {e}"))));
                }
            }
        });
        tokio::spawn(async move {
            let mut sent = 0u64;
            let mut pending: Option<Vec<u8>> = None;
            // One chunk is held back so the last message can say `remaining_bytes: 0`.
            loop {
                let next = chunks.recv().await;
                let last = next.is_none();
                if let Some(blob) = pending.take() {
                    sent += blob.len() as u64;
                    let remaining_bytes = if last { 0 } else { estimate.saturating_sub(sent).max(1) };
                    let r = pb::SnapshotResponse { header: Some(c.header(0)), remaining_bytes, blob };
                    if tx.send(Ok(r)).await.is_err() {
                        return;
                    }
                }
                match next {
                    None => return,
                    Some(Ok(blob)) => pending = Some(blob),
                    Some(Err(e)) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
        });
        rx
    }

    /// Hash: a CRC32C over every record of every table of this member's store, as etcd hashes
    /// its whole backend (members compare equal only at the same applied index; `HashKV` is the
    /// comparison that ignores member-local state).
    pub async fn hash(&self) -> Result<pb::HashResponse, Error> {
        let store = self.c.store().clone();
        let hash = tokio::task::spawn_blocking(move || cairn_state::backup::hash_store(&store))
            .await
            .map_err(|e| Error::Internal(e.to_string()))?
            .map_err(|e| Error::Internal(format!("hash: {e}")))?;
        Ok(pb::HashResponse { header: Some(self.c.header(self.c.store().current_revision())), hash })
    }

    /// Defragment (this member only, as etcd): the store's file is rewritten to hold little
    /// more than its live bytes, and shrinks. Apply waits meanwhile.
    pub async fn defragment(&self) -> Result<pb::DefragmentResponse, Error> {
        let store = self.c.store().clone();
        let deadline = std::time::Instant::now() + DEFRAGMENT_WAIT;
        let (before, after) = tokio::task::spawn_blocking(move || store.defragment(deadline))
            .await
            .map_err(|e| Error::Internal(e.to_string()))?
            .map_err(|e| Error::Internal(format!("defragment: {e}")))?;
        tracing::info!(before, after, "defragmented the state engine");
        // No header: etcd answers Defragment with an empty response.
        Ok(pb::DefragmentResponse { header: None })
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
