//! One client connection: read what has arrived, run every complete command in order, write
//! all their replies with one flush. Connection-level commands (PING, HELLO, CLIENT, COMMAND,
//! CONFIG GET ...) are answered here; data commands go to the [`Backend`].

use std::io;
use std::sync::Arc;

use bytes::BytesMut;
use cairn_range::{glob, Reply};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::backend::{Backend, ClusterView};
use super::clients::{self, Peer, Registered};
use super::command::{self, ClientFilter, ClusterCmd, Command, ConnCmd};
use super::resp::{self, DecodeError, Decoder, Limits, Proto};
use super::table::{self, CommandSpec, KeySpec};

/// The Redis version HELLO reports. Clients gate features on it; cairn speaks 7.0's commands
/// and replies.
pub const REDIS_VERSION: &str = "7.0.15";

/// Bytes asked of the socket per read.
const READ_CHUNK_BYTES: usize = 16 * 1024;

/// What the connection does after a command.
enum Then {
    Continue,
    Close,
}

struct Conn<'a, B> {
    backend: &'a B,
    limits: &'a Limits,
    /// This connection in the node's registry (CLIENT LIST): its id, name and what it shows.
    client: Registered,
    proto: Proto,
    authenticated: bool,
    /// READONLY was sent (and not undone by READWRITE or RESET): reads may be answered by a
    /// replica that is not the leader.
    readonly: bool,
    /// Asked for the cluster's layout (CLUSTER SLOTS, SHARDS or NODES): a cluster-aware
    /// client, answered `MOVED` for keys led by another node instead of being proxied.
    redirects: bool,
}

/// Serve one client until it closes, sends QUIT, or breaks the protocol (a stream with no
/// socket addresses to show in CLIENT LIST; see [`serve_client`]).
pub async fn serve_connection<S, B>(stream: S, backend: Arc<B>, limits: Limits) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    B: Backend,
{
    serve_client(stream, Peer::default(), backend, limits).await
}

/// Serve one client, connected from `peer`, until it closes, sends QUIT, or breaks the
/// protocol. Past `limits.clients_max` open connections it is refused as Redis refuses one
/// past `maxclients`.
pub async fn serve_client<S, B>(mut stream: S, peer: Peer, backend: Arc<B>, limits: Limits) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    B: Backend,
{
    let Some(client) = clients::register(peer, limits.clients_max) else {
        stream.write_all(b"-ERR max number of clients reached\r\n").await?;
        stream.flush().await?;
        return stream.shutdown().await;
    };
    let mut conn = Conn {
        backend: &*backend,
        limits: &limits,
        client,
        proto: Proto::Resp2,
        authenticated: !backend.auth_required(),
        readonly: false,
        redirects: false,
    };
    let mut decoder = Decoder::new(limits.clone());
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let mut out = Vec::new();
    loop {
        // Every complete command that has arrived, up to the batch limits.
        let (mut batch, mut bytes, mut stop) = (Vec::new(), 0usize, None);
        // A client that must still authenticate is held to Redis's small command limits, and
        // its commands are decoded one at a time, as Redis does: an AUTH lifts the limits for
        // the commands after it in the same pipeline.
        decoder.set_authenticated(conn.authenticated);
        let most = if conn.authenticated { limits.pipeline_commands_max } else { 1 };
        while batch.len() < most && bytes < DECODED_BYTES_MAX {
            match decoder.decode(&mut buf) {
                Ok(Some(args)) => {
                    // Each argument costs its bytes and its buffer (empty ones too).
                    bytes += args.iter().map(|a| a.len() + resp::ARG_OVERHEAD_BYTES).sum::<usize>();
                    batch.push(args);
                }
                Ok(None) => break,
                Err(e) => {
                    stop = Some(e);
                    break;
                }
            }
        }
        let full = stop.is_none() && (batch.len() == most || bytes >= DECODED_BYTES_MAX);
        conn.client.query_buffer(buf.len(), buf.capacity() - buf.len());
        conn.client.running(bytes);
        // Over `maxmemory-clients`, the connections holding the most are evicted: closed
        // without a reply, as Redis closes them.
        if conn.client.evicted_past(limits.clients_memory_max) {
            return Ok(());
        }
        // An eviction also ends the batch's waits (a write already queued stays queued).
        let client = conn.client.handle();
        let Some(then) = unless_evicted(&client, conn.run_batch(batch, &mut out)).await else { return Ok(()) };
        conn.client.running(0);
        conn.client.replied(out.len(), out.capacity());
        if conn.client.evicted_past(limits.clients_memory_max) {
            return Ok(());
        }
        if let Then::Close = then {
            return last_words(&mut stream, &out, &conn.client).await;
        }
        match stop {
            Some(DecodeError::Protocol(msg)) => {
                resp::encode(&Reply::Error(msg), conn.proto, &mut out);
                return last_words(&mut stream, &out, &conn.client).await;
            }
            Some(DecodeError::QueryTooBig) => {
                drop(buf);
                conn.client.query_buffer(0, 0);
                return last_words(&mut stream, &out, &conn.client).await;
            }
            None => {}
        }
        // While the replies go out, what the client sends meanwhile is read ahead (within a
        // bound: Redis's query buffer limit, or much less before AUTH).
        let ahead = if conn.authenticated { limits.query_bytes_max } else { UNAUTHENTICATED_READ_AHEAD_BYTES };
        // Each wait for the socket ends early if the connection is evicted meanwhile.
        if full {
            // More may be buffered: hand these replies over before decoding on (flushed: a
            // TLS stream may hold them otherwise, and if nothing complete follows, the next
            // pass only reads, while the client may be waiting for them).
            let writing = write_reading(&mut stream, &out, &mut buf, ahead, &client, limits.clients_memory_max);
            let Some(written) = unless_evicted(&client, writing).await else { return Ok(()) };
            written?;
            out.clear();
            continue;
        }
        if !out.is_empty() {
            let writing = write_reading(&mut stream, &out, &mut buf, ahead, &client, limits.clients_memory_max);
            let Some(more) = unless_evicted(&client, writing).await else { return Ok(()) };
            let more = more?;
            out.clear();
            if more {
                continue;
            }
        }
        buf.reserve(READ_CHUNK_BYTES);
        let Some(read) = unless_evicted(&client, stream.read_buf(&mut buf)).await else { return Ok(()) };
        if read? == 0 {
            return Ok(());
        }
    }
}

/// The last replies before the connection closes (QUIT, a protocol error), written unless the
/// connection is evicted meanwhile (a client that does not read them would hold it open).
async fn last_words<S: AsyncWrite + Unpin>(stream: &mut S, out: &[u8], client: &clients::Client) -> io::Result<()> {
    let words = async {
        stream.write_all(out).await?;
        stream.flush().await?;
        stream.shutdown().await
    };
    unless_evicted(client, words).await.unwrap_or(Ok(()))
}

/// `work`'s output, or `None` if `client` is evicted first (its wait then ends).
async fn unless_evicted<T>(client: &clients::Client, work: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::select! {
        biased;
        _ = client.eviction() => None,
        r = work => Some(r),
    }
}

/// Writes `out` to the client and flushes it, reading what it sends meanwhile into `buf` until `buf` holds
/// `ahead` bytes; whether anything was read (or the client closed its side). A client may send
/// a whole pipeline before it reads a reply (redis-py's pipelines do): were this side to stop
/// reading while its replies wait for room in the socket, both sides would wait for good.
/// Redis keeps reading then too. Each read is reported to the node's registry
/// (`maxmemory-clients`, at most `memory_max` bytes over all connections); an error once that
/// evicts this connection.
async fn write_reading<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    out: &[u8],
    buf: &mut BytesMut,
    ahead: usize,
    client: &clients::Client,
    memory_max: u64,
) -> io::Result<bool> {
    use std::pin::Pin;
    use std::task::Poll;
    let (mut written, mut read, mut closed) = (0, false, false);
    std::future::poll_fn(|cx| loop {
        while written < out.len() {
            match Pin::new(&mut *stream).poll_write(cx, &out[written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => break,
            }
        }
        // Flushed here too, reading meanwhile: a TLS stream takes the bytes into its own buffer
        // and only a flush sends them, which may wait for room as a write does.
        if written == out.len() {
            match Pin::new(&mut *stream).poll_flush(cx) {
                Poll::Ready(r) => return Poll::Ready(r),
                Poll::Pending => {}
            }
        }
        // The write or the flush waits for room (its waker is set): read meanwhile.
        if closed || buf.len() >= ahead {
            return Poll::Pending;
        }
        buf.reserve(READ_CHUNK_BYTES);
        match tokio_util::io::poll_read_buf(Pin::new(&mut *stream), cx, buf) {
            Poll::Ready(Ok(0)) => (read, closed) = (true, true),
            Poll::Ready(Ok(_)) => {
                read = true;
                client.query_buffer(buf.len(), buf.capacity() - buf.len());
                if client.evicted_past(memory_max) {
                    return Poll::Ready(Err(io::Error::other("evicted: maxmemory-clients")));
                }
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
    })
    .await?;
    Ok(read)
}

/// What a client that must still authenticate may have read ahead while its replies go out.
const UNAUTHENTICATED_READ_AHEAD_BYTES: usize = 1024 * 1024;

/// The most commands of one pipeline in flight at once.
const WAVE_COMMANDS_MAX: usize = 64;

/// The most argument bytes decoded ahead of running them (past it, the rest of a pipeline
/// waits in the read buffer).
const DECODED_BYTES_MAX: usize = 1024 * 1024;

/// A data command (a read or a write of named keys) and the keys it touches.
struct Pending {
    cmd: Command,
    keys: Vec<Vec<u8>>,
    /// The ranges of its keys ([`Backend::ranges_of`]), once asked.
    ranges: std::cell::OnceCell<Vec<u64>>,
}

impl Pending {
    /// The keys of a data command on named keys, one that may run beside others on other
    /// keys; `None` for any other command.
    fn keys_of(cmd: &Command) -> Option<Vec<Vec<u8>>> {
        let keys: Vec<Vec<u8>> = match cmd {
            Command::Write(w) => w.keys().iter().map(|k| k.to_vec()).collect(),
            Command::Read(r) if r.span().is_none() => r.keys().iter().map(|k| k.to_vec()).collect(),
            _ => return None,
        };
        (!keys.is_empty()).then_some(keys)
    }

    fn is_write(&self) -> bool {
        matches!(self.cmd, Command::Write(_))
    }

    /// The ranges of its keys, each once (a command of many keys in few ranges compares few).
    fn ranges<B: Backend>(&self, backend: &B) -> &[u64] {
        self.ranges.get_or_init(|| {
            let mut r = backend.ranges_of(&self.keys.iter().map(Vec::as_slice).collect::<Vec<_>>());
            r.sort_unstable();
            r.dedup();
            r
        })
    }

    /// Whether it must wait for `wave`: it touches one of the wave's keys, or it is a read
    /// and the wave writes in one of its ranges, or the other way round (see
    /// [`Conn::run_batch`]).
    ///
    /// Linear in the keys of both (hashed): a command naming a million keys after one that
    /// named a million others once took minutes of a runtime thread, comparing every pair.
    fn waits_for<B: Backend>(&self, wave: &[Pending], backend: &B) -> bool {
        // A command of a few keys (nearly all) compares them one by one: no set to build.
        const HASHED_FROM: usize = 16;
        let hashed: Option<std::collections::HashSet<&[u8]>> =
            (self.keys.len() > HASHED_FROM).then(|| self.keys.iter().map(Vec::as_slice).collect());
        let mine = |k: &Vec<u8>| match &hashed {
            Some(set) => set.contains(k.as_slice()),
            None => self.keys.contains(k),
        };
        wave.iter().any(|p| {
            p.keys.iter().any(mine)
                || (p.is_write() != self.is_write()
                    && p.ranges(backend).iter().any(|r| self.ranges(backend).contains(r)))
        })
    }
}

impl<B: Backend> Conn<'_, B> {
    /// Runs a pipeline's commands and encodes their replies in order. Data commands on
    /// disjoint keys run concurrently (a "wave": on the data tier, each is a round trip to its
    /// range's leader, and a pipeline's commands would otherwise wait for each other's
    /// replication); a command touching a key of the wave, a read of a range the wave writes
    /// (or a write of a range it reads), a command over the whole keyspace and every
    /// connection command wait for the wave before them.
    ///
    /// So the commands of one range run in the connection's order, as a Redis Cluster node
    /// runs those of its slots: a range's writes keep their order in its log, and its reads
    /// of one wave share one read point. Commands on different ranges do not, as a Redis
    /// Cluster client's pipeline over several nodes does not: another client may see a later
    /// write of the pipeline before an earlier one in another range (keys that must keep
    /// their order share a hash tag, so one slot and one range, or the client waits for the
    /// earlier reply).
    async fn run_batch(&mut self, batch: Vec<Vec<Vec<u8>>>, out: &mut Vec<u8>) -> Then {
        let mut wave: Vec<Pending> = Vec::new();
        for args in batch {
            let cmd = match self.prepare(args) {
                Ok(c) => c,
                Err(reply) => {
                    if let Then::Close = self.wave_then(&mut wave, out).await {
                        return Then::Close;
                    }
                    resp::encode(&reply, self.proto, out);
                    continue;
                }
            };
            match Pending::keys_of(&cmd) {
                Some(keys) => {
                    let p = Pending { cmd, keys, ranges: Default::default() };
                    if wave.len() == WAVE_COMMANDS_MAX || p.waits_for(&wave, self.backend) {
                        if let Then::Close = self.wave_then(&mut wave, out).await {
                            return Then::Close;
                        }
                    }
                    wave.push(p);
                }
                None => {
                    if let Then::Close = self.wave_then(&mut wave, out).await {
                        return Then::Close;
                    }
                    let (reply, then) = self.run(cmd).await;
                    resp::encode(&reply, self.proto, out);
                    if let Then::Close = then {
                        return Then::Close;
                    }
                    if let Then::Close = self.report(out.len(), out.capacity()) {
                        return Then::Close;
                    }
                }
            }
        }
        self.run_wave(&mut wave, out).await;
        Then::Continue
    }

    /// Runs a wave (if any), then [reports](Self::report) the replies so far.
    async fn wave_then(&mut self, wave: &mut Vec<Pending>, out: &mut Vec<u8>) -> Then {
        if wave.is_empty() {
            return Then::Continue;
        }
        self.run_wave(wave, out).await;
        self.report(out.len(), out.capacity())
    }

    /// Reports the replies so far to the node's registry: `Then::Close` when that evicted this
    /// connection (`maxmemory-clients`). Done after each wave and each command run alone, so a
    /// batch's replies pile up past the limit by one wave or one command at most.
    fn report(&self, used: usize, size: usize) -> Then {
        self.client.replied(used, size);
        if self.client.evicted_past(self.limits.clients_memory_max) {
            Then::Close
        } else {
            Then::Continue
        }
    }

    /// Runs a wave (see [`Self::run_batch`]) and encodes its replies in order. Its writes go
    /// to the backend together ([`Backend::write_many`]), and so do its plain reads
    /// ([`Backend::read_many`]): the data tier sends those of one range to its leader as one
    /// batch.
    async fn run_wave(&mut self, wave: &mut Vec<Pending>, out: &mut Vec<u8>) {
        let this = &*self;
        let mut replies: Vec<Option<Reply>> = vec![None; wave.len()];
        let (mut writes, mut reads, mut others) = (Vec::new(), Vec::new(), Vec::new());
        for (i, p) in wave.drain(..).enumerate() {
            if let Some(moved) = this.redirect(&p.cmd) {
                replies[i] = Some(moved);
                continue;
            }
            match p.cmd {
                Command::Write(w) => writes.push((i, w)),
                // READONLY reads go to replicas, one by one.
                Command::Read(r) if !this.readonly => reads.push((i, r)),
                cmd => others.push((i, cmd)),
            }
        }
        if writes.len() == 1 {
            others.extend(writes.drain(..).map(|(i, w)| (i, Command::Write(w))));
        }
        if reads.len() == 1 {
            others.extend(reads.drain(..).map(|(i, r)| (i, Command::Read(r))));
        }
        let (write_slots, writes): (Vec<usize>, Vec<_>) = writes.into_iter().unzip();
        let (read_slots, reads): (Vec<usize>, Vec<_>) = reads.into_iter().unzip();
        let written = async {
            if writes.is_empty() {
                Vec::new()
            } else {
                this.backend.write_many(writes).await
            }
        };
        let read = async {
            if reads.is_empty() {
                Vec::new()
            } else {
                this.backend.read_many(reads).await
            }
        };
        let rest =
            futures::future::join_all(others.into_iter().map(|(i, cmd)| async move { (i, this.serve(cmd).await) }));
        let (written, read, rest) = futures::join!(written, read, rest);
        let batched = write_slots.into_iter().zip(written).chain(read_slots.into_iter().zip(read));
        for (i, reply) in batched.chain(rest) {
            replies[i] = Some(reply);
        }
        for r in replies {
            resp::encode(&r.expect("every command of the wave answered"), self.proto, out);
        }
    }

    /// The command, or the reply refusing it. In Redis's order (`server.c` `processCommand`):
    /// an unknown command and a wrong number of arguments are answered as such before a
    /// connection that has not authenticated is answered NOAUTH; then the command's own
    /// parsing.
    fn prepare(&self, args: Vec<Vec<u8>>) -> Result<Command, Reply> {
        let spec = command::find_spec(&args);
        self.client.command(spec.as_ref().ok().map(|s| s.name));
        let spec = spec?;
        command::check_arity(spec, &args)?;
        if !self.authenticated {
            let name = &args[0];
            let open = ["auth", "hello", "quit", "reset"].iter().any(|n| name.eq_ignore_ascii_case(n.as_bytes()));
            if !open {
                return Err(Reply::err("NOAUTH Authentication required."));
            }
        }
        command::parse_found(spec, args)
    }

    /// A data command. On a connection that asked for the cluster's layout (a cluster-aware
    /// client), a command whose keys' range is led by another node is answered `MOVED`, as a
    /// Redis Cluster node answers, and the client goes there itself; any other connection is
    /// proxied to the leader.
    async fn data(&self, cmd: Command) -> Reply {
        match self.redirect(&cmd) {
            Some(moved) => moved,
            None => self.serve(cmd).await,
        }
    }

    /// `MOVED` for a data command another node should serve, on a cluster-aware connection
    /// (see [`Self::data`]).
    fn redirect(&self, cmd: &Command) -> Option<Reply> {
        if !self.redirects {
            return None;
        }
        let read_here = self.readonly && matches!(cmd, Command::Read(_));
        match cmd {
            Command::Write(w) => self.backend.moved(&w.keys(), false),
            Command::Read(r) => self.backend.moved(&r.keys(), read_here),
            _ => None,
        }
    }

    /// A data command served here (proxied to its range's leader if need be).
    async fn serve(&self, cmd: Command) -> Reply {
        match cmd {
            Command::Write(w) => self.backend.write(w).await,
            Command::Read(r) if self.readonly => self.backend.read_replica(r).await,
            Command::Read(r) => self.backend.read(r).await,
            Command::Scan(s) => self.backend.scan(s).await,
            Command::Conn(_) => unreachable!("connection commands run in `run`"),
        }
    }

    async fn run(&mut self, cmd: Command) -> (Reply, Then) {
        match cmd {
            Command::Conn(c) => self.conn_command(c).await,
            data => (self.data(data).await, Then::Continue),
        }
    }

    async fn conn_command(&mut self, c: ConnCmd) -> (Reply, Then) {
        let reply = match c {
            ConnCmd::Ping(None) => Reply::Simple("PONG".into()),
            ConnCmd::Ping(Some(m)) | ConnCmd::Echo(m) => Reply::Bulk(m),
            ConnCmd::Hello { proto, auth, setname } => {
                if let Some((user, pass)) = auth {
                    let name = String::from_utf8_lossy(&user).into_owned();
                    if !self.backend.authenticate(user, pass).await {
                        return (wrongpass(), Then::Continue);
                    }
                    self.authenticated = true;
                    self.client.set_user(&name);
                }
                if !self.authenticated {
                    return (
                        Reply::err(
                            "NOAUTH HELLO must be called with the client already authenticated, \
                             otherwise the HELLO AUTH <user> <pass> option can be used to \
                             authenticate the client and select the RESP protocol version at the \
                             same time",
                        ),
                        Then::Continue,
                    );
                }
                if let Some(name) = setname {
                    self.client.set_name((!name.is_empty()).then_some(name));
                }
                match proto {
                    Some(3) => self.proto = Proto::Resp3,
                    Some(2) => self.proto = Proto::Resp2,
                    _ => {}
                }
                self.client.set_resp(if self.proto == Proto::Resp3 { 3 } else { 2 });
                let b = |s: &str| Reply::bulk(s.as_bytes());
                Reply::Map(vec![
                    (b("server"), b("redis")),
                    (b("version"), b(REDIS_VERSION)),
                    (b("proto"), Reply::Int(if self.proto == Proto::Resp3 { 3 } else { 2 })),
                    (b("id"), Reply::Int(self.client.id as i64)),
                    (b("mode"), b(if self.backend.cluster().is_some() { "cluster" } else { "standalone" })),
                    (b("role"), b("master")),
                    (b("modules"), Reply::Array(vec![])),
                ])
            }
            ConnCmd::Auth { user, pass } => {
                let user = match user {
                    Some(u) => u,
                    None if !self.backend.auth_required() => {
                        return (
                            Reply::err(
                                "ERR AUTH <password> called without any password configured \
                                 for the default user. Are you sure your configuration is correct?",
                            ),
                            Then::Continue,
                        )
                    }
                    None => b"default".to_vec(),
                };
                let name = String::from_utf8_lossy(&user).into_owned();
                if self.backend.authenticate(user, pass).await {
                    self.authenticated = true;
                    self.client.set_user(&name);
                    Reply::ok()
                } else {
                    wrongpass()
                }
            }
            ConnCmd::Select(0) => Reply::ok(),
            ConnCmd::Select(_) => Reply::err("ERR DB index is out of range"),
            ConnCmd::Quit => return (Reply::ok(), Then::Close),
            ConnCmd::Reset => {
                self.proto = Proto::Resp2;
                self.client.set_name(None);
                self.client.set_resp(2);
                self.client.set_user("default");
                self.authenticated = !self.backend.auth_required();
                self.readonly = false;
                self.client.set_readonly(false);
                self.redirects = false;
                Reply::Simple("RESET".into())
            }
            ConnCmd::ClientId => Reply::Int(self.client.id as i64),
            ConnCmd::ClientSetName(name) => {
                self.client.set_name((!name.is_empty()).then_some(name));
                Reply::ok()
            }
            ConnCmd::ClientGetName => self.client.name().map_or(Reply::Null, Reply::Bulk),
            ConnCmd::ClientInfo => {
                let mut line = self.client.info_line();
                line.push('\n');
                Reply::Verbatim { format: *b"txt", text: line.into_bytes() }
            }
            ConnCmd::ClientList(filter) => {
                let text = match filter {
                    ClientFilter::All => clients::list(None),
                    ClientFilter::Type(t) => clients::list(Some(t)),
                    ClientFilter::Ids(ids) => clients::list_ids(&ids),
                };
                Reply::Verbatim { format: *b"txt", text: text.into_bytes() }
            }
            ConnCmd::Time => {
                let ms = cairn_types::clock::wall_ms();
                Reply::Array(vec![Reply::bulk((ms / 1000).to_string()), Reply::bulk(((ms % 1000) * 1000).to_string())])
            }
            ConnCmd::CommandAll => Reply::Array(table::COMMANDS.iter().map(command_info).collect()),
            ConnCmd::CommandCount => Reply::Int(table::COMMANDS.len() as i64),
            ConnCmd::CommandInfo(names) if names.is_empty() => {
                Reply::Array(table::COMMANDS.iter().map(command_info).collect())
            }
            ConnCmd::CommandInfo(names) => {
                Reply::Array(names.iter().map(|n| lookup_full(n).map_or(Reply::Null, command_info)).collect())
            }
            ConnCmd::CommandDocs(names) => {
                let specs: Vec<&CommandSpec> = if names.is_empty() {
                    table::COMMANDS.iter().collect()
                } else {
                    names.iter().filter_map(|n| lookup_full(n)).collect()
                };
                Reply::Map(specs.into_iter().map(|s| (Reply::bulk(s.name), command_docs(s))).collect())
            }
            ConnCmd::ConfigGet(patterns) => Reply::Map(self.config_get(&patterns)),
            ConnCmd::Info(sections) => {
                let text = info(&sections, self.backend.cluster().is_some(), self.limits.clients_max);
                Reply::Verbatim { format: *b"txt", text: text.into_bytes() }
            }
            ConnCmd::Cluster(c) => match self.backend.cluster() {
                Some(view) => {
                    if matches!(c, ClusterCmd::Slots | ClusterCmd::Shards | ClusterCmd::Nodes) {
                        self.redirects = true;
                    }
                    cluster_reply(&view, c)
                }
                None => Reply::err(CLUSTER_DISABLED),
            },
            ConnCmd::ReadOnly | ConnCmd::ReadWrite | ConnCmd::Asking => match self.backend.cluster() {
                Some(_) => {
                    match c {
                        ConnCmd::ReadOnly => self.readonly = true,
                        ConnCmd::ReadWrite => self.readonly = false,
                        _ => {}
                    }
                    self.client.set_readonly(self.readonly);
                    Reply::ok()
                }
                None => Reply::err(CLUSTER_DISABLED),
            },
        };
        (reply, Then::Continue)
    }

    /// The settings clients probe, with the values cairn runs with.
    fn config(&self) -> Vec<(&'static str, String)> {
        vec![
            ("appendonly", "no".into()),
            ("client-query-buffer-limit", self.limits.query_bytes_max.to_string()),
            ("cluster-enabled", if self.backend.cluster().is_some() { "yes" } else { "no" }.into()),
            ("databases", "1".into()),
            ("maxclients", self.limits.clients_max.to_string()),
            ("maxmemory", "0".into()),
            ("maxmemory-clients", self.limits.clients_memory_max.to_string()),
            ("maxmemory-policy", "noeviction".into()),
            ("notify-keyspace-events", "".into()),
            ("proto-max-bulk-len", self.limits.bulk_bytes_max.to_string()),
            ("save", "".into()),
            ("timeout", "0".into()),
        ]
    }

    /// CONFIG GET: exact names case-insensitively (answered under the name as asked),
    /// globs with Redis's matcher; each setting once.
    fn config_get(&self, patterns: &[Vec<u8>]) -> Vec<(Reply, Reply)> {
        let all = self.config();
        let mut found: Vec<(usize, Vec<u8>)> = Vec::new();
        for p in patterns {
            let is_glob = p.iter().any(|b| matches!(b, b'*' | b'?' | b'['));
            for (i, (name, _)) in all.iter().enumerate() {
                let shown = if is_glob {
                    glob::matches(p, name.as_bytes(), true).then(|| name.as_bytes().to_vec())
                } else {
                    p.eq_ignore_ascii_case(name.as_bytes()).then(|| p.clone())
                };
                if let Some(shown) = shown {
                    if !found.iter().any(|(j, _)| *j == i) {
                        found.push((i, shown));
                    }
                }
            }
        }
        found.into_iter().map(|(i, shown)| (Reply::Bulk(shown), Reply::bulk(all[i].1.clone()))).collect()
    }
}

const CLUSTER_DISABLED: &str = "ERR This instance has cluster support disabled";

fn node_entry(n: &NodeAddrRef) -> Reply {
    // Redis 7: ip, port, id, and a map of extra networking metadata (none here).
    Reply::Array(vec![
        Reply::bulk(n.host.as_bytes()),
        Reply::Int(n.port as i64),
        Reply::bulk(n.id.as_bytes()),
        Reply::Map(vec![]),
    ])
}

type NodeAddrRef = super::backend::NodeAddr;

/// CLUSTER's answers from a view of the cluster (`cluster.c`'s formats).
fn cluster_reply(view: &ClusterView, c: ClusterCmd) -> Reply {
    let b = |s: &str| Reply::bulk(s.as_bytes());
    match c {
        ClusterCmd::KeySlot(k) => Reply::Int(cairn_range::keys::slot(&k) as i64),
        ClusterCmd::MyId => b(&view.myself.id),
        ClusterCmd::Slots => Reply::Array(
            view.shards
                .iter()
                .map(|s| {
                    let mut e = vec![Reply::Int(s.first as i64), Reply::Int(s.last as i64), node_entry(&s.leader)];
                    e.extend(s.replicas.iter().map(node_entry));
                    Reply::Array(e)
                })
                .collect(),
        ),
        ClusterCmd::Shards => Reply::Array(
            view.shards
                .iter()
                .map(|s| {
                    let node = |n: &NodeAddrRef, role: &str| {
                        Reply::Map(vec![
                            (b("id"), b(&n.id)),
                            (b("port"), Reply::Int(n.port as i64)),
                            (b("ip"), b(&n.host)),
                            (b("endpoint"), b(&n.host)),
                            (b("role"), b(role)),
                            (b("replication-offset"), Reply::Int(0)),
                            (b("health"), b("online")),
                        ])
                    };
                    let mut nodes = vec![node(&s.leader, "master")];
                    nodes.extend(s.replicas.iter().map(|n| node(n, "replica")));
                    Reply::Map(vec![
                        (b("slots"), Reply::Array(vec![Reply::Int(s.first as i64), Reply::Int(s.last as i64)])),
                        (b("nodes"), Reply::Array(nodes)),
                    ])
                })
                .collect(),
        ),
        ClusterCmd::Nodes => {
            // One line per node, each a master of the slot intervals it leads (a cairn node
            // leads some ranges and follows others, which Redis's master/replica roles cannot
            // say; clients route by the masters' slots).
            let mut out = String::new();
            for n in &view.nodes {
                let myself = if n.id == view.myself.id { "myself,master" } else { "master" };
                out.push_str(&format!(
                    "{} {}:{}@{} {} - 0 0 {} connected",
                    n.id,
                    n.host,
                    n.port,
                    n.port as u32 + 10000,
                    myself,
                    view.epoch
                ));
                for s in view.shards.iter().filter(|s| s.leader.id == n.id) {
                    if s.first == s.last {
                        out.push_str(&format!(" {}", s.first));
                    } else {
                        out.push_str(&format!(" {}-{}", s.first, s.last));
                    }
                }
                out.push('\n');
            }
            Reply::Verbatim { format: *b"txt", text: out.into_bytes() }
        }
        ClusterCmd::Info => {
            let assigned: u32 = view.shards.iter().map(|s| (s.last - s.first) as u32 + 1).sum();
            let masters = view.nodes.iter().filter(|n| view.shards.iter().any(|s| s.leader.id == n.id)).count();
            let state = if assigned == 16384 { "ok" } else { "fail" };
            let text = format!(
                "cluster_state:{state}\r\ncluster_slots_assigned:{assigned}\r\ncluster_slots_ok:{assigned}\r\n\
                 cluster_slots_pfail:0\r\ncluster_slots_fail:0\r\ncluster_known_nodes:{}\r\ncluster_size:{masters}\r\n\
                 cluster_current_epoch:{e}\r\ncluster_my_epoch:{e}\r\ncluster_stats_messages_sent:0\r\n\
                 cluster_stats_messages_received:0\r\ntotal_cluster_links_buffer_limit_exceeded:0\r\n",
                view.nodes.len(),
                e = view.epoch
            );
            Reply::Verbatim { format: *b"txt", text: text.into_bytes() }
        }
    }
}

/// INFO's sections that cairn fills, in Redis's order, as `(name, lines)`. Only what does not
/// need the data tier: the version clients gate features on, the mode, the role.
fn info_sections(cluster: bool, clients_max: usize) -> Vec<(&'static str, Vec<(&'static str, String)>)> {
    let mode = if cluster { "cluster" } else { "standalone" };
    vec![
        (
            "Server",
            vec![("redis_version", REDIS_VERSION.into()), ("redis_mode", mode.into()), ("arch_bits", "64".into())],
        ),
        (
            "Clients",
            vec![
                ("connected_clients", clients::count().to_string()),
                ("maxclients", clients_max.to_string()),
                // No blocking commands yet.
                ("blocked_clients", "0".into()),
            ],
        ),
        (
            "Memory",
            vec![
                ("mem_clients_normal", clients::memory().to_string()),
                ("maxmemory", "0".into()),
                ("maxmemory_policy", "noeviction".into()),
            ],
        ),
        ("Stats", vec![("evicted_clients", clients::evicted().to_string())]),
        ("Replication", vec![("role", "master".into()), ("connected_slaves", "0".into())]),
        ("Cluster", vec![("cluster_enabled", if cluster { "1" } else { "0" }.into())]),
    ]
}

/// INFO's text (`server.c` `genRedisInfoString`): `# Section` headers, `key:value` lines,
/// a blank line between sections. No argument, `default`, `all` or `everything` give every
/// section; unknown sections give nothing.
fn info(asked: &[Vec<u8>], cluster: bool, clients_max: usize) -> String {
    let all = asked.is_empty()
        || asked.iter().any(|a| ["default", "all", "everything"].iter().any(|w| a.eq_ignore_ascii_case(w.as_bytes())));
    let mut out = String::new();
    for (name, lines) in info_sections(cluster, clients_max) {
        if !all && !asked.iter().any(|a| a.eq_ignore_ascii_case(name.as_bytes())) {
            continue;
        }
        if !out.is_empty() {
            out.push_str("\r\n");
        }
        out.push_str(&format!("# {name}\r\n"));
        for (k, v) in lines {
            out.push_str(&format!("{k}:{v}\r\n"));
        }
    }
    out
}

fn wrongpass() -> Reply {
    Reply::err("WRONGPASS invalid username-password pair or user is disabled.")
}

/// A command or `container|sub` by name, any case.
fn lookup_full(name: &[u8]) -> Option<&'static CommandSpec> {
    match name.iter().position(|&b| b == b'|') {
        None => table::lookup(name),
        Some(bar) => table::lookup(&name[..bar])?.subcommand(&name[bar + 1..]),
    }
}

/// COMMAND INFO's ten fields for one command.
fn command_info(s: &CommandSpec) -> Reply {
    let status = |v: &[&str]| Reply::Set(v.iter().map(|f| Reply::Simple(f.to_string())).collect());
    Reply::Array(vec![
        Reply::bulk(s.name),
        Reply::Int(s.arity),
        status(s.flags),
        Reply::Int(s.first_key),
        Reply::Int(s.last_key),
        Reply::Int(s.step),
        status(s.acl),
        Reply::Set(s.tips.iter().map(|t| Reply::bulk(*t)).collect()),
        // Redis 7.0 sends both as sets (`~` in RESP3).
        Reply::Set(s.key_specs.iter().map(key_spec).collect()),
        Reply::Set(s.subcommands.iter().map(|c| command_info(c)).collect()),
    ])
}

/// One key spec as Redis 7.0 reports it (`addReplyCommandKeySpecs`).
fn key_spec(k: &KeySpec) -> Reply {
    let b = |s: &str| Reply::bulk(s.as_bytes());
    let mut m = Vec::new();
    if !k.notes.is_empty() {
        m.push((b("notes"), b(k.notes)));
    }
    m.push((b("flags"), Reply::Set(k.flags.iter().map(|f| Reply::Simple(f.to_string())).collect())));
    m.push((
        b("begin_search"),
        Reply::Map(vec![(b("type"), b("index")), (b("spec"), Reply::Map(vec![(b("index"), Reply::Int(k.index))]))]),
    ));
    m.push((
        b("find_keys"),
        Reply::Map(vec![
            (b("type"), b("range")),
            (
                b("spec"),
                Reply::Map(vec![
                    (b("lastkey"), Reply::Int(k.last_key)),
                    (b("keystep"), Reply::Int(k.key_step)),
                    (b("limit"), Reply::Int(k.limit)),
                ]),
            ),
        ]),
    ));
    Reply::Map(m)
}

/// COMMAND DOCS for one command: summary, since, group, complexity, subcommands.
fn command_docs(s: &CommandSpec) -> Reply {
    let mut m = Vec::new();
    for (k, v) in [("summary", s.summary), ("since", s.since), ("group", s.group), ("complexity", s.complexity)] {
        if !v.is_empty() {
            m.push((Reply::bulk(k), Reply::bulk(v)));
        }
    }
    if !s.subcommands.is_empty() {
        m.push((
            Reply::bulk("subcommands"),
            Reply::Map(s.subcommands.iter().map(|c| (Reply::bulk(c.name), command_docs(c))).collect()),
        ));
    }
    Reply::Map(m)
}
