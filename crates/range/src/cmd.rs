//! Typed commands.
//!
//! - [`DataCmd`]: a write as it goes through a range's Raft log. Every time in it is absolute
//!   (Unix ms), so apply needs no clock beyond the entry's `now_ms` stamp.
//! - [`WriteReq`]: a write as the client said it (`EX 10` is relative). The range leader turns
//!   it into a `DataCmd` with [`WriteReq::resolve`] and its own `now_ms`, just before proposing.
//! - [`ReadCmd`]: a read, served by the leader under its lease (or a follower, when asked).
//!
//! Keys here are Redis keys as the client sent them; `exec` encodes them with
//! [`crate::keys::encode`]. Commands over many keys (`MSET`, `DEL`, `RENAME`) must have all
//! their keys in one range: the router splits or refuses (CROSSSLOT) before this point.

use serde::{Deserialize, Serialize};

use crate::keys::KeySpan;
use crate::reply::{errors, Reply};

pub type Bytes = Vec<u8>;

/// `SET`'s `NX`/`XX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetCond {
    Always,
    /// NX: only if the key is absent.
    IfAbsent,
    /// XX: only if the key is present.
    IfPresent,
}

/// What a `SET` does to the key's expiry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetExpiry {
    /// No expiry (a plain SET clears any previous one).
    Clear,
    /// KEEPTTL.
    Keep,
    /// Expire at this absolute time (ms).
    At(i64),
}

/// `EXPIRE`'s `NX`/`XX`/`GT`/`LT`. XX combines with GT or LT; the parser refuses the other
/// combinations with Redis's errors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpireCond {
    /// Only if the key has no expiry.
    pub nx: bool,
    /// Only if the key has an expiry.
    pub xx: bool,
    /// Only if the new expiry is later (no expiry counts as infinitely late).
    pub gt: bool,
    /// Only if the new expiry is earlier.
    pub lt: bool,
}

impl ExpireCond {
    pub const ALWAYS: ExpireCond = ExpireCond { nx: false, xx: false, gt: false, lt: false };
}

/// What a `GETEX` does to the key's expiry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GetExExpiry {
    Keep,
    Persist,
    At(i64),
    /// The expiry argument was bad. Redis reports it only when the key exists as a string
    /// (it validates after the lookup), so the error travels to apply.
    Invalid(String),
}

/// A write through a range's Raft log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum DataCmd {
    /// SET, SETEX, PSETEX.
    Set {
        #[serde(with = "serde_bytes")]
        key: Bytes,
        #[serde(with = "serde_bytes")]
        value: Bytes,
        cond: SetCond,
        get: bool,
        expiry: SetExpiry,
    },
    SetNx {
        #[serde(with = "serde_bytes")]
        key: Bytes,
        #[serde(with = "serde_bytes")]
        value: Bytes,
    },
    GetSet {
        #[serde(with = "serde_bytes")]
        key: Bytes,
        #[serde(with = "serde_bytes")]
        value: Bytes,
    },
    MSet {
        pairs: Vec<(Bytes, Bytes)>,
    },
    MSetNx {
        pairs: Vec<(Bytes, Bytes)>,
    },
    /// DEL and UNLINK.
    Del {
        keys: Vec<Bytes>,
    },
    /// EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT. A time at or before `now_ms` deletes the key.
    Expire {
        #[serde(with = "serde_bytes")]
        key: Bytes,
        at_ms: i64,
        cond: ExpireCond,
    },
    Persist {
        #[serde(with = "serde_bytes")]
        key: Bytes,
    },
    GetDel {
        #[serde(with = "serde_bytes")]
        key: Bytes,
    },
    GetEx {
        #[serde(with = "serde_bytes")]
        key: Bytes,
        expiry: GetExExpiry,
    },
    Append {
        #[serde(with = "serde_bytes")]
        key: Bytes,
        #[serde(with = "serde_bytes")]
        value: Bytes,
    },
    SetRange {
        #[serde(with = "serde_bytes")]
        key: Bytes,
        offset: u64,
        #[serde(with = "serde_bytes")]
        value: Bytes,
    },
    /// INCR, DECR, INCRBY, DECRBY (DECRBY n is INCRBY -n; the parser refuses i64::MIN).
    IncrBy {
        #[serde(with = "serde_bytes")]
        key: Bytes,
        by: i64,
    },
    /// INCRBYFLOAT; `by` is the argument's text. Apply parses it (after the type check, as
    /// Redis does) into the same 80-bit value on every replica.
    IncrByFloat {
        #[serde(with = "serde_bytes")]
        key: Bytes,
        #[serde(with = "serde_bytes")]
        by: Bytes,
    },
    Rename {
        #[serde(with = "serde_bytes")]
        from: Bytes,
        #[serde(with = "serde_bytes")]
        to: Bytes,
    },
    RenameNx {
        #[serde(with = "serde_bytes")]
        from: Bytes,
        #[serde(with = "serde_bytes")]
        to: Bytes,
    },
    /// FLUSHALL/FLUSHDB, for the part of the keyspace one range holds.
    Flush {
        span: KeySpan,
    },
    /// Delete a key the leader found expired, if it still carries that expiry: a write that
    /// raced in between (a new SET) is kept.
    ExpireDelete {
        #[serde(with = "serde_bytes")]
        key: Bytes,
        expire_at_ms: i64,
    },
}

/// Which of TTL, PTTL, EXPIRETIME, PEXPIRETIME.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtlForm {
    pub millis: bool,
    pub absolute: bool,
}

/// A read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ReadCmd {
    Get {
        #[serde(with = "serde_bytes")]
        key: Bytes,
    },
    MGet {
        keys: Vec<Bytes>,
    },
    Exists {
        keys: Vec<Bytes>,
    },
    /// TOUCH: like EXISTS (cairn keeps no access times).
    Touch {
        keys: Vec<Bytes>,
    },
    Type {
        #[serde(with = "serde_bytes")]
        key: Bytes,
    },
    Ttl {
        #[serde(with = "serde_bytes")]
        key: Bytes,
        form: TtlForm,
    },
    StrLen {
        #[serde(with = "serde_bytes")]
        key: Bytes,
    },
    /// GETRANGE and SUBSTR.
    GetRange {
        #[serde(with = "serde_bytes")]
        key: Bytes,
        start: i64,
        end: i64,
    },
    /// One page of SCAN over a range: stored keys after `after` (exclusive), at most `count`
    /// examined. Replies `[next, [keys]]` where `next` is the last stored key examined (bulk)
    /// or null when the span is done; the front end maps it to a numeric cursor.
    Scan {
        span: KeySpan,
        after: Option<Bytes>,
        count: usize,
        pattern: Option<Bytes>,
        kind: Option<Bytes>,
    },
    Keys {
        span: KeySpan,
        #[serde(with = "serde_bytes")]
        pattern: Bytes,
    },
    DbSize {
        span: KeySpan,
    },
}

impl DataCmd {
    /// The keys the command touches (for routing and CROSSSLOT checks).
    pub fn keys(&self) -> Vec<&[u8]> {
        match self {
            DataCmd::Set { key, .. }
            | DataCmd::SetNx { key, .. }
            | DataCmd::GetSet { key, .. }
            | DataCmd::Expire { key, .. }
            | DataCmd::Persist { key }
            | DataCmd::GetDel { key }
            | DataCmd::GetEx { key, .. }
            | DataCmd::Append { key, .. }
            | DataCmd::SetRange { key, .. }
            | DataCmd::IncrBy { key, .. }
            | DataCmd::IncrByFloat { key, .. }
            | DataCmd::ExpireDelete { key, .. } => vec![key],
            DataCmd::MSet { pairs } | DataCmd::MSetNx { pairs } => pairs.iter().map(|(k, _)| k.as_slice()).collect(),
            DataCmd::Del { keys } => keys.iter().map(Vec::as_slice).collect(),
            DataCmd::Rename { from, to } | DataCmd::RenameNx { from, to } => vec![from, to],
            DataCmd::Flush { .. } => vec![],
        }
    }

    /// The longest value the command stores as it is (SET's, MSET's, APPEND's suffix,
    /// SETRANGE's patch), for the size check before it runs; 0 for the others.
    pub fn value_bytes_max(&self) -> usize {
        match self {
            DataCmd::Set { value, .. }
            | DataCmd::SetNx { value, .. }
            | DataCmd::GetSet { value, .. }
            | DataCmd::Append { value, .. }
            | DataCmd::SetRange { value, .. } => value.len(),
            DataCmd::MSet { pairs } | DataCmd::MSetNx { pairs } => {
                pairs.iter().map(|(_, v)| v.len()).max().unwrap_or(0)
            }
            DataCmd::Del { .. }
            | DataCmd::Expire { .. }
            | DataCmd::Persist { .. }
            | DataCmd::GetDel { .. }
            | DataCmd::GetEx { .. }
            | DataCmd::IncrBy { .. }
            | DataCmd::IncrByFloat { .. }
            | DataCmd::Rename { .. }
            | DataCmd::RenameNx { .. }
            | DataCmd::Flush { .. }
            | DataCmd::ExpireDelete { .. } => 0,
        }
    }

    /// The span for range-wide commands.
    pub fn span(&self) -> Option<&KeySpan> {
        match self {
            DataCmd::Flush { span } => Some(span),
            _ => None,
        }
    }
}

impl ReadCmd {
    pub fn keys(&self) -> Vec<&[u8]> {
        match self {
            ReadCmd::Get { key }
            | ReadCmd::Type { key }
            | ReadCmd::Ttl { key, .. }
            | ReadCmd::StrLen { key }
            | ReadCmd::GetRange { key, .. } => vec![key],
            ReadCmd::MGet { keys } | ReadCmd::Exists { keys } | ReadCmd::Touch { keys } => {
                keys.iter().map(Vec::as_slice).collect()
            }
            ReadCmd::Scan { .. } | ReadCmd::Keys { .. } | ReadCmd::DbSize { .. } => vec![],
        }
    }

    pub fn span(&self) -> Option<&KeySpan> {
        match self {
            ReadCmd::Scan { span, .. } | ReadCmd::Keys { span, .. } | ReadCmd::DbSize { span } => Some(span),
            _ => None,
        }
    }

    /// The same command over another span (the router fans range-wide reads out).
    pub fn with_span(&self, new: KeySpan) -> ReadCmd {
        let mut c = self.clone();
        match &mut c {
            ReadCmd::Scan { span, .. } | ReadCmd::Keys { span, .. } | ReadCmd::DbSize { span } => *span = new,
            _ => {}
        }
        c
    }
}

/// An expiry argument as the client wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TtlArg {
    /// EX seconds, relative.
    Ex(i64),
    /// PX milliseconds, relative.
    Px(i64),
    /// EXAT Unix seconds.
    ExAt(i64),
    /// PXAT Unix milliseconds.
    PxAt(i64),
}

impl TtlArg {
    /// Redis's `getExpireMillisecondsOrReply`: positive amounts only, no overflow.
    fn resolve(self, now_ms: i64) -> Option<i64> {
        let (amount, seconds, relative) = match self {
            TtlArg::Ex(n) => (n, true, true),
            TtlArg::Px(n) => (n, false, true),
            TtlArg::ExAt(n) => (n, true, false),
            TtlArg::PxAt(n) => (n, false, false),
        };
        if amount <= 0 {
            return None;
        }
        let ms = if seconds { amount.checked_mul(1000)? } else { amount };
        let at = if relative { ms.checked_add(now_ms)? } else { ms };
        (at > 0).then_some(at)
    }
}

/// The expiry of a SET-family request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetTtl {
    None,
    Keep,
    Arg(TtlArg),
}

/// The expiry of a GETEX request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GetExTtl {
    None,
    Persist,
    Arg(TtlArg),
    /// The amount was not an integer: this error, if the key exists.
    Bad(String),
}

/// EXPIRE's four names; the unit and base differ, and the name is in its error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpireKind {
    Expire,
    PExpire,
    ExpireAt,
    PExpireAt,
}

impl ExpireKind {
    pub fn name(self) -> &'static str {
        match self {
            ExpireKind::Expire => "expire",
            ExpireKind::PExpire => "pexpire",
            ExpireKind::ExpireAt => "expireat",
            ExpireKind::PExpireAt => "pexpireat",
        }
    }
}

/// SET's three names, for the error message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetName {
    Set,
    SetEx,
    PSetEx,
}

impl SetName {
    pub fn name(self) -> &'static str {
        match self {
            SetName::Set => "set",
            SetName::SetEx => "setex",
            SetName::PSetEx => "psetex",
        }
    }
}

/// A write as the client said it, before the leader fixes its times.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum WriteReq {
    /// A write with no relative time in it.
    Cmd(DataCmd),
    Set {
        #[serde(with = "serde_bytes")]
        key: Bytes,
        #[serde(with = "serde_bytes")]
        value: Bytes,
        cond: SetCond,
        get: bool,
        ttl: SetTtl,
        name: SetName,
    },
    GetEx {
        #[serde(with = "serde_bytes")]
        key: Bytes,
        ttl: GetExTtl,
    },
    Expire {
        #[serde(with = "serde_bytes")]
        key: Bytes,
        amount: i64,
        kind: ExpireKind,
        cond: ExpireCond,
    },
}

impl WriteReq {
    /// The log command for this request at the leader's `now_ms`, or the error Redis gives
    /// before it looks at any key.
    pub fn resolve(self, now_ms: i64) -> Result<DataCmd, Reply> {
        Ok(match self {
            WriteReq::Cmd(c) => c,
            WriteReq::Set { key, value, cond, get, ttl, name } => {
                let expiry = match ttl {
                    SetTtl::None => SetExpiry::Clear,
                    SetTtl::Keep => SetExpiry::Keep,
                    SetTtl::Arg(a) => {
                        SetExpiry::At(a.resolve(now_ms).ok_or_else(|| Reply::err(errors::invalid_expire(name.name())))?)
                    }
                };
                DataCmd::Set { key, value, cond, get, expiry }
            }
            WriteReq::GetEx { key, ttl } => {
                let expiry = match ttl {
                    GetExTtl::None => GetExExpiry::Keep,
                    GetExTtl::Persist => GetExExpiry::Persist,
                    GetExTtl::Arg(a) => match a.resolve(now_ms) {
                        Some(at) => GetExExpiry::At(at),
                        None => GetExExpiry::Invalid(errors::invalid_expire("getex")),
                    },
                    GetExTtl::Bad(e) => GetExExpiry::Invalid(e),
                };
                DataCmd::GetEx { key, expiry }
            }
            WriteReq::Expire { key, amount, kind, cond } => {
                let bad = || Reply::err(errors::invalid_expire(kind.name()));
                let (seconds, base) = match kind {
                    ExpireKind::Expire => (true, now_ms),
                    ExpireKind::PExpire => (false, now_ms),
                    ExpireKind::ExpireAt => (true, 0),
                    ExpireKind::PExpireAt => (false, 0),
                };
                // EXPIRE takes negative times (the key is deleted); only overflow is refused.
                let ms = if seconds { amount.checked_mul(1000).ok_or_else(bad)? } else { amount };
                let at_ms = ms.checked_add(base).ok_or_else(bad)?;
                DataCmd::Expire { key, at_ms, cond }
            }
        })
    }

    pub fn keys(&self) -> Vec<&[u8]> {
        match self {
            WriteReq::Cmd(c) => c.keys(),
            WriteReq::Set { key, .. } | WriteReq::GetEx { key, .. } | WriteReq::Expire { key, .. } => {
                vec![key]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_fixes_times() {
        let now = 1_000_000;
        let set = |ttl| WriteReq::Set {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            cond: SetCond::Always,
            get: false,
            ttl,
            name: SetName::Set,
        };
        let at = |c: DataCmd| match c {
            DataCmd::Set { expiry, .. } => expiry,
            other => panic!("{other:?}"),
        };
        assert_eq!(at(set(SetTtl::Arg(TtlArg::Ex(10))).resolve(now).unwrap()), SetExpiry::At(now + 10_000));
        assert_eq!(at(set(SetTtl::Arg(TtlArg::PxAt(5))).resolve(now).unwrap()), SetExpiry::At(5));
        let bad = Reply::err("ERR invalid expire time in 'set' command");
        assert_eq!(set(SetTtl::Arg(TtlArg::Ex(0))).resolve(now), Err(bad.clone()));
        assert_eq!(set(SetTtl::Arg(TtlArg::Ex(i64::MAX / 1000 + 1))).resolve(now), Err(bad.clone()));
        assert_eq!(set(SetTtl::Arg(TtlArg::Px(i64::MAX - 10))).resolve(now), Err(bad));
        let exp = |amount, kind| WriteReq::Expire { key: b"k".to_vec(), amount, kind, cond: ExpireCond::ALWAYS };
        assert!(matches!(
            exp(-5, ExpireKind::Expire).resolve(now),
            Ok(DataCmd::Expire { at_ms, .. }) if at_ms == now - 5000
        ));
        assert_eq!(
            exp(i64::MAX, ExpireKind::PExpire).resolve(now),
            Err(Reply::err("ERR invalid expire time in 'pexpire' command"))
        );
    }

    #[test]
    fn commands_round_trip_through_serde() {
        let cmds = vec![
            DataCmd::MSet { pairs: vec![(b"a".to_vec(), b"1".to_vec())] },
            DataCmd::IncrByFloat { key: b"f".to_vec(), by: b"1.5".to_vec() },
            DataCmd::Flush { span: KeySpan::redis() },
        ];
        for c in cmds {
            let bytes = postcard::to_allocvec(&c).unwrap();
            assert_eq!(postcard::from_bytes::<DataCmd>(&bytes).unwrap(), c);
        }
    }
}
