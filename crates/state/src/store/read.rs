//! Evaluating reads (Range, compares, read-only transactions) over a consistent view: the
//! key index plus the records behind it, from the apply buffer or the engine.

use std::collections::BTreeMap;
use std::ops::Bound;

use cairn_proto::etcdserverpb as pb;
use cairn_proto::mvccpb::KeyValue;
use cairn_storage::{Reader, Table};
use cairn_types::{Error, Revision};
use parking_lot::RwLockReadGuard;

use super::record::Record;
use super::{State, StoreError};
use crate::index::{IndexKey, KeyAt, KeyIndex};
use crate::rev::{Rev, RevisionSource};

/// Read access needed to evaluate requests: a consistent index and the records behind it.
pub(super) trait View {
    fn state(&self) -> &State;
    fn record(&self, rev: Rev) -> Result<Record, StoreError>;
}

pub(super) struct ReadView<'a> {
    pub(super) state: RwLockReadGuard<'a, State>,
    pub(super) reader: Box<dyn Reader + Send + Sync>,
}

impl View for ReadView<'_> {
    fn state(&self) -> &State {
        &self.state
    }

    fn record(&self, rev: Rev) -> Result<Record, StoreError> {
        read_record(&self.state, &*self.reader, rev)
    }
}

/// A record by revision: from the buffer, the buffer being flushed, or the engine.
pub(super) fn read_record(st: &State, reader: &dyn Reader, rev: Rev) -> Result<Record, StoreError> {
    let missing =
        || StoreError::Corrupt(format!("the index refers to revision {}.{}, which is missing", rev.main, rev.sub));
    let key = rev.to_key();
    let flushing = st.flushing.as_ref().map(|f| &*f.kv);
    for layer in std::iter::once(&st.unflushed.kv).chain(flushing) {
        match layer.get(&key) {
            Some(Some(b)) => return Record::decode(rev, b),
            Some(None) => return Err(missing()),
            None => {}
        }
    }
    match reader.get(Table::Kv, &key)? {
        Some(b) => Record::decode(rev, &b),
        None => Err(missing()),
    }
}

/// The keys of `[key, end)` in etcd's range convention: an empty `end` means the single key,
/// `end == [0]` means every key from `key` on.
pub(super) fn keys_in<'a>(
    keys: &'a BTreeMap<IndexKey, KeyIndex>,
    key: &[u8],
    end: &[u8],
) -> Box<dyn Iterator<Item = (&'a IndexKey, &'a KeyIndex)> + 'a> {
    if end.is_empty() {
        return Box::new(keys.get_key_value(key).into_iter());
    }
    if end == [0] {
        return Box::new(keys.range::<[u8], _>((Bound::Included(key), Bound::Unbounded)));
    }
    if key >= end {
        return Box::new(std::iter::empty());
    }
    Box::new(keys.range::<[u8], _>((Bound::Included(key), Bound::Excluded(end))))
}

pub(super) fn to_kv(view: &dyn View, key: &[u8], at: KeyAt, keys_only: bool) -> Result<KeyValue, StoreError> {
    let rec = view.record(at.modified)?;
    if rec.tombstone || rec.kv.key != key {
        return Err(StoreError::Corrupt(format!(
            "revision {}.{} does not hold a put of the indexed key",
            at.modified.main, at.modified.sub
        )));
    }
    let mut kv = rec.kv;
    if keys_only {
        kv.value.clear();
    }
    Ok(kv)
}

/// The outcome of a read: a request error (an answer for the client) or a store failure.
pub type ReadResult<T> = Result<T, ReadError>;

#[derive(Debug)]
pub enum ReadError {
    Request(Error),
    Store(StoreError),
}

impl From<StoreError> for ReadError {
    fn from(e: StoreError) -> Self {
        ReadError::Store(e)
    }
}

impl From<Error> for ReadError {
    fn from(e: Error) -> Self {
        ReadError::Request(e)
    }
}

impl From<ReadError> for Error {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Request(e) => e,
            ReadError::Store(e) => {
                tracing::error!(error = %e, "store failure while serving a read");
                e.into()
            }
        }
    }
}

/// etcd's Range: `default_rev` is the revision read when the request names none.
pub(super) fn range(view: &dyn View, r: &pb::RangeRequest, default_rev: Revision) -> ReadResult<pb::RangeResponse> {
    let st = view.state();
    let (current, at) = read_revision(st, r, default_rev)?;
    let fetch = fetch_limit(r)?;

    let mut count = 0i64;
    let mut found: Vec<(&[u8], KeyAt)> = Vec::new();
    for (key, ki) in keys_in(&st.keys, &r.key, &r.range_end) {
        if let Some(k) = ki.get(at) {
            count += 1;
            if !r.count_only && found.len() < fetch {
                found.push((key.as_slice(), k));
            }
        }
    }
    let mut resp = pb::RangeResponse { header: Some(header(current)), count, ..Default::default() };
    if r.count_only {
        return Ok(resp);
    }
    let mut kvs = Vec::with_capacity(found.len());
    for (key, k) in found {
        kvs.push(to_kv(view, key, k, drop_values(r))?);
    }
    finish_range(r, kvs, &mut resp)?;
    Ok(resp)
}

/// The store's current revision and the one a Range reads at (`default_rev` unless it names
/// one), or etcd's error for a future or compacted revision.
fn read_revision(st: &State, r: &pb::RangeRequest, default_rev: Revision) -> ReadResult<(Revision, Revision)> {
    let current = st.revs.current();
    if r.revision > current {
        return Err(Error::FutureRev.into());
    }
    let at = if r.revision > 0 { r.revision } else { default_rev };
    if at < st.compact_rev {
        return Err(Error::Compacted.into());
    }
    Ok((current, at))
}

/// Whether a Range must fetch every matching key (sorted or filtered) rather than the first
/// `limit + 1`.
pub(super) fn fetch_limit(r: &pb::RangeRequest) -> ReadResult<usize> {
    use pb::range_request::SortOrder;
    let sort_order = pb::range_request::SortOrder::try_from(r.sort_order).map_err(|_| Error::InvalidSortOption)?;
    pb::range_request::SortTarget::try_from(r.sort_target).map_err(|_| Error::InvalidSortOption)?;
    let filtered =
        r.min_mod_revision != 0 || r.max_mod_revision != 0 || r.min_create_revision != 0 || r.max_create_revision != 0;
    Ok(if sort_order != SortOrder::None || filtered || r.limit <= 0 { usize::MAX } else { r.limit as usize + 1 })
}

/// Whether a Range can drop values as it reads records: `keys_only`, unless it sorts by value
/// (etcd sorts first and drops the values of what it answers).
fn drop_values(r: &pb::RangeRequest) -> bool {
    r.keys_only && r.sort_target != pb::range_request::SortTarget::Value as i32
}

/// The part of a Range after the records are read: filters, sort, limit, `keys_only`.
pub(super) fn finish_range(
    r: &pb::RangeRequest,
    mut kvs: Vec<KeyValue>,
    resp: &mut pb::RangeResponse,
) -> ReadResult<()> {
    use pb::range_request::{SortOrder, SortTarget};
    let sort_order = SortOrder::try_from(r.sort_order).map_err(|_| Error::InvalidSortOption)?;
    let sort_target = SortTarget::try_from(r.sort_target).map_err(|_| Error::InvalidSortOption)?;
    if r.max_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision <= r.max_mod_revision);
    }
    if r.min_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision >= r.min_mod_revision);
    }
    if r.max_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision <= r.max_create_revision);
    }
    if r.min_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision >= r.min_create_revision);
    }
    let mut order = sort_order;
    if sort_target != SortTarget::Key && order == SortOrder::None {
        // Results come out sorted by key; any other target needs an explicit sort.
        order = SortOrder::Ascend;
    }
    if order != SortOrder::None {
        let by = |a: &KeyValue, b: &KeyValue| match sort_target {
            SortTarget::Key => a.key.cmp(&b.key),
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => a.value.cmp(&b.value),
        };
        // Stable in both directions, so keys with equal sort values stay in key order: what
        // etcd answers (Go sorts a small result by insertion, `sort.Reverse` for descending).
        // Reversing an ascending sort would put them in reverse key order.
        if order == SortOrder::Descend {
            kvs.sort_by(|a, b| by(b, a));
        } else {
            kvs.sort_by(by);
        }
    }
    if r.limit > 0 && kvs.len() > r.limit as usize {
        kvs.truncate(r.limit as usize);
        resp.more = true;
    }
    if r.keys_only {
        kvs.iter_mut().for_each(|kv| kv.value.clear());
    }
    resp.kvs = kvs;
    Ok(())
}

pub(super) fn header(revision: Revision) -> pb::ResponseHeader {
    pb::ResponseHeader { revision, ..Default::default() }
}

/// etcd's compare: every live key in the compare's range must satisfy it; a missing key has
/// zero revisions, version and lease, and a value compare on it always fails.
pub(super) fn compare(view: &dyn View, c: &pb::Compare, at: Revision) -> ReadResult<bool> {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    let target = CompareTarget::try_from(c.target).unwrap_or(CompareTarget::Version);
    let result = CompareResult::try_from(c.result).unwrap_or(CompareResult::Equal);
    let st = view.state();
    let mut kvs = Vec::new();
    for (key, ki) in keys_in(&st.keys, &c.key, &c.range_end) {
        if let Some(k) = ki.get(at) {
            kvs.push(to_kv(view, key, k, false)?);
        }
    }
    if kvs.is_empty() {
        if target == CompareTarget::Value {
            return Ok(false);
        }
        kvs.push(KeyValue::default());
    }
    let ok = kvs.iter().all(|kv| {
        let ord = match (&c.target_union, target) {
            (Some(TargetUnion::Value(v)), CompareTarget::Value) => kv.value.as_slice().cmp(v.as_slice()),
            (None, CompareTarget::Value) => kv.value.as_slice().cmp(&[][..]),
            (Some(TargetUnion::Version(v)), _)
            | (Some(TargetUnion::CreateRevision(v)), _)
            | (Some(TargetUnion::ModRevision(v)), _)
            | (Some(TargetUnion::Lease(v)), _) => field(kv, target).cmp(v),
            (Some(TargetUnion::Value(_)), _) | (None, _) => field(kv, target).cmp(&0),
        };
        match result {
            CompareResult::Equal => ord.is_eq(),
            CompareResult::NotEqual => ord.is_ne(),
            CompareResult::Greater => ord.is_gt(),
            CompareResult::Less => ord.is_lt(),
        }
    });
    Ok(ok)
}

fn field(kv: &KeyValue, target: pb::compare::CompareTarget) -> i64 {
    use pb::compare::CompareTarget;
    match target {
        CompareTarget::Version => kv.version,
        CompareTarget::Create => kv.create_revision,
        CompareTarget::Mod => kv.mod_revision,
        CompareTarget::Lease => kv.lease,
        CompareTarget::Value => 0,
    }
}

/// Sets the header revision of a transaction response. Transactions nested in it keep the
/// empty header they were built with, as in etcd (its `newTxnResp` gives every level an empty
/// header and fills in the outermost one only).
pub(super) fn set_txn_revision(resp: &mut pb::TxnResponse, revision: Revision) {
    resp.header = Some(header(revision));
}

/// Keys a chunked read visits under one hold of the state lock.
pub const READ_CHUNK_KEYS: usize = 1000;
/// Bytes of values a chunked read copies under one hold of the state lock.
pub const READ_CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// A revision a chunked read is reading at: compaction leaves the history it needs alone
/// until the read is over (see `compact`). Released on drop.
pub(super) struct Pin<'a> {
    pub(super) pins: &'a parking_lot::Mutex<BTreeMap<Revision, usize>>,
    pub(super) at: Revision,
}

impl Drop for Pin<'_> {
    fn drop(&mut self) {
        let mut pins = self.pins.lock();
        if let Some(n) = pins.get_mut(&self.at) {
            *n -= 1;
            if *n == 0 {
                pins.remove(&self.at);
            }
        }
    }
}

impl super::Store {
    /// A Range that may cover many keys, read in chunks: the state lock is held for at most
    /// [`READ_CHUNK_KEYS`] keys or [`READ_CHUNK_BYTES`] of values at a time, so apply (and every
    /// other reader) waits for one chunk at most, never for the whole read. Every chunk reads
    /// at the same revision; the revision is pinned so no compaction removes what it needs.
    pub(super) fn range_in_chunks(&self, r: &pb::RangeRequest) -> ReadResult<pb::RangeResponse> {
        self.range_in_chunks_at(r, None)
    }

    /// [`Self::range_in_chunks`] at revision `base` (a transaction's) unless the request names
    /// its own; at the current revision when `base` is `None`.
    fn range_in_chunks_at(&self, r: &pb::RangeRequest, base: Option<Revision>) -> ReadResult<pb::RangeResponse> {
        let fetch = fetch_limit(r)?;
        let (current, at, _pin) = {
            let st = self.state.read();
            let (current, at) = read_revision(&st, r, base.unwrap_or_else(|| st.revs.current()))?;
            *self.read_pins.lock().entry(at).or_default() += 1;
            (current, at, Pin { pins: &self.read_pins, at })
        };
        let mut count = 0i64;
        let mut kvs = Vec::new();
        let mut after: Option<IndexKey> = None;
        loop {
            let view = self.view()?;
            let st = &*view.state;
            let lo = match &after {
                Some(k) => Bound::Excluded(k.as_slice()),
                None => Bound::Included(r.key.as_slice()),
            };
            let hi = match r.range_end.as_slice() {
                [0] => Bound::Unbounded,
                end => Bound::Excluded(end),
            };
            if let (Bound::Included(a) | Bound::Excluded(a), Bound::Excluded(b)) = (lo, hi) {
                if a >= b {
                    break;
                }
            }
            let (mut visited, mut bytes) = (0usize, 0usize);
            let mut stopped = None;
            for (key, ki) in st.keys.range::<[u8], _>((lo, hi)) {
                if let Some(k) = ki.get(at) {
                    count += 1;
                    if !r.count_only && kvs.len() < fetch {
                        let kv = to_kv(&view, key, k, drop_values(r))?;
                        bytes += kv.key.len() + kv.value.len();
                        kvs.push(kv);
                    }
                }
                visited += 1;
                if visited >= READ_CHUNK_KEYS || bytes >= READ_CHUNK_BYTES {
                    stopped = Some(key.clone());
                    break;
                }
            }
            match stopped {
                Some(k) => after = Some(k),
                None => break,
            }
        }
        let mut resp = pb::RangeResponse { header: Some(header(current)), count, ..Default::default() };
        if !r.count_only {
            finish_range(r, kvs, &mut resp)?;
        }
        Ok(resp)
    }

    /// A transaction that only reads, at revision `at` (pinned by the caller): its compares
    /// under one hold of the state lock, then each range of the chosen branch as a Range alone
    /// would be read (a range over many keys in chunks), so a read-only Txn never holds apply
    /// for longer than a Range does. The answer is the one [`txn_read_only`] gives in one pass.
    pub(super) fn txn_read_only_in_chunks(&self, t: &pb::TxnRequest, at: Revision) -> ReadResult<pb::TxnResponse> {
        use pb::request_op::Request;
        use pb::response_op::Response as R;
        let ok = {
            let view = self.view()?;
            let mut ok = true;
            for c in &t.compare {
                if !compare(&view, c, at)? {
                    ok = false;
                    break;
                }
            }
            ok
        };
        let mut responses = Vec::new();
        for op in if ok { &t.success } else { &t.failure } {
            let r = match &op.request {
                Some(Request::RequestRange(r)) => {
                    let mut rr = if r.range_end.is_empty() {
                        range(&self.view()?, r, at)?
                    } else {
                        self.range_in_chunks_at(r, Some(at))?
                    };
                    // The transaction's revision, not whatever is current by now.
                    rr.header = Some(header(at));
                    R::ResponseRange(rr)
                }
                Some(Request::RequestTxn(n)) => R::ResponseTxn(self.txn_read_only_in_chunks(n, at)?),
                None => R::ResponseRange(pb::RangeResponse::default()),
                Some(Request::RequestPut(_)) | Some(Request::RequestDeleteRange(_)) => {
                    return Err(Error::Internal("a write in a read-only transaction".into()).into())
                }
            };
            responses.push(pb::ResponseOp { response: Some(r) });
        }
        Ok(pb::TxnResponse { header: Some(pb::ResponseHeader::default()), succeeded: ok, responses })
    }
}
