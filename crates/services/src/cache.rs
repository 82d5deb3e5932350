//! The Redis-compatible cache on the data tier: what a range's log entries mean for Redis
//! keys ([`RedisApplier`], `cairn_range`'s execution over the range's data), and how a
//! request reaches the range(s) holding its keys ([`Cache`]).
//!
//! A write travels as a postcard-encoded `cairn_range::WriteReq` (relative times and all); the
//! range leader's stamp on the log entry resolves it (`WriteReq::resolve`), so every replica
//! computes the same absolute expiry. A read travels as a `ReadCmd` and is answered by the
//! leader at its clock after a read barrier.
//!
//! Multi-key commands whose keys sit in several ranges: MGET, EXISTS, TOUCH and DEL/UNLINK are
//! split per range and their answers combined (not atomically, as in Redis Cluster with keys on
//! several nodes); MSET, MSETNX, RENAME and RENAMENX answer CROSSSLOT until transactions span
//! ranges. KEYS, DBSIZE, SCAN and FLUSHALL visit every range in key order.

use std::io;
use std::sync::Arc;

use cairn_cluster::directory::{slots_of, Descriptor};
use cairn_raft::range::{Applier, DataView, DataWrite, RangeDesc, RangeReply};
use cairn_range::cmd::{DataCmd, ReadCmd, WriteReq};
use cairn_range::exec::{Entries, ExecError, KvAccess, KvRead};
use cairn_range::record::HEADER_BYTES_MAX;
use cairn_range::{keys, KeySpan, Reply};

use crate::data::{DataTier, TierError};

/// Redis's error for multi-key commands whose keys are not served together.
pub const CROSSSLOT: &str = "CROSSSLOT Keys in request don't hash to the same slot";

fn encode(r: &Reply) -> Vec<u8> {
    postcard::to_allocvec(r).expect("replies serialize")
}

fn io_err(e: ExecError) -> io::Error {
    io::Error::other(e.to_string())
}

/// `cairn_range`'s map seams over a range's data during apply or read.
struct Kv<'a, V: ?Sized>(&'a mut V);

struct KvRo<'a>(&'a dyn DataView);

fn storage(e: io::Error) -> ExecError {
    ExecError::Storage(e.to_string())
}

fn scan_view(v: &dyn DataView, start: &[u8], end: &[u8], limit: usize) -> Result<Entries, ExecError> {
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    v.scan(start, end, &mut |k, val| {
        out.push((k.to_vec(), val[..val.len().min(HEADER_BYTES_MAX)].to_vec()));
        out.len() < limit
    })
    .map_err(storage)?;
    Ok(out)
}

impl KvRead for Kv<'_, dyn DataWrite + '_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ExecError> {
        self.0.get(key).map_err(storage)
    }

    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Entries, ExecError> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        self.0
            .scan(start, end, &mut |k, v| {
                out.push((k.to_vec(), v[..v.len().min(HEADER_BYTES_MAX)].to_vec()));
                out.len() < limit
            })
            .map_err(storage)?;
        Ok(out)
    }
}

impl KvAccess for Kv<'_, dyn DataWrite + '_> {
    fn put(&mut self, key: &[u8], value: Vec<u8>) -> Result<(), ExecError> {
        self.0.put(key, &value);
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> Result<(), ExecError> {
        self.0.delete(key);
        Ok(())
    }
}

impl KvRead for KvRo<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ExecError> {
        self.0.get(key).map_err(storage)
    }

    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Entries, ExecError> {
        scan_view(self.0, start, end, limit)
    }
}

fn desc_holds(desc: &RangeDesc, span: Option<&KeySpan>, user_keys: &[&[u8]]) -> bool {
    let span_ok = span.is_none_or(|s| {
        s.start.as_slice() >= desc.start.as_slice() && (desc.end.is_empty() || s.end.as_slice() <= desc.end.as_slice())
    });
    span_ok && user_keys.iter().all(|k| desc.contains(&keys::encode(k)))
}

/// Redis semantics for a range's log entries and reads.
pub struct RedisApplier;

impl Applier for RedisApplier {
    fn apply(&self, desc: &RangeDesc, data: &mut dyn DataWrite, stamp_ms: u64, cmd: &[u8]) -> io::Result<RangeReply> {
        let req: WriteReq = match postcard::from_bytes(cmd) {
            Ok(r) => r,
            // Only this build's router writes these; an undecodable one changes nothing.
            Err(e) => return Ok(RangeReply::Done(encode(&Reply::err(format!("ERR undecodable write: {e}"))))),
        };
        let now = stamp_ms as i64;
        let cmd = match req.resolve(now) {
            Ok(c) => c,
            Err(reply) => return Ok(RangeReply::Done(encode(&reply))),
        };
        if !desc_holds(desc, cmd.span(), &cmd.keys()) {
            return Ok(RangeReply::WrongRange(desc.clone()));
        }
        let reply = cairn_range::apply(&cmd, &mut Kv(data), now).map_err(io_err)?;
        Ok(RangeReply::Done(encode(&reply)))
    }

    fn read(&self, desc: &RangeDesc, data: &dyn DataView, cmd: &[u8], now_ms: u64) -> io::Result<RangeReply> {
        let cmd: ReadCmd = match postcard::from_bytes(cmd) {
            Ok(c) => c,
            Err(e) => return Ok(RangeReply::Done(encode(&Reply::err(format!("ERR undecodable read: {e}"))))),
        };
        if !desc_holds(desc, cmd.span(), &cmd.keys()) {
            return Ok(RangeReply::WrongRange(desc.clone()));
        }
        let reply = cairn_range::read(&cmd, &KvRo(data), now_ms as i64).map_err(io_err)?;
        Ok(RangeReply::Done(encode(&reply)))
    }

    fn key_of(&self, cmd: &[u8], read: bool) -> Option<Vec<u8>> {
        if read {
            let c: ReadCmd = postcard::from_bytes(cmd).ok()?;
            c.keys().first().map(|k| keys::encode(k))
        } else {
            let w: WriteReq = postcard::from_bytes(cmd).ok()?;
            w.keys().first().map(|k| keys::encode(k))
        }
    }
}

/// Rebuilds a multi-key read for a subset of its keys.
type MakeRead = fn(Vec<Vec<u8>>) -> ReadCmd;

/// Routes Redis commands over the data tier.
pub struct Cache {
    tier: Arc<DataTier>,
}

fn tier_error(e: TierError) -> Reply {
    match e {
        TierError::NotReady => Reply::err("CLUSTERDOWN The cluster is down"),
        TierError::Unavailable(_) => Reply::err("TRYAGAIN no leader answered in time; nothing was executed"),
        TierError::Unknown(m) => {
            Reply::err(format!("ERR timeout: the command may or may not have been executed ({m})"))
        }
        TierError::Invalid(m) => Reply::err(format!("ERR {m}")),
    }
}

/// The error of a command run range by range whose part `failed` after others ran, and what
/// had run. Never `TRYAGAIN`, which tells a client that nothing ran (the part's own error
/// follows, without its "nothing was executed").
fn after_some_ran(command: &str, done: &str, failed: &[u8]) -> Reply {
    let failed = String::from_utf8_lossy(failed).replace("; nothing was executed", "");
    Reply::err(format!("ERR {command} ran on some ranges ({done}), then failed on another: {failed}"))
}

/// Commands whose keys are all in one range (see `Cache::by_range`).
struct RangeBatch<C> {
    desc: Descriptor,
    /// Each command, with where its answer goes.
    cmds: Vec<(usize, C)>,
    /// Their encodings, in the same order.
    encoded: Vec<Vec<u8>>,
}

fn decode(b: &[u8]) -> Reply {
    postcard::from_bytes(b).unwrap_or_else(|e| Reply::err(format!("ERR undecodable reply: {e}")))
}

impl Cache {
    pub fn new(tier: Arc<DataTier>) -> Cache {
        Cache { tier }
    }

    pub fn tier(&self) -> &Arc<DataTier> {
        &self.tier
    }

    async fn one(&self, routing_key: &[u8], read: bool, bytes: Vec<u8>) -> Reply {
        match self.tier.execute(&keys::encode(routing_key), read, bytes).await {
            Ok(b) => decode(&b),
            Err(e) => tier_error(e),
        }
    }

    /// The range of each key, in order (`None` before the directory exists).
    pub fn ranges_of(&self, user_keys: &[&[u8]]) -> Option<Vec<u64>> {
        let dir = self.tier.directory()?;
        Some(user_keys.iter().map(|k| dir.lookup(&keys::encode(k)).id).collect())
    }

    /// The node leading the range of `user_key`, when that is not this node (and, with
    /// `replica_here_ok`, this node holds no replica of it either); `None` when it is served
    /// here or its leader is unknown.
    pub fn led_elsewhere(&self, user_key: &[u8], replica_here_ok: bool) -> Option<u64> {
        let tier = self.tier();
        let dir = tier.directory()?;
        let d = dir.lookup(&keys::encode(user_key));
        let me = tier.node_id();
        if replica_here_ok && d.replicas.contains(&me) {
            return None;
        }
        let leader = tier.known_leader_of(d)?;
        (leader != me).then_some(leader)
    }

    pub async fn write(&self, req: WriteReq) -> Reply {
        let user_keys: Vec<Vec<u8>> = req.keys().iter().map(|k| k.to_vec()).collect();
        let refs: Vec<&[u8]> = user_keys.iter().map(|k| k.as_slice()).collect();
        if let WriteReq::Cmd(DataCmd::Flush { .. }) = &req {
            return self.flush().await;
        }
        let Some(ranges) = self.ranges_of(&refs) else { return tier_error(TierError::NotReady) };
        let spread = ranges.windows(2).any(|w| w[0] != w[1]);
        if !spread {
            let Some(first) = refs.first() else {
                return Reply::err("ERR wrong number of arguments");
            };
            return self.one(first, false, postcard::to_allocvec(&req).expect("serializable")).await;
        }
        match req {
            WriteReq::Cmd(DataCmd::Del { keys }) => {
                // One range after the other, not atomically (as documented): a part that fails
                // after others ran says so, rather than "nothing was executed".
                let (mut total, mut ran) = (0i64, false);
                for (k, _) in group(&keys, &ranges) {
                    let part = WriteReq::Cmd(DataCmd::Del { keys: k.clone() });
                    match self.one(&k[0], false, postcard::to_allocvec(&part).expect("serializable")).await {
                        Reply::Int(n) => (total, ran) = (total + n, true),
                        Reply::Error(e) if ran => return after_some_ran("DEL", &format!("{total} key(s) deleted"), &e),
                        other => return other,
                    }
                }
                Reply::Int(total)
            }
            _ => Reply::err(CROSSSLOT),
        }
    }

    pub async fn read(&self, cmd: ReadCmd) -> Reply {
        match cmd {
            ReadCmd::Keys { pattern, .. } => {
                let mut all = Vec::new();
                let ranges = match self.redis_ranges() {
                    Ok(r) => r,
                    Err(e) => return e,
                };
                for (d, span) in ranges {
                    let part = ReadCmd::Keys { span, pattern: pattern.clone() };
                    match self.on_range(&d, part).await {
                        // The same bound over every range as over one.
                        Reply::Array(v) if all.len() + v.len() > cairn_range::exec::KEYS_REPLY_MAX => {
                            return cairn_range::exec::keys_too_many();
                        }
                        Reply::Array(mut v) => all.append(&mut v),
                        other => return other,
                    }
                }
                Reply::Array(all)
            }
            ReadCmd::DbSize { .. } => {
                let mut total = 0;
                let ranges = match self.redis_ranges() {
                    Ok(r) => r,
                    Err(e) => return e,
                };
                for (d, span) in ranges {
                    match self.on_range(&d, ReadCmd::DbSize { span }).await {
                        Reply::Int(n) => total += n,
                        other => return other,
                    }
                }
                Reply::Int(total)
            }
            cmd => {
                let user_keys: Vec<Vec<u8>> = cmd.keys().iter().map(|k| k.to_vec()).collect();
                let refs: Vec<&[u8]> = user_keys.iter().map(|k| k.as_slice()).collect();
                let Some(ranges) = self.ranges_of(&refs) else { return tier_error(TierError::NotReady) };
                if ranges.windows(2).all(|w| w[0] == w[1]) {
                    let Some(first) = refs.first() else {
                        return Reply::err("ERR wrong number of arguments");
                    };
                    return self.one(first, true, postcard::to_allocvec(&cmd).expect("serializable")).await;
                }
                self.read_spread(cmd, &ranges).await
            }
        }
    }

    /// Groups commands by the one range all their keys are in, in the commands' order. The
    /// rest (keys in several ranges or none, `keys_of` saying `None`, no directory yet) are
    /// returned apart.
    fn by_range<C: serde::Serialize>(
        &self,
        cmds: Vec<C>,
        keys_of: impl Fn(&C) -> Option<Vec<&[u8]>>,
    ) -> (Vec<RangeBatch<C>>, Vec<(usize, C)>) {
        let mut alone = Vec::new();
        let mut batches: Vec<RangeBatch<C>> = Vec::new();
        let dir = self.tier.directory();
        for (i, cmd) in cmds.into_iter().enumerate() {
            let range = match (&dir, keys_of(&cmd)) {
                (Some(dir), Some(keys)) => {
                    let mut ids = keys.into_iter().map(|k| dir.lookup(&keys::encode(k)));
                    match ids.next() {
                        Some(first) if ids.all(|d| d.id == first.id) => Some(first),
                        _ => None,
                    }
                }
                _ => None,
            };
            let Some(d) = range else {
                alone.push((i, cmd));
                continue;
            };
            let bytes = postcard::to_allocvec(&cmd).expect("serializable");
            match batches.iter_mut().find(|b| b.desc.id == d.id) {
                Some(b) => {
                    b.cmds.push((i, cmd));
                    b.encoded.push(bytes);
                }
                None => batches.push(RangeBatch { desc: d.clone(), cmds: vec![(i, cmd)], encoded: vec![bytes] }),
            }
        }
        (batches, alone)
    }

    /// Several reads (a pipeline's, which a client sent together), answered in order. The
    /// reads of one range run as one batch on its leader (`DataTier::execute_reads`: one call,
    /// one barrier, one engine reader); the rest, and any batch that could not run as a whole,
    /// run one by one as [`Self::read`] runs them.
    pub async fn read_many(&self, cmds: Vec<ReadCmd>) -> Vec<Reply> {
        let mut replies: Vec<Option<Reply>> = vec![None; cmds.len()];
        let (batches, mut alone) = self.by_range(cmds, |c| match c {
            ReadCmd::Keys { .. } | ReadCmd::DbSize { .. } => None,
            c => Some(c.keys()),
        });
        for b in batches {
            if b.cmds.len() > 1 {
                if let Some(answers) = self.tier.execute_reads(&b.desc, &b.encoded).await {
                    for ((i, _), a) in b.cmds.iter().zip(answers) {
                        replies[*i] = Some(decode(&a));
                    }
                    continue;
                }
            }
            alone.extend(b.cmds);
        }
        let singles =
            futures::future::join_all(alone.into_iter().map(|(i, cmd)| async move { (i, self.read(cmd).await) }));
        for (i, reply) in singles.await {
            replies[i] = Some(reply);
        }
        replies.into_iter().map(|r| r.expect("every read answered")).collect()
    }

    /// Several writes (a pipeline's, on distinct keys), answered in order. The writes of one
    /// range go to its leader as one batch (`DataTier::execute_writes`: one call; there they
    /// queue for the range's next entries as any write does); the rest, and every write of a
    /// batch that provably did not run (another node leads, the route is stale), run one by
    /// one as [`Self::write`] runs them. A write whose batch may have run answers as a lone
    /// write would: unknown outcome.
    pub async fn write_many(&self, reqs: Vec<WriteReq>) -> Vec<Reply> {
        let mut replies: Vec<Option<Reply>> = vec![None; reqs.len()];
        let (batches, mut alone) = self.by_range(reqs, |r| match r {
            WriteReq::Cmd(DataCmd::Flush { .. }) => None,
            r => Some(r.keys()),
        });
        // A batch's writes that provably did not run go again one by one, in their order: a
        // pipeline's writes of one range keep their order (`Conn::run_batch`).
        let mut again: Vec<Vec<(usize, WriteReq)>> = Vec::new();
        for b in batches {
            if b.cmds.len() < 2 {
                alone.extend(b.cmds);
                continue;
            }
            let answers = self.tier.execute_writes(&b.desc, &b.encoded).await;
            let mut retry = Vec::new();
            for ((i, req), a) in b.cmds.into_iter().zip(answers) {
                match a {
                    Some(Ok(bytes)) => replies[i] = Some(decode(&bytes)),
                    Some(Err(e)) => replies[i] = Some(tier_error(e)),
                    None => retry.push((i, req)),
                }
            }
            if !retry.is_empty() {
                again.push(retry);
            }
        }
        let singles =
            futures::future::join_all(alone.into_iter().map(|(i, req)| async move { (i, self.write(req).await) }));
        let in_order = futures::future::join_all(again.into_iter().map(|retry| async move {
            let mut out = Vec::with_capacity(retry.len());
            for (i, req) in retry {
                out.push((i, self.write(req).await));
            }
            out
        }));
        let (singles, in_order) = futures::join!(singles, in_order);
        for (i, reply) in singles.into_iter().chain(in_order.into_iter().flatten()) {
            replies[i] = Some(reply);
        }
        replies.into_iter().map(|r| r.expect("every write answered")).collect()
    }

    /// A read for a READONLY connection: a read of keys in one range is answered by this
    /// node's replica of it, leader or follower, as it stands (it may miss the latest writes,
    /// as a Redis Cluster replica may). Anything else, or a range with no replica here, is
    /// read as usual.
    pub async fn read_replica(&self, cmd: ReadCmd) -> Reply {
        if !matches!(cmd, ReadCmd::Keys { .. } | ReadCmd::DbSize { .. }) {
            let user_keys: Vec<&[u8]> = cmd.keys();
            if let (Some(first), Some(ranges)) = (user_keys.first(), self.ranges_of(&user_keys)) {
                if ranges.windows(2).all(|w| w[0] == w[1]) {
                    let bytes = postcard::to_allocvec(&cmd).expect("serializable");
                    if let Some(b) = self.tier.read_local(&keys::encode(first), &bytes) {
                        return decode(&b);
                    }
                }
            }
        }
        self.read(cmd).await
    }

    /// MGET, EXISTS and TOUCH over keys in several ranges: one request per range, answers
    /// put back in the keys' order.
    async fn read_spread(&self, cmd: ReadCmd, ranges: &[u64]) -> Reply {
        let (keys, make): (Vec<Vec<u8>>, MakeRead) = match cmd {
            ReadCmd::MGet { keys } => (keys, |k| ReadCmd::MGet { keys: k }),
            ReadCmd::Exists { keys } => (keys, |k| ReadCmd::Exists { keys: k }),
            ReadCmd::Touch { keys } => (keys, |k| ReadCmd::Touch { keys: k }),
            _ => return Reply::err(CROSSSLOT),
        };
        let mget = matches!(make(vec![]), ReadCmd::MGet { .. });
        let mut values = vec![Reply::Null; keys.len()];
        let mut total = 0i64;
        let mut bytes = 0usize;
        for (part, positions) in group_positions(&keys, ranges) {
            let reply =
                self.one(&part[0], true, postcard::to_allocvec(&make(part.clone())).expect("serializable")).await;
            match reply {
                Reply::Array(vs) if mget && vs.len() == positions.len() => {
                    bytes += vs.iter().map(|v| if let Reply::Bulk(b) = v { b.len() } else { 0 }).sum::<usize>();
                    if bytes > cairn_range::exec::MGET_REPLY_BYTES_MAX {
                        return cairn_range::exec::mget_too_big();
                    }
                    for (v, p) in vs.into_iter().zip(positions) {
                        values[p] = v;
                    }
                }
                Reply::Int(n) if !mget => total += n,
                other => return other,
            }
        }
        if mget {
            Reply::Array(values)
        } else {
            Reply::Int(total)
        }
    }

    /// Every range holding Redis keys, with the span of Redis keys it holds.
    /// Every Redis range, in key order; CLUSTERDOWN while this node has no directory yet
    /// (just started: it reads the directory from the meta group). An empty list here once
    /// made KEYS answer no keys, DBSIZE 0 and FLUSHALL OK without flushing, on a node just
    /// restarted (found by the chaos `redis-set` workload with power cuts).
    fn redis_ranges(&self) -> Result<Vec<(Descriptor, KeySpan)>, Reply> {
        let dir = self.tier.directory().ok_or_else(|| tier_error(TierError::NotReady))?;
        let ranges: Vec<_> = dir
            .iter()
            .filter_map(|d| slots_of(&d.start, &d.end).map(|(a, b)| (d.clone(), KeySpan::slots(a, b))))
            .collect();
        if ranges.is_empty() {
            return Err(tier_error(TierError::NotReady));
        }
        Ok(ranges)
    }

    async fn on_range(&self, d: &Descriptor, cmd: ReadCmd) -> Reply {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        match self.tier.execute_range(d, true, postcard::to_allocvec(&cmd).expect("serializable"), deadline).await {
            Ok(Some(b)) => decode(&b),
            Ok(None) => Reply::err("TRYAGAIN the ranges changed while the command ran; nothing was changed"),
            Err(e) => tier_error(e),
        }
    }

    async fn flush(&self) -> Reply {
        let ranges = match self.redis_ranges() {
            Ok(r) => r,
            Err(e) => return e,
        };
        for (i, (d, span)) in ranges.into_iter().enumerate() {
            let req = WriteReq::Cmd(DataCmd::Flush { span });
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            let failed = match self
                .tier
                .execute_range(&d, false, postcard::to_allocvec(&req).expect("serializable"), deadline)
                .await
            {
                Ok(Some(b)) => match decode(&b) {
                    Reply::Error(e) => e,
                    _ => continue,
                },
                Ok(None) => return Reply::err("TRYAGAIN the ranges changed during FLUSHALL; some were flushed"),
                Err(e) => match tier_error(e) {
                    Reply::Error(e) => e,
                    other => return other,
                },
            };
            if i == 0 {
                return Reply::Error(failed);
            }
            return after_some_ran("FLUSHALL", &format!("{i} range(s) flushed"), &failed);
        }
        Reply::ok()
    }

    /// One page of SCAN over every range in key order. `pos` is where the previous page
    /// stopped (`None`: the start), a [`ScanPos`] encoding. The answer is
    /// `[next position or null, [keys]]`.
    pub async fn scan_page(
        &self,
        pos: Option<Vec<u8>>,
        count: usize,
        pattern: Option<Vec<u8>>,
        kind: Option<Vec<u8>>,
    ) -> Reply {
        let pos = match pos.map(|p| ScanPos::decode(&p)) {
            None => None,
            Some(Some(p)) => Some(p),
            Some(None) => return Reply::err(cairn_range::reply::errors::INVALID_CURSOR),
        };
        let ranges = match self.redis_ranges() {
            Ok(r) => r,
            Err(e) => return e,
        };
        let n = ranges.len();
        for (i, (d, mut span)) in ranges.into_iter().enumerate() {
            let mut after = None;
            match &pos {
                Some(ScanPos::After(k)) => {
                    if !d.end.is_empty() && d.end.as_slice() <= k.as_slice() {
                        continue;
                    }
                    if d.contains(k) {
                        after = keys::decode(k).map(|u| u.to_vec());
                    }
                }
                Some(ScanPos::At(b)) => {
                    if !d.end.is_empty() && d.end.as_slice() <= b.as_slice() {
                        continue;
                    }
                    if b.as_slice() > span.start.as_slice() {
                        span.start = b.clone();
                    }
                }
                None => {}
            }
            let end = d.end.clone();
            let cmd = ReadCmd::Scan { span, after, count, pattern: pattern.clone(), kind: kind.clone() };
            return match self.on_range(&d, cmd).await {
                Reply::Array(mut parts) if parts.len() == 2 => {
                    let keys_reply = parts.pop().expect("two parts");
                    let next = match parts.pop().expect("two parts") {
                        Reply::Bulk(user_key) => Reply::Bulk(ScanPos::After(keys::encode(&user_key)).encode()),
                        // This range is done: the next page starts at the next range.
                        _ if i + 1 < n => Reply::Bulk(ScanPos::At(end).encode()),
                        _ => Reply::Null,
                    };
                    Reply::Array(vec![next, keys_reply])
                }
                other => other,
            };
        }
        Reply::Array(vec![Reply::Null, Reply::Array(vec![])])
    }
}

/// Where a SCAN stopped, as a stored-key position: after a key, or at a range boundary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanPos {
    After(Vec<u8>),
    At(Vec<u8>),
}

impl ScanPos {
    pub fn encode(&self) -> Vec<u8> {
        let (tag, k) = match self {
            ScanPos::After(k) => (0u8, k),
            ScanPos::At(k) => (1u8, k),
        };
        let mut out = vec![tag];
        out.extend_from_slice(k);
        out
    }

    pub fn decode(b: &[u8]) -> Option<ScanPos> {
        match b.split_first()? {
            (0, k) => Some(ScanPos::After(k.to_vec())),
            (1, k) => Some(ScanPos::At(k.to_vec())),
            _ => None,
        }
    }
}

/// Keys grouped by range, in first-seen order.
fn group(keys: &[Vec<u8>], ranges: &[u64]) -> Vec<(Vec<Vec<u8>>, u64)> {
    group_positions(keys, ranges).into_iter().map(|(k, p)| (k, ranges[p[0]])).collect()
}

/// Keys grouped by range, with each key's position in the request.
fn group_positions(keys: &[Vec<u8>], ranges: &[u64]) -> Vec<(Vec<Vec<u8>>, Vec<usize>)> {
    let mut out: Vec<(u64, Vec<Vec<u8>>, Vec<usize>)> = Vec::new();
    for (i, (k, r)) in keys.iter().zip(ranges).enumerate() {
        match out.iter_mut().find(|(id, _, _)| id == r) {
            Some((_, ks, ps)) => {
                ks.push(k.clone());
                ps.push(i);
            }
            None => out.push((*r, vec![k.clone()], vec![i])),
        }
    }
    out.into_iter().map(|(_, k, p)| (k, p)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A part failing after others ran says what ran; it never claims that nothing was
    /// executed (`TRYAGAIN`).
    #[test]
    fn a_failure_after_some_parts_ran_says_what_ran() {
        let failed = tier_error(TierError::Unavailable(1));
        let Reply::Error(e) = failed else { panic!("an error") };
        assert_eq!(
            after_some_ran("DEL", "2 key(s) deleted", &e),
            Reply::err(
                "ERR DEL ran on some ranges (2 key(s) deleted), then failed on another: TRYAGAIN no leader answered in time"
            )
        );
        assert_eq!(
            after_some_ran("FLUSHALL", "1 range(s) flushed", b"ERR timeout"),
            Reply::err("ERR FLUSHALL ran on some ranges (1 range(s) flushed), then failed on another: ERR timeout")
        );
    }
}
