//! Services: what users call, independent of wire protocol.
//!
//! - [`Router`]: this member's view of the cluster — identity, the current leader, request
//!   routing (a member that is not the leader forwards writes to it over the peer listener),
//!   proposals through Raft and linearizable reads (ReadIndex, batched). The only way down to
//!   Raft (`cairn_raft::RaftNode`) and the replicated state (`cairn_state`).
//! - [`kv::Kv`]: etcd's KV service (Range, Put, DeleteRange, Txn, Compact).
//! - [`members::Members`]: etcd's Cluster service (member list/add/remove/update/promote).
//! - [`maintenance::Maintenance`]: status, alarms, hash.
//! - [`watch`]: etcd's Watch streams, served by any member from its applied state.
//! - [`lease::Leases`]: etcd's Lease service; the leader's lessor decides expiry.
//! - [`auth::Auth`]: etcd's Auth service (users, roles, permissions, tokens); writes are
//!   guarded by the auth revision they were checked at.
//! - [`access::Access`]: the permission checks every front end runs before calling a service.
//! - [`compactor`]: auto compaction (`--auto-compaction-mode`, `--auto-compaction-retention`).
//! - [`boot`]: working out who this member is and forming or joining the cluster.
//!
//! Consistency (etcd's): writes are linearizable. Range and read-only parts of Txn are
//! linearizable by default (ReadIndex: the leader confirms it still leads with a quorum round,
//! then the serving member waits until it has applied that far); `serializable: true` reads are
//! served from the local member's state without that round and may be stale.

pub mod access;
pub mod auth;
pub mod boot;
pub mod cache;
pub mod compactor;
pub mod data;
pub mod expiry;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod maintenance;
pub mod members;
pub mod metrics;
pub mod peer;
pub mod placer;
pub mod router;
pub mod watch;

pub use metrics::Metrics;
pub use router::{MemberConfig, Router};
