//! What watches need from a replica: a feed of the events each applied batch produced, and
//! the history of past events read back from the store.
//!
//! Every replica publishes, under the store's write lock at the end of each applied batch, one
//! [`Feed::Events`] message on its [`FeedSender`]. Publishing costs one message per batch
//! whatever the number of watchers, so watchers never slow writes: a watch stream that falls
//! behind the feed's byte budget loses its place ([`Lagged`]) and catches up from the store's
//! history ([`crate::Store::history`]) instead, as etcd moves a slow watcher to its unsynced set.
//!
//! Consistency rule the watch streams rely on: a batch is published before the store's
//! revision moves past it becomes visible, so after reading revision `H` from the store, every
//! batch with events above `H` is still ahead of a receiver subscribed before the read.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use cairn_proto::mvccpb::{event::EventType, Event, KeyValue};
use cairn_types::Revision;
use parking_lot::Mutex;
use prost::Message;

/// The events one applied batch produced, in revision order.
#[derive(Debug)]
pub struct EventBatch {
    /// The store's revision after the batch.
    pub revision: Revision,
    pub events: Vec<Event>,
    /// Their encoded size (what the feed's budget counts).
    pub bytes: usize,
    encoded: std::sync::OnceLock<prost::bytes::Bytes>,
}

/// The field number of `events` in etcd's `WatchResponse`.
pub const WATCH_RESPONSE_EVENTS_FIELD: u32 = 11;

impl EventBatch {
    pub fn new(revision: Revision, events: Vec<Event>) -> EventBatch {
        let bytes = events.iter().map(|e| e.encoded_len()).sum();
        EventBatch { revision, events, bytes, encoded: std::sync::OnceLock::new() }
    }

    /// All the batch's events encoded as the `events` field of a `WatchResponse`, made once
    /// (on first use) and shared by every watch stream and every watcher that sends the whole
    /// batch: with many watchers on one prefix this replaces an encoding per watcher.
    pub fn encoded_events(&self) -> &prost::bytes::Bytes {
        self.encoded.get_or_init(|| {
            let mut buf = Vec::with_capacity(self.bytes + 4 * self.events.len());
            for e in &self.events {
                prost::encoding::message::encode(WATCH_RESPONSE_EVENTS_FIELD, e, &mut buf);
            }
            buf.into()
        })
    }
}

/// A message on a replica's event feed.
#[derive(Debug, Clone)]
pub enum Feed {
    Events(Arc<EventBatch>),
    /// The store was replaced wholesale (a snapshot was installed): whatever a watcher learned
    /// from the feed so far must be re-read from the store.
    Resync,
}

/// Event bytes the feed keeps for receivers that are behind; a receiver that falls further
/// behind lags and catches up from the store.
pub const FEED_BYTES: usize = 64 * 1024 * 1024;
/// And at most this many messages, however small.
pub const FEED_MESSAGES: usize = 65_536;
/// Records one history read may scan (matching its range or not) before it returns.
pub const HISTORY_SCAN_RECORDS: usize = 16_384;

/// A receiver fell behind the feed's bounds; it now stands at the present and must read what
/// it missed from the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lagged;

/// The publishing side of a replica's event feed.
///
/// Written here rather than using `tokio::sync::broadcast`: that channel bounds messages by
/// count, and an applied batch can carry anywhere from one small event to megabytes, so only a
/// byte budget bounds memory. A lagging receiver also skips straight to the present (it reads
/// the gap from the store) instead of to the oldest message kept. As in the broadcast channel, a
/// message is dropped as soon as every receiver that existed when it was sent has read (or
/// skipped) it, so a feed whose receivers keep up holds almost nothing.
pub struct FeedSender {
    shared: Arc<Shared>,
}

struct Shared {
    ring: Mutex<Ring>,
    /// The sequence number the next message will get; receivers wait for it to move.
    tip: tokio::sync::watch::Sender<u64>,
    receivers: AtomicUsize,
    budget: usize,
}

#[derive(Default)]
struct Ring {
    msgs: VecDeque<Slot>,
    bytes: usize,
    next_seq: u64,
}

struct Slot {
    seq: u64,
    msg: Feed,
    bytes: usize,
    /// Receivers that have yet to read or skip it.
    rem: usize,
}

impl Ring {
    fn oldest(&self) -> u64 {
        self.msgs.front().map_or(self.next_seq, |m| m.seq)
    }

    /// A receiver positioned at `next` will not read the messages from there on.
    fn release_from(&mut self, next: u64) {
        let oldest = self.oldest();
        let skip = next.saturating_sub(oldest) as usize;
        for m in self.msgs.iter_mut().skip(skip) {
            m.rem = m.rem.saturating_sub(1);
        }
        self.pop_read();
    }

    fn pop_read(&mut self) {
        while self.msgs.front().is_some_and(|m| m.rem == 0) {
            let m = self.msgs.pop_front().expect("not empty");
            self.bytes -= m.bytes;
        }
    }
}

impl FeedSender {
    pub fn new(budget: usize) -> FeedSender {
        let (tip, _) = tokio::sync::watch::channel(0);
        FeedSender {
            shared: Arc::new(Shared { ring: Mutex::new(Ring::default()), tip, receivers: AtomicUsize::new(0), budget }),
        }
    }

    /// A receiver that gets every message sent from now on (unless it lags).
    pub fn subscribe(&self) -> FeedReceiver {
        // Counted under the ring's lock, so a message sent concurrently either counts this
        // receiver or is older than its position.
        let r = self.shared.ring.lock();
        self.shared.receivers.fetch_add(1, Ordering::SeqCst);
        let next = r.next_seq;
        FeedReceiver { shared: self.shared.clone(), next, tip: self.shared.tip.subscribe() }
    }

    /// Event bytes held for receivers that have not read them yet.
    pub fn held_bytes(&self) -> usize {
        self.shared.ring.lock().bytes
    }

    pub fn receiver_count(&self) -> usize {
        self.shared.receivers.load(Ordering::SeqCst)
    }

    /// Publishes `msg`, dropping the oldest messages beyond the budget.
    pub fn send(&self, msg: Feed) {
        let bytes = match &msg {
            Feed::Events(b) => b.bytes,
            Feed::Resync => 0,
        };
        let seq = {
            let mut r = self.shared.ring.lock();
            // Read under the lock receivers are counted under.
            let rem = self.receiver_count();
            while !r.msgs.is_empty() && (r.bytes + bytes > self.shared.budget || r.msgs.len() >= FEED_MESSAGES) {
                let m = r.msgs.pop_front().expect("not empty");
                r.bytes -= m.bytes;
            }
            let seq = r.next_seq;
            r.next_seq += 1;
            if rem > 0 {
                r.bytes += bytes;
                r.msgs.push_back(Slot { seq, msg, bytes, rem });
            }
            seq
        };
        self.shared.tip.send_replace(seq + 1);
    }
}

/// One subscriber's position in the feed.
pub struct FeedReceiver {
    shared: Arc<Shared>,
    next: u64,
    tip: tokio::sync::watch::Receiver<u64>,
}

impl FeedReceiver {
    /// The next message; `Err(Lagged)` if some were dropped before this receiver read them.
    pub async fn recv(&mut self) -> Result<Feed, Lagged> {
        loop {
            if let Some(m) = self.try_recv()? {
                return Ok(m);
            }
            // The sender lives as long as the store; if it is gone, nothing more will come.
            if self.tip.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// The next message if one is there.
    pub fn try_recv(&mut self) -> Result<Option<Feed>, Lagged> {
        let mut r = self.shared.ring.lock();
        let oldest = r.oldest();
        if self.next < oldest {
            // Skip to the present, giving up whatever is still held for this receiver.
            r.release_from(self.next);
            self.next = r.next_seq;
            return Err(Lagged);
        }
        let i = (self.next - oldest) as usize;
        match r.msgs.get_mut(i) {
            Some(m) => {
                m.rem = m.rem.saturating_sub(1);
                let msg = m.msg.clone();
                self.next += 1;
                r.pop_read();
                Ok(Some(msg))
            }
            None => Ok(None),
        }
    }
}

impl Drop for FeedReceiver {
    fn drop(&mut self) {
        let mut r = self.shared.ring.lock();
        self.shared.receivers.fetch_sub(1, Ordering::SeqCst);
        r.release_from(self.next);
    }
}

/// Whether `key` is in a watch's range: `end` empty means the key alone, `end == [0]` every key
/// from `start` on, otherwise `[start, end)`.
pub fn in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    if end.is_empty() {
        key == start
    } else if end == [0] {
        key >= start
    } else {
        key >= start && key < end
    }
}

pub(crate) fn put_event(kv: KeyValue) -> Event {
    Event { r#type: EventType::Put as i32, kv: Some(kv), prev_kv: None }
}

pub(crate) fn delete_event(key: Vec<u8>, revision: Revision) -> Event {
    let kv = KeyValue { key, mod_revision: revision, ..Default::default() };
    Event { r#type: EventType::Delete as i32, kv: Some(kv), prev_kv: None }
}

/// Events read back from the store.
#[derive(Debug, Default)]
pub struct History {
    /// Every matching event with a revision in `[from, through]`, in order.
    pub events: Vec<Event>,
    /// The last revision covered; `through == current` when the reader has caught up.
    pub through: Revision,
    /// The store's revision when this was read.
    pub current: Revision,
}

/// Why history cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryError {
    /// Revisions before this one have been compacted away (etcd's compact_revision).
    Compacted(Revision),
    Store(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(rev: Revision, value_len: usize) -> Feed {
        Feed::Events(Arc::new(EventBatch::new(
            rev,
            vec![put_event(KeyValue {
                key: b"k".to_vec(),
                value: vec![0; value_len],
                mod_revision: rev,
                ..Default::default()
            })],
        )))
    }

    fn rev_of(f: Feed) -> Revision {
        match f {
            Feed::Events(b) => b.revision,
            Feed::Resync => -1,
        }
    }

    #[test]
    fn feed_delivers_in_order_and_lags_past_its_byte_budget() {
        let tx = FeedSender::new(10_000);
        assert_eq!(tx.receiver_count(), 0);
        let mut fast = tx.subscribe();
        let mut slow = tx.subscribe();
        assert_eq!(tx.receiver_count(), 2);
        for rev in 1..=3 {
            tx.send(batch(rev, 1000));
        }
        assert_eq!(fast.try_recv().unwrap().map(rev_of), Some(1));
        assert_eq!(fast.try_recv().unwrap().map(rev_of), Some(2));
        assert_eq!(fast.try_recv().unwrap().map(rev_of), Some(3));
        assert_eq!(fast.try_recv().unwrap().map(rev_of), None);
        // 20 more KB: the budget keeps ~10 of them; `slow` never read and has lost its place.
        for rev in 4..=23 {
            tx.send(batch(rev, 1000));
        }
        assert_eq!(slow.try_recv().unwrap_err(), Lagged);
        // It now stands at the present: only what is sent next.
        assert_eq!(slow.try_recv().unwrap().map(rev_of), None);
        tx.send(Feed::Resync);
        assert_eq!(slow.try_recv().unwrap().map(rev_of), Some(-1));
        assert_eq!(fast.try_recv().unwrap_err(), Lagged);
        drop(slow);
        assert_eq!(tx.receiver_count(), 1);
    }

    #[test]
    fn messages_are_dropped_once_every_receiver_read_them() {
        let tx = FeedSender::new(FEED_BYTES);
        tx.send(batch(1, 1000)); // no receivers: not kept
        assert_eq!(tx.held_bytes(), 0);
        let mut a = tx.subscribe();
        let mut b = tx.subscribe();
        tx.send(batch(2, 1000));
        tx.send(batch(3, 1000));
        let held = tx.held_bytes();
        assert!(held > 2000);
        assert_eq!(a.try_recv().unwrap().map(rev_of), Some(2));
        assert_eq!(tx.held_bytes(), held, "b has not read it");
        assert_eq!(b.try_recv().unwrap().map(rev_of), Some(2));
        assert!(tx.held_bytes() < held);
        // A receiver that goes away releases what it had not read.
        drop(b);
        assert_eq!(a.try_recv().unwrap().map(rev_of), Some(3));
        assert_eq!(tx.held_bytes(), 0);
        drop(a);
        tx.send(batch(4, 1000));
        assert_eq!(tx.held_bytes(), 0);
    }

    #[tokio::test]
    async fn recv_waits_for_the_next_message() {
        let tx = Arc::new(FeedSender::new(FEED_BYTES));
        let mut rx = tx.subscribe();
        let t = tokio::spawn(async move { rev_of(rx.recv().await.unwrap()) });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        tx.send(batch(7, 1));
        assert_eq!(t.await.unwrap(), 7);
    }

    #[test]
    fn ranges_follow_etcds_conventions() {
        assert!(in_range(b"a", b"a", b""));
        assert!(!in_range(b"ab", b"a", b""));
        assert!(in_range(b"zzz", b"a", &[0]));
        assert!(!in_range(b"0", b"a", &[0]));
        assert!(in_range(b"a/1", b"a/", b"a0"));
        assert!(!in_range(b"a0", b"a/", b"a0"));
    }
}
