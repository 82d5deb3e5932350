//! Record framing: the `[len][crc32c][kind, payload]` layout of every record, its encoding, the
//! checkpoint payload, and bounds-checked decoding with the checksum verified.

use super::{Purged, RECORD_BYTES_MAX};

pub(super) const HEADER_BYTES: usize = 8;

pub(super) const KIND_ENTRY: u8 = 1;
pub(super) const KIND_VOTE: u8 = 2;
pub(super) const KIND_COMMITTED: u8 = 3;
pub(super) const KIND_TRUNCATE_FROM: u8 = 4;
pub(super) const KIND_PURGE: u8 = 5;
pub(super) const KIND_CHECKPOINT: u8 = 6;
/// A sync mark: every byte before it in its segment had been fsynced when it was written. The
/// writer puts one at the start of each batch that follows a completed fsync, and one right
/// after each segment's checkpoint (which says the segment carries marks). Recovery tells a torn
/// tail from damage by them: damage followed by a valid mark lies in data that was durable.
pub(super) const KIND_SYNCED: u8 = 7;

pub(super) fn encode_record(kind: u8, parts: &[&[u8]], out: &mut Vec<u8>) {
    let body_len = 1 + parts.iter().map(|p| p.len()).sum::<usize>();
    assert!(body_len <= RECORD_BYTES_MAX, "record of {body_len} bytes exceeds RECORD_BYTES_MAX");
    let start = out.len();
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(kind);
    for p in parts {
        out.extend_from_slice(p);
    }
    let crc = crc32c::crc32c(&out[start + HEADER_BYTES..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn put_opt(out: &mut Vec<u8>, v: &Option<Vec<u8>>) {
    match v {
        None => out.push(0),
        Some(b) => {
            out.push(1);
            out.extend_from_slice(&(b.len() as u32).to_le_bytes());
            out.extend_from_slice(b);
        }
    }
}

/// `sealed_prev`: the length the previous segment was sealed at, if this segment follows one
/// (recovery checks it: a sealed segment cut short at a record boundary otherwise looks whole).
/// Written last, so logs written before it existed read as if it were absent.
pub(super) fn checkpoint_payload(
    vote: &Option<Vec<u8>>,
    committed: &Option<Vec<u8>>,
    purged: &Option<Purged>,
    sealed_prev: Option<u64>,
) -> Vec<u8> {
    let mut p = Vec::new();
    put_opt(&mut p, vote);
    put_opt(&mut p, committed);
    match purged {
        None => p.push(0),
        Some(pg) => {
            p.push(1);
            p.extend_from_slice(&pg.index.to_le_bytes());
            p.extend_from_slice(&(pg.data.len() as u32).to_le_bytes());
            p.extend_from_slice(&pg.data);
        }
    }
    if let Some(len) = sealed_prev {
        p.push(1);
        p.extend_from_slice(&len.to_le_bytes());
    }
    p
}

/// A cursor over a record payload; every read is bounds-checked.
pub(super) struct Cursor<'a> {
    pub(super) b: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub(super) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.b.len() < n {
            return None;
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Some(h)
    }
    pub(super) fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    pub(super) fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_le_bytes(b.try_into().expect("4")))
    }
    pub(super) fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|b| u64::from_le_bytes(b.try_into().expect("8")))
    }
    pub(super) fn opt(&mut self) -> Option<Option<Vec<u8>>> {
        match self.u8()? {
            0 => Some(None),
            1 => {
                let n = self.u32()? as usize;
                Some(Some(self.take(n)?.to_vec()))
            }
            _ => None,
        }
    }
}

/// How one record read went.
pub(super) enum Parsed<'a> {
    Record {
        kind: u8,
        payload: &'a [u8],
        next: usize,
    },
    /// Not enough bytes for a header or for the declared body.
    Short,
    /// Header present, body present, checksum wrong (or absurd length).
    Bad,
}

pub(super) fn parse_at(buf: &[u8], at: usize) -> Parsed<'_> {
    if buf.len() - at < HEADER_BYTES {
        return Parsed::Short;
    }
    let len = u32::from_le_bytes(buf[at..at + 4].try_into().expect("4")) as usize;
    let crc = u32::from_le_bytes(buf[at + 4..at + 8].try_into().expect("4"));
    if len == 0 || len > RECORD_BYTES_MAX {
        return Parsed::Bad;
    }
    let end = at + HEADER_BYTES + len;
    if end > buf.len() {
        return Parsed::Short;
    }
    let body = &buf[at + HEADER_BYTES..end];
    if crc32c::crc32c(body) != crc {
        return Parsed::Bad;
    }
    Parsed::Record { kind: body[0], payload: &body[1..], next: end }
}
