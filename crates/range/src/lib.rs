//! The data tier's state machine, Redis semantics: what one range replica does with the
//! commands in its log. No I/O, no async, no clock: everything arrives as arguments.
//!
//! - [`keys`]: the stored form of a Redis key, `PREFIX_REDIS | slot (u16 BE) | key`, and
//!   Redis Cluster's hash slot. A slot is one contiguous interval, so ranges split at slot
//!   boundaries.
//! - [`record`]: the stored value: type, bytes, optional absolute expiry, and the version
//!   (timestamp) of the write that made it. Decoding bad bytes is an error, never a panic.
//! - [`cmd`]: [`cmd::WriteReq`] (a write as the client said it, relative times and all) →
//!   [`cmd::WriteReq::resolve`] at the leader → [`cmd::DataCmd`] (what the log carries, all
//!   times absolute); [`cmd::ReadCmd`] for reads.
//! - [`exec`]: [`exec::apply`] and [`exec::read`] over the [`exec::KvAccess`] /
//!   [`exec::KvRead`] seams, answering protocol-neutral [`reply::Reply`]s with Redis 7's
//!   replies and error text. [`mem::MemKv`] is the in-memory map for tests.
//!
//! Invariants: apply is a function of (command, stored state, `now_ms`); a key whose expiry
//! is `<= now_ms` is absent to every command; a command that answers an error changes
//! nothing.
//!
//! Not yet: types other than strings (records carry a kind so `WRONGTYPE` works), MVCC
//! versions and transaction intents (records carry a version for them).

pub mod cmd;
pub mod exec;
pub mod glob;
pub mod keys;
pub mod mem;
pub mod num;
pub mod record;
pub mod reply;

pub use cmd::{DataCmd, ReadCmd, WriteReq};
pub use exec::{apply, read, ExecError, KvAccess, KvRead};
pub use keys::KeySpan;
pub use reply::Reply;
