//! Differential test: the same byte streams go to a real Redis 7 and to cairn's RESP
//! connection handler over the in-memory backend, and the replies must be the same bytes.
//!
//! Replies that legitimately differ are checked for shape instead: TIME and CLIENT ID (values),
//! HELLO (id, version), KEYS and SCAN (order; SCAN's cursors), PTTL (milliseconds pass between
//! the two servers; compared with a tolerance), COMMAND INFO of CLIENT, COMMAND and CONFIG
//! (cairn has fewer subcommands, so the first nine fields are compared), COMMAND DOCS
//! (summary, since, group, complexity). Every mismatch is collected and the test fails listing them all.
//!
//! Needs `redis-server` (7.x) on PATH; scripts/test installs it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_api::redis::{serve_connection, Limits, MemBackend};

// ---------------------------------------------------------------------------------------------
// The two servers.

struct RedisServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn start_redis() -> RedisServer {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (apt-get install redis-server): scripts/test does it");
    let server = RedisServer { child, port, _dir: dir };
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    server
}

/// cairn's handler on a background runtime; returns its port.
fn start_cairn() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let backend = Arc::new(MemBackend::new());
            loop {
                let (sock, _) = listener.accept().await.expect("accept");
                let backend = backend.clone();
                tokio::spawn(async move {
                    let _ = serve_connection(sock, backend, Limits::default()).await;
                });
            }
        });
    });
    port
}

// ---------------------------------------------------------------------------------------------
// A raw RESP client.

struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn connect(port: u16) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        Client { stream, buf: Vec::new() }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// One complete reply's bytes, or None at end of stream.
    fn reply(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(n) = frame_len(&self.buf, 0) {
                return Some(self.buf.drain(..n).collect());
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("read: {e} (have {:?})", String::from_utf8_lossy(&self.buf)),
            }
        }
    }

    /// Whether the server has closed the connection (after a protocol error or QUIT).
    fn closed(&mut self) -> bool {
        self.buf.is_empty() && {
            let mut b = [0u8; 1];
            matches!(self.stream.read(&mut b), Ok(0))
        }
    }
}

fn line_end(b: &[u8], from: usize) -> Option<usize> {
    b[from..].windows(2).position(|w| w == b"\r\n").map(|p| from + p)
}

/// The length of the complete RESP2/RESP3 value at `at`, if it has all arrived.
fn frame_len(b: &[u8], at: usize) -> Option<usize> {
    let kind = *b.get(at)?;
    let end = line_end(b, at)?;
    // Only lengths are parsed; status and error lines may hold any bytes.
    let head = || std::str::from_utf8(&b[at + 1..end]).ok();
    let after = end + 2;
    match kind {
        b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => Some(after - at),
        b'$' | b'!' | b'=' => {
            let n: i64 = head()?.parse().ok()?;
            if n < 0 {
                return Some(after - at);
            }
            let total = after + n as usize + 2;
            (b.len() >= total).then_some(total - at)
        }
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let n: i64 = head()?.parse().ok()?;
            let items = if matches!(kind, b'%' | b'|') { 2 * n } else { n };
            let mut pos = after;
            for _ in 0..items.max(0) {
                pos += frame_len(b, pos)?;
            }
            Some(pos - at)
        }
        _ => panic!("unknown reply type {:?}", String::from_utf8_lossy(&b[at..])),
    }
}

/// A parsed reply, for the shape comparisons.
#[derive(Debug, Clone, PartialEq)]
enum Val {
    Line(u8, Vec<u8>),
    Bulk(Option<Vec<u8>>),
    Agg(u8, Vec<Val>),
}

fn parse(b: &[u8]) -> Val {
    fn go(b: &[u8], at: usize) -> (Val, usize) {
        let end = line_end(b, at).expect("line");
        let head = &b[at + 1..end];
        let n = || std::str::from_utf8(head).unwrap().parse::<i64>().unwrap();
        match b[at] {
            b'$' => {
                let len = n();
                if len < 0 {
                    (Val::Bulk(None), end + 2)
                } else {
                    let s = end + 2;
                    (Val::Bulk(Some(b[s..s + len as usize].to_vec())), s + len as usize + 2)
                }
            }
            k @ (b'*' | b'~' | b'%') => {
                let items = if k == b'%' { 2 * n() } else { n() };
                let mut pos = end + 2;
                let mut out = Vec::new();
                for _ in 0..items.max(0) {
                    let (v, p) = go(b, pos);
                    out.push(v);
                    pos = p;
                }
                (Val::Agg(k, out), pos)
            }
            k => (Val::Line(k, head.to_vec()), end + 2),
        }
    }
    go(b, 0).0
}

fn items(v: &Val) -> Vec<Val> {
    match v {
        Val::Agg(_, items) => items.clone(),
        other => panic!("not an aggregate: {other:?}"),
    }
}

fn bulk(v: &Val) -> Vec<u8> {
    match v {
        Val::Bulk(Some(b)) => b.clone(),
        other => panic!("not a bulk: {other:?}"),
    }
}

fn int(v: &Val) -> i64 {
    match v {
        Val::Line(b':', n) => std::str::from_utf8(n).unwrap().parse().unwrap(),
        other => panic!("not an integer: {other:?}"),
    }
}

fn cmd(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Split a command written as words (no quoting: words are separated by single spaces).
fn words(s: &str) -> Vec<&[u8]> {
    s.split(' ').map(str::as_bytes).collect()
}

// ---------------------------------------------------------------------------------------------
// The comparison driver.

struct Pair {
    redis: Client,
    cairn: Client,
    redis_port: u16,
    cairn_port: u16,
    mismatches: Vec<String>,
    compared: usize,
}

fn show(b: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(b))
}

impl Pair {
    fn new(redis_port: u16, cairn_port: u16) -> Pair {
        Pair {
            redis: Client::connect(redis_port),
            cairn: Client::connect(cairn_port),
            redis_port,
            cairn_port,
            mismatches: Vec::new(),
            compared: 0,
        }
    }

    fn reconnect(&mut self) {
        self.redis = Client::connect(self.redis_port);
        self.cairn = Client::connect(self.cairn_port);
    }

    fn both(&mut self, bytes: &[u8]) -> (Vec<u8>, Vec<u8>) {
        self.redis.send(bytes);
        self.cairn.send(bytes);
        let r = self.redis.reply();
        let c = self.cairn.reply();
        if r.is_none() || c.is_none() {
            // A side closed the connection: compare that as a reply, then start afresh.
            self.reconnect();
        }
        let closed = || b"<connection closed>".to_vec();
        (r.unwrap_or_else(closed), c.unwrap_or_else(closed))
    }

    fn note(&mut self, what: &str, r: &[u8], c: &[u8]) {
        self.mismatches.push(format!("{what}\n    redis: {}\n    cairn: {}", show(r), show(c)));
    }

    /// Send one command; the replies must be the same bytes.
    fn same(&mut self, args: &[&[u8]]) {
        let (r, c) = self.both(&cmd(args));
        self.compared += 1;
        if r != c {
            let what = args.iter().map(|a| show(a)).collect::<Vec<_>>().join(" ");
            self.note(&what, &r, &c);
        }
    }

    /// `same` for a command written as space-separated words.
    fn w(&mut self, line: &str) {
        self.same(&words(line));
    }

    /// Send raw bytes; `replies` replies must be the same bytes, then (if `closes`) both
    /// servers must close the connection.
    fn raw(&mut self, bytes: &[u8], replies: usize, closes: bool) {
        self.redis.send(bytes);
        self.cairn.send(bytes);
        let mut r = Vec::new();
        let mut c = Vec::new();
        for _ in 0..replies {
            r.extend(self.redis.reply().unwrap_or_default());
            c.extend(self.cairn.reply().unwrap_or_default());
        }
        self.compared += 1;
        let what = format!("raw {}", show(&bytes[..bytes.len().min(80)]));
        if r != c {
            self.note(&what, &r, &c);
        }
        if closes {
            let (rc, cc) = (self.redis.closed(), self.cairn.closed());
            if !(rc && cc) {
                self.mismatches.push(format!("{what}: closed? redis {rc}, cairn {cc}"));
            }
            self.reconnect();
        }
    }

    /// Integer replies within `tolerance` of each other.
    fn approx(&mut self, line: &str, tolerance: i64) {
        let (r, c) = self.both(&cmd(&words(line)));
        self.compared += 1;
        let (rv, cv) = (parse(&r), parse(&c));
        let ok = match (&rv, &cv) {
            (Val::Line(b':', _), Val::Line(b':', _)) => (int(&rv) - int(&cv)).abs() <= tolerance,
            _ => false,
        };
        if !ok {
            self.note(&format!("{line} (within {tolerance})"), &r, &c);
        }
    }

    /// TTL-like replies that agree on -2 (no key), -1 (no expiry) or "some expiry": the
    /// value itself depends on the millisecond each server ran the command.
    fn ttl_class(&mut self, line: &str) {
        let (r, c) = self.both(&cmd(&words(line)));
        self.compared += 1;
        let class = |b: &[u8]| match parse(b) {
            Val::Line(b':', _) => int(&parse(b)).clamp(-2, 0),
            _ => i64::MIN,
        };
        if class(&r) != class(&c) || class(&r) == i64::MIN {
            self.note(&format!("{line} (class)"), &r, &c);
        }
    }

    /// Arrays of bulk strings equal as sorted lists (KEYS).
    fn sorted(&mut self, line: &str) {
        let (r, c) = self.both(&cmd(&words(line)));
        self.compared += 1;
        let sort = |b: &[u8]| match parse(b) {
            Val::Agg(k, mut v) => {
                v.sort_by_key(|x| format!("{x:?}"));
                Val::Agg(k, v)
            }
            other => other,
        };
        if sort(&r) != sort(&c) {
            self.note(&format!("{line} (sorted)"), &r, &c);
        }
    }

    /// A full SCAN with these options on both; the key sets must be equal.
    fn scan_all(&mut self, opts: &str) {
        let mut sets = Vec::new();
        for side in 0..2 {
            let mut cursor = b"0".to_vec();
            let mut keys = Vec::new();
            for _ in 0..10_000 {
                let mut args: Vec<&[u8]> = vec![b"SCAN", &cursor];
                if !opts.is_empty() {
                    args.extend(words(opts));
                }
                let client = if side == 0 { &mut self.redis } else { &mut self.cairn };
                client.send(&cmd(&args));
                let reply = parse(&client.reply().expect("reply"));
                let parts = items(&reply);
                let next = bulk(&parts[0]);
                keys.extend(items(&parts[1]).iter().map(bulk));
                if next == b"0" {
                    break;
                }
                cursor = next;
            }
            keys.sort();
            keys.dedup();
            sets.push(keys);
        }
        self.compared += 1;
        if sets[0] != sets[1] {
            let fmt = |k: &Vec<Vec<u8>>| k.iter().map(|x| show(x)).collect::<Vec<_>>().join(",");
            self.mismatches.push(format!("SCAN {opts}\n    redis: {}\n    cairn: {}", fmt(&sets[0]), fmt(&sets[1])));
        }
    }

    /// Run a check on both parsed replies.
    fn shape(&mut self, line: &str, check: impl Fn(&Val, &Val) -> Result<(), String>) {
        let (r, c) = self.both(&cmd(&words(line)));
        self.compared += 1;
        if let Err(e) = check(&parse(&r), &parse(&c)) {
            self.note(&format!("{line}: {e}"), &r, &c);
        }
    }
}

/// CLIENT INFO / CLIENT LIST text: every line has Redis 7.0's fields in its order, and the
/// fields that describe this connection's state (name, flags, last command, user, protocol)
/// agree on the first line with this connection's id (the other servers' clients differ);
/// ids, addresses, ages and buffer sizes differ by nature.
fn client_lines_shape(r: &Val, c: &Val) -> Result<(), String> {
    let fields = |v: &Val| -> Result<Vec<Vec<(String, String)>>, String> {
        let text = String::from_utf8(bulk(v)).map_err(|e| e.to_string())?;
        if !text.ends_with('\n') {
            return Err(format!("no newline at the end: {text:?}"));
        }
        Ok(text
            .lines()
            .map(|l| {
                l.split(' ')
                    .map(|f| {
                        let (k, v) = f.split_once('=').unwrap_or((f, ""));
                        (k.to_string(), v.to_string())
                    })
                    .collect()
            })
            .collect())
    };
    let (rl, cl) = (fields(r)?, fields(c)?);
    let keys = |l: &Vec<(String, String)>| l.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    let want = keys(&rl[0]);
    for l in rl.iter().chain(&cl) {
        if keys(l) != want {
            return Err(format!("fields {:?}, Redis has {want:?}", keys(l)));
        }
    }
    let get = |l: &Vec<(String, String)>, k: &str| l.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    // The line of the connection that asked: the one whose last command is this one.
    let mine = |ls: &Vec<Vec<(String, String)>>| {
        ls.iter().find(|l| get(l, "cmd").is_some_and(|c| c == "client|list" || c == "client|info")).cloned()
    };
    let (Some(r0), Some(c0)) = (mine(&rl), mine(&cl)) else { return Err("no line of this connection".into()) };
    for k in [
        "name",
        "flags",
        "db",
        "sub",
        "psub",
        "ssub",
        "multi",
        "multi-mem",
        "obl",
        "oll",
        "omem",
        "events",
        "cmd",
        "user",
        "redir",
        "resp",
    ] {
        if get(&r0, k) != get(&c0, k) {
            return Err(format!("{k}: redis {:?}, cairn {:?}", get(&r0, k), get(&c0, k)));
        }
    }
    Ok(())
}

/// HELLO's map: same keys in the same order, same values except id and version.
fn hello_shape(r: &Val, c: &Val) -> Result<(), String> {
    let (ri, ci) = (items(r), items(c));
    if ri.len() != ci.len() {
        return Err("different lengths".into());
    }
    for pair in (0..ri.len()).step_by(2) {
        if ri[pair] != ci[pair] {
            return Err(format!("key {:?} vs {:?}", ri[pair], ci[pair]));
        }
        let key = bulk(&ri[pair]);
        let (rv, cv) = (&ri[pair + 1], &ci[pair + 1]);
        match key.as_slice() {
            b"id" => {
                int(rv);
                int(cv);
            }
            b"version" => {
                bulk(cv);
            }
            _ if rv != cv => return Err(format!("{} differs", show(&key))),
            _ => {}
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The script.

#[test]
fn redis_differential() {
    let redis = start_redis();
    let cairn = start_cairn();
    let mut p = Pair::new(redis.port, cairn);

    strings(&mut p);
    counters(&mut p);
    expiry(&mut p);
    keyspace(&mut p);
    scanning(&mut p);
    connection(&mut p);
    arity_and_unknown(&mut p);
    introspection(&mut p);
    resp3(&mut p);
    protocol(&mut p);
    real_expiry(&mut p);
    for seed in [1, 2, 3] {
        random_commands(&mut p, seed, 1500);
    }

    eprintln!("redis differential: {} comparisons", p.compared);
    assert!(
        p.mismatches.is_empty(),
        "{} of {} replies differ from Redis:\n{}",
        p.mismatches.len(),
        p.compared,
        p.mismatches.join("\n")
    );
    assert!(p.compared > 5000, "only {} comparisons ran", p.compared);
}

fn strings(p: &mut Pair) {
    p.w("FLUSHALL");
    for line in [
        "SET k v",
        "GET k",
        "GET missing",
        "set k v1",
        "SeT k v2 GET",
        "SET k v3 NX",
        "SET k v3 XX",
        "GET k",
        "SET new v NX",
        "SET new2 v XX",
        "GET new2",
        "SET k v NX XX",
        "SET k v XX NX",
        "SET k v nx GET",
        "SET nxget v NX GET",
        "GET nxget",
        "SET k v xx get",
        "SET missing2 v XX GET",
        "SET k v GET GET",
        "SET k v NX NX",
        "SET k v EX 0",
        "SET k v EX -1",
        "SET k v PX 0",
        "SET k v EXAT 0",
        "SET k v PXAT -5",
        "SET k v EX abc",
        "SET k v EX 1.5",
        "SET k v EX 10 PX 10",
        "SET k v PX 10 EXAT 10",
        "SET k v EX 100 EX 200",
        "SET k v KEEPTTL EX 10",
        "SET k v EX 10 KEEPTTL",
        "SET k v EX",
        "SET k v FOO",
        "SET k v PERSIST",
        "SET k v EX 9223372036854775807",
        "SET k v EX 9223372036854776",
        "SET k v PX 9223372036854775807",
        "SET k v EX 0 NX XX",
        "SET k v EX abc NX XX",
        "SET k v EX 100",
        "TTL k",
        "SET k v2 KEEPTTL",
        "TTL k",
        "GET k",
        "SET k v3",
        "TTL k",
        "SET k v PXAT 4102444800000",
        "PEXPIRETIME k",
        "SET k v EXAT 4102444800",
        "EXPIRETIME k",
        "SET k v keepttl",
        "EXPIRETIME k",
        "SETNX k other",
        "SETNX fresh v",
        "GET fresh",
        "SETEX k 100 v",
        "TTL k",
        "SETEX k 0 v",
        "SETEX k -10 v",
        "SETEX k abc v",
        "SETEX k 9223372036854775807 v",
        "PSETEX k 100000 v",
        "TTL k",
        "PSETEX k 0 v",
        "PSETEX k abc v",
        "GETSET k new",
        "TTL k",
        "GETSET missing3 v",
        "GET missing3",
        "GETDEL k",
        "GETDEL k",
        "EXISTS k",
        "SET gx v",
        "GETEX gx",
        "GETEX gx EX 100",
        "TTL gx",
        "GETEX gx PERSIST",
        "TTL gx",
        "GETEX gx PX 100000",
        "TTL gx",
        "GETEX gx EXAT 4102444800",
        "EXPIRETIME gx",
        "GETEX gx PXAT 4102444800123",
        "PEXPIRETIME gx",
        "GETEX missing EX 0",
        "GETEX missing EX abc",
        "GETEX missing FOO",
        "GETEX gx EX 0",
        "GETEX gx PX -1",
        "GETEX gx EX abc",
        "GETEX gx EX 9223372036854775807",
        "GETEX gx PERSIST EX 10",
        "GETEX gx EX 10 PERSIST",
        "GETEX gx NX",
        "GETEX gx KEEPTTL",
        "GETEX gx GET",
        "GETEX gx EX",
        "GETEX gx EXAT 1",
        "GET gx",
        "EXISTS gx",
        "MSET a 1 b 2 c 3",
        "MGET a b c missing",
        "MSET a",
        "MSET a 1 b",
        "MSET a 1 a 2",
        "GET a",
        "MSETNX a 1 z 2",
        "GET z",
        "MSETNX y 1 z 2",
        "MGET y z",
        "MSETNX y",
        "MSETNX q 1 q 2",
        "GET q",
        "APPEND ap hello",
        "APPEND ap _world",
        "GET ap",
        "STRLEN ap",
        "STRLEN missing",
        "APPEND ap ",
        "SETRANGE sr 5 hi",
        "GET sr",
        "STRLEN sr",
        "SETRANGE sr 0 HE",
        "GET sr",
        "SETRANGE sr 10 tail",
        "GET sr",
        "SETRANGE sr -1 x",
        "SETRANGE sr abc x",
        "SETRANGE sr 536870912 x",
        "SETRANGE sr 536870911 xx",
        "SETRANGE newsr 536870912 x",
        "SET gr This_is_a_string",
        "GETRANGE gr 0 3",
        "GETRANGE gr -3 -1",
        "GETRANGE gr 0 -1",
        "GETRANGE gr 10 100",
        "GETRANGE gr 5 3",
        "GETRANGE gr -1 -5",
        "GETRANGE gr -100 -90",
        "GETRANGE gr -100 5",
        "GETRANGE gr 9223372036854775807 -9223372036854775808",
        "GETRANGE gr a 1",
        "GETRANGE gr 1 b",
        "GETRANGE missing 0 -1",
        "SUBSTR gr 0 3",
        "STRLEN gr",
    ] {
        p.w(line);
    }
    // Empty values and keys, binary bytes, spaces.
    p.same(&[b"SET", b"", b""]);
    p.same(&[b"GET", b""]);
    p.same(&[b"SETRANGE", b"empty", b"0", b""]);
    p.same(&[b"EXISTS", b"empty"]);
    p.same(&[b"SETRANGE", b"ap", b"2", b""]);
    p.same(&[b"SET", b"bin\x00key", b"v\x00\xff\r\n"]);
    p.same(&[b"GET", b"bin\x00key"]);
    p.same(&[b"APPEND", b"bin\x00key", b"\x00"]);
    p.same(&[b"STRLEN", b"bin\x00key"]);
    p.same(&[b"SET", b"k", b"v", b"ex\x00junk", b"10"]);
    p.same(&[b"SET", b"sp ace", b"a b c"]);
    p.same(&[b"MGET", b"sp ace", b"bin\x00key", b""]);
}

fn counters(p: &mut Pair) {
    for line in [
        "INCR n",
        "INCR n",
        "INCRBY n 10",
        "DECR n",
        "DECRBY n 5",
        "GET n",
        "INCRBY n abc",
        "INCRBY n 1.5",
        "INCRBY n +1",
        "INCRBY n 01",
        "INCRBY n -0",
        "INCRBY n 9223372036854775808",
        "DECRBY n abc",
        "INCRBY n -12",
        "GET n",
        "SET n 9223372036854775807",
        "INCR n",
        "INCRBY n 0",
        "DECR n",
        "SET n -9223372036854775808",
        "DECR n",
        "INCRBY n -1",
        "INCR n",
        "DECRBY n -9223372036854775808",
        "DECRBY n 9223372036854775807",
        "SET n 5",
        "DECRBY n -9223372036854775808",
        "GET n",
        "SET n 01",
        "INCR n",
        "SET n +1",
        "INCR n",
        "SET n 1.0",
        "INCR n",
        "SET n abc",
        "INCR n",
        "DECR n",
        "SET n 99999999999999999999",
        "INCR n",
        "SET n -0",
        "INCR n",
        "SET n 0",
        "INCR n",
        "SET t 1 EX 100",
        "INCR t",
        "TTL t",
        "INCRBY t 5",
        "TTL t",
        "SET f 10.50",
        "INCRBYFLOAT f 0.1",
        "INCRBYFLOAT f -5",
        "GET f",
        "SET f 5.0e3",
        "INCRBYFLOAT f 2.0e2",
        "INCRBYFLOAT f abc",
        "INCRBYFLOAT f 1,5",
        "INCRBYFLOAT f nan",
        "INCRBYFLOAT f inf",
        "INCRBYFLOAT f -inf",
        "GET f",
        "SET f abc",
        "INCRBYFLOAT f 1",
        "INCRBYFLOAT f abc",
        "INCRBYFLOAT newf 3",
        "INCRBYFLOAT newf 1.5",
        "INCRBYFLOAT newf -4.5",
        "GET newf",
        "SET ik 5",
        "INCRBYFLOAT ik 1",
        "INCRBYFLOAT ik -1.25",
        "SET ft 1 EX 100",
        "INCRBYFLOAT ft 1",
        "TTL ft",
        "SET lf 0.1",
        "INCRBYFLOAT lf 0.2",
        "INCRBYFLOAT lf 0.7",
        "INCRBYFLOAT lf 5000.6",
        "INCRBYFLOAT lf 1e400",
        "INCRBYFLOAT lf -1e400",
        "INCRBYFLOAT lf 1e-20",
        "INCRBYFLOAT lf 3.0000000000000000001",
        "INCRBYFLOAT lf 123456789.123456789",
        "INCRBYFLOAT lf -9999999999999999999",
        "INCRBYFLOAT lf 1.7976931348623157e308",
        "INCRBYFLOAT lf 1e4932",
        "INCRBYFLOAT lf 1e4933",
        "INCRBYFLOAT lf 1e-4940",
        "INCRBYFLOAT lf 1e-5000",
        "INCRBYFLOAT lf 0x1p3",
        "INCRBYFLOAT lf 0x10",
        "INCRBYFLOAT lf 0X1.8P1",
        "INCRBYFLOAT lf 1e",
        "INCRBYFLOAT lf 1e+",
        "INCRBYFLOAT lf infinity",
        "INCRBYFLOAT lf -INF",
        "INCRBYFLOAT lf NaN",
        "INCRBYFLOAT lf .",
        "INCRBYFLOAT lf 0x",
        "INCRBYFLOAT lf 1E3",
        "GET lf",
        "SET lf -0.0",
        "INCRBYFLOAT lf -0",
        "SET lf 1e-20",
        "INCRBYFLOAT lf -1e-20",
        "SET lf -5e-18",
        "INCRBYFLOAT lf 0",
        "SET lf 0x1p-16400",
        "INCRBYFLOAT lf 0",
        "SET f2 3",
        "INCRBYFLOAT f2 +2",
        "INCRBYFLOAT f2 .5",
        "INCRBYFLOAT f2 5.",
        "INCRBYFLOAT f2 1e2",
        "GET f2",
    ] {
        p.w(line);
    }
    p.same(&[b"INCRBYFLOAT", b"f2", b" 1"]);
    p.same(&[b"INCRBYFLOAT", b"f2", b"1 "]);
    p.same(&[b"INCRBYFLOAT", b"f2", b""]);
    p.same(&[b"INCRBY", b"n", b" 1"]);
    p.same(&[b"INCRBY", b"n", b""]);
}

fn expiry(p: &mut Pair) {
    for line in [
        "SET e v",
        "TTL e",
        "PTTL e",
        "EXPIRETIME e",
        "PEXPIRETIME e",
        "TTL missing",
        "PTTL missing",
        "EXPIRETIME missing",
        "PEXPIRETIME missing",
        "EXPIRE e 100",
        "TTL e",
        "EXPIRE e 100 NX",
        "EXPIRE e 200 XX",
        "TTL e",
        "EXPIRE e 50 GT",
        "EXPIRE e 300 GT",
        "TTL e",
        "EXPIRE e 400 LT",
        "EXPIRE e 10 LT",
        "TTL e",
        "EXPIRE e 500 XX GT",
        "TTL e",
        "EXPIRE e 100 XX LT",
        "TTL e",
        "EXPIRE e 100 gt lt",
        "EXPIRE e 10 NX XX",
        "EXPIRE e 10 NX GT",
        "EXPIRE e 10 NX LT",
        "EXPIRE e 10 GT LT",
        "EXPIRE e 10 LT GT",
        "EXPIRE e 10 XX NX",
        "EXPIRE e 10 FOO",
        "EXPIRE e abc",
        "EXPIRE e abc FOO",
        "EXPIRE e abc NX XX",
        "EXPIRE e 1.5",
        "EXPIRE missing 10",
        "EXPIRE missing 10 NX",
        "SET nottl v",
        "EXPIRE nottl 10 XX",
        "EXPIRE nottl 10 GT",
        "TTL nottl",
        "EXPIRE nottl 100 LT",
        "TTL nottl",
        "PERSIST nottl",
        "EXPIRE nottl 100 NX",
        "TTL nottl",
        "PERSIST nottl",
        "PERSIST nottl",
        "TTL nottl",
        "PERSIST missing",
        "EXPIRE e 9223372036854775807",
        "EXPIRE e -9223372036854775808",
        "EXPIRE e 9223372036854775",
        "PEXPIRE e 9223372036854775807",
        "EXPIREAT e 9223372036854775807",
        "PEXPIREAT e 9223372036854775807",
        "PEXPIRETIME e",
        "EXPIREAT e 4102444800",
        "EXPIRETIME e",
        "PEXPIRETIME e",
        "PEXPIREAT e 4102444800999",
        "EXPIRETIME e",
        "PEXPIRETIME e",
        "EXPIREAT e 4102444801 GT",
        "EXPIREAT e 4102444700 GT",
        "EXPIREAT e 4102444700 LT",
        "EXPIRETIME e",
        "PEXPIRE e 100000",
        "TTL e",
        "PEXPIRE e 100000 XX",
        "PEXPIREAT e abc",
        "EXPIREAT e abc",
        "EXPIRE e 0",
        "EXISTS e",
        "TTL e",
        "SET e v",
        "EXPIRE e -1",
        "GET e",
        "SET e v",
        "PEXPIRE e -100",
        "EXISTS e",
        "SET e v",
        "EXPIREAT e 1",
        "EXISTS e",
        "SET e v",
        "PEXPIREAT e 0",
        "EXISTS e",
        "SET e v EX 100",
        "EXPIRE e 0 NX",
        "EXISTS e",
        "EXPIRE e 0 XX",
        "EXISTS e",
        "SET e v",
        "EXPIRE e -5 GT",
        "EXPIRE e -5 LT",
        "EXISTS e",
        "SET e v EX 100",
        "EXPIRE e 50 GT",
        "EXPIRE e 200 LT",
        "TTL e",
    ] {
        p.w(line);
    }
    p.w("SET e v PX 100000");
    p.approx("PTTL e", 50);
    p.w("TTL e");
}

fn keyspace(p: &mut Pair) {
    for line in [
        "MSET d1 1 d2 2 d3 3",
        "DEL d1 d2 missing",
        "DEL d1",
        "DEL d3 d3",
        "UNLINK d3",
        "SET d1 1",
        "UNLINK d1 missing",
        "MSET x1 1 x2 2",
        "EXISTS x1 x1 x2 missing",
        "EXISTS missing",
        "TOUCH x1 x2 missing",
        "TOUCH missing",
        "TYPE x1",
        "TYPE missing",
        "RENAME x1 rx",
        "GET x1",
        "GET rx",
        "RENAME missing other",
        "RENAME rx rx",
        "RENAME missing missing",
        "RENAMENX rx x2",
        "GET rx",
        "RENAMENX rx freshnx",
        "GET freshnx",
        "RENAMENX freshnx freshnx",
        "RENAMENX missing other",
        "SET rk v EX 100",
        "RENAME rk rk2",
        "TTL rk2",
        "EXISTS rk",
        "SET rk v",
        "RENAME rk2 rk",
        "TTL rk",
        "SET over v EX 100",
        "RENAME x2 over",
        "TTL over",
        "GET over",
        "DBSIZE",
        "FLUSHALL",
        "DBSIZE",
        "SET a 1",
        "FLUSHALL ASYNC",
        "DBSIZE",
        "SET a 1",
        "FLUSHDB SYNC",
        "DBSIZE",
        "FLUSHALL foo",
        "FLUSHALL SYNC ASYNC",
        "FLUSHDB ASYNC",
        "DBSIZE",
    ] {
        p.w(line);
    }
}

fn scanning(p: &mut Pair) {
    p.w("FLUSHALL");
    for i in 0..40 {
        p.w(&format!("SET scan:{i} v"));
    }
    for key in ["hello", "hallo", "hxllo", "hllo", "heeeello", "h*llo", "H[ae]llo", "a"] {
        p.same(&[b"SET", key.as_bytes(), b"v"]);
    }
    p.w("SET num 5");
    p.w("DBSIZE");
    for pattern in [
        "*",
        "scan:*",
        "scan:1*",
        "scan:?",
        "h?llo",
        "h*llo",
        "h[ae]llo",
        "h[^e]llo",
        "h[a-b]llo",
        "h[b-a]llo",
        "h\\*llo",
        "H*",
        "nomatch*",
        "[",
        "h[",
        "*o",
        "**",
        "a",
        "scan:[0-2]?",
    ] {
        p.sorted(&format!("KEYS {pattern}"));
        p.scan_all(&format!("MATCH {pattern}"));
    }
    p.scan_all("");
    p.scan_all("COUNT 3");
    p.scan_all("COUNT 1000");
    p.scan_all("MATCH scan:* COUNT 7");
    p.scan_all("TYPE string");
    p.scan_all("TYPE STRING MATCH h*");
    p.scan_all("TYPE list");
    p.scan_all("TYPE nosuchtype");
    for line in [
        "SCAN abc",
        "SCAN 1.5",
        "SCAN 0 COUNT 0",
        "SCAN 0 COUNT -1",
        "SCAN 0 COUNT abc",
        "SCAN 0 FOO",
        "SCAN 0 MATCH",
        "SCAN 0 COUNT",
        "SCAN 0 TYPE",
        "SCAN 0 MATCH a FOO",
        "SCAN 99999999999999999999",
        "KEYS",
        "KEYS a b",
        "SCAN",
    ] {
        p.w(line);
    }
}

fn connection(p: &mut Pair) {
    for line in [
        "PING",
        "ping hello",
        "PING a b",
        "ECHO hi",
        "ECHO",
        "ECHO a b",
        "SELECT 0",
        "SELECT 16",
        "SELECT -1",
        "SELECT abc",
        "SELECT 99999999999",
        "SELECT 2147483648",
        "SELECT -2147483649",
        "SELECT 2147483647",
        "SELECT",
        "CLIENT GETNAME",
        "CLIENT SETNAME conn1",
        "CLIENT GETNAME",
        "client getname",
        "CLIENT SETNAME a\tb",
        "CLIENT GETNAME",
        "CLIENT SETNAME",
        "CLIENT SETNAME a b",
        "CLIENT GETNAME x",
        "CLIENT ID x",
        "CLIENT INFO x",
        "CLIENT LIST TYPE foo",
        "CLIENT LIST TYPE",
        "CLIENT LIST TYPE normal x",
        "CLIENT LIST TYPE pubsub",
        "CLIENT LIST TYPE master",
        "CLIENT LIST type REPLICA",
        "CLIENT LIST TYPE slave",
        "CLIENT LIST ID",
        "CLIENT LIST ID abc",
        "CLIENT LIST ID 1 abc",
        "CLIENT LIST ID 1.5",
        "CLIENT LIST ID 99999999999999999999",
        "CLIENT LIST ID 999999",
        "CLIENT LIST ID -1 0",
        "CLIENT LIST x",
        "CLIENT LIST x y",
        "CLIENT",
        "CLIENT FOO",
        "client foo bar",
        "CONFIG GET maxmemory",
        "CONFIG GET save",
        "CONFIG GET appendonly",
        "CONFIG GET proto-max-bulk-len",
        "config get TIMEOUT",
        "CONFIG GET MaxMemory",
        "CONFIG GET maxmemory maxmemory",
        "CONFIG GET maxmemory-policy",
        "CONFIG GET notify-keyspace-events",
        "CONFIG GET nosuchparam",
        "CONFIG GET",
        "CONFIG",
        "CONFIG FOO",
        "AUTH x",
        "AUTH default x",
        "AUTH bob x",
        "AUTH a b c",
        "AUTH",
        "HELLO 4",
        "HELLO 1",
        "HELLO abc",
        "HELLO 3 FOO",
        "HELLO 3 AUTH bob x",
        "HELLO 3 AUTH default",
        "HELLO 2 SETNAME",
        "TIME x",
        "RESET x",
    ] {
        p.w(line);
    }
    p.same(&[b"CLIENT", b"SETNAME", b"a b"]);
    p.same(&[b"CLIENT", b"SETNAME", b"caf\xc3\xa9"]);
    p.same(&[b"HELLO", b"2", b"SETNAME", b"a b"]);
    p.same(&[b"CLIENT", b"SETNAME", b""]);
    p.w("CLIENT GETNAME");
    p.shape("CLIENT INFO", client_lines_shape);
    p.shape("CLIENT LIST", client_lines_shape);
    p.shape("CLIENT LIST TYPE normal", client_lines_shape);
    p.shape("CLIENT ID", |r, c| {
        int(r);
        (int(c) > 0).then_some(()).ok_or("id not positive".into())
    });
    p.shape("TIME", |r, c| {
        let (ri, ci) = (items(r), items(c));
        let secs = |v: &Vec<Val>| -> i64 { String::from_utf8(bulk(&v[0])).unwrap().parse().unwrap() };
        let micros = |v: &Vec<Val>| -> i64 { String::from_utf8(bulk(&v[1])).unwrap().parse().unwrap() };
        if ci.len() != 2 || (secs(&ri) - secs(&ci)).abs() > 2 || !(0..1_000_000).contains(&micros(&ci)) {
            return Err("TIME differs".into());
        }
        Ok(())
    });
    p.shape("HELLO", hello_shape);
    p.shape("HELLO 2", hello_shape);
    p.shape("HELLO 2 AUTH default anything SETNAME hconn", hello_shape);
    p.w("CLIENT GETNAME");
    p.w("RESET");
    p.w("CLIENT GETNAME");
    // QUIT answers +OK and closes.
    p.raw(&cmd(&[b"QUIT"]), 1, true);
    p.raw(&cmd(&[b"QUIT", b"x"]), 1, true);
    p.raw(b"PING\r\nQUIT\r\nPING\r\n", 2, true);
}

fn arity_and_unknown(p: &mut Pair) {
    for line in [
        "GET",
        "GET a b",
        "SET a",
        "SETNX a",
        "SETEX a 10",
        "PSETEX a",
        "GETSET a",
        "GETDEL",
        "GETDEL a b",
        "GETEX",
        "MGET",
        "MSET",
        "MSETNX",
        "APPEND a",
        "SETRANGE a 1",
        "GETRANGE a 1",
        "SUBSTR a",
        "STRLEN",
        "INCR",
        "INCR a b",
        "DECR",
        "INCRBY a",
        "DECRBY a",
        "INCRBYFLOAT a",
        "DEL",
        "UNLINK",
        "EXISTS",
        "TOUCH",
        "TYPE",
        "TTL",
        "PTTL a b",
        "EXPIRETIME",
        "PEXPIRETIME",
        "EXPIRE a",
        "PEXPIRE",
        "EXPIREAT a",
        "PEXPIREAT",
        "PERSIST",
        "RENAME a",
        "RENAMENX a",
        "DBSIZE x",
        "TIME 1",
        "FOO",
        "foo a b",
        "FOO a b c d",
        "NOSUCHCOMMAND x",
        "get_",
    ] {
        p.w(line);
    }
    let long = "x".repeat(200);
    p.w(&format!("FOO {long} b"));
    p.w(&format!("FOO a {long}"));
    p.w(&format!("{long} a"));
    let many: Vec<String> = (0..60).map(|i| format!("arg{i}")).collect();
    p.w(&format!("FOO {}", many.join(" ")));
    p.same(&[b"FOO", b"a\r\nb"]);
    p.same(&[b"FOO\x00BAR", b"x\x00y"]);
    p.same(&[b"F\xffOO", b"\xfe\xc3", b"x"]);
    p.same(&[b"CLIENT", b"\xff"]);
    p.same(&[b"EXPIRE", b"k", b"10", b"\xff"]);
    p.same(&[b"HELLO", b"3", b"\xe9t\xe9"]);
    p.same(&[b"SET", b"k", b"v", b"EX", b"1", b"X\r\nY"]);
    p.same(&[b"EXPIRE", b"k", b"10", b"a\nb"]);
}

fn introspection(p: &mut Pair) {
    let names = [
        "get",
        "set",
        "setnx",
        "setex",
        "psetex",
        "getset",
        "getdel",
        "getex",
        "mget",
        "mset",
        "msetnx",
        "append",
        "setrange",
        "getrange",
        "substr",
        "strlen",
        "incr",
        "decr",
        "incrby",
        "decrby",
        "incrbyfloat",
        "del",
        "unlink",
        "exists",
        "type",
        "ttl",
        "pttl",
        "expiretime",
        "pexpiretime",
        "expire",
        "pexpire",
        "expireat",
        "pexpireat",
        "persist",
        "rename",
        "renamenx",
        "touch",
        "scan",
        "keys",
        "dbsize",
        "flushall",
        "flushdb",
        "ping",
        "echo",
        "hello",
        "select",
        "quit",
        "reset",
        "time",
        "auth",
        "client",
        "command",
        "config",
        "client|id",
        "client|setname",
        "client|getname",
        "command|count",
        "command|info",
        "command|docs",
        "config|get",
    ];
    for name in names {
        let line = format!("COMMAND INFO {name}");
        if ["client", "command", "config"].contains(&name) {
            // cairn has fewer subcommands (the tenth field); the other nine must match.
            p.shape(&line, |r, c| {
                let (r, c) = (items(&items(r)[0]), items(&items(c)[0]));
                if r.len() != 10 || c.len() != 10 {
                    return Err("not ten fields".into());
                }
                (r[..9] == c[..9]).then_some(()).ok_or("first nine fields differ".into())
            });
        } else {
            p.w(&line);
        }
        let line = format!("COMMAND DOCS {name}");
        p.shape(&line, |r, c| {
            let doc = |v: &Val| -> Vec<Val> {
                let top = items(v);
                if top.len() != 2 {
                    return vec![];
                }
                items(&top[1])
                    .chunks(2)
                    .filter(|kv| matches!(bulk(&kv[0]).as_slice(), b"summary" | b"since" | b"group" | b"complexity"))
                    .flat_map(|kv| kv.to_vec())
                    .collect()
            };
            let (rd, cd) = (doc(r), doc(c));
            (!rd.is_empty() && rd == cd).then_some(()).ok_or("docs differ".into())
        });
    }
    p.w("INFO cluster");
    p.w("INFO CLUSTER");
    p.w("INFO nosuchsection");
    for line in ["INFO", "INFO server", "INFO all", "INFO server replication"] {
        p.shape(line, |r, c| {
            let text = |v: &Val| String::from_utf8(bulk(v)).unwrap();
            let (r, c) = (text(r), text(c));
            for want in ["# Server\r\nredis_version:", "redis_mode:standalone\r\n", "arch_bits:64\r\n"] {
                if !(r.contains(want) && c.contains(want)) {
                    return Err(format!("{want:?} missing"));
                }
            }
            for want in ["# Replication\r\nrole:master\r\n", "# Clients\r\nconnected_clients:"] {
                if r.contains(want) != c.contains(want) {
                    return Err(format!("{want:?} in one only"));
                }
            }
            Ok(())
        });
    }
    p.w("COMMAND INFO nosuchcommand");
    p.w("COMMAND INFO client|nosuch");
    p.w("COMMAND DOCS nosuchcommand");
    p.w("COMMAND FOO");
    p.w("COMMAND COUNT x");
    p.shape("COMMAND COUNT", |r, c| {
        int(r);
        (int(c) > 50).then_some(()).ok_or("too few commands".into())
    });
}

fn resp3(p: &mut Pair) {
    p.shape("HELLO 3", hello_shape);
    for line in [
        "FLUSHALL",
        "GET missing",
        "SET a 1",
        "MGET a missing",
        "GETDEL missing",
        "GETEX missing",
        "SET a 2 GET",
        "SET a 3 NX",
        "INCRBYFLOAT f 1.5",
        "EXISTS a",
        "TTL a",
        "TYPE a",
        "CONFIG GET maxmemory",
        "CONFIG GET nosuch",
        "CLIENT GETNAME",
        "PING",
        "ECHO x",
        "GET",
        "FOO",
        "SET a v EX 0",
        "INCR f",
        "KEYS nomatch",
        "INFO cluster",
        "INFO nosuchsection",
        "COMMAND INFO nosuchcommand",
        "COMMAND DOCS nosuchcommand",
    ] {
        p.w(line);
    }
    p.w("COMMAND INFO get");
    p.w("COMMAND INFO set rename mget");
    p.w("COMMAND INFO client|setname command|count");
    p.shape("HELLO 3 SETNAME three", hello_shape);
    p.w("CLIENT GETNAME");
    p.w("RESET");
    p.w("GET missing");
    p.shape("HELLO", hello_shape);
}

fn protocol(p: &mut Pair) {
    p.w("FLUSHALL");
    // Pipelined: many commands in one write, replies in order.
    let mut batch = Vec::new();
    let mut n = 0;
    for i in 0..50 {
        batch.extend(cmd(&[b"SET", format!("p{i}").as_bytes(), format!("{i}").as_bytes()]));
        batch.extend(cmd(&[b"INCR", format!("p{i}").as_bytes()]));
        batch.extend(cmd(&[b"GET", format!("p{i}").as_bytes()]));
        batch.extend(cmd(&[b"GET", b"missing"]));
        n += 4;
    }
    batch.extend(cmd(&[b"FOO"]));
    batch.extend(cmd(&[b"MGET", b"p1", b"p2", b"nope"]));
    n += 2;
    p.raw(&batch, n, false);
    // Inline commands, quoting and escapes.
    p.raw(b"PING\r\n", 1, false);
    p.raw(b"PING\n", 1, false);
    p.raw(b"  \r\n\r\nPING\r\n", 1, false);
    p.raw(b"SET inl \"a b\"\r\nGET inl\r\n", 2, false);
    p.raw(b"SET inl 'it\\'s'\r\nGET inl\r\n", 2, false);
    p.raw(b"SET inl \"\\x41\\x42\\n\\t\\z\"\r\nGET inl\r\n", 2, false);
    p.raw(b"SET  inl   spaced\t\tout  \r\nGET inl\r\n", 2, false);
    p.raw(b"ECHO \"\"\r\nECHO ''\r\n", 2, false);
    p.raw(b"FOO bar\r\n", 1, false);
    p.raw(b"*0\r\n*-1\r\nPING\r\n", 1, false);
    // A command split across writes.
    p.redis.send(b"*2\r\n$4\r\nECHO\r\n$5\r\nhel");
    p.cairn.send(b"*2\r\n$4\r\nECHO\r\n$5\r\nhel");
    std::thread::sleep(Duration::from_millis(50));
    p.raw(b"lo\r\n", 1, false);
    // Redis does not check the two bytes after a bulk.
    p.raw(b"*2\r\n$4\r\nECHO\r\n$2\r\nhiXX*1\r\n$4\r\nPING\r\n", 2, false);
    // Mixed inline and multibulk in one write.
    p.raw(b"PING\r\n*1\r\n$4\r\nPING\r\nECHO x\r\n", 3, false);
    // Protocol errors: the commands before run, the error is sent, the connection closes.
    let errors: &[&[u8]] = &[
        b"*1\r\n$-5\r\n",
        b"*1\r\n$abc\r\n",
        b"*1\r\n$536870913\r\n",
        b"*abc\r\n",
        b"*1\r\n:5\r\n",
        b"*1\r\nPING\r\n",
        b"*2\r\n$4\r\nECHO\r\n+x\r\n",
        b"*2\r\n$4\r\nECHO\r\n\xffx\r\n",
        b"SET a \"b\r\n",
        b"SET a 'b\r\n",
        b"SET a \"b\"c\r\n",
        b"*3000000000\r\n",
        b"*-",
    ];
    for e in errors {
        let complete = e.ends_with(b"\r\n");
        if complete {
            p.raw(e, 1, true);
        }
    }
    p.raw(b"PING\r\nECHO a\r\n*1\r\n$x\r\n", 3, true);
    let big_inline = vec![b'a'; 70 * 1024];
    p.raw(&big_inline, 1, true);
    let mut big_count = b"*".to_vec();
    big_count.extend(vec![b'1'; 70 * 1024]);
    p.raw(&big_count, 1, true);
    let mut big_bulk = b"*1\r\n$".to_vec();
    big_bulk.extend(vec![b'1'; 70 * 1024]);
    p.raw(&big_bulk, 1, true);
}

fn real_expiry(p: &mut Pair) {
    p.w("FLUSHALL");
    p.w("SET short v PX 150");
    p.w("SET short2 v PX 150");
    p.w("SET short3 1 PX 150");
    p.w("SET keep v");
    p.w("EXPIRE keep 1");
    p.w("GET short");
    p.w("EXISTS short short2");
    p.approx("PTTL short", 100);
    std::thread::sleep(Duration::from_millis(1300));
    for line in [
        "GET short",
        "EXISTS short short2",
        "TTL short",
        "PTTL short2",
        "TYPE short2",
        "STRLEN short2",
        "GETRANGE short2 0 -1",
        "MGET short short2 keep",
        "SET short2 v NX",
        "INCR short3",
        "TTL short3",
        "APPEND keep x",
        "GET keep",
        "EXPIRE short 10",
        "PERSIST short",
        "RENAME short x",
        "DBSIZE",
    ] {
        p.w(line);
    }
    p.sorted("KEYS *");
}

/// A small deterministic generator (xorshift64*), so a failing sequence can be replayed from
/// its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[(self.next() % from.len() as u64) as usize]
    }
}

/// Random command sequences over a few keys, compared reply by reply. Replies that depend on
/// the millisecond a command ran (TTL and friends after a relative expiry) are compared by
/// class only (no key, no expiry, an expiry); expiries are far from now.
fn random_commands(p: &mut Pair, seed: u64, n: usize) {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    p.w("FLUSHALL");
    let keys = ["a", "b", "c", "{t}d", "{t}e"];
    let vals = [
        "",
        "0",
        "1",
        "-1",
        "7",
        "x",
        "hello",
        "10.5",
        "0.1",
        "9223372036854775807",
        "-9223372036854775808",
        "01",
        "1e3",
        "abc",
    ];
    let ints = ["0", "1", "-1", "2", "100", "-100", "x", "9223372036854775807", "1.5"];
    let secs = ["100", "200", "1000", "0", "-1", "abc"];
    let before_start = p.mismatches.len();
    for i in 0..n {
        let k = rng.pick(&keys);
        let k2 = rng.pick(&keys);
        let v = rng.pick(&vals);
        let line = match rng.next() % 30 {
            0 => format!("SET {k} {v}"),
            1 => {
                let opts = [
                    "",
                    "NX",
                    "XX",
                    "GET",
                    "NX GET",
                    "XX GET",
                    "EX 100",
                    "PX 200000",
                    "KEEPTTL",
                    "EXAT 4102444800",
                    "EX 0",
                    "NX XX",
                    "GET KEEPTTL",
                    "XX EX 1000",
                ];
                format!("SET {k} {v} {}", rng.pick(&opts)).trim_end().to_string()
            }
            2 => format!("GET {k}"),
            3 => format!("MGET {k} {k2} nokey"),
            4 => format!("APPEND {k} {v}"),
            5 => format!("INCR {k}"),
            6 => format!("INCRBY {k} {}", rng.pick(&ints)),
            7 => format!("DECRBY {k} {}", rng.pick(&ints)),
            8 => format!("INCRBYFLOAT {k} {}", rng.pick(&["0.1", "-2.5", "1e2", "x", "3"])),
            9 => format!("DEL {k} {k2}"),
            10 => format!("EXISTS {k} {k2} {k}"),
            11 => {
                format!("EXPIRE {k} {} {}", rng.pick(&secs), rng.pick(&["", "NX", "XX", "GT", "LT", "XX GT", "NX GT"]))
                    .trim_end()
                    .to_string()
            }
            12 => format!("PERSIST {k}"),
            13 => format!("EXPIREAT {k} {}", rng.pick(&["4102444800", "4102444900", "1"])),
            14 => {
                let cmd = rng.pick(&["TTL", "PTTL", "EXPIRETIME", "PEXPIRETIME"]);
                p.ttl_class(&format!("{cmd} {k}"));
                continue;
            }
            15 => format!("GETEX {k} {}", rng.pick(&["", "PERSIST", "EX 100", "EXAT 4102444800", "PX 0"]))
                .trim_end()
                .to_string(),
            16 => format!("GETDEL {k}"),
            17 => format!("GETSET {k} {v}"),
            18 => format!("STRLEN {k}"),
            19 => format!("SETRANGE {k} {} {v}", rng.pick(&["0", "3", "-1", "x"])),
            20 => format!("GETRANGE {k} {} {}", rng.pick(&ints), rng.pick(&ints)),
            21 => format!("RENAME {k} {k2}"),
            22 => format!("RENAMENX {k} {k2}"),
            23 => format!("MSETNX {k} {v} {k2} {v}"),
            24 => format!("MSET {k} {v} {k2} 1"),
            25 => format!("TYPE {k}"),
            26 => format!("SETNX {k} {v}"),
            27 => format!("SETEX {k} {} {v}", rng.pick(&secs)),
            28 => "DBSIZE".to_string(),
            _ => format!("PERSIST {k}"),
        };
        // Empty values would split into nothing; send them as arguments.
        let args: Vec<&[u8]> = line.split(' ').map(str::as_bytes).collect();
        p.same(&args);
        if p.mismatches.len() > before_start {
            let last = p.mismatches.pop().expect("just pushed");
            p.mismatches.push(format!("random seed {seed}, command {i}: {last}"));
            return;
        }
    }
    p.sorted("KEYS *");
}
