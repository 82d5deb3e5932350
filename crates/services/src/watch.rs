//! etcd's Watch service: one bidirectional stream carries many watchers.
//!
//! Any member serves watches from its own applied state. A stream follows the store's event
//! feed (`cairn_state::watch`): each applied batch arrives once per stream, and is filtered for
//! each of its watchers. A watcher that starts in the past, or a stream that fell behind the feed
//! (a slow client) or saw a snapshot installed, reads the store's history instead, in bounded
//! chunks, until it reaches the present; then it follows the feed again. Writes never wait for
//! watchers.
//!
//! Per watcher, events are sent in revision order with no gap and no duplicate: `next_rev` is
//! the first revision the watcher has not been sent (it never moves backwards), history reads
//! start there, feed batches are filtered from there, and the feed is subscribed before any
//! history is read (see `cairn_state::watch` for why that lines up). A stream subscribes to the
//! feed with its first watcher and lets go when it has none, so idle streams cost writes
//! nothing.
//!
//! What etcd does and cairn follows: watch ids are per stream (from 0, or the client's own);
//! a create is answered `created` before any event; a refused create is answered `created` and
//! `canceled` with the reason; a watcher whose next revision was compacted is canceled with
//! `compact_revision`; a progress request is answered (watch id -1) once every watcher on the
//! stream has caught up, with a revision all of them have been sent everything up to; progress
//! notifications go to watchers that asked for them and were sent nothing since the last tick;
//! `prev_kv` is the key's value at the revision before the event; `fragment` splits a response
//! larger than the request size limit.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use cairn_proto::etcdserverpb as pb;
use cairn_proto::mvccpb::{event::EventType, Event};
use cairn_state::watch::{in_range, EventBatch, Feed, FeedReceiver, HistoryError};
use cairn_types::Revision;
use futures::{Stream, StreamExt};
use prost::Message;
use tokio::sync::mpsc;

use crate::router::Router;

/// Watchers one stream may hold.
pub const MAX_WATCHERS_PER_STREAM: usize = 100_000;
/// History read per catch-up step, so a watcher far behind cannot hold the store's read lock
/// (or memory) for long.
pub const CATCH_UP_CHUNK_BYTES: usize = 1024 * 1024;
/// Items ([`OutBatch`]es) queued for one stream's client before the stream stops reading the
/// feed (and later catches up from the store). Small: an item holds a whole catch-up chunk, or
/// the responses to the events of one apply call (shared by its watchers), which can span
/// several log entries of up to 4 MiB of writes each.
pub const OUTBOUND_QUEUE: usize = 16;
/// Room for the gRPC envelope when deciding whether to fragment (etcd's grpcOverheadBytes).
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

const ERR_EMPTY_RANGE: &str = "mvcc: watcher range is empty";
const ERR_DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";
const ERR_COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";

/// The response a stream sends: a message or the status that ends it.
pub type Outbound = Result<WatchOut, tonic::Status>;
/// Responses queued together (the responses of one feed batch, or one watcher's catch-up).
pub type OutBatch = Vec<Outbound>;
/// Bytes of copied (not shared) events one queued item may hold, about.
const OUT_BATCH_COPIED_BYTES: usize = 1024 * 1024;

/// One `WatchResponse` on its way out.
#[derive(Debug, Clone)]
pub enum WatchOut {
    Msg(pb::WatchResponse),
    /// A watcher's response carrying a whole event batch: the header and the events are encoded
    /// once and shared (`EventBatch::encoded_events`), only the watch id is the watcher's own.
    /// Encodes to the same bytes as the equivalent `Msg`.
    Shared {
        watch_id: i64,
        header: Arc<prost::bytes::Bytes>,
        batch: Arc<EventBatch>,
    },
}

impl WatchOut {
    pub fn encoded_len(&self) -> usize {
        match self {
            WatchOut::Msg(m) => prost::Message::encoded_len(m),
            WatchOut::Shared { watch_id, header, batch } => {
                let id = if *watch_id == 0 { 0 } else { prost::encoding::int64::encoded_len(2, watch_id) };
                header.len() + id + batch.encoded_events().len()
            }
        }
    }

    /// The response as a message (for front ends that do not speak protobuf).
    pub fn into_message(self) -> Result<pb::WatchResponse, tonic::Status> {
        match self {
            WatchOut::Msg(m) => Ok(m),
            shared => {
                let mut buf = Vec::with_capacity(shared.encoded_len());
                shared.encode(&mut buf).map_err(|e| tonic::Status::internal(e.to_string()))?;
                <pb::WatchResponse as prost::Message>::decode(buf.as_slice())
                    .map_err(|e| tonic::Status::internal(e.to_string()))
            }
        }
    }

    /// Writes the protobuf encoding of the response to `buf`.
    pub fn encode(&self, buf: &mut impl prost::bytes::BufMut) -> Result<(), prost::EncodeError> {
        match self {
            WatchOut::Msg(m) => prost::Message::encode(m, buf),
            WatchOut::Shared { watch_id, header, batch } => {
                let events = batch.encoded_events();
                // (tonic's buffer grows as needed.) Field order as prost writes it: header (1), watch_id (2), events (11).
                buf.put_slice(header);
                if *watch_id != 0 {
                    prost::encoding::int64::encode(2, watch_id, buf);
                }
                buf.put_slice(events);
                Ok(())
            }
        }
    }
}

struct Watcher {
    key: Vec<u8>,
    /// etcd's range convention: empty for the key alone, `[0]` for every key from `key` on.
    end: Vec<u8>,
    /// The first revision not yet sent.
    next_rev: Revision,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    fragment: bool,
    progress_notify: bool,
    /// Events were sent since the last progress tick.
    sent_since_tick: bool,
}

impl Watcher {
    fn wants(&self, e: &Event) -> bool {
        let Some(kv) = &e.kv else { return false };
        if kv.mod_revision < self.next_rev || !in_range(&kv.key, &self.key, &self.end) {
            return false;
        }
        let put = e.r#type == EventType::Put as i32;
        !(put && self.no_put || !put && self.no_delete)
    }
}

/// One client stream.
struct WatchStream {
    c: Arc<Router>,
    out: mpsc::Sender<OutBatch>,
    /// Subscribed while the stream has watchers.
    feed: Option<FeedReceiver>,
    watchers: BTreeMap<i64, Watcher>,
    /// Watchers reading the store's history (the rest follow the feed).
    unsynced: BTreeSet<i64>,
    next_id: i64,
    /// The highest revision every synced watcher has been brought up to by the feed or a
    /// catch-up (progress notifications never claim more).
    seen_rev: Revision,
    /// A progress request arrived while some watcher was catching up.
    progress_pending: bool,
    permit: Option<Permit>,
}

/// The client went away: stop.
struct Gone;

/// Decides whether the stream's caller may watch `[key, range_end)` (access control; `None`
/// when auth is off for the stream's purposes).
pub type Permit = Arc<dyn Fn(&[u8], &[u8]) -> Result<(), cairn_types::Error> + Send + Sync>;

/// Serves one Watch stream until the client closes it (or goes away).
pub async fn serve<S>(c: Arc<Router>, mut requests: S, out: mpsc::Sender<OutBatch>, permit: Option<Permit>)
where
    S: Stream<Item = Result<pb::WatchRequest, tonic::Status>> + Unpin,
{
    let metrics = c.metrics.clone();
    metrics.watch_streams.inc();
    let seen_rev = c.store().current_revision();
    let mut s = WatchStream {
        c,
        out,
        feed: None,
        watchers: BTreeMap::new(),
        unsynced: BTreeSet::new(),
        next_id: 0,
        seen_rev,
        progress_pending: false,
        permit,
    };
    let interval = s.c.cfg.watch_progress_interval;
    // etcd adds up to a tenth of jitter so streams created together do not tick together.
    let jitter = Duration::from_millis(rand_below(interval.as_millis() as u64 / 10 + 1));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval + jitter, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let _ = run(&mut s, &mut requests, &mut ticker).await;
    metrics.watchers.dec_by(s.watchers.len() as i64);
    metrics.watch_streams.dec();
}

/// The next feed message, or never if the stream is not subscribed.
async fn next_feed(feed: &mut Option<FeedReceiver>) -> Result<Feed, cairn_state::watch::Lagged> {
    match feed {
        Some(f) => f.recv().await,
        None => std::future::pending().await,
    }
}

async fn run<S>(s: &mut WatchStream, requests: &mut S, ticker: &mut tokio::time::Interval) -> Result<(), Gone>
where
    S: Stream<Item = Result<pb::WatchRequest, tonic::Status>> + Unpin,
{
    // As etcd, a client that closes its sending side still receives events until it goes away.
    let mut requests_open = true;
    loop {
        let catching_up = !s.unsynced.is_empty();
        tokio::select! {
            req = requests.next(), if requests_open => match req {
                Some(Ok(r)) => s.handle(r).await?,
                None => requests_open = false,
                // The transport failed.
                Some(Err(_)) => return Ok(()),
            },
            _ = s.out.closed() => return Ok(()),
            msg = next_feed(&mut s.feed) => match msg {
                Ok(Feed::Events(b)) => s.deliver(&b).await?,
                Ok(Feed::Resync) => s.resync(),
                Err(_lagged) => {
                    s.c.metrics.watch_resyncs.inc();
                    s.resync();
                }
            },
            _ = std::future::ready(()), if catching_up => s.catch_up_step().await?,
            _ = ticker.tick() => s.progress_tick().await?,
        }
        if s.progress_pending && s.unsynced.is_empty() {
            s.progress_pending = false;
            let rev = s.progress_revision();
            s.send(s.response(-1, rev)).await?;
        }
    }
}

/// A pseudo-random number below `n` (jitter only; no need for a generator crate here).
fn rand_below(n: u64) -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    (t as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) % n.max(1)
}

impl WatchStream {
    fn response(&self, watch_id: i64, revision: Revision) -> pb::WatchResponse {
        pb::WatchResponse { header: Some(self.c.header(revision)), watch_id, ..Default::default() }
    }

    async fn send(&self, r: pb::WatchResponse) -> Result<(), Gone> {
        self.out.send(vec![Ok(WatchOut::Msg(r))]).await.map_err(|_| Gone)
    }

    async fn handle(&mut self, req: pb::WatchRequest) -> Result<(), Gone> {
        use pb::watch_request::RequestUnion;
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => self.create(c).await,
            Some(RequestUnion::CancelRequest(c)) => {
                // etcd answers only the cancellation of a watcher that exists.
                if self.remove(c.watch_id) {
                    let mut r = self.response(c.watch_id, self.c.store().current_revision());
                    r.canceled = true;
                    self.send(r).await?;
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                self.progress_pending = true;
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn remove(&mut self, id: i64) -> bool {
        let existed = self.watchers.remove(&id).is_some();
        if existed {
            self.unsynced.remove(&id);
            self.c.metrics.watchers.dec();
            if self.watchers.is_empty() {
                self.feed = None;
            }
        }
        existed
    }

    async fn create(&mut self, c: pb::WatchCreateRequest) -> Result<(), Gone> {
        // Subscribe before reading the revision the new watcher is placed against.
        let current = match &self.feed {
            Some(_) => self.c.store().current_revision(),
            None => {
                let sub = self.c.store().subscribe();
                self.feed = Some(sub.feed);
                self.seen_rev = self.seen_rev.max(sub.current);
                sub.current
            }
        };
        let refuse = |me: &Self, id: i64, reason: &str| {
            let mut r = me.response(id, current);
            r.created = true;
            r.canceled = true;
            r.cancel_reason = reason.to_string();
            r
        };
        // etcd: an empty key means the smallest key, "\0".
        let key = if c.key.is_empty() { vec![0] } else { c.key };
        let end = c.range_end;
        // As etcd: access first; the reason is the gRPC status as text.
        let denied = self.permit.as_ref().and_then(|p| p(&key, &end).err()).map(|e| {
            let (code, msg) = e.to_etcd();
            format!("rpc error: code = {:?} desc = {msg}", tonic::Code::from_i32(code))
        });
        let refusal = if denied.is_some() {
            denied
        } else if !end.is_empty() && end != [0] && key >= end {
            Some(ERR_EMPTY_RANGE.to_string())
        } else if c.start_revision < 0 {
            Some(ERR_COMPACTED.to_string())
        } else if self.watchers.len() >= MAX_WATCHERS_PER_STREAM {
            Some(format!("etcdserver: too many watchers on one stream (limit {MAX_WATCHERS_PER_STREAM})"))
        } else if c.watch_id != 0 && self.watchers.contains_key(&c.watch_id) {
            Some(ERR_DUPLICATE_ID.to_string())
        } else {
            None
        };
        if let Some(why) = refusal {
            if self.watchers.is_empty() {
                self.feed = None;
            }
            return self.send(refuse(self, -1, &why)).await;
        }
        let id = if c.watch_id != 0 {
            c.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id += 1;
            self.next_id - 1
        };
        let next_rev = if c.start_revision == 0 { current + 1 } else { c.start_revision };
        let filters = |f: pb::watch_create_request::FilterType| c.filters.contains(&(f as i32));
        let w = Watcher {
            key,
            end,
            next_rev,
            no_put: filters(pb::watch_create_request::FilterType::Noput),
            no_delete: filters(pb::watch_create_request::FilterType::Nodelete),
            prev_kv: c.prev_kv,
            fragment: c.fragment,
            progress_notify: c.progress_notify,
            sent_since_tick: false,
        };
        // From the future (or now): the feed has everything from `next_rev` on. From the past:
        // the store's history first.
        if next_rev <= current {
            self.unsynced.insert(id);
        }
        self.watchers.insert(id, w);
        self.c.metrics.watchers.inc();
        let mut r = self.response(id, current);
        r.created = true;
        self.send(r).await
    }

    /// Sends each synced watcher what it wants of an applied batch.
    async fn deliver(&mut self, b: &Arc<EventBatch>) -> Result<(), Gone> {
        self.seen_rev = self.seen_rev.max(b.revision);
        let ids: Vec<i64> = self.watchers.keys().filter(|id| !self.unsynced.contains(id)).copied().collect();
        // One header for the whole batch: with thousands of watchers per stream, reading the
        // member's term once per response was a measurable share of the fan-out.
        let header = self.c.header(b.revision);
        let mut shared_header = None;
        let mut out = Vec::new();
        let mut copied = 0;
        for id in ids {
            let Some(w) = self.watchers.get_mut(&id) else { continue };
            // The usual case with many watchers on one prefix: a watcher wants the whole batch
            // as it is. Its response shares the batch's encoding instead of copying the events.
            if !w.prev_kv && !w.fragment && b.events.iter().all(|e| w.wants(e)) {
                w.next_rev = w.next_rev.max(b.revision + 1);
                w.sent_since_tick = true;
                let header = shared_header
                    .get_or_insert_with(|| {
                        let mut buf = Vec::new();
                        prost::encoding::message::encode(1, &header, &mut buf);
                        Arc::new(prost::bytes::Bytes::from(buf))
                    })
                    .clone();
                self.c.metrics.watch_events_sent.inc_by(b.events.len() as u64);
                out.push(Ok(WatchOut::Shared { watch_id: id, header, batch: b.clone() }));
                continue;
            }
            let events: Vec<Event> = b.events.iter().filter(|e| w.wants(e)).cloned().collect();
            w.next_rev = w.next_rev.max(b.revision + 1);
            if !events.is_empty() {
                self.event_responses(id, events, header, &mut out);
                // Copies (not shared) count against the queue's memory: hand them over in
                // bounded items.
                copied += 2 * b.bytes;
                if copied >= OUT_BATCH_COPIED_BYTES {
                    self.send_batch(std::mem::take(&mut out)).await?;
                    copied = 0;
                }
            }
        }
        self.send_batch(out).await
    }

    /// Every watcher reads the store from where it is (the feed lost its place, or the store
    /// was replaced by a snapshot).
    fn resync(&mut self) {
        self.unsynced.extend(self.watchers.keys().copied());
    }

    /// One bounded history read for the watchers that are catching up from the same place over
    /// the same range (after a lag that is usually all of them): one read, filtered per watcher.
    async fn catch_up_step(&mut self) -> Result<(), Gone> {
        let Some(&first) = self.unsynced.iter().next() else { return Ok(()) };
        let (key, end, from) = {
            let w = &self.watchers[&first];
            (w.key.clone(), w.end.clone(), w.next_rev)
        };
        let group: Vec<i64> = self
            .unsynced
            .iter()
            .copied()
            .filter(|id| {
                let w = &self.watchers[id];
                w.next_rev == from && w.key == key && w.end == end
            })
            .collect();
        // Off the async workers: a read scans up to a bounded number of records.
        let store = self.c.store().clone();
        let read = tokio::task::spawn_blocking(move || store.history(&key, &end, from, CATCH_UP_CHUNK_BYTES))
            .await
            .unwrap_or_else(|e| Err(HistoryError::Store(format!("history read failed: {e}"))));
        match read {
            Ok(h) => {
                let header = self.c.header(h.through);
                for id in group {
                    let w = self.watchers.get_mut(&id).expect("unsynced watchers exist");
                    let events: Vec<Event> = h.events.iter().filter(|e| w.wants(e)).cloned().collect();
                    // Never backwards: a watcher from the future stays where it asked to start.
                    w.next_rev = w.next_rev.max(h.through + 1);
                    if h.through >= h.current {
                        // Caught up: every batch above `current` is still ahead on the feed.
                        self.unsynced.remove(&id);
                        self.seen_rev = self.seen_rev.max(h.current);
                    }
                    if !events.is_empty() {
                        // One watcher at a time: a catch-up response can be a whole chunk.
                        let mut out = Vec::new();
                        self.event_responses(id, events, header, &mut out);
                        self.send_batch(out).await?;
                    }
                }
                Ok(())
            }
            Err(e) => {
                for id in group {
                    self.remove(id);
                    let r = match &e {
                        // etcd's shape: its store hands the stream only the watch id and the
                        // compaction revision, so the header's revision is 0 and there is no
                        // reason (clients look at `compact_revision`).
                        HistoryError::Compacted(rev) => {
                            pb::WatchResponse { canceled: true, compact_revision: *rev, ..self.response(id, 0) }
                        }
                        HistoryError::Store(why) => {
                            tracing::error!(watch_id = id, error = %why, "watch history read failed");
                            pb::WatchResponse {
                                canceled: true,
                                cancel_reason: format!("etcdserver: {why}"),
                                ..self.response(id, self.c.store().current_revision())
                            }
                        }
                    };
                    self.send(r).await?;
                }
                Ok(())
            }
        }
    }

    /// The responses carrying `events` to watcher `id` (with prev_kv and fragmentation as it
    /// asked), appended to `out`.
    fn event_responses(&mut self, id: i64, mut events: Vec<Event>, header: pb::ResponseHeader, out: &mut OutBatch) {
        let (prev_kv, fragment) = match self.watchers.get_mut(&id) {
            Some(w) => {
                w.sent_since_tick = true;
                (w.prev_kv, w.fragment)
            }
            None => return,
        };
        if prev_kv {
            self.c.store().fill_prev_kv(&mut events);
        }
        self.c.metrics.watch_events_sent.inc_by(events.len() as u64);
        let r = pb::WatchResponse { header: Some(header), watch_id: id, events, ..Default::default() };
        let limit = self.c.limits().request_bytes_max + GRPC_OVERHEAD_BYTES;
        if !fragment || r.events.len() < 2 || r.encoded_len() < limit {
            out.push(Ok(WatchOut::Msg(r)));
        } else {
            out.extend(fragments(r, limit).into_iter().map(|p| Ok(WatchOut::Msg(p))));
        }
    }

    /// Queues `out` for the client as one item (one wake-up of the sending side for a whole
    /// batch's responses).
    async fn send_batch(&self, out: OutBatch) -> Result<(), Gone> {
        if out.is_empty() {
            return Ok(());
        }
        self.out.send(out).await.map_err(|_| Gone)
    }

    /// The revision a progress notification may claim: every watcher has been sent every event
    /// up to it.
    fn progress_revision(&self) -> Revision {
        let mut rev = self.seen_rev;
        for w in self.watchers.values() {
            rev = rev.min(w.next_rev - 1);
        }
        rev
    }

    /// Periodic progress: watchers that asked for it and were sent nothing since the last tick.
    async fn progress_tick(&mut self) -> Result<(), Gone> {
        let mut due = Vec::new();
        for (id, w) in self.watchers.iter_mut() {
            if w.progress_notify {
                if !w.sent_since_tick && !self.unsynced.contains(id) {
                    due.push((*id, (w.next_rev - 1).min(self.seen_rev)));
                }
                w.sent_since_tick = false;
            }
        }
        for (id, rev) in due {
            self.send(self.response(id, rev)).await?;
        }
        Ok(())
    }
}

/// Splits a response into parts under `limit` bytes (at least one event each), every part but
/// the last marked `fragment`, as etcd's sendFragments.
fn fragments(r: pb::WatchResponse, limit: usize) -> Vec<pb::WatchResponse> {
    let mut shell = r.clone();
    shell.events.clear();
    shell.fragment = true;
    let base = shell.encoded_len();
    let mut parts = Vec::new();
    let mut cur = shell.clone();
    let mut size = base;
    for e in r.events {
        let n = e.encoded_len() + 8;
        if !cur.events.is_empty() && size + n >= limit {
            parts.push(std::mem::replace(&mut cur, shell.clone()));
            size = base;
        }
        size += n;
        cur.events.push(e);
    }
    cur.fragment = false;
    parts.push(cur);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::mvccpb::KeyValue;

    fn ev(key: &str, value_len: usize, rev: i64) -> Event {
        Event {
            r#type: EventType::Put as i32,
            kv: Some(KeyValue {
                key: key.into(),
                value: vec![b'x'; value_len],
                mod_revision: rev,
                ..Default::default()
            }),
            prev_kv: None,
        }
    }

    #[test]
    fn fragments_split_under_the_limit_and_mark_all_but_the_last() {
        let r = pb::WatchResponse {
            watch_id: 3,
            events: (0..10).map(|i| ev("k", 1000, i)).collect(),
            ..Default::default()
        };
        let parts = fragments(r, 3500);
        assert_eq!(parts.len(), 4);
        assert!(parts[..3].iter().all(|p| p.fragment && p.encoded_len() < 3500 && p.watch_id == 3));
        assert!(!parts[3].fragment);
        let revs: Vec<i64> =
            parts.iter().flat_map(|p| p.events.iter().map(|e| e.kv.as_ref().unwrap().mod_revision)).collect();
        assert_eq!(revs, (0..10).collect::<Vec<_>>());
        // One event larger than the limit still goes, alone.
        let r = pb::WatchResponse { events: vec![ev("a", 5000, 1), ev("b", 10, 2)], ..Default::default() };
        let parts = fragments(r, 3500);
        assert_eq!(parts.iter().map(|p| p.events.len()).collect::<Vec<_>>(), vec![1, 1]);
    }

    #[test]
    fn watcher_filters() {
        let mut w = Watcher {
            key: b"a/".to_vec(),
            end: b"a0".to_vec(),
            next_rev: 5,
            no_put: false,
            no_delete: true,
            prev_kv: false,
            fragment: false,
            progress_notify: false,
            sent_since_tick: false,
        };
        assert!(w.wants(&ev("a/1", 1, 5)));
        assert!(!w.wants(&ev("a/1", 1, 4)), "before next_rev");
        assert!(!w.wants(&ev("b", 1, 6)), "out of range");
        let mut del = ev("a/1", 0, 6);
        del.r#type = EventType::Delete as i32;
        assert!(!w.wants(&del), "nodelete");
        w.no_delete = false;
        w.no_put = true;
        assert!(w.wants(&del));
        assert!(!w.wants(&ev("a/1", 1, 7)), "noput");
    }

    #[test]
    fn a_shared_response_encodes_as_the_message_would() {
        let batch = Arc::new(EventBatch::new(9, vec![ev("a/1", 1, 8), ev("a/2", 1, 9)]));
        let header = pb::ResponseHeader { cluster_id: 1, member_id: 2, revision: 9, raft_term: 3 };
        let mut hb = Vec::new();
        prost::encoding::message::encode(1, &header, &mut hb);
        for watch_id in [0, 7, -1, i64::MAX] {
            let shared = WatchOut::Shared { watch_id, header: Arc::new(hb.clone().into()), batch: batch.clone() };
            let msg = pb::WatchResponse {
                header: Some(header),
                watch_id,
                events: batch.events.clone(),
                ..Default::default()
            };
            let mut a = Vec::new();
            shared.encode(&mut a).unwrap();
            assert_eq!(a, prost::Message::encode_to_vec(&msg), "watch id {watch_id}");
            assert_eq!(shared.encoded_len(), a.len());
            assert_eq!(pb::WatchResponse::decode(a.as_slice()).unwrap(), msg);
        }
    }
}
