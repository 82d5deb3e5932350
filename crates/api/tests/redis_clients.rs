//! The node's registry of Redis connections: CLIENT LIST / CLIENT INFO show the open ones with
//! Redis 7.0's fields, INFO counts them, and `maxclients` refuses one too many. The registry
//! is one per process, so this file holds a single test (its own process, no other tests'
//! connections in the list).

use std::net::SocketAddr;
use std::sync::Arc;

use cairn_api::redis::{serve_client, Limits, MemBackend, Peer};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// A client on an in-memory stream, served by the connection handler.
struct Client {
    io: DuplexStream,
    buf: Vec<u8>,
}

impl Client {
    fn open(peer: Peer, limits: Limits) -> Client {
        let (io, server) = tokio::io::duplex(1 << 20);
        tokio::spawn(serve_client(server, peer, Arc::new(MemBackend::new()), limits));
        Client { io, buf: Vec::new() }
    }

    /// Sends one command (inline) and reads one reply: a line, or a bulk / verbatim string.
    async fn call(&mut self, line: &str) -> String {
        self.io.write_all(format!("{line}\r\n").as_bytes()).await.unwrap();
        self.next().await
    }

    /// The next reply, read as it arrives.
    async fn next(&mut self) -> String {
        loop {
            if let Some(reply) = self.take() {
                return reply;
            }
            let mut chunk = [0u8; 4096];
            let n = self.io.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed; read {:?}", String::from_utf8_lossy(&self.buf));
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// One complete reply from the buffer: `$` and `=` as their text, others as their line.
    fn take(&mut self) -> Option<String> {
        let eol = self.buf.windows(2).position(|w| w == b"\r\n")?;
        let head = String::from_utf8(self.buf[..eol].to_vec()).unwrap();
        if !(head.starts_with('$') || head.starts_with('=')) || head == "$-1" {
            self.buf.drain(..eol + 2);
            return Some(head);
        }
        let len: usize = head[1..].parse().unwrap();
        if self.buf.len() < eol + 2 + len + 2 {
            return None;
        }
        let body = String::from_utf8(self.buf[eol + 2..eol + 2 + len].to_vec()).unwrap();
        self.buf.drain(..eol + 2 + len + 2);
        Some(if head.starts_with('=') { format!("={body}") } else { body })
    }
}

/// A CLIENT LIST line as (field, value) pairs, in order.
fn fields(line: &str) -> Vec<(String, String)> {
    line.split(' ')
        .map(|f| {
            let (k, v) = f.split_once('=').expect("field=value");
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn field(line: &str, k: &str) -> String {
    fields(line).into_iter().find(|(n, _)| n == k).map(|(_, v)| v).unwrap_or_else(|| panic!("no {k} in {line}"))
}

/// Redis 7.0's CLIENT LIST fields, in its order (`networking.c` `catClientInfoString`).
const REDIS_FIELDS: [&str; 28] = [
    "id",
    "addr",
    "laddr",
    "fd",
    "name",
    "age",
    "idle",
    "flags",
    "db",
    "sub",
    "psub",
    "ssub",
    "multi",
    "qbuf",
    "qbuf-free",
    "argv-mem",
    "multi-mem",
    "rbs",
    "rbp",
    "obl",
    "oll",
    "omem",
    "tot-mem",
    "events",
    "cmd",
    "user",
    "redir",
    "resp",
];

#[tokio::test]
async fn client_list_shows_the_open_connections_and_maxclients_refuses_one_too_many() {
    let addr: SocketAddr = "10.1.2.3:40000".parse().unwrap();
    let laddr: SocketAddr = "127.0.0.1:6379".parse().unwrap();
    let limits = Limits { clients_max: 2, ..Limits::default() };
    let mut a = Client::open(Peer { addr: Some(addr), laddr: Some(laddr), fd: Some(7) }, limits.clone());
    assert_eq!(a.call("CLIENT SETNAME alpha").await, "+OK");
    let a_id: u64 = a.call("CLIENT ID").await.trim_start_matches(':').parse().unwrap();
    let mut b = Client::open(Peer::default(), limits.clone());
    let b_id: u64 = b.call("CLIENT ID").await.trim_start_matches(':').parse().unwrap();

    // Both connections, oldest first, each line with Redis's fields and a newline.
    let list = b.call("CLIENT LIST").await;
    assert!(list.ends_with('\n'), "{list:?}");
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 2, "{list}");
    for l in &lines {
        let names: Vec<String> = fields(l).into_iter().map(|(k, _)| k).collect();
        assert_eq!(names, REDIS_FIELDS, "{l}");
    }
    let (la, lb) = (lines[0], lines[1]);
    assert_eq!(field(la, "id"), a_id.to_string());
    assert_eq!(field(la, "addr"), "10.1.2.3:40000");
    assert_eq!(field(la, "laddr"), "127.0.0.1:6379");
    assert_eq!(field(la, "fd"), "7");
    assert_eq!(field(la, "name"), "alpha");
    assert_eq!(field(la, "cmd"), "client|id");
    assert_eq!(field(la, "flags"), "N");
    assert_eq!(field(la, "user"), "default");
    assert_eq!(field(la, "resp"), "2");
    assert_eq!(field(lb, "id"), b_id.to_string());
    assert_eq!(field(lb, "fd"), "-1");
    assert_eq!(field(lb, "name"), "");
    assert_eq!(field(lb, "cmd"), "client|list");
    assert_eq!(b.call("CLIENT LIST TYPE normal").await.lines().count(), 2);
    assert_eq!(b.call("CLIENT LIST TYPE pubsub").await, "");
    assert_eq!(b.call("CLIENT LIST TYPE replica").await, "");
    // By id, in the order asked; an id with no connection is skipped.
    let by_id = b.call(&format!("CLIENT LIST ID {b_id} 999999 {a_id}")).await;
    let ids: Vec<String> = by_id.lines().map(|l| field(l, "id")).collect();
    assert_eq!(ids, [b_id.to_string(), a_id.to_string()]);
    assert_eq!(b.call("CLIENT LIST TYPE foo").await, "-ERR Unknown client type 'foo'");
    assert_eq!(b.call("CLIENT LIST ID x").await, "-ERR Invalid client ID");

    // CLIENT INFO: this connection's line; a verbatim string in RESP3, with resp=3.
    let info = a.call("CLIENT INFO").await;
    assert_eq!(info.lines().count(), 1);
    assert_eq!(field(info.trim_end(), "id"), a_id.to_string());
    assert_eq!(field(info.trim_end(), "cmd"), "client|info");
    // HELLO's map: seven keys and their values.
    assert_eq!(a.call("HELLO 3").await, "%7");
    for _ in 0..14 {
        a.next().await;
    }
    let info3 = a.call("CLIENT INFO").await;
    let text = info3.strip_prefix("=txt:").unwrap_or_else(|| panic!("not verbatim: {info3:?}"));
    assert_eq!(field(text.trim_end(), "resp"), "3");
    // An unknown command is no command (Redis shows NULL); a wrong arity still names it.
    assert!(a.call("NOSUCH").await.starts_with("-ERR unknown command"));
    assert_eq!(field(b.call(&format!("CLIENT LIST ID {a_id}")).await.trim_end(), "cmd"), "NULL");
    assert!(a.call("GET").await.starts_with("-ERR wrong number"));
    assert_eq!(field(b.call(&format!("CLIENT LIST ID {a_id}")).await.trim_end(), "cmd"), "get");

    // INFO counts them.
    let info = b.call("INFO clients").await;
    assert!(info.contains("connected_clients:2\r\nmaxclients:2\r\n"), "{info}");
    assert_eq!(b.call("CONFIG GET maxclients").await, "*2");
    assert_eq!((b.next().await, b.next().await), ("maxclients".to_string(), "2".to_string()));

    // Two are open: a third is refused as Redis refuses one past maxclients, and closed.
    let mut c = Client::open(Peer::default(), limits.clone());
    c.io.write_all(b"PING\r\n").await.unwrap();
    let mut got = Vec::new();
    c.io.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"-ERR max number of clients reached\r\n");
    // Once one leaves, a new one is served, and the list has forgotten the one that left.
    drop(a);
    let end = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while b.call("CLIENT LIST").await.lines().count() != 1 {
        assert!(tokio::time::Instant::now() < end, "a closed connection stays listed");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut d = Client::open(Peer::default(), limits);
    assert_eq!(d.call("PING").await, "+PONG");
}
