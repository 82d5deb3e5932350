//! Assembles one Raft node from its parts: data directory, log, engine, state machine, network.
//!
//! Data directory layout (as etcd's, under `member/`):
//! ```text
//! <data-dir>/LOCK              held (flock) while a process uses the directory
//! <data-dir>/member/wal/       the Raft log segments
//! <data-dir>/member/state.redb the MVCC store (state machine)
//! <data-dir>/member/snap/      snapshot files in transit
//! ```

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cairn_state::Store;
use cairn_storage::wal::{Wal, WalOptions};
use cairn_storage::RedbEngine;
use openraft::{Config, SnapshotPolicy};

use crate::log_store::LogStore;
use crate::network::Network;
use crate::state_machine::StateMachine;
use crate::types::Raft;

/// Raft timing, in etcd's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftTimers {
    /// etcd's `--heartbeat-interval` (ms).
    pub heartbeat_ms: u64,
    /// etcd's `--election-timeout` (ms): a follower that hears nothing from the leader for
    /// between 7/8 and all of this time starts an election.
    ///
    /// In openraft terms: a follower honours the leader's lease (`election_timeout_max`) and then
    /// waits its own randomized election timeout in `[min, max)`; cairn sets `max = t/2` and
    /// `min = 3t/8`, so lease plus timeout lands in `[7t/8, t)`.
    pub election_timeout_ms: u64,
}

impl Default for RaftTimers {
    fn default() -> Self {
        RaftTimers { heartbeat_ms: 50, election_timeout_ms: 500 }
    }
}

impl RaftTimers {
    pub fn validate(&self) -> Result<(), String> {
        if self.heartbeat_ms == 0 {
            return Err("--heartbeat-interval must be positive".into());
        }
        if self.election_timeout_ms < 4 * self.heartbeat_ms {
            return Err(format!(
                "--election-timeout ({}) must be at least 4 times --heartbeat-interval ({})",
                self.election_timeout_ms, self.heartbeat_ms
            ));
        }
        if self.election_timeout_ms > 50_000 {
            return Err("--election-timeout must not exceed 50000 ms".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub id: u64,
    pub data_dir: PathBuf,
    pub timers: RaftTimers,
    /// etcd's `--snapshot-count`: applied entries between snapshots (after which the log is
    /// compacted).
    pub snapshot_count: u64,
    /// UNSAFE: acknowledge writes without fsync (etcd's `--unsafe-no-fsync`). Off by default.
    pub unsafe_no_fsync: bool,
    pub engine_cache_bytes: usize,
    /// `--backend-batch-bytes`: bytes apply buffers before writing them to the engine.
    pub batch_bytes: u64,
    /// Test-only storage faults for the Raft log (failpoints builds); `None` otherwise.
    pub wal_faults: Option<cairn_storage::wal::FaultHook>,
    /// The node's transport to its peers, shared with the ranges; its connections carry
    /// forwarded requests too.
    pub mux: crate::range::mux::Mux,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("data directory {0} is in use by another process (cairn holds a lock on {0}/LOCK)")]
    Locked(PathBuf),
    #[error("cannot use data directory {path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("the Raft log in {path} cannot be used: {error}")]
    Wal { path: PathBuf, error: cairn_storage::Error },
    #[error("the state store in {path} cannot be used: {reason}")]
    Store { path: PathBuf, reason: String },
    #[error("invalid Raft configuration: {0}")]
    Config(String),
    #[error("Raft failed to start: {0}")]
    Raft(String),
}

/// Takes the data directory's lock; a second process on the same directory is refused.
pub fn lock_data_dir(dir: &Path) -> Result<File, NodeError> {
    let io = |error| NodeError::Io { path: dir.to_path_buf(), error };
    std::fs::create_dir_all(dir).map_err(io)?;
    let f = File::options().create(true).truncate(false).write(true).open(dir.join("LOCK")).map_err(io)?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(NodeError::Locked(dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
    }
}

/// A running Raft node and the store it replicates.
pub struct RaftNode {
    pub id: u64,
    pub raft: Raft,
    pub sm: StateMachine,
    pub store: Arc<Store>,
    pub wal: Arc<Wal>,
    pub data_dir: PathBuf,
    /// When a leader was last heard from (see [`crate::group::LeaderContact`]); the peer
    /// service records it.
    pub contact: Arc<crate::group::LeaderContact>,
    /// The batched transport on the node's one connection per peer (`mux.channels()`): the meta
    /// group's messages and forwarded etcd requests travel on it.
    pub mux: crate::range::mux::Mux,
    _lock: File,
}

impl RaftNode {
    /// Opens the node's storage and starts Raft. `lock` comes from [`lock_data_dir`].
    pub async fn open(opts: NodeOptions, lock: File) -> Result<RaftNode, NodeError> {
        opts.timers.validate().map_err(NodeError::Config)?;
        let member = opts.data_dir.join("member");
        let wal_dir = member.join("wal");
        let wal = Wal::open(
            &wal_dir,
            WalOptions {
                unsafe_no_fsync: opts.unsafe_no_fsync,
                faults: opts.wal_faults.clone(),
                ..WalOptions::default()
            },
        )
        .map_err(|error| NodeError::Wal { path: wal_dir.clone(), error })?;
        let wal = Arc::new(wal);
        let engine_path = member.join("state.redb");
        let store_err = |reason: String| NodeError::Store { path: engine_path.clone(), reason };
        let engine = RedbEngine::open(&engine_path, opts.engine_cache_bytes).map_err(|e| store_err(e.to_string()))?;
        let store = Arc::new(Store::open(Arc::new(engine)).map_err(|e| store_err(e.to_string()))?);
        store.set_batch_bytes(opts.batch_bytes);
        store.start_compactor().map_err(|error| NodeError::Io { path: engine_path.clone(), error })?;
        let sm = StateMachine::open(store.clone(), opts.id, &member.join("snap"))
            .map_err(|error| NodeError::Io { path: member.join("snap"), error })?;

        let t = opts.timers;
        let config = Config {
            cluster_name: "cairn".into(),
            heartbeat_interval: t.heartbeat_ms,
            election_timeout_min: t.election_timeout_ms * 3 / 8,
            election_timeout_max: t.election_timeout_ms / 2,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(opts.snapshot_count),
            max_in_snapshot_log_to_keep: (opts.snapshot_count / 10).max(1),
            replication_lag_threshold: opts.snapshot_count.saturating_mul(2),
            install_snapshot_timeout: 120_000,
            max_payload_entries: 1024,
            api_batch_linger_ms: 0,
            // Replicate entries as soon as they are in the leader's log buffer, so the leader's
            // fsync and the followers' run in parallel rather than one after the other.
            broadcast_submitted_on_append: Some(true),
            // A member that cannot win (partitioned, restarted with a stale log) asks first, so
            // it never bumps the term and disrupts a healthy leader.
            enable_pre_vote: Some(true),
            // A restarted leader wins a new election rather than resuming in its old term: the
            // log's committed position is not synced on its own and apply does not fsync, so
            // after a power cut a resumed leader's read index (its old term's first entry or
            // its stale committed position) can lie below writes it had acknowledged, and a
            // linearizable read returns an older value. The chaos harness's power nemesis
            // found exactly that (openraft documents the condition).
            enable_leader_restore: Some(false),
            ..Config::default()
        }
        .validate()
        .map_err(|e| NodeError::Config(e.to_string()))?;
        let raft = Raft::new(
            opts.id,
            Arc::new(config),
            Network { mux: opts.mux.clone(), append_ttl: std::time::Duration::from_millis(t.election_timeout_ms) },
            LogStore::new(wal.clone()),
            sm.clone(),
        )
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?;
        Ok(RaftNode {
            id: opts.id,
            raft,
            sm,
            store,
            wal,
            data_dir: opts.data_dir,
            contact: Default::default(),
            mux: opts.mux,
            _lock: lock,
        })
    }

    /// Stops Raft and flushes the log.
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
        self.wal.close();
        let _ = self.store.flush();
        let _ = self.store.engine().sync();
    }
}
