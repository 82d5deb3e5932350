//! The replicated state machine: what one replica of the Raft group holds and how committed
//! commands change it, deterministically. It holds etcd's state: the MVCC key-value store
//! ([`Store`]: revisions, key index, Range/Put/DeleteRange/Txn/Compact), leases (which exist
//! and which keys they hold), the auth store ([`auth`]), member attributes and alarms, and the
//! event feed watchers read ([`watch`]). Everything above it (Raft, routing, the services)
//! only proposes [`Command`]s and reads.
//!
//! Today one Raft group holds all of it; in the data tier (ranges) this group becomes the meta
//! group, and range replicas get a state machine of their own.
//!
//! # Life of a write
//! A front end validates a request ([`validate`]), the leader stamps it into a [`Command`] and
//! proposes it; once committed, every replica calls [`Store::begin`] and [`ApplyBatch::apply`]
//! for each command of the committed batch, then [`ApplyBatch::commit`] makes the batch visible
//! and buffers its changes for the engine (written in large batches by a thread of its own; see
//! `store::buffer`). Reads go through [`Store::range`] at any time.
//!
//! # Invariants
//! - Apply is deterministic: it reads only the command and the store, never a clock or an RNG
//!   (time arrives in [`Command::stamp_ms`]). A failed compare is an answer, not an error; an
//!   engine error in apply is fatal for the node.
//! - Revisions (etcd semantics): the store starts at revision 1; each write request that changes
//!   something takes the next revision, shared by all its changes (distinguished by a
//!   sub-revision); per key, `create_revision`, `mod_revision` and `version` follow etcd, with
//!   `version` restarting at 1 after a delete. Revisions come from one [`RevisionSource`] so a
//!   cluster-wide source can replace the local counter when the keyspace is sharded.
//! - Readers never see a half-applied batch: apply holds the store's write lock from the first
//!   change until the batch's changes are in the buffer readers consult.
//!
//! - Events: each applied batch publishes its events on the store's feed ([`watch`]) under the
//!   same lock, so a watcher can line the feed up with the store's history.
//!
//! - Leases: granted and revoked through the log (revoking deletes the attached keys in one
//!   revision); which keys a lease holds is derived from the keys' own `lease` field. Expiry is
//!   decided by the leader (`services::lease`), never in apply.
//!
//! - Auth: users, roles and permissions are replicated state ([`auth`]), changed through the
//!   log; a write checked against an auth revision is refused at apply if the auth store moved
//!   on since the check.

pub mod auth;
pub mod backup;
mod command;
mod index;
#[cfg(test)]
mod proptests;
mod rev;
mod snapshot;
mod store;
pub mod validate;
pub mod watch;

pub use command::{Command, MemberAttrs, Op, Response};
pub use index::KeyIndex;
pub use rev::{LocalRevisions, Rev, RevisionSource};
pub use snapshot::{export, import, verify, SnapshotError};
pub use store::{
    Answer, ApplyBatch, CompactStats, FlushStats, Lease, Space, Store, StoreError, Subscription, BATCH_BYTES_DEFAULT,
    FLUSH_OPS,
};
