//! Deterministic execution of commands over an ordered byte map.
//!
//! [`apply`] runs a [`DataCmd`] from the log; [`read`] answers a [`ReadCmd`]. Both take the
//! time as an argument (the log entry's stamp, or the leader's clock for reads) and read no
//! clock. A key whose expiry is at or before `now_ms` is absent to every command; it stays in
//! storage until an [`DataCmd::ExpireDelete`] or an overwrite removes it.
//!
//! The map is reached through [`KvRead`] and [`KvAccess`], over stored (encoded) keys. A
//! command's writes must become visible together: the implementation over the storage engine
//! buffers them and commits them as one batch with the applied index.

use thiserror::Error;

use crate::cmd::{DataCmd, GetExExpiry, ReadCmd, SetCond, SetExpiry};
use crate::glob;
use crate::keys::{self, KeySpan};
use crate::num;
use crate::record::{DecodeError, Kind, Record, VALUE_BYTES_MAX};
use crate::reply::{errors, Reply};

/// Entries read per storage call by range-wide commands (KEYS, DBSIZE, FLUSHALL).
pub const SCAN_PAGE_ENTRIES: usize = 1024;

/// The most entries one SCAN call examines, whatever its COUNT.
pub const SCAN_COUNT_MAX: usize = 100_000;

/// The most keys one KEYS call returns; past it the client is told to use SCAN.
pub const KEYS_REPLY_MAX: usize = 1 << 20;

/// Stored key-value pairs in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// The most value bytes one MGET returns (over every range it reads): a reply is built in
/// memory, and a few keys named many times over would otherwise ask a node for terabytes.
pub const MGET_REPLY_BYTES_MAX: usize = VALUE_BYTES_MAX;

/// KEYS's answer when it matches more than [`KEYS_REPLY_MAX`] keys.
pub fn keys_too_many() -> Reply {
    Reply::err(format!("ERR KEYS would return more than {KEYS_REPLY_MAX} keys; use SCAN"))
}

/// MGET's answer when its values pass [`MGET_REPLY_BYTES_MAX`].
pub fn mget_too_big() -> Reply {
    Reply::err(format!(
        "ERR MGET would return more than {} MiB of values; ask for fewer keys",
        MGET_REPLY_BYTES_MAX >> 20
    ))
}

/// A failure of the store under apply or read. It is not an answer to the client: apply
/// stops the node on it, a read returns an internal error.
#[derive(Debug, Error)]
pub enum ExecError {
    #[error("storage: {0}")]
    Storage(String),
    #[error("corrupt record under stored key {key:?}: {source}")]
    Corruption { key: Vec<u8>, source: DecodeError },
}

/// Reads of an ordered map of stored keys to stored values.
pub trait KvRead {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ExecError>;

    /// Entries with `start <= key < end`, in key order, at most `limit` of them; of each
    /// value, its first [`crate::record::HEADER_BYTES_MAX`] bytes at most (what scans read:
    /// a record's header, see [`Record::header`]; a value is not copied for a scan).
    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Entries, ExecError>;
}

/// Reads and writes of an ordered map.
pub trait KvAccess: KvRead {
    fn put(&mut self, key: &[u8], value: Vec<u8>) -> Result<(), ExecError>;
    fn delete(&mut self, key: &[u8]) -> Result<(), ExecError>;
}

/// The live record of a Redis key at `now_ms`.
fn load(kv: &impl KvRead, key: &[u8], now_ms: i64) -> Result<Option<Record>, ExecError> {
    Ok(load_raw(kv, &keys::encode(key))?.filter(|r| !r.is_expired(now_ms)))
}

fn load_raw(kv: &impl KvRead, stored: &[u8]) -> Result<Option<Record>, ExecError> {
    match kv.get(stored)? {
        None => Ok(None),
        Some(bytes) => {
            Record::decode(&bytes).map(Some).map_err(|source| ExecError::Corruption { key: stored.to_vec(), source })
        }
    }
}

fn store(kv: &mut impl KvAccess, key: &[u8], r: &Record) -> Result<(), ExecError> {
    kv.put(&keys::encode(key), r.encode())
}

fn remove(kv: &mut impl KvAccess, key: &[u8]) -> Result<(), ExecError> {
    kv.delete(&keys::encode(key))
}

fn version(now_ms: i64) -> u64 {
    u64::try_from(now_ms).unwrap_or(0)
}

fn wrongtype() -> Reply {
    Reply::err(errors::WRONGTYPE)
}

/// A live string record, `Ok(None)` when absent, `Err(WRONGTYPE)` for another type.
fn string_of(r: Option<Record>) -> Result<Option<Record>, Reply> {
    match r {
        Some(r) if r.kind != Kind::String => Err(wrongtype()),
        other => Ok(other),
    }
}

macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(reply) => return Ok(reply),
        }
    };
}

/// Apply one write at `now_ms` (the log entry's stamp).
pub fn apply(cmd: &DataCmd, kv: &mut impl KvAccess, now_ms: i64) -> Result<Reply, ExecError> {
    let ver = version(now_ms);
    // Redis takes keys up to 512 MiB; cairn stores a key in every index entry and log record
    // that names it, so it refuses long ones before anything is written.
    if cmd.keys().iter().any(|k| k.len() > keys::KEY_BYTES_MAX) {
        return Ok(Reply::err(format!("ERR key is longer than {} bytes", keys::KEY_BYTES_MAX)));
    }
    // The front end refuses longer bulk arguments (`proto-max-bulk-len`), but a command in the
    // log is checked here too: a record past the bound would stop every replica that applies
    // it (`Record::encode` refuses it, and so does every read of it).
    if cmd.value_bytes_max() > VALUE_BYTES_MAX {
        return Ok(Reply::err(errors::TOO_BIG));
    }
    Ok(match cmd {
        DataCmd::Set { key, value, cond, get, expiry } => {
            // A plain SET replaces whatever the key held, of any type: only GET, NX/XX and
            // KEEPTTL need the old record (a read of the engine per SET was 15 % of a SET run).
            let needs_old = *get || !matches!(cond, SetCond::Always) || matches!(expiry, SetExpiry::Keep);
            let old = if needs_old { load(kv, key, now_ms)? } else { None };
            let mut reply = None;
            if *get {
                reply = Some(match tri!(string_of(old.clone())) {
                    Some(r) => Reply::Bulk(r.value),
                    None => Reply::Null,
                });
            }
            let found = old.is_some();
            let refused = match cond {
                SetCond::Always => false,
                SetCond::IfAbsent => found,
                SetCond::IfPresent => !found,
            };
            if refused {
                return Ok(reply.unwrap_or(Reply::Null));
            }
            let expire_at_ms = match expiry {
                SetExpiry::Clear => None,
                SetExpiry::Keep => old.as_ref().and_then(|r| r.expire_at_ms),
                SetExpiry::At(at) => Some(*at),
            };
            store(kv, key, &Record::string(value.clone(), expire_at_ms, ver))?;
            reply.unwrap_or_else(Reply::ok)
        }
        DataCmd::SetNx { key, value } => {
            if load(kv, key, now_ms)?.is_some() {
                Reply::Int(0)
            } else {
                store(kv, key, &Record::string(value.clone(), None, ver))?;
                Reply::Int(1)
            }
        }
        DataCmd::GetSet { key, value } => {
            let old = tri!(string_of(load(kv, key, now_ms)?));
            store(kv, key, &Record::string(value.clone(), None, ver))?;
            old.map_or(Reply::Null, |r| Reply::Bulk(r.value))
        }
        DataCmd::MSet { pairs } => {
            for (k, v) in pairs {
                store(kv, k, &Record::string(v.clone(), None, ver))?;
            }
            Reply::ok()
        }
        DataCmd::MSetNx { pairs } => {
            for (k, _) in pairs {
                if load(kv, k, now_ms)?.is_some() {
                    return Ok(Reply::Int(0));
                }
            }
            for (k, v) in pairs {
                store(kv, k, &Record::string(v.clone(), None, ver))?;
            }
            Reply::Int(1)
        }
        DataCmd::Del { keys } => {
            let mut n = 0;
            for k in keys {
                if let Some(r) = load_raw(kv, &keys::encode(k))? {
                    remove(kv, k)?;
                    if !r.is_expired(now_ms) {
                        n += 1;
                    }
                }
            }
            Reply::Int(n)
        }
        DataCmd::Expire { key, at_ms, cond } => {
            let Some(mut r) = load(kv, key, now_ms)? else {
                return Ok(Reply::Int(0));
            };
            let current = r.expire_at_ms;
            // No expiry counts as an infinite one: GT always fails on it, LT always passes.
            let refused = (cond.nx && current.is_some())
                || (cond.xx && current.is_none())
                || (cond.gt && current.is_none_or(|c| *at_ms <= c))
                || (cond.lt && current.is_some_and(|c| *at_ms >= c));
            if refused {
                return Ok(Reply::Int(0));
            }
            if *at_ms <= now_ms {
                remove(kv, key)?;
            } else {
                r.expire_at_ms = Some(*at_ms);
                r.version = ver;
                store(kv, key, &r)?;
            }
            Reply::Int(1)
        }
        DataCmd::Persist { key } => match load(kv, key, now_ms)? {
            Some(mut r) if r.expire_at_ms.is_some() => {
                r.expire_at_ms = None;
                r.version = ver;
                store(kv, key, &r)?;
                Reply::Int(1)
            }
            _ => Reply::Int(0),
        },
        DataCmd::GetDel { key } => match tri!(string_of(load(kv, key, now_ms)?)) {
            Some(r) => {
                remove(kv, key)?;
                Reply::Bulk(r.value)
            }
            None => Reply::Null,
        },
        DataCmd::GetEx { key, expiry } => {
            let Some(mut r) = tri!(string_of(load(kv, key, now_ms)?)) else {
                return Ok(Reply::Null);
            };
            match expiry {
                GetExExpiry::Invalid(e) => return Ok(Reply::err(e.clone())),
                GetExExpiry::Keep => {}
                GetExExpiry::Persist => {
                    if r.expire_at_ms.is_some() {
                        r.expire_at_ms = None;
                        r.version = ver;
                        store(kv, key, &r)?;
                    }
                }
                GetExExpiry::At(at) if *at <= now_ms => remove(kv, key)?,
                GetExExpiry::At(at) => {
                    r.expire_at_ms = Some(*at);
                    r.version = ver;
                    store(kv, key, &r)?;
                }
            }
            Reply::Bulk(r.value)
        }
        DataCmd::Append { key, value } => match tri!(string_of(load(kv, key, now_ms)?)) {
            None => {
                store(kv, key, &Record::string(value.clone(), None, ver))?;
                Reply::Int(value.len() as i64)
            }
            Some(mut r) => {
                if r.value.len() + value.len() > VALUE_BYTES_MAX {
                    return Ok(Reply::err(errors::TOO_BIG));
                }
                r.value.extend_from_slice(value);
                r.version = ver;
                store(kv, key, &r)?;
                Reply::Int(r.value.len() as i64)
            }
        },
        DataCmd::SetRange { key, offset, value } => {
            let old = tri!(string_of(load(kv, key, now_ms)?));
            let too_big = offset.checked_add(value.len() as u64).is_none_or(|n| n > VALUE_BYTES_MAX as u64);
            let mut r = match old {
                None if value.is_empty() => return Ok(Reply::Int(0)),
                None => Record::string(Vec::new(), None, ver),
                Some(r) if value.is_empty() => return Ok(Reply::Int(r.value.len() as i64)),
                Some(r) => r,
            };
            if too_big {
                return Ok(Reply::err(errors::TOO_BIG));
            }
            // Checked above: offset + len <= VALUE_BYTES_MAX, which fits in usize.
            let offset = *offset as usize;
            let end = offset + value.len();
            if r.value.len() < end {
                r.value.resize(end, 0);
            }
            r.value[offset..end].copy_from_slice(value);
            r.version = ver;
            store(kv, key, &r)?;
            Reply::Int(r.value.len() as i64)
        }
        DataCmd::IncrBy { key, by } => {
            let old = tri!(string_of(load(kv, key, now_ms)?));
            let current = match &old {
                None => 0,
                Some(r) => match num::parse_i64(&r.value) {
                    Some(n) => n,
                    None => return Ok(Reply::err(errors::NOT_INTEGER)),
                },
            };
            let Some(new) = current.checked_add(*by) else {
                return Ok(Reply::err(errors::OVERFLOW));
            };
            let expire_at_ms = old.and_then(|r| r.expire_at_ms);
            store(kv, key, &Record::string(new.to_string().into_bytes(), expire_at_ms, ver))?;
            Reply::Int(new)
        }
        DataCmd::IncrByFloat { key, by } => {
            let old = tri!(string_of(load(kv, key, now_ms)?));
            let text = match num::incr_by_float(old.as_ref().map(|r| r.value.as_slice()), by) {
                Ok(t) => t,
                Err(num::FloatError::NotFloat) => return Ok(Reply::err(errors::NOT_FLOAT)),
                Err(num::FloatError::NanOrInfinity) => return Ok(Reply::err(errors::NAN_OR_INF)),
            };
            let expire_at_ms = old.and_then(|r| r.expire_at_ms);
            store(kv, key, &Record::string(text.clone(), expire_at_ms, ver))?;
            Reply::Bulk(text)
        }
        DataCmd::Rename { from, to } | DataCmd::RenameNx { from, to } => {
            let nx = matches!(cmd, DataCmd::RenameNx { .. });
            let Some(mut r) = load(kv, from, now_ms)? else {
                return Ok(Reply::err(errors::NO_SUCH_KEY));
            };
            if from == to {
                return Ok(if nx { Reply::Int(0) } else { Reply::ok() });
            }
            if nx && load(kv, to, now_ms)?.is_some() {
                return Ok(Reply::Int(0));
            }
            r.version = ver;
            store(kv, to, &r)?;
            remove(kv, from)?;
            if nx {
                Reply::Int(1)
            } else {
                Reply::ok()
            }
        }
        DataCmd::Flush { span } => {
            loop {
                let page = kv.scan(&span.start, &span.end, SCAN_PAGE_ENTRIES)?;
                for (k, _) in &page {
                    kv.delete(k)?;
                }
                if page.len() < SCAN_PAGE_ENTRIES {
                    break;
                }
            }
            Reply::ok()
        }
        DataCmd::ExpireDelete { key, expire_at_ms } => match load_raw(kv, &keys::encode(key))? {
            Some(r) if r.expire_at_ms == Some(*expire_at_ms) && r.is_expired(now_ms) => {
                remove(kv, key)?;
                Reply::Int(1)
            }
            _ => Reply::Int(0),
        },
    })
}

/// Answer one read at `now_ms`.
pub fn read(cmd: &ReadCmd, kv: &impl KvRead, now_ms: i64) -> Result<Reply, ExecError> {
    Ok(match cmd {
        ReadCmd::Get { key } => match tri!(string_of(load(kv, key, now_ms)?)) {
            Some(r) => Reply::Bulk(r.value),
            None => Reply::Null,
        },
        ReadCmd::MGet { keys } => {
            let mut out = Vec::with_capacity(keys.len());
            let mut bytes = 0usize;
            for k in keys {
                out.push(match load(kv, k, now_ms)? {
                    Some(r) if r.kind == Kind::String => {
                        bytes += r.value.len();
                        if bytes > MGET_REPLY_BYTES_MAX {
                            return Ok(mget_too_big());
                        }
                        Reply::Bulk(r.value)
                    }
                    _ => Reply::Null,
                });
            }
            Reply::Array(out)
        }
        ReadCmd::Exists { keys } | ReadCmd::Touch { keys } => {
            let mut n = 0;
            for k in keys {
                if load(kv, k, now_ms)?.is_some() {
                    n += 1;
                }
            }
            Reply::Int(n)
        }
        ReadCmd::Type { key } => Reply::Simple(load(kv, key, now_ms)?.map_or("none", |r| r.kind.name()).to_string()),
        ReadCmd::Ttl { key, form } => match load(kv, key, now_ms)? {
            None => Reply::Int(-2),
            Some(Record { expire_at_ms: None, .. }) => Reply::Int(-1),
            Some(Record { expire_at_ms: Some(at), .. }) => {
                let ms = if form.absolute { at } else { at.saturating_sub(now_ms) }.max(0);
                Reply::Int(if form.millis { ms } else { ms.saturating_add(500) / 1000 })
            }
        },
        ReadCmd::StrLen { key } => match tri!(string_of(load(kv, key, now_ms)?)) {
            Some(r) => Reply::Int(r.value.len() as i64),
            None => Reply::Int(0),
        },
        ReadCmd::GetRange { key, start, end } => {
            let Some(r) = tri!(string_of(load(kv, key, now_ms)?)) else {
                return Ok(Reply::Bulk(vec![]));
            };
            Reply::Bulk(substr(&r.value, *start, *end).to_vec())
        }
        ReadCmd::Scan { span, after, count, pattern, kind } => {
            let start = match after {
                // The smallest stored key after `a`.
                Some(a) => {
                    let mut s = keys::encode(a);
                    s.push(0);
                    s.max(span.start.clone())
                }
                None => span.start.clone(),
            };
            let limit = (*count).clamp(1, SCAN_COUNT_MAX);
            let page = kv.scan(&start, &span.end, limit)?;
            let next = if page.len() == limit {
                page.last().and_then(|(k, _)| keys::decode(k)).map_or(Reply::Null, |k| Reply::Bulk(k.to_vec()))
            } else {
                Reply::Null
            };
            let mut out = Vec::new();
            for (stored, value) in &page {
                if let Some(key) = live_key(stored, value, now_ms, pattern.as_deref(), kind.as_deref())? {
                    out.push(Reply::Bulk(key.to_vec()));
                }
            }
            Reply::Array(vec![next, Reply::Array(out)])
        }
        ReadCmd::Keys { span, pattern } => {
            let mut out = Vec::new();
            let mut truncated = false;
            for_each_page(kv, span, |stored, value| {
                if let Some(key) = live_key(stored, value, now_ms, Some(pattern), None)? {
                    if out.len() == KEYS_REPLY_MAX {
                        truncated = true;
                        return Ok(false);
                    }
                    out.push(Reply::Bulk(key.to_vec()));
                }
                Ok(true)
            })?;
            if truncated {
                keys_too_many()
            } else {
                Reply::Array(out)
            }
        }
        ReadCmd::DbSize { span } => {
            let mut n = 0;
            for_each_page(kv, span, |stored, value| {
                if live_key(stored, value, now_ms, None, None)?.is_some() {
                    n += 1;
                }
                Ok(true)
            })?;
            Reply::Int(n)
        }
    })
}

/// The Redis key of a stored entry if it is live and passes the filters.
fn live_key<'a>(
    stored: &'a [u8],
    value: &[u8],
    now_ms: i64,
    pattern: Option<&[u8]>,
    kind: Option<&[u8]>,
) -> Result<Option<&'a [u8]>, ExecError> {
    let corrupt = |source| ExecError::Corruption { key: stored.to_vec(), source };
    let key = keys::decode(stored).ok_or_else(|| corrupt(DecodeError::Short { len: stored.len() }))?;
    let (record_kind, expiry) = Record::header(value).map_err(corrupt)?;
    if expiry.is_some_and(|at| at <= now_ms) {
        return Ok(None);
    }
    if let Some(p) = pattern {
        // Redis skips the matcher for the pattern "*".
        if p != b"*" && !glob::matches(p, key, false) {
            return Ok(None);
        }
    }
    if let Some(t) = kind {
        if !t.eq_ignore_ascii_case(record_kind.name().as_bytes()) {
            return Ok(None);
        }
    }
    Ok(Some(key))
}

/// Visit every entry of `span` in pages; `f` returns false to stop.
fn for_each_page(
    kv: &impl KvRead,
    span: &KeySpan,
    mut f: impl FnMut(&[u8], &[u8]) -> Result<bool, ExecError>,
) -> Result<(), ExecError> {
    let mut start = span.start.clone();
    loop {
        let page = kv.scan(&start, &span.end, SCAN_PAGE_ENTRIES)?;
        for (k, v) in &page {
            if !f(k, v)? {
                return Ok(());
            }
        }
        match page.last() {
            Some((k, _)) if page.len() == SCAN_PAGE_ENTRIES => {
                start = k.clone();
                start.push(0);
            }
            _ => return Ok(()),
        }
    }
}

/// GETRANGE's index arithmetic (`t_string.c` `getrangeCommand`).
fn substr(s: &[u8], start: i64, end: i64) -> &[u8] {
    let len = s.len() as i64;
    if start < 0 && end < 0 && start > end {
        return &[];
    }
    let mut start = if start < 0 { len + start } else { start };
    let mut end = if end < 0 { len + end } else { end };
    start = start.max(0);
    end = end.max(0);
    if end >= len {
        end = len - 1;
    }
    if start > end || len == 0 {
        return &[];
    }
    &s[start as usize..=end as usize]
}

#[cfg(test)]
mod tests {
    use super::substr;

    #[test]
    fn getrange_indexes() {
        let s = b"This is a string";
        assert_eq!(substr(s, 0, 3), b"This");
        assert_eq!(substr(s, -3, -1), b"ing");
        assert_eq!(substr(s, 0, -1), s);
        assert_eq!(substr(s, 10, 100), b"string");
        assert_eq!(substr(s, -1, -5), b"");
        assert_eq!(substr(s, 5, 3), b"");
        assert_eq!(substr(b"", 0, -1), b"");
        assert_eq!(substr(s, i64::MIN, i64::MAX), s);
    }
}
