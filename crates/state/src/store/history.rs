//! Reads of the store's history for watchers: events by revision, and `prev_kv`.

use std::ops::Bound;

use cairn_proto::etcdserverpb as pb;
use cairn_proto::mvccpb::KeyValue;
use cairn_storage::Table;
use cairn_types::Revision;

use super::read::range;
use super::record::Record;
use super::Store;
use crate::rev::{Rev, RevisionSource};
use crate::watch::{self, History, HistoryError};

impl Store {
    /// The events in `[start, end)` (etcd's range convention) from revision `from` on, read
    /// from the store: whole revisions, in order, stopping after the revision at which their
    /// size passes `max_bytes`, or at which the records scanned (matching or not) pass
    /// [`watch::HISTORY_SCAN_RECORDS`] or four times `max_bytes`, so one call holds the read
    /// lock briefly however sparse the range is. A watcher catching up calls this until
    /// `through` reaches `current`.
    pub fn history(&self, start: &[u8], end: &[u8], from: Revision, max_bytes: usize) -> Result<History, HistoryError> {
        let view = self.view().map_err(|e| HistoryError::Store(e.to_string()))?;
        let st = &*view.state;
        let current = st.revs.current();
        // etcd: a watcher whose start is below the compaction revision is canceled.
        if from < st.compact_rev {
            return Err(HistoryError::Compacted(st.compact_rev));
        }
        let mut out = History { events: Vec::new(), through: current, current };
        if from > current {
            // Nothing yet; a start in the future stays where it is.
            out.through = from - 1;
            return Ok(out);
        }
        let mut bytes = 0usize;
        let (mut scanned, mut scanned_bytes) = (0usize, 0usize);
        // The revision at which the size limit was passed: finish it, then stop.
        let mut stop_after: Option<Revision> = None;
        let mut bad = None;
        let mut visit = |k: &[u8], v: &[u8]| -> bool {
            let Some(rev) = Rev::from_key(k) else {
                bad = Some(format!("bad revision key {k:?}"));
                return false;
            };
            if let Some(last) = stop_after {
                if rev.main > last {
                    out.through = last;
                    return false;
                }
            }
            scanned += 1;
            scanned_bytes += v.len();
            if (scanned >= watch::HISTORY_SCAN_RECORDS || scanned_bytes >= max_bytes.saturating_mul(4))
                && stop_after.is_none()
            {
                stop_after = Some(rev.main);
            }
            let rec = match Record::decode(rev, v) {
                Ok(r) => r,
                Err(e) => {
                    bad = Some(e.to_string());
                    return false;
                }
            };
            if watch::in_range(&rec.kv.key, start, end) {
                bytes += rec.kv.key.len() + rec.kv.value.len() + 32;
                out.events.push(if rec.tombstone {
                    watch::delete_event(rec.kv.key, rev.main)
                } else {
                    watch::put_event(rec.kv)
                });
                if bytes >= max_bytes && stop_after.is_none() {
                    stop_after = Some(rev.main);
                }
            }
            true
        };
        let lo = Rev::new(from, 0).to_key();
        let hi = Rev::new(current + 1, 0).to_key();
        // Flushed records first, skipping those a buffered compaction removed; buffered puts are
        // all newer than anything flushed, so they follow in order.
        // A buffer being flushed sits between the two: its records are newer than the engine's
        // others, older than the buffer's, and the engine may or may not hold them yet, so the
        // engine scan skips them and they are visited from the buffer.
        let flushing = st.flushing.as_ref().map(|f| &*f.kv);
        let mut stopped = false;
        view.reader
            .scan(Table::Kv, Bound::Included(&lo), Bound::Excluded(&hi), &mut |k, v| {
                if let Ok(key) = <[u8; 16]>::try_from(k) {
                    if flushing.is_some_and(|f| f.contains_key(&key)) {
                        return true;
                    }
                    if let Some(None) = st.unflushed.kv.get(&key) {
                        return true;
                    }
                }
                let go_on = visit(k, v);
                stopped = !go_on;
                go_on
            })
            .map_err(|e| HistoryError::Store(e.to_string()))?;
        if let (false, Some(f)) = (stopped, flushing) {
            for (k, v) in f.range(lo..hi) {
                if let (Some(v), None | Some(Some(_))) = (v, st.unflushed.kv.get(k)) {
                    if !visit(k, v) {
                        stopped = true;
                        break;
                    }
                }
            }
        }
        if !stopped {
            for (k, v) in st.unflushed.kv.range(lo..hi) {
                if let Some(v) = v {
                    if !visit(k, v) {
                        break;
                    }
                }
            }
        }
        if let Some(why) = bad {
            return Err(HistoryError::Store(why));
        }
        Ok(out)
    }

    /// Fills each event's `prev_kv` (the key's value at the revision before the event, as etcd:
    /// none for a create, none once compacted), reading under one view.
    pub fn fill_prev_kv(&self, events: &mut [cairn_proto::mvccpb::Event]) {
        let Ok(view) = self.view() else { return };
        for e in events {
            let Some(kv) = &e.kv else { continue };
            let create =
                e.r#type == cairn_proto::mvccpb::event::EventType::Put as i32 && kv.create_revision == kv.mod_revision;
            if create || kv.mod_revision <= 1 {
                continue;
            }
            let r = pb::RangeRequest { key: kv.key.clone(), revision: kv.mod_revision - 1, ..Default::default() };
            e.prev_kv = range(&view, &r, kv.mod_revision - 1).ok().and_then(|mut r| r.kvs.pop());
        }
    }

    /// The key's value as of revision `at`, if it was live then and `at` is not compacted
    /// (a watch event's `prev_kv`).
    pub fn get_at(&self, key: &[u8], at: Revision) -> Option<KeyValue> {
        if at <= 0 {
            return None;
        }
        let r = pb::RangeRequest { key: key.to_vec(), revision: at, ..Default::default() };
        self.range(&r).ok().and_then(|mut r| r.kvs.pop())
    }
}
