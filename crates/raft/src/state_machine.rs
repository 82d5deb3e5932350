//! openraft's state machine over the replicated [`Store`].
//!
//! Apply: all entries of a batch go into one `ApplyBatch`, together with the applied log id and
//! the membership, and responses are sent only after the batch is committed (visible to
//! readers), so a client that hears "ok" can read its write at once. The store buffers the
//! changes and writes them to the engine later, in large atomic writes that always carry the
//! applied log id of the changes they hold; engine writes are not fsynced: the Raft log already
//! is. After a crash the engine comes back at its last synced state and openraft re-applies the
//! committed entries after it (the log store persists the committed position).
//!
//! Snapshots: building one syncs the engine and keeps a point-in-time reader of it — cheap, no
//! copy. The data is exported (`cairn_state::export`) only when a follower needs it. A received
//! snapshot arrives as a checksummed file, verified before it replaces anything.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cairn_state::{Answer, Response, Store};
use cairn_storage::{Reader, Table};
use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use parking_lot::Mutex;

use crate::types::{LogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};

const META_APPLIED: &[u8] = b"raft/applied";
const META_MEMBERSHIP: &[u8] = b"raft/membership";

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("raft types serialize")
}

/// Decodes stored or received bytes; `what` names them for the error.
fn decode<T: serde::de::DeserializeOwned>(b: &[u8], what: &str) -> io::Result<T> {
    postcard::from_bytes(b)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("cannot decode {what}: {e}")))
}

/// A point-in-time view of the local engine plus the encoded meta describing it.
pub struct HeldView {
    reader: Box<dyn Reader + Send + Sync>,
    header: Vec<u8>,
}

/// openraft's snapshot payload.
#[derive(Clone)]
pub enum SnapshotData {
    /// A view of this node's engine, exported when sent.
    Local(Arc<HeldView>),
    /// A snapshot file received from the leader, waiting to be installed.
    File(PathBuf),
}

impl std::fmt::Debug for SnapshotData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotData::Local(_) => write!(f, "SnapshotData::Local"),
            SnapshotData::File(p) => write!(f, "SnapshotData::File({})", p.display()),
        }
    }
}

impl SnapshotData {
    /// Writes the snapshot file format into `out`.
    pub fn write_to(&self, out: impl Write) -> io::Result<()> {
        match self {
            SnapshotData::Local(v) => cairn_state::export(&*v.reader, &v.header, out).map_err(io_err),
            SnapshotData::File(p) => {
                let mut out = out;
                io::copy(&mut std::fs::File::open(p)?, &mut out)?;
                out.flush()
            }
        }
    }
}

struct SmState {
    applied: Option<LogId>,
    membership: StoredMembership,
    current: Option<(SnapshotMeta, SnapshotData)>,
}

/// Where the answers to this member's own forwarded writes go (the router's waiter registry).
pub type AnswerSink = Arc<dyn Fn(Vec<Answer>) + Send + Sync>;

struct Inner {
    store: Arc<Store>,
    /// The member this replica runs on.
    member: u64,
    answers: std::sync::OnceLock<AnswerSink>,
    snap_dir: PathBuf,
    state: Mutex<SmState>,
    seq: AtomicU64,
}

/// The state machine; clones share state (openraft uses a clone as the snapshot builder).
#[derive(Clone)]
pub struct StateMachine {
    inner: Arc<Inner>,
}

fn read_meta(reader: &dyn Reader) -> io::Result<(Option<LogId>, StoredMembership)> {
    let applied: Option<LogId> = match reader.get(Table::Meta, META_APPLIED).map_err(io_err)? {
        Some(b) => decode(&b, "state engine meta raft/applied")?,
        None => None,
    };
    let membership = match reader.get(Table::Meta, META_MEMBERSHIP).map_err(io_err)? {
        Some(b) => decode(&b, "state engine meta raft/membership")?,
        None => StoredMembership::default(),
    };
    Ok((applied, membership))
}

impl StateMachine {
    /// Opens the state machine of member `member` on `store`; snapshot files are staged in
    /// `snap_dir`.
    pub fn open(store: Arc<Store>, member: u64, snap_dir: &Path) -> io::Result<StateMachine> {
        std::fs::create_dir_all(snap_dir)?;
        // Files left by an interrupted transfer are useless: the leader sends a fresh one.
        for ent in std::fs::read_dir(snap_dir)? {
            let p = ent?.path();
            if p.extension().is_some_and(|e| e == "snap" || e == "part") {
                std::fs::remove_file(&p)?;
            }
        }
        let (applied, membership) = read_meta(&*store.engine().reader().map_err(io_err)?)?;
        Ok(StateMachine {
            inner: Arc::new(Inner {
                store,
                member,
                answers: std::sync::OnceLock::new(),
                snap_dir: snap_dir.to_path_buf(),
                state: Mutex::new(SmState { applied, membership, current: None }),
                seq: AtomicU64::new(0),
            }),
        })
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.inner.store
    }

    /// Sets where apply hands the answers to this member's own forwarded writes (`Op::Origin`
    /// entries naming it), once each batch is visible. Until set, they are dropped (the leader's
    /// reply answers those requests).
    pub fn set_answer_sink(&self, sink: AnswerSink) {
        let _ = self.inner.answers.set(sink);
    }

    /// A path for a snapshot file being received.
    pub fn new_snapshot_path(&self) -> PathBuf {
        let n = self.inner.seq.fetch_add(1, Ordering::Relaxed);
        self.inner.snap_dir.join(format!("recv-{}-{n}.part", std::process::id()))
    }

    fn build(&self) -> io::Result<Snapshot> {
        // The snapshot is the engine's state, with the applied log id flushed alongside it.
        self.inner.store.flush().map_err(io_err)?;
        let engine = self.inner.store.engine();
        let reader = engine.reader().map_err(io_err)?;
        let (applied, membership) = read_meta(&*reader)?;
        // Everything the reader sees becomes durable, so openraft may purge the log up to it.
        engine.sync().map_err(io_err)?;
        let meta = SnapshotMeta { last_log_id: applied, last_membership: membership };
        let data = SnapshotData::Local(Arc::new(HeldView { reader, header: encode(&meta) }));
        self.inner.state.lock().current = Some((meta.clone(), data.clone()));
        Ok(Snapshot { meta, snapshot: data })
    }

    fn install(&self, meta: &SnapshotMeta, data: SnapshotData) -> io::Result<()> {
        let (path, temp) = match data {
            SnapshotData::File(p) => (p, true),
            SnapshotData::Local(view) => {
                // Installing a local view (tests, and a node restoring itself) goes through the
                // same verified file path as a received snapshot.
                let p = self.new_snapshot_path();
                let f = std::fs::File::create(&p)?;
                SnapshotData::Local(view).write_to(&f)?;
                f.sync_all()?;
                (p, true)
            }
        };
        let result = self.inner.store.replace(|engine| {
            let header = cairn_state::import(engine, std::fs::File::open(&path)?)?;
            Ok::<_, cairn_state::SnapshotError>(header)
        });
        if temp {
            let _ = std::fs::remove_file(&path);
        }
        let header = result.map_err(|e| io_err(format!("snapshot file {}: {e}", path.display())))?;
        let theirs: SnapshotMeta = decode(&header, &format!("the header of snapshot file {}", path.display()))?;
        if theirs.last_log_id != meta.last_log_id {
            return Err(io_err(format!(
                "snapshot file describes {:?} but was sent as {:?}",
                theirs.last_log_id, meta.last_log_id
            )));
        }
        let reader = self.inner.store.engine().reader().map_err(io_err)?;
        let mut st = self.inner.state.lock();
        st.applied = meta.last_log_id;
        st.membership = meta.last_membership.clone();
        st.current = Some((meta.clone(), SnapshotData::Local(Arc::new(HeldView { reader, header: encode(meta) }))));
        Ok(())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.build()).await.map_err(io_err)?
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let st = self.inner.state.lock();
        Ok((st.applied, st.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        // Gather the batch first: the store's write lock must not be held across an await.
        let mut items = Vec::new();
        while let Some(item) = entries.try_next().await? {
            items.push(item);
        }
        if items.is_empty() {
            return Ok(());
        }
        let mut replies = Vec::with_capacity(items.len());
        let answers = {
            let store = &self.inner.store;
            let mut batch = store.begin(self.inner.member).map_err(io_err)?;
            let mut st = self.inner.state.lock();
            for (entry, responder) in items {
                if let Some(applied) = &st.applied {
                    assert!(entry.log_id.index > applied.index, "apply of {} after {}", entry.log_id, applied);
                }
                let resp = match entry.payload {
                    EntryPayload::Blank => Response::Done { revision: batch.current_revision() },
                    EntryPayload::Normal(cmd) => batch.apply(&cmd).map_err(io_err)?,
                    EntryPayload::Membership(m) => {
                        // Names and client URLs of members that left go with them.
                        batch.retain_members(&m.nodes().map(|(id, _)| *id).collect());
                        st.membership = StoredMembership::new(Some(entry.log_id), m);
                        Response::Done { revision: batch.current_revision() }
                    }
                };
                st.applied = Some(entry.log_id);
                replies.push((responder, resp));
            }
            batch.put_meta(META_APPLIED, encode(&st.applied));
            batch.put_meta(META_MEMBERSHIP, encode(&st.membership));
            // A failed engine write is fatal: openraft stops the node on this error.
            batch.commit().map_err(io_err)?
        };
        if let (false, Some(sink)) = (answers.is_empty(), self.inner.answers.get()) {
            sink(answers);
        }
        for (responder, resp) in replies {
            if let Some(r) = responder {
                r.send(resp);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotData) -> Result<(), io::Error> {
        let this = self.clone();
        let meta = meta.clone();
        tokio::task::spawn_blocking(move || this.install(&meta, snapshot)).await.map_err(io_err)?
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        Ok(self.inner.state.lock().current.clone().map(|(meta, snapshot)| Snapshot { meta, snapshot }))
    }
}
