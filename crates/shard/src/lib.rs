//! A shard is one replica of a key range: the MVCC store and the deterministic apply of the
//! commands that reach it through the Raft log. (Today there is one shard, holding the whole
//! keyspace; the sharding issue splits it.)
//!
//! # Life of a write
//! A front end validates a request ([`validate`]), the leader stamps it into a [`Command`] and
//! proposes it; once committed, every replica calls [`Store::begin`] and [`ApplyBatch::apply`]
//! for each command of the committed batch, then [`ApplyBatch::commit`] writes the batch to the
//! engine in one atomic write. Reads go through [`Store::range`] at any time.
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
//! - Readers never see a half-applied batch: apply holds the index's write lock from the first
//!   change until the engine write is done.
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
mod command;
mod index;
mod rev;
mod snapshot;
mod store;
pub mod validate;
pub mod watch;

pub use command::{Command, MemberAttrs, Op, Response};
pub use index::KeyIndex;
pub use rev::{LocalRevisions, Rev, RevisionSource};
pub use snapshot::{export, import, verify, SnapshotError};
pub use store::{ApplyBatch, ApplyWaiter, FlushStats, Lease, Store, StoreError, Subscription, FLUSH_OPS};
