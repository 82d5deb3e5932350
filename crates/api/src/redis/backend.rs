//! The seam between the RESP front end and the data tier.
//!
//! [`Backend`] is what a connection calls for data commands. The data tier implements it over
//! range routing (find the range of a key, send the request to its leader, retry on an epoch
//! mismatch); [`MemBackend`] implements it over one in-memory map with `cairn_range`'s
//! execution, for tests and the differential suite.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Mutex;

use cairn_range::cmd::{ReadCmd, WriteReq};
use cairn_range::mem::MemKv;
use cairn_range::{exec, KeySpan, Reply};

use super::command::ScanReq;

/// What a connection needs from the data tier. Every answer is a [`Reply`]; routing and
/// availability problems are error replies in Redis's vocabulary (`MOVED`, `TRYAGAIN`,
/// `CROSSSLOT`, `CLUSTERDOWN`).
pub trait Backend: Send + Sync + 'static {
    /// A write, resolved (`WriteReq::resolve`) and applied by the leader of its keys' range.
    fn write(&self, req: WriteReq) -> impl Future<Output = Reply> + Send;

    /// A read. Commands over a span (KEYS, DBSIZE) cover the whole keyspace; the
    /// implementation fans them out over ranges and merges.
    fn read(&self, cmd: ReadCmd) -> impl Future<Output = Reply> + Send;

    /// Several writes on distinct keys a client pipelined together, answered in order. An
    /// implementation may send those of one range together; by default, each as
    /// [`Backend::write`], concurrently.
    fn write_many(&self, reqs: Vec<WriteReq>) -> impl Future<Output = Vec<Reply>> + Send {
        futures::future::join_all(reqs.into_iter().map(|r| self.write(r)))
    }

    /// Several reads a client pipelined together, answered in order. An implementation may
    /// run those of one range as one batch; by default, each as [`Backend::read`],
    /// concurrently.
    fn read_many(&self, cmds: Vec<ReadCmd>) -> impl Future<Output = Vec<Reply>> + Send {
        futures::future::join_all(cmds.into_iter().map(|c| self.read(c)))
    }

    /// A read on a connection that sent READONLY: it may be answered by a replica that is
    /// not its range's leader, and so miss the latest writes. By default, as [`Backend::read`].
    fn read_replica(&self, cmd: ReadCmd) -> impl Future<Output = Reply> + Send {
        self.read(cmd)
    }

    /// SCAN with Redis's numeric cursor; replies `[cursor, [keys]]`.
    fn scan(&self, req: ScanReq) -> impl Future<Output = Reply> + Send;

    /// The cluster as Redis Cluster clients see it (CLUSTER SLOTS, SHARDS, NODES, ...).
    /// `None`, the default: a standalone server, which answers CLUSTER and READONLY with
    /// Redis's "ERR This instance has cluster support disabled".
    fn cluster(&self) -> Option<ClusterView> {
        None
    }

    /// The range holding each key, in order: a pipeline's reads and writes of one range keep
    /// their order (see `Conn::run_batch`). The default: one range holds every key.
    fn ranges_of(&self, keys: &[&[u8]]) -> Vec<u64> {
        vec![0; keys.len()]
    }

    /// For a cluster-aware connection: Redis Cluster's `MOVED slot host:port` when the
    /// range holding `keys` (all in one slot) is led by another node, and (with
    /// `replica_read`, a READONLY connection's read) has no replica here either. `None`: serve
    /// it here (proxying if need be). The default: never moved.
    fn moved(&self, _keys: &[&[u8]], _replica_read: bool) -> Option<Reply> {
        None
    }

    /// Whether new connections must authenticate first (`requirepass` or ACL users).
    fn auth_required(&self) -> bool {
        false
    }

    /// Check a user name and password (AUTH, HELLO AUTH). The default is Redis's with no
    /// password set: the `default` user accepts any password, and no other user exists.
    fn authenticate(&self, user: Vec<u8>, _pass: Vec<u8>) -> impl Future<Output = bool> + Send {
        let ok = user == b"default";
        async move { ok }
    }
}

/// A node as cluster clients address it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeAddr {
    /// Redis Cluster's 40-character node id.
    pub id: String,
    pub host: String,
    pub port: u16,
}

/// An interval of hash slots, the node that leads it and the nodes that replicate it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotShard {
    pub first: u16,
    pub last: u16,
    pub leader: NodeAddr,
    pub replicas: Vec<NodeAddr>,
}

/// What CLUSTER answers: this node, every node, and the slot intervals in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterView {
    pub myself: NodeAddr,
    pub nodes: Vec<NodeAddr>,
    pub shards: Vec<SlotShard>,
    /// Changes whenever the slot map does (Redis's config epoch).
    pub epoch: u64,
}

/// The most SCAN cursors a backend remembers; older ones are forgotten (and answered with
/// `ERR invalid cursor`).
pub const SCAN_CURSORS_MAX: usize = 10_000;

/// Numeric SCAN cursors for positions in the keyspace. Redis's cursor is a hash-table
/// position; cairn's is a key, which does not fit in a number, so each page's last key is
/// kept here under a fresh number.
#[derive(Debug, Default)]
pub struct ScanCursors {
    next_id: u64,
    keys: HashMap<u64, Vec<u8>>,
    order: VecDeque<u64>,
}

impl ScanCursors {
    /// The key a cursor continues after: `Ok(None)` for 0 (the start), `Err` if unknown.
    pub fn position(&self, cursor: u64) -> Result<Option<Vec<u8>>, Reply> {
        if cursor == 0 {
            return Ok(None);
        }
        self.keys.get(&cursor).cloned().map(Some).ok_or_else(|| Reply::err(cairn_range::reply::errors::INVALID_CURSOR))
    }

    /// A cursor for continuing after `key`.
    pub fn remember(&mut self, key: Vec<u8>) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        self.keys.insert(id, key);
        self.order.push_back(id);
        if self.order.len() > SCAN_CURSORS_MAX {
            if let Some(old) = self.order.pop_front() {
                self.keys.remove(&old);
            }
        }
        id
    }

    /// Turn a range's `[next-key-or-null, keys]` page into Redis's `[cursor, keys]`.
    pub fn page(&mut self, reply: Reply) -> Reply {
        match reply {
            Reply::Array(mut parts) if parts.len() == 2 => {
                let keys = parts.pop().expect("two parts");
                let cursor = match parts.pop().expect("two parts") {
                    Reply::Bulk(k) => self.remember(k),
                    _ => 0,
                };
                Reply::Array(vec![Reply::Bulk(cursor.to_string().into_bytes()), keys])
            }
            other => other,
        }
    }
}

/// One in-memory range holding every key, with time from `clock`.
pub struct MemBackend {
    kv: Mutex<MemKv>,
    cursors: Mutex<ScanCursors>,
    clock: Box<dyn Fn() -> i64 + Send + Sync>,
}

impl Default for MemBackend {
    fn default() -> MemBackend {
        MemBackend::with_clock(|| cairn_types::clock::wall_ms() as i64)
    }
}

impl MemBackend {
    pub fn new() -> MemBackend {
        MemBackend::default()
    }

    pub fn with_clock(clock: impl Fn() -> i64 + Send + Sync + 'static) -> MemBackend {
        MemBackend { kv: Mutex::new(MemKv::new()), cursors: Mutex::new(ScanCursors::default()), clock: Box::new(clock) }
    }

    fn internal(e: exec::ExecError) -> Reply {
        Reply::err(format!("ERR internal error: {e}"))
    }
}

// A std mutex: the map is touched without awaiting, and each command holds it for the
// length of one apply.
impl Backend for MemBackend {
    fn write(&self, req: WriteReq) -> impl Future<Output = Reply> + Send {
        let now = (self.clock)();
        let reply = match req.resolve(now) {
            Err(r) => r,
            Ok(cmd) => {
                let mut kv = self.kv.lock().unwrap_or_else(|p| p.into_inner());
                exec::apply(&cmd, &mut *kv, now).unwrap_or_else(Self::internal)
            }
        };
        async move { reply }
    }

    fn read(&self, cmd: ReadCmd) -> impl Future<Output = Reply> + Send {
        let now = (self.clock)();
        let kv = self.kv.lock().unwrap_or_else(|p| p.into_inner());
        let reply = exec::read(&cmd, &*kv, now).unwrap_or_else(Self::internal);
        async move { reply }
    }

    fn scan(&self, req: ScanReq) -> impl Future<Output = Reply> + Send {
        let reply = (|| {
            let mut cursors = self.cursors.lock().unwrap_or_else(|p| p.into_inner());
            let after = match cursors.position(req.cursor) {
                Ok(a) => a,
                Err(e) => return e,
            };
            let cmd =
                ReadCmd::Scan { span: KeySpan::redis(), after, count: req.count, pattern: req.pattern, kind: req.kind };
            let now = (self.clock)();
            let kv = self.kv.lock().unwrap_or_else(|p| p.into_inner());
            let page = exec::read(&cmd, &*kv, now).unwrap_or_else(Self::internal);
            cursors.page(page)
        })();
        async move { reply }
    }
}
