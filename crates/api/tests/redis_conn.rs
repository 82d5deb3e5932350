//! The RESP connection handler over in-memory streams: pipelining limits, closing on
//! protocol faults, authentication through the Backend seam, and decoder robustness.

use std::sync::Arc;

use bytes::BytesMut;
use cairn_api::redis::command::ScanReq;
use cairn_api::redis::resp::{DecodeError, Decoder};
use cairn_api::redis::{serve_connection, Backend, Limits, MemBackend};
use cairn_range::cmd::{ReadCmd, WriteReq};
use cairn_range::Reply;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Send `input`, close the write side, and return everything the server wrote.
async fn exchange<B: Backend>(backend: Arc<B>, limits: Limits, input: &[u8]) -> Vec<u8> {
    let (mut client, server) = tokio::io::duplex(1 << 20);
    let task = tokio::spawn(async move { serve_connection(server, backend, limits).await });
    client.write_all(input).await.unwrap();
    client.shutdown().await.unwrap();
    let mut out = Vec::new();
    client.read_to_end(&mut out).await.unwrap();
    task.await.unwrap().unwrap();
    out
}

#[tokio::test]
async fn pipelines_longer_than_the_batch_limit_answer_everything_in_order() {
    let limits = Limits { pipeline_commands_max: 3, ..Limits::default() };
    let mut input = Vec::new();
    let mut want = Vec::new();
    for i in 0..10 {
        input.extend(format!("INCR c\r\nECHO {i}\r\n").as_bytes());
        want.extend(format!(":{}\r\n${}\r\n{i}\r\n", i + 1, i.to_string().len()).as_bytes());
    }
    let out = exchange(Arc::new(MemBackend::new()), limits, &input).await;
    assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(&want));
}

#[tokio::test]
async fn an_oversized_command_closes_the_connection_without_a_reply() {
    let limits = Limits { query_bytes_max: 10, ..Limits::default() };
    let out = exchange(
        Arc::new(MemBackend::new()),
        limits,
        b"PING\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$20\r\n01234567890123456789\r\nPING\r\n",
    )
    .await;
    assert_eq!(out, b"+PONG\r\n");
}

#[tokio::test]
async fn a_protocol_error_is_answered_then_the_connection_closes() {
    let out = exchange(Arc::new(MemBackend::new()), Limits::default(), b"PING\r\n*1\r\n$-3\r\nPING\r\n").await;
    assert_eq!(out, b"+PONG\r\n-ERR Protocol error: invalid bulk length\r\n".to_vec());
}

/// A backend that wants a password, to exercise the auth seam.
struct Locked(MemBackend);

impl Backend for Locked {
    fn write(&self, req: WriteReq) -> impl std::future::Future<Output = Reply> + Send {
        self.0.write(req)
    }
    fn read(&self, cmd: ReadCmd) -> impl std::future::Future<Output = Reply> + Send {
        self.0.read(cmd)
    }
    fn scan(&self, req: ScanReq) -> impl std::future::Future<Output = Reply> + Send {
        self.0.scan(req)
    }
    fn auth_required(&self) -> bool {
        true
    }
    fn authenticate(&self, user: Vec<u8>, pass: Vec<u8>) -> impl std::future::Future<Output = bool> + Send {
        let ok = user == b"default" && pass == b"secret";
        async move { ok }
    }
}

#[tokio::test]
async fn commands_wait_for_authentication() {
    let out = exchange(
        Arc::new(Locked(MemBackend::new())),
        Limits::default(),
        b"NOSUCH x\r\nGET\r\nCLIENT FOO\r\nCLIENT LIST x\r\nGET k\r\nHELLO 3\r\nAUTH wrong\r\nAUTH secret\r\nGET k\r\nRESET\r\nGET k\r\nHELLO 3 AUTH default secret\r\nGET k\r\n",
    )
    .await;
    let text = String::from_utf8_lossy(&out);
    // As redis-server 7.0 with requirepass answers: an unknown command or subcommand and a
    // wrong arity before NOAUTH; a subcommand's own syntax after it.
    let expected_start = "-ERR unknown command 'NOSUCH', with args beginning with: 'x' \r\n\
        -ERR wrong number of arguments for 'get' command\r\n\
        -ERR unknown subcommand 'FOO'. Try CLIENT HELP.\r\n\
        -NOAUTH Authentication required.\r\n\
        -NOAUTH Authentication required.\r\n\
        -NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n\
        -WRONGPASS invalid username-password pair or user is disabled.\r\n\
        +OK\r\n\
        $-1\r\n\
        +RESET\r\n\
        -NOAUTH Authentication required.\r\n\
        %7\r\n";
    assert!(text.starts_with(expected_start), "{text}");
    // After HELLO 3 the null is RESP3's.
    assert!(text.ends_with("$7\r\nmodules\r\n*0\r\n_\r\n"), "{text}");
}

/// A client that sends its whole pipeline before reading a reply (as redis-py's pipelines
/// do) gets every reply: the connection keeps reading while its replies wait for room.
#[tokio::test]
async fn a_pipeline_sent_whole_before_any_reply_is_read_does_not_stall() {
    let input = "GET k\r\n".repeat(400_000);
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        exchange(Arc::new(MemBackend::new()), Limits::default(), input.as_bytes()),
    )
    .await
    .expect("the connection and its client waited for each other");
    assert_eq!(out.len(), 400_000 * "$-1\r\n".len());

    // The same over a stream that holds what is written until it is flushed, as TLS does.
    let (mut client, server) = tokio::io::duplex(1 << 20);
    let server = tokio::io::BufWriter::with_capacity(64 * 1024, server);
    let task = tokio::spawn(serve_connection(server, Arc::new(MemBackend::new()), Limits::default()));
    let talk = async {
        client.write_all(input.as_bytes()).await.unwrap();
        client.shutdown().await.unwrap();
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        out
    };
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), talk)
        .await
        .expect("over a buffering stream, the connection and its client waited for each other");
    assert_eq!(out.len(), 400_000 * "$-1\r\n".len());
    task.await.unwrap().unwrap();
}

/// Before AUTH a client may send only small commands (Redis 7's limits and lines); an AUTH
/// lifts them for the commands after it in the same pipeline.
#[tokio::test]
async fn a_client_must_authenticate_before_sending_large_commands() {
    let big = "x".repeat(20_000);
    let set = format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$20000\r\n{big}\r\n");
    let out = exchange(Arc::new(Locked(MemBackend::new())), Limits::default(), set.as_bytes()).await;
    assert_eq!(String::from_utf8_lossy(&out), "-ERR Protocol error: unauthenticated bulk length\r\n");
    let out = exchange(Arc::new(Locked(MemBackend::new())), Limits::default(), b"*11\r\n").await;
    assert_eq!(String::from_utf8_lossy(&out), "-ERR Protocol error: unauthenticated multibulk length\r\n");
    let input = format!("AUTH secret\r\n{set}*2\r\n$6\r\nSTRLEN\r\n$1\r\nk\r\n");
    let out = exchange(Arc::new(Locked(MemBackend::new())), Limits::default(), input.as_bytes()).await;
    assert_eq!(String::from_utf8_lossy(&out), "+OK\r\n+OK\r\n:20000\r\n");
}

#[tokio::test]
async fn scan_cursors_resume_and_unknown_ones_are_refused() {
    let backend = Arc::new(MemBackend::new());
    let mut input = Vec::new();
    for i in 0..25 {
        input.extend(format!("SET k{i} v\r\n").as_bytes());
    }
    input.extend(b"SCAN 0 COUNT 10\r\nSCAN 987654 COUNT 10\r\n");
    let out = exchange(backend, Limits::default(), &input).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("*2\r\n$1\r\n1\r\n*10\r\n"), "{text}");
    assert!(text.ends_with("-ERR invalid cursor\r\n"), "{text}");
}

fn decode_all(input: &[u8], chunks: &[usize]) -> (Vec<Vec<Vec<u8>>>, Option<DecodeError>) {
    let mut d = Decoder::new(Limits { inline_bytes_max: 64, bulk_bytes_max: 64, args_max: 8, ..Limits::default() });
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut rest = input;
    let mut sizes = chunks.iter().cycle();
    loop {
        loop {
            match d.decode(&mut buf) {
                Ok(Some(args)) => out.push(args),
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
        if rest.is_empty() {
            return (out, None);
        }
        let n = (*sizes.next().unwrap()).clamp(1, rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
    }
}

fn resp_ish() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"*".to_vec()),
        Just(b"$".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\"".to_vec()),
        Just(b"'".to_vec()),
        Just(b" ".to_vec()),
        Just(b"\\x4".to_vec()),
        (0i64..12).prop_map(|n| n.to_string().into_bytes()),
        Just(b"-1".to_vec()),
        Just(b"PING".to_vec()),
        Just(vec![b'a'; 30]),
        Just(b"*99999999999999999999999999999999".to_vec()),
        prop::collection::vec(any::<u8>(), 0..4),
    ];
    prop::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

proptest! {
    /// Whatever arrives and however it is split, the decoder never panics and sees the
    /// same commands and the same error.
    #[test]
    fn decoding_is_split_independent(input in resp_ish(), chunks in prop::collection::vec(1usize..9, 1..5)) {
        let whole = decode_all(&input, &[usize::MAX]);
        let split = decode_all(&input, &chunks);
        prop_assert_eq!(whole, split);
    }

    #[test]
    fn random_bytes_never_panic(input in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = decode_all(&input, &[7]);
    }
}

/// A backend whose commands on keys starting with `slow` take 50 ms, and which records how
/// many commands were in flight at once.
struct Slow {
    inner: MemBackend,
    in_flight: std::sync::atomic::AtomicUsize,
    most: std::sync::atomic::AtomicUsize,
    /// Each key's range is its first byte (else one range holds every key).
    ranges_by_first_byte: bool,
}

impl Slow {
    fn new(ranges_by_first_byte: bool) -> Slow {
        Slow { inner: MemBackend::new(), in_flight: Default::default(), most: Default::default(), ranges_by_first_byte }
    }
}

impl Slow {
    async fn timed<T>(&self, slow: bool, f: impl std::future::Future<Output = T>) -> T {
        use std::sync::atomic::Ordering::SeqCst;
        let now = self.in_flight.fetch_add(1, SeqCst) + 1;
        self.most.fetch_max(now, SeqCst);
        if slow {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let r = f.await;
        self.in_flight.fetch_sub(1, SeqCst);
        r
    }
}

fn is_slow(keys: Vec<&[u8]>) -> bool {
    keys.iter().any(|k| k.starts_with(b"slow"))
}

impl Backend for Slow {
    fn write(&self, req: WriteReq) -> impl std::future::Future<Output = Reply> + Send {
        let slow = is_slow(req.keys());
        self.timed(slow, self.inner.write(req))
    }
    fn read(&self, cmd: ReadCmd) -> impl std::future::Future<Output = Reply> + Send {
        let slow = is_slow(cmd.keys());
        self.timed(slow, self.inner.read(cmd))
    }
    fn scan(&self, req: ScanReq) -> impl std::future::Future<Output = Reply> + Send {
        self.inner.scan(req)
    }
    fn ranges_of(&self, keys: &[&[u8]]) -> Vec<u64> {
        keys.iter()
            .map(|k| if self.ranges_by_first_byte { k.first().copied().unwrap_or(0) as u64 } else { 0 })
            .collect()
    }
}

/// A read waits for the pipeline's writes before it in its range (and a write for the reads
/// before it there), as on a Redis Cluster node; in another range it runs beside them.
#[tokio::test]
async fn a_pipeline_keeps_the_order_of_reads_and_writes_of_one_range() {
    use std::sync::atomic::Ordering::SeqCst;
    for (by_first_byte, input, at_once) in [
        (false, "SET slowa v\r\nGET slowb\r\n", 1),
        (false, "GET slowb\r\nSET slowa v\r\n", 1),
        (true, "SET slowa v\r\nGET slowb\r\n", 1),
        (true, "SET slowa v\r\nGET xb\r\n", 2),
        // Reads with reads, and writes with writes, run together in one range too.
        (true, "GET slowa\r\nGET slowb\r\n", 2),
        (true, "SET slowa v\r\nSET slowb v\r\n", 2),
    ] {
        let backend = Arc::new(Slow::new(by_first_byte));
        let out = exchange(backend.clone(), Limits::default(), input.as_bytes()).await;
        assert!(!out.is_empty());
        assert_eq!(backend.most.load(SeqCst), at_once, "{input:?}, ranges by first byte: {by_first_byte}");
    }
}

#[tokio::test]
async fn a_pipeline_runs_commands_on_other_keys_concurrently_and_each_keys_in_order() {
    let backend = Arc::new(Slow::new(false));
    // Ten slow SETs on distinct keys, then commands on the same keys, which must see them;
    // an INCR chain on one key must stay in order; PING waits for everything before it.
    let mut input = Vec::new();
    let mut want = String::new();
    for i in 0..10 {
        input.extend(format!("SET slow{i} v{i}\r\n").as_bytes());
        want.push_str("+OK\r\n");
    }
    for i in 0..10 {
        input.extend(format!("APPEND slow{i} x\r\nINCR n\r\n").as_bytes());
        want.push_str(&format!(":3\r\n:{}\r\n", i + 1));
    }
    input.extend(b"PING\r\nGET slow3\r\nGET n\r\n");
    want.push_str("+PONG\r\n$3\r\nv3x\r\n$2\r\n10\r\n");
    let out = exchange(backend.clone(), Limits::default(), &input).await;
    assert_eq!(String::from_utf8_lossy(&out), want);
    let most = backend.most.load(std::sync::atomic::Ordering::SeqCst);
    assert!(most >= 10, "at most {most} commands ran at once");
}

/// Two commands of many keys in one pipeline: whether the second waits for the first is
/// decided in time linear in their keys. It once compared every key of one with every key of
/// the other, on a runtime thread: a command of 30,000 keys and one of a million took minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_of_commands_on_many_keys_does_not_compare_every_pair() {
    // A long reply first: while it goes out (the client reads nothing until it has sent
    // everything), the server reads the rest ahead, so both commands are there for one batch.
    let echo = vec![b'e'; 2 << 20];
    let mut input = format!("*2\r\n$4\r\nECHO\r\n${}\r\n", echo.len()).into_bytes();
    input.extend(&echo);
    input.extend(b"\r\n");
    let mut command = |prefix: &str, n: usize| {
        input.extend(format!("*{}\r\n$6\r\nEXISTS\r\n", n + 1).as_bytes());
        for i in 0..n {
            // All of one length: each comparison goes past the lengths.
            let k = format!("{prefix}{i:07}");
            input.extend(format!("${}\r\n{k}\r\n", k.len()).as_bytes());
        }
    };
    command("a", 30_000);
    command("b", 1_000_000);
    let start = std::time::Instant::now();
    let out = exchange(Arc::new(MemBackend::new()), Limits::default(), &input).await;
    assert!(out.ends_with(b":0\r\n:0\r\n") && out.len() == echo.len() + 20, "{} bytes", out.len());
    assert!(start.elapsed() < std::time::Duration::from_secs(30), "took {:?}", start.elapsed());
}
