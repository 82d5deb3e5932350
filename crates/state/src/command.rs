//! What travels through the Raft log, and what apply answers.
//!
//! etcd requests are carried as their protobuf encoding (the same bytes a client sent,
//! re-encoded), so the log format follows etcd's API without a parallel set of structs.

use std::fmt;
use std::sync::Arc;

use cairn_proto::etcdserverpb as pb;
use serde::{Deserialize, Serialize};

use crate::auth::AuthOp;

/// Serde adapter: a prost message as its protobuf bytes.
mod pb_bytes {
    use prost::Message;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<M: Message, S: Serializer>(m: &M, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&m.encode_to_vec())
    }

    pub fn deserialize<'de, M: Message + Default, D: Deserializer<'de>>(d: D) -> Result<M, D::Error> {
        let b: serde_bytes::ByteBuf = Deserialize::deserialize(d)?;
        M::decode(b.as_slice()).map_err(serde::de::Error::custom)
    }
}

/// Serde adapter for the ops an op holds (`Batch`, `Guarded`, `Origin`): decoding refuses more
/// than [`NESTING_MAX`] levels. Each level costs the decoder stack, and a log entry or a peer
/// message is read from outside the process: a few hundred kilobytes of nested batches would
/// otherwise overflow the stack (an abort, not even a panic). The leader nests three deep at
/// most (a batch of forwarded, checked requests).
mod nested {
    use std::cell::Cell;

    use serde::{Deserialize, Deserializer};

    thread_local! {
        static DEPTH: Cell<usize> = const { Cell::new(0) };
    }

    /// Leaves the nesting level it entered, however decoding ends.
    struct Level;

    impl Drop for Level {
        fn drop(&mut self) {
            DEPTH.with(|d| d.set(d.get() - 1));
        }
    }

    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
        let depth = DEPTH.with(|c| {
            c.set(c.get() + 1);
            c.get()
        });
        let _level = Level;
        if depth > super::NESTING_MAX {
            return Err(serde::de::Error::custom(format!("ops nested more than {} deep", super::NESTING_MAX)));
        }
        T::deserialize(d)
    }
}

/// How deep ops may nest in a decoded command (see `nested`).
pub(crate) const NESTING_MAX: usize = 16;

/// A member's name and client URLs, published through the log after it starts (as etcd does).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct MemberAttrs {
    pub name: String,
    pub client_urls: Vec<String>,
}

/// One log entry's worth of work. `stamp_ms` is the leader's clock when it proposed the
/// command: the only time apply may use (for TTLs, in later issues).
///
/// The op is shared (`Arc`; encoded exactly as the op itself), so the copies of an entry that
/// the log store hands to replication and to apply cost a reference count, not a deep copy of
/// every key and value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    pub stamp_ms: u64,
    pub op: Arc<Op>,
}

impl Command {
    pub fn new(stamp_ms: u64, op: Op) -> Self {
        Command { stamp_ms, op: Arc::new(op) }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    Put(#[serde(with = "pb_bytes")] pb::PutRequest),
    DeleteRange(#[serde(with = "pb_bytes")] pb::DeleteRangeRequest),
    Txn(#[serde(with = "pb_bytes")] pb::TxnRequest),
    Compact(#[serde(with = "pb_bytes")] pb::CompactionRequest),
    /// Activate or deactivate an alarm (etcd's NOSPACE when the quota is exceeded).
    Alarm(#[serde(with = "pb_bytes")] pb::AlarmRequest),
    SetMemberAttrs {
        id: u64,
        attrs: MemberAttrs,
    },
    /// Grant a lease; the leader has chosen its (non-zero) ID and its TTL is at least the
    /// minimum.
    LeaseGrant(#[serde(with = "pb_bytes")] pb::LeaseGrantRequest),
    /// Revoke a lease: delete every key attached to it, in one revision (also how an expired
    /// lease ends: the leader proposes its revocation).
    LeaseRevoke(#[serde(with = "pb_bytes")] pb::LeaseRevokeRequest),
    /// Several independent requests in one log entry, applied in order, each taking its own
    /// revision and getting its own response: the leader packs concurrent proposals so the
    /// per-entry cost of consensus is paid once for all of them.
    Batch(#[serde(deserialize_with = "nested::deserialize")] Vec<Op>),
    /// A change to the auth store (users, roles, permissions, enable/disable).
    Auth(AuthOp),
    /// A client's `op`, checked by the member that received it against auth revision
    /// `auth_revision` on behalf of `user` (empty while auth was disabled). Apply re-checks what
    /// only apply can know, as etcd: with auth enabled, an empty user is refused ("user name is
    /// empty"), a write checked at an older auth revision is refused ("revision of auth store is
    /// old", so a permission revoked meanwhile never lets it through), a lease put or revoke
    /// needs write access to every key on the lease, and auth changes need the root role.
    Guarded {
        auth_revision: u64,
        user: String,
        #[serde(deserialize_with = "nested::deserialize")]
        op: Box<Op>,
    },
    /// `op`, forwarded to the leader by member `member`, which waits for its outcome under
    /// `id` (in the router's waiter registry; apply on `member` returns the response as an
    /// [`crate::Answer`]). That member answers its client from its own apply of the entry, as
    /// etcd's followers do, instead of waiting for the leader's reply to
    /// travel back and then for its own apply. Applies exactly as `op` on every member.
    Origin {
        member: u64,
        id: u64,
        #[serde(deserialize_with = "nested::deserialize")]
        op: Box<Op>,
    },
    /// A change to the data tier's range directory or node records, which the meta group
    /// keeps beside etcd's keyspace (the etcd API does not show them). Answers
    /// [`Response::Directory`].
    Directory(cairn_cluster::directory::DirectoryOp),
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::Put(_) => "put",
            Op::DeleteRange(_) => "delete_range",
            Op::Txn(_) => "txn",
            Op::Compact(_) => "compact",
            Op::Alarm(_) => "alarm",
            Op::SetMemberAttrs { .. } => "set_member_attrs",
            Op::Directory(_) => "directory",
            Op::LeaseGrant(_) => "lease_grant",
            Op::LeaseRevoke(_) => "lease_revoke",
            Op::Batch(_) => "batch",
            Op::Auth(_) => "auth",
            Op::Guarded { op, .. } | Op::Origin { op, .. } => op.name(),
        }
    }
}

impl Op {
    /// Roughly the bytes this op adds to a log entry (for bounding batches).
    pub fn approx_bytes(&self) -> usize {
        use prost::Message;
        match self {
            Op::Put(r) => r.encoded_len(),
            Op::DeleteRange(r) => r.encoded_len(),
            Op::Txn(r) => r.encoded_len(),
            Op::Compact(r) => r.encoded_len(),
            Op::Alarm(r) => r.encoded_len(),
            Op::LeaseGrant(r) => r.encoded_len(),
            Op::LeaseRevoke(r) => r.encoded_len(),
            Op::SetMemberAttrs { attrs, .. } => {
                16 + attrs.name.len() + attrs.client_urls.iter().map(String::len).sum::<usize>()
            }
            Op::Batch(ops) => ops.iter().map(Op::approx_bytes).sum(),
            Op::Directory(d) => 64 + postcard::to_allocvec(d).map_or(0, |b| b.len()),
            Op::Auth(a) => 64 + postcard::to_allocvec(a).map_or(0, |b| b.len()),
            Op::Guarded { op, user, .. } => 16 + user.len() + op.approx_bytes(),
            Op::Origin { op, .. } => 16 + op.approx_bytes(),
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.op.name(), self.stamp_ms)
    }
}

/// The result of applying one command. `Error` is a definite answer (nothing changed), such as
/// a compaction of an already compacted revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Put(#[serde(with = "pb_bytes")] pb::PutResponse),
    DeleteRange(#[serde(with = "pb_bytes")] pb::DeleteRangeResponse),
    Txn(#[serde(with = "pb_bytes")] pb::TxnResponse),
    Compact(#[serde(with = "pb_bytes")] pb::CompactionResponse),
    Alarm(#[serde(with = "pb_bytes")] pb::AlarmResponse),
    LeaseGrant(#[serde(with = "pb_bytes")] pb::LeaseGrantResponse),
    LeaseRevoke(#[serde(with = "pb_bytes")] pb::LeaseRevokeResponse),
    /// For commands with nothing to report, and for log entries that are not commands.
    Done {
        revision: i64,
    },
    Error(cairn_types::Error),
    /// One response per op of an `Op::Batch`, in order.
    Batch(#[serde(deserialize_with = "nested::deserialize")] Vec<Response>),
    /// An `Op::Directory`: whether it was applied (false: an expected epoch had moved on, or a
    /// bootstrap found ranges already), and the directory's descriptors after it.
    Directory {
        applied: bool,
        ranges: Vec<cairn_cluster::directory::Descriptor>,
        /// The id a `Reserve` handed out (0 for the other ops).
        reserved: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_roundtrips_through_postcard() {
        let cmd = Command::new(
            42,
            Op::Put(pb::PutRequest { key: b"k".to_vec(), value: vec![0, 1, 2], prev_kv: true, ..Default::default() }),
        );
        let bytes = postcard::to_allocvec(&cmd).unwrap();
        let back: Command = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, cmd);
        assert_eq!(cmd.to_string(), "put@42");
    }
}
