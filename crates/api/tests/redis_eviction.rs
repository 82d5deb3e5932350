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

    // INFO: two evictions, and what the open connections hold, under the limit.
    let info = call(&mut small, b"INFO stats\r\n").await.unwrap();
    assert!(info.contains("evicted_clients:2\r\n"), "{info}");
    let held = clients::memory();
    assert!(held > 0 && held < 4 * MIB, "the open connections hold {held} bytes");
    drop((small, second));
    for _ in 0..500 {
        if clients::count() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(clients::count(), 0);
    assert_eq!(clients::memory(), 0, "memory of closed connections still counted");
}
