//! The Redis (RESP) front end.
//!
//! A request walks: bytes → [`resp::Decoder`] (RESP2/RESP3 arrays or inline lines, with
//! Redis's limits and protocol errors) → [`command::parse`] (name, arity from [`table`],
//! options, Redis's error text) → either the connection itself ([`conn`]: PING, HELLO,
//! CLIENT, COMMAND, CONFIG GET ...) or the [`backend::Backend`] (data commands, as
//! `cairn_range` `WriteReq`/`ReadCmd`) → a protocol-neutral `cairn_range::Reply` →
//! [`resp::encode`] for the connection's protocol version.
//!
//! [`conn::serve_client`] runs one client over any `AsyncRead + AsyncWrite`: every complete
//! command in what has been read runs in order, and their replies go out in one write.
//! [`clients`] is the node's registry of open connections (CLIENT LIST, `maxclients`,
//! `maxmemory-clients`).
//! [`tier::TierBackend`] serves the data commands from the data tier (the server binds it to
//! the `--listen-redis-urls` listeners); [`backend::MemBackend`] serves everything from one
//! in-memory map, for tests.
//!
//! Not yet: MULTI/EXEC, pub/sub, blocking commands, types other than strings, key specs in
//! COMMAND INFO, CLIENT KILL.

pub mod backend;
pub mod clients;
pub mod command;
pub mod conn;
pub mod resp;
pub mod table;
pub mod tier;

pub use backend::{Backend, ClusterView, MemBackend, NodeAddr, SlotShard};
pub use clients::Peer;
pub use conn::{serve_client, serve_connection};
pub use resp::{Limits, Proto};
pub use tier::TierBackend;
