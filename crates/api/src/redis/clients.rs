//! The node's open Redis connections, for CLIENT LIST, CLIENT INFO, INFO's `connected_clients`
//! and the `maxclients` limit.
//!
//! One registry per process, as Redis keeps one client list per server: a cairn node is one
//! process, and on a cluster each node lists the clients connected to it (as a Redis Cluster
//! node does). A connection registers when it starts and leaves when it ends; while it lives it
//! publishes what CLIENT LIST shows through atomics and two small locks, so listing never
//! waits for a connection's command.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use parking_lot::Mutex;

/// Where a connection comes from and goes to, as CLIENT LIST reports it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Peer {
    pub addr: Option<SocketAddr>,
    pub laddr: Option<SocketAddr>,
    /// The socket's file descriptor (`-1`: not a socket of this process, as Redis shows for
    /// its internal clients).
    pub fd: Option<i32>,
}

/// Client types CLIENT LIST TYPE filters by (Redis's `getClientTypeByName`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientType {
    Normal,
    Replica,
    PubSub,
    Master,
}

impl ClientType {
    pub fn by_name(name: &[u8]) -> Option<ClientType> {
        let n = String::from_utf8_lossy(name).to_ascii_lowercase();
        Some(match n.as_str() {
            "normal" => ClientType::Normal,
            "slave" | "replica" => ClientType::Replica,
            "pubsub" => ClientType::PubSub,
            "master" => ClientType::Master,
            _ => return None,
        })
    }
}

/// What one connection shows to CLIENT LIST, updated by the connection as it runs.
pub struct Client {
    pub id: u64,
    peer: Peer,
    created: Instant,
    /// Milliseconds after `created` of the last command.
    last_ms: AtomicU64,
    name: Mutex<Option<Vec<u8>>>,
    /// The full name of the last command looked up (`client|list`), Redis's `lastcmd`.
    cmd: Mutex<Option<&'static str>>,
    user: Mutex<String>,
    readonly: AtomicBool,
    resp: AtomicU8,
    /// The read buffer: bytes not yet run, and its free room.
    qbuf: AtomicU64,
    qbuf_free: AtomicU64,
    /// Argument bytes of the commands being run now.
    argv_mem: AtomicU64,
    /// The reply buffer's size, and the most bytes one read's replies took in it.
    rbs: AtomicU64,
    rbp: AtomicU64,
    /// What this connection adds to [`memory`]: its `tot-mem` when it last reported a change.
    mem: AtomicU64,
    /// Chosen for eviction ([`enforce`]): the connection closes at its next step.
    evicted: AtomicBool,
    /// Wakes the connection when it is evicted while it waits for its socket.
    evict: tokio::sync::Notify,
}

impl Client {
    pub fn name(&self) -> Option<Vec<u8>> {
        self.name.lock().clone()
    }

    pub fn set_name(&self, name: Option<Vec<u8>>) {
        *self.name.lock() = name;
    }

    /// A command named `cmd` (None: no such command) is about to run.
    pub fn command(&self, cmd: Option<&'static str>) {
        *self.cmd.lock() = cmd;
        self.last_ms.store(self.created.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub fn set_user(&self, user: &str) {
        let mut u = self.user.lock();
        if *u != user {
            *u = user.to_string();
        }
    }

    pub fn set_readonly(&self, on: bool) {
        self.readonly.store(on, Ordering::Relaxed);
    }

    pub fn set_resp(&self, version: u8) {
        self.resp.store(version, Ordering::Relaxed);
    }

    /// The read buffer after a read or a decode: `len` bytes held, `free` more fit.
    pub fn query_buffer(&self, len: usize, free: usize) {
        self.qbuf.store(len as u64, Ordering::Relaxed);
        self.qbuf_free.store(free as u64, Ordering::Relaxed);
        self.account();
    }

    pub fn running(&self, argv_bytes: usize) {
        self.argv_mem.store(argv_bytes as u64, Ordering::Relaxed);
        self.account();
    }

    /// One read's replies took `used` bytes of a reply buffer of `size`.
    pub fn replied(&self, used: usize, size: usize) {
        self.rbs.store(size as u64, Ordering::Relaxed);
        self.rbp.fetch_max(used as u64, Ordering::Relaxed);
        self.account();
    }

    /// CLIENT LIST's `tot-mem`: the buffers this connection holds, and its own record.
    fn tot_mem(&self) -> u64 {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        load(&self.qbuf) + load(&self.qbuf_free) + load(&self.argv_mem) + load(&self.rbs) + RECORD_BYTES
    }

    /// Brings the node's total ([`memory`]) up to date with this connection's `tot-mem`. An
    /// evicted connection counts no more: what it holds goes as it closes.
    fn account(&self) {
        if self.evicted() {
            return;
        }
        let now = self.tot_mem();
        let before = self.mem.swap(now, Ordering::AcqRel);
        MEMORY.fetch_add(now as i64 - before as i64, Ordering::AcqRel);
    }

    /// Whether [`enforce`] chose this connection for eviction.
    pub fn evicted(&self) -> bool {
        self.evicted.load(Ordering::Acquire)
    }

    /// [`enforce`]s `max` after a report of this connection: whether it is evicted.
    pub fn evicted_past(&self, max: u64) -> bool {
        enforce(max);
        self.evicted()
    }

    /// Completes once this connection is chosen for eviction (at once if it was already).
    pub async fn eviction(&self) {
        while !self.evicted() {
            self.evict.notified().await;
        }
    }

    /// Redis 7.0's `catClientInfoString` line, without its newline. Fields cairn has no
    /// counterpart for keep Redis's value for a client without them (no pub/sub, no MULTI,
    /// no reply list: replies are written before the next read).
    pub fn info_line(&self) -> String {
        let addr = |a: Option<SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
        let now = self.created.elapsed();
        let idle_ms = (now.as_millis() as u64).saturating_sub(self.last_ms.load(Ordering::Relaxed));
        let name = self.name.lock().clone().unwrap_or_default();
        let cmd = self.cmd.lock().unwrap_or("NULL");
        let (qbuf, qfree) = (self.qbuf.load(Ordering::Relaxed), self.qbuf_free.load(Ordering::Relaxed));
        let argv = self.argv_mem.load(Ordering::Relaxed);
        let (rbs, rbp) = (self.rbs.load(Ordering::Relaxed), self.rbp.load(Ordering::Relaxed));
        let tot = self.tot_mem();
        let mut s = String::with_capacity(320);
        let _ = write!(
            s,
            "id={} addr={} laddr={} fd={} name={} age={} idle={} flags={} db=0 sub=0 psub=0 ssub=0 multi=-1 \
             qbuf={qbuf} qbuf-free={qfree} argv-mem={argv} multi-mem=0 rbs={rbs} rbp={rbp} obl=0 oll=0 omem=0 \
             tot-mem={tot} events=r cmd={cmd} user={} redir=-1 resp={}",
            self.id,
            addr(self.peer.addr),
            addr(self.peer.laddr),
            self.peer.fd.unwrap_or(-1),
            String::from_utf8_lossy(&name),
            now.as_secs(),
            idle_ms / 1000,
            if self.readonly.load(Ordering::Relaxed) { "r" } else { "N" },
            self.user.lock(),
            self.resp.load(Ordering::Relaxed),
        );
        s
    }
}

static NEXT_CLIENT_ID: AtomicU64 = AtomicU64::new(1);

static CLIENTS: LazyLock<Mutex<BTreeMap<u64, Arc<Client>>>> = LazyLock::new(Default::default);

/// A connection's place in the registry; it leaves when this drops.
pub struct Registered(Arc<Client>);

impl std::ops::Deref for Registered {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.0
    }
}

impl Registered {
    /// The connection's record, shared (to wait for its eviction beside its other work).
    pub fn handle(&self) -> Arc<Client> {
        self.0.clone()
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        // Under the registry's lock, so that `enforce` never finds the memory of a connection
        // it cannot find.
        let mut all = CLIENTS.lock();
        MEMORY.fetch_sub(self.0.mem.swap(0, Ordering::AcqRel) as i64, Ordering::AcqRel);
        all.remove(&self.0.id);
    }
}

/// What a connection's record costs beyond its buffers (counted in its `tot-mem`).
const RECORD_BYTES: u64 = std::mem::size_of::<Client>() as u64;

/// The bytes the open connections hold: their `tot-mem` summed (INFO's `mem_clients_normal`),
/// evicted ones left out. Signed: a connection's report and its eviction may cross, which
/// leaves it below its sum for a moment.
static MEMORY: AtomicI64 = AtomicI64::new(0);

/// Connections closed by [`enforce`] since the process started (INFO's `evicted_clients`).
static EVICTED: AtomicU64 = AtomicU64::new(0);

/// The bytes the open connections (but those evicted) hold, as last reported by each.
pub fn memory() -> u64 {
    MEMORY.load(Ordering::Acquire).max(0) as u64
}

/// Connections evicted since the process started.
pub fn evicted() -> u64 {
    EVICTED.load(Ordering::Acquire)
}

/// Redis's client eviction (`maxmemory-clients`): while the open connections hold more than
/// `max` bytes, the one holding the most is evicted (closed at its next step, woken if it waits
/// for its socket), then the next, until what the others hold fits. `max == 0`: no limit, as in
/// Redis. Each connection calls this after it reports a change (each decode, each read while
/// its replies wait for the socket, each wave's replies), so the total overshoots `max` by at
/// most what one connection took since its last report: one read, one wave's replies.
pub fn enforce(max: u64) {
    if max == 0 || memory() <= max {
        return;
    }
    let all = CLIENTS.lock();
    if memory() <= max {
        return;
    }
    // Evicted ones are on their way out, and no longer counted.
    let mut by_size: Vec<(u64, &Arc<Client>)> =
        all.values().filter(|c| !c.evicted()).map(|c| (c.mem.load(Ordering::Acquire), c)).collect();
    by_size.sort_unstable_by_key(|(mem, _)| std::cmp::Reverse(*mem));
    for (mem, c) in by_size {
        if memory() <= max {
            break;
        }
        c.evicted.store(true, Ordering::Release);
        MEMORY.fetch_sub(c.mem.swap(0, Ordering::AcqRel) as i64, Ordering::AcqRel);
        c.evict.notify_one();
        EVICTED.fetch_add(1, Ordering::AcqRel);
        tracing::warn!(
            id = c.id,
            addr = %c.peer.addr.map(|a| a.to_string()).unwrap_or_default(),
            tot_mem = mem,
            maxmemory_clients = max,
            "Redis client evicted: the node's connections hold more than maxmemory-clients",
        );
    }
}

/// TLS handshakes under way: connections accepted and not registered yet. Each holds a socket
/// and its TLS state for up to the handshake's time limit, so they count against `maxclients`
/// with the registered ones: connections that never finish their handshake cannot pile up past
/// the limit.
static HANDSHAKES: AtomicUsize = AtomicUsize::new(0);

/// A TLS handshake's place among the connections (see [`handshake`]); given back when dropped.
pub struct Handshake(());

impl Drop for Handshake {
    fn drop(&mut self) {
        HANDSHAKES.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A place for a TLS handshake, or `None` when `max` connections are open or shaking hands
/// already. Drop it once the handshake is over, before [`register`]ing the connection.
pub fn handshake(max: usize) -> Option<Handshake> {
    let all = CLIENTS.lock();
    if all.len() + HANDSHAKES.load(Ordering::Acquire) >= max {
        return None;
    }
    HANDSHAKES.fetch_add(1, Ordering::AcqRel);
    drop(all);
    Some(Handshake(()))
}

/// Registers a new connection, or answers `None` when `max` connections are open (or shaking
/// hands) already (Redis's `maxclients`).
pub fn register(peer: Peer, max: usize) -> Option<Registered> {
    let mut all = CLIENTS.lock();
    if all.len() + HANDSHAKES.load(Ordering::Acquire) >= max {
        return None;
    }
    let c = Arc::new(Client {
        id: NEXT_CLIENT_ID.fetch_add(1, Ordering::Relaxed),
        peer,
        created: Instant::now(),
        last_ms: AtomicU64::new(0),
        name: Mutex::new(None),
        cmd: Mutex::new(None),
        user: Mutex::new("default".into()),
        readonly: AtomicBool::new(false),
        resp: AtomicU8::new(2),
        qbuf: AtomicU64::new(0),
        qbuf_free: AtomicU64::new(0),
        argv_mem: AtomicU64::new(0),
        rbs: AtomicU64::new(0),
        rbp: AtomicU64::new(0),
        mem: AtomicU64::new(0),
        evicted: AtomicBool::new(false),
        evict: tokio::sync::Notify::new(),
    });
    c.account();
    all.insert(c.id, c.clone());
    Some(Registered(c))
}

/// Open connections.
pub fn count() -> usize {
    CLIENTS.lock().len()
}

/// CLIENT LIST's text: one line per open connection of `kind` (all are normal clients for
/// now), oldest first, each ending in a newline.
pub fn list(kind: Option<ClientType>) -> String {
    if !matches!(kind, None | Some(ClientType::Normal)) {
        return String::new();
    }
    let all: Vec<Arc<Client>> = CLIENTS.lock().values().cloned().collect();
    lines(&all)
}

/// CLIENT LIST ID's text: the lines of the connections with these ids, in the order asked
/// (an id with no connection is skipped).
pub fn list_ids(ids: &[u64]) -> String {
    let found: Vec<Arc<Client>> = {
        let all = CLIENTS.lock();
        ids.iter().filter_map(|id| all.get(id).cloned()).collect()
    };
    lines(&found)
}

/// Each client's line, each ending in a newline (built after the registry's lock is let go).
fn lines(clients: &[Arc<Client>]) -> String {
    let mut s = String::new();
    for c in clients {
        s.push_str(&c.info_line());
        s.push('\n');
    }
    s
}
