//! Client eviction (`maxmemory-clients`), in a process of its own: the node's registry of
//! Redis connections and the memory they hold are process-wide, and other tests' connections
//! would count too.

use std::sync::Arc;
use std::time::Duration;

use cairn_api::redis::clients;
use cairn_api::redis::{serve_client, Limits, MemBackend, Peer};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

const MIB: u64 = 1024 * 1024;

fn open(backend: &Arc<MemBackend>, limits: &Limits) -> DuplexStream {
    let (io, server) = tokio::io::duplex(1 << 20);
    tokio::spawn(serve_client(server, Peer::default(), backend.clone(), limits.clone()));
    io
}

/// Sends `bytes` and reads one whole reply, as its bytes (`None`: the server closed the
/// connection).
async fn call(io: &mut DuplexStream, bytes: &[u8]) -> Option<String> {
    io.write_all(bytes).await.unwrap();
    let mut got = Vec::new();
    reply(io, &mut got).await?;
    Some(String::from_utf8(got).unwrap())
}

/// Reads one RESP2 reply into `got` (arrays and bulks whole).
async fn reply(io: &mut DuplexStream, got: &mut Vec<u8>) -> Option<()> {
    let mut stack = 1i64;
    while stack > 0 {
        let start = got.len();
        while !got.ends_with(b"\r\n") || got.len() == start {
            got.push(byte(io).await?);
        }
        let line = std::str::from_utf8(&got[start..got.len() - 2]).unwrap().to_string();
        stack -= 1;
        let n: i64 = line[1..].parse().unwrap_or(-1);
        match line.as_bytes()[0] {
            b'*' if n > 0 => stack += n,
            b'$' if n >= 0 => {
                for _ in 0..n + 2 {
                    got.push(byte(io).await?);
                }
            }
            _ => {}
        }
    }
    Some(())
}

async fn byte(io: &mut DuplexStream) -> Option<u8> {
    let mut b = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(10), io.read(&mut b)).await.expect("a reply in time") {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(b[0]),
    }
}

/// Whether the server closed the connection (within 10 s).
async fn closed(io: &mut DuplexStream) -> bool {
    let mut b = [0u8; 64];
    matches!(tokio::time::timeout(Duration::from_secs(10), io.read(&mut b)).await, Ok(Ok(0) | Err(_)))
}

/// Reads everything until the server closes the connection: whether it did within 10 s.
async fn drained_to_close(io: &mut (impl AsyncReadExt + Unpin)) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut b = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, io.read(&mut b)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// Waits until the connections hold at least `bytes` (the server has read what was sent).
async fn memory_at_least(bytes: u64) {
    for _ in 0..1000 {
        if clients::memory() >= bytes {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the connections hold {} bytes, not {bytes}", clients::memory());
}

/// Waits up to 5 s for `n` connections to be open.
async fn until_open(n: usize) {
    for _ in 0..500 {
        if clients::count() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(clients::count(), n, "connections open");
}

/// Past `maxmemory-clients`, the connection holding the most is closed, even while it waits
/// for its socket, and the others go on; INFO counts it. (Before the limit existed, nothing
/// bounded what the node's connections held together: `maxclients` connections, each up to
/// `client-query-buffer-limit`.)
#[tokio::test]
async fn the_connection_holding_the_most_is_evicted_past_maxmemory_clients() {
    let limits = Limits { clients_memory_max: 4 * MIB, ..Limits::default() };
    let backend = Arc::new(MemBackend::new());
    let mut small = open(&backend, &limits);
    assert_eq!(call(&mut small, b"PING\r\n").await.as_deref(), Some("+PONG\r\n"));
    let config = call(&mut small, b"CONFIG GET maxmemory-clients\r\n").await.unwrap();
    assert_eq!(config, "*2\r\n$17\r\nmaxmemory-clients\r\n$7\r\n4194304\r\n");

    // A SET of a 3.5 MB value, half sent: its read buffer is reserved whole, under the limit
    // alone, and it waits for the rest.
    let mut big = open(&backend, &limits);
    big.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\na\r\n$3500000\r\nxxxx").await.unwrap();
    memory_at_least(3_500_000).await;
    // A second one of 2 MB takes the total past 4 MiB: the first, the larger, is closed, woken
    // from its wait; the second finishes.
    let mut second = open(&backend, &limits);
    second.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nb\r\n$2000000\r\n").await.unwrap();
    assert!(closed(&mut big).await, "the connection holding the most was not evicted");
    let mut value = vec![b'y'; 2_000_000];
    value.extend_from_slice(b"\r\n");
    assert_eq!(call(&mut second, &value).await.as_deref(), Some("+OK\r\n"));
    assert_eq!(call(&mut second, b"STRLEN b\r\n").await.as_deref(), Some(":2000000\r\n"));
    assert_eq!(call(&mut small, b"EXISTS a\r\n").await.as_deref(), Some(":0\r\n"), "the evicted SET ran");

    // One connection past the limit on its own is closed too.
    let mut alone = open(&backend, &limits);
    alone.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nc\r\n$5000000\r\n").await.unwrap();
    assert!(closed(&mut alone).await, "a connection past the limit alone was not evicted");

    // A pipeline whose replies pass the limit is cut short after the wave of commands that
    // passed it, not after the whole pipeline (its replies once piled up for all of it).
    let mut value = b"*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$1000000\r\n".to_vec();
    value.extend_from_slice(&[b'z'; 1_000_000]);
    value.extend_from_slice(b"\r\n");
    assert_eq!(call(&mut second, &value).await.as_deref(), Some("+OK\r\n"));
    // Only `small` stays open (with its few bytes), so the pipeline's connection is the one
    // that holds the most.
    drop(second);
    until_open(1).await;
    let mut piped = open(&backend, &limits);
    piped.write_all(&b"GET big\r\nINCR n\r\n".repeat(100)).await.unwrap();
    assert!(closed(&mut piped).await, "a pipeline past the limit was not evicted");
    let n = call(&mut small, b"GET n\r\n").await.unwrap();
    let n: u32 = n.split("\r\n").nth(1).unwrap().parse().unwrap();
    assert!(n > 0 && n < 10, "{n} of the pipeline's 100 INCRs ran before it was evicted");

    // So is one whose commands run one by one (not in waves: COMMAND DOCS, some 100 KB each),
    // after the command that passed the limit: the INCR at the end of its pipeline never runs.
    let mut docs = open(&backend, &limits);
    let mut pipeline = b"COMMAND DOCS\r\n".repeat(1000);
    pipeline.extend_from_slice(b"INCR after-docs\r\n");
    docs.write_all(&pipeline).await.unwrap();
    assert!(drained_to_close(&mut docs).await, "a pipeline of COMMAND DOCS past the limit was not evicted");
    assert_eq!(call(&mut small, b"EXISTS after-docs\r\n").await.as_deref(), Some(":0\r\n"));

    // A client that sends on without reading its replies: what the node reads ahead while the
    // replies wait for room counts too (it once did not, up to the query buffer limit).
    let flood = open(&backend, &limits);
    let (mut from, mut to) = tokio::io::split(flood);
    to.write_all(b"GET big\r\nGET big\r\n").await.unwrap();
    let sender = tokio::spawn(async move {
        let _ = to.write_all(&b"PING\r\n".repeat(1_000_000)).await;
        to
    });
    // Evicted while it reads nothing.
    for _ in 0..1000 {
        if clients::evicted() == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(clients::evicted(), 5, "a client reading nothing was not evicted");
    assert!(drained_to_close(&mut from).await, "the evicted connection stayed open");
    drop(sender.await);

    // INFO: five evictions, and what the open connections hold, under the limit.
    let info = call(&mut small, b"INFO stats\r\n").await.unwrap();
    assert!(info.contains("evicted_clients:5\r\n"), "{info}");
    let held = clients::memory();
    assert!(held > 0 && held < 4 * MIB, "the open connections hold {held} bytes");
    drop(small);
    until_open(0).await;
    assert_eq!(clients::memory(), 0, "memory of closed connections still counted");
}
