//! Opening the log and crash recovery: replaying every segment into the in-memory index,
//! repairing a torn tail, telling a batch torn over zeroed-ahead space from corruption, and
//! refusing to open a log that is corrupt.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;

use parking_lot::Mutex;

use super::record::{
    parse_at, Cursor, Parsed, HEADER_BYTES, KIND_CHECKPOINT, KIND_COMMITTED, KIND_ENTRY, KIND_PURGE, KIND_SYNCED,
    KIND_TRUNCATE_FROM, KIND_VOTE,
};
use super::writer::Writer;
use super::{
    corrupt, cut_back, list_segments, segment_path, Location, Mem, Purged, Shared, Slot, Wal, WalOptions, WalStats,
};
use crate::Result;

/// The result of replaying the segments.
struct Replayed {
    mem: Mem,
    last_segment: u64,
    last_segment_len: u64,
}

/// The offset of the first intact record starting at or after `from`, if any. Only used on the
/// recovery path, after a bad record; a false positive needs a 32-bit checksum to match garbage.
fn valid_record_after(buf: &[u8], from: usize) -> Option<usize> {
    (from..buf.len()).find(
        |&at| matches!(parse_at(buf, at), Parsed::Record { kind, .. } if (KIND_ENTRY..=KIND_SYNCED).contains(&kind)),
    )
}

/// Whether an intact sync mark starts at or after `from`: the bytes before it were durable.
fn sync_mark_after(buf: &[u8], from: usize) -> bool {
    (from..buf.len()).any(|at| matches!(parse_at(buf, at), Parsed::Record { kind: KIND_SYNCED, .. }))
}

const SECTOR_BYTES: usize = 512;

/// Whether the bad record at `from`, followed by a valid one at `to`, is a batch torn over the
/// zeroed-ahead space (see "Zeroed ahead") rather than damage: the segment ends in zeroed-ahead
/// space (it was not closed: a crash), and a whole disk sector in `[from, to)` is zeros, as the
/// writer left it, never overwritten. etcd's WAL decoder applies the same rule to torn writes
/// (`isTornEntry`), with the same trade-off: record data can itself hold a zero sector (a value
/// of zeros), so damage to such a record in the last segment after a crash is taken for a torn
/// write and what follows it is dropped instead of refused; the quorum still holds it.
fn torn_batch(buf: &[u8], from: usize, to: usize) -> bool {
    let zero = |r: std::ops::Range<usize>| buf[r].iter().all(|&b| b == 0);
    let crashed = buf.len() >= SECTOR_BYTES && zero(buf.len() - SECTOR_BYTES..buf.len());
    crashed && (from.div_ceil(SECTOR_BYTES)..to / SECTOR_BYTES).any(|s| zero(s * SECTOR_BYTES..(s + 1) * SECTOR_BYTES))
}

fn replay(dir: &Path, segments: &[u64]) -> Result<Replayed> {
    let mut mem = Mem {
        first: 0,
        slots: VecDeque::new(),
        next_seq: 0,
        cached_bytes: 0,
        evicted_upto: 0,
        vote: None,
        committed: None,
        purged: None,
        failed: None,
    };
    let mut last_len = 0u64;
    // The segment replayed before this one and its length.
    let mut prev: Option<(u64, u64)> = None;
    for (i, &seg) in segments.iter().enumerate() {
        let is_last = i + 1 == segments.len();
        if let Some((p, _)) = prev {
            // Segments are numbered one after the other and deleted oldest first.
            if seg != p + 1 {
                return Err(corrupt(seg, 0, &format!("the segments between it and wal-{p:016}.log are missing")));
            }
        }
        let path = segment_path(dir, seg);
        let mut buf = Vec::new();
        File::open(&path)?.read_to_end(&mut buf)?;
        let mut at = 0usize;
        let mut first_record = true;
        // Whether this segment carries sync marks (its second record is one).
        let mut marked: Option<bool> = None;
        let mut last_kind = None;
        if buf.is_empty() && !is_last {
            // A segment gets its checkpoint, durably, before the next one is created.
            return Err(corrupt(seg, 0, "sealed segment is empty"));
        }
        while at < buf.len() {
            match parse_at(&buf, at) {
                Parsed::Record { kind, payload, next } => {
                    if first_record && kind != KIND_CHECKPOINT {
                        return Err(corrupt(seg, at, "segment does not start with a checkpoint"));
                    }
                    if !first_record && marked.is_none() {
                        marked = Some(kind == KIND_SYNCED);
                    }
                    first_record = false;
                    last_kind = Some(kind);
                    apply_record(&mut mem, seg, at, kind, payload, prev)?;
                    at = next;
                }
                Parsed::Short | Parsed::Bad if is_last && buf[at..].iter().all(|&b| b == 0) => {
                    // The zeroed-ahead space of a log that stopped without closing: its end.
                    break;
                }
                Parsed::Short | Parsed::Bad if is_last => {
                    // A torn write leaves only garbage after it. A valid record anywhere after the
                    // bad one means the damage is in the middle: corruption. (A flipped length
                    // field hides where the next record starts, so look at every offset.) Except
                    // for a batch torn over zeroed-ahead space: a batch overwrites blocks the file
                    // already has, and a crash during its sync can leave an earlier one unwritten
                    // and a later one written.
                    //
                    // With sync marks the question is exact: damage followed by an intact mark
                    // lies in bytes that had been fsynced (corruption); anything else is the
                    // unsynced tail of the last batch, torn by a crash in any order of sectors.
                    let damaged = match marked {
                        Some(true) => sync_mark_after(&buf, at + 1).then_some(at),
                        _ => valid_record_after(&buf, at + 1).filter(|&valid| !torn_batch(&buf, at, valid)),
                    };
                    match damaged.and_then(|_| valid_record_after(&buf, at + 1)) {
                        Some(valid) => {
                            return Err(corrupt(
                                seg,
                                at,
                                &format!("checksum mismatch before valid records (next valid record at {valid})"),
                            ));
                        }
                        _ => {
                            tracing::warn!(segment = seg, offset = at, "truncating torn tail of the raft log");
                            break;
                        }
                    }
                }
                Parsed::Short | Parsed::Bad => {
                    return Err(corrupt(seg, at, "bad record in a sealed segment"));
                }
            }
        }
        if !is_last && marked == Some(true) && last_kind != Some(KIND_SYNCED) {
            // Sealing a segment ends it with a sync mark, durably, before the next one exists:
            // a sealed segment without one was cut short at a record boundary.
            return Err(corrupt(seg, at, "sealed segment does not end with its final sync mark (cut short)"));
        }
        prev = Some((seg, buf.len() as u64));
        if is_last {
            if (at as u64) < buf.len() as u64 {
                cut_back(&OpenOptions::new().write(true).open(&path)?, at as u64)?;
            }
            last_len = at as u64;
        }
    }
    Ok(Replayed { mem, last_segment: segments.last().copied().unwrap_or(0), last_segment_len: last_len })
}

/// The largest log index a record may name: the in-memory index computes `index + 1`, so
/// `u64::MAX` (which no real log reaches) would overflow it. Such a record is damage.
const INDEX_MAX: u64 = u64::MAX - 1;

/// Replays one record into `mem`. `prev`: the segment replayed before this one, and its length.
fn apply_record(mem: &mut Mem, seg: u64, at: usize, kind: u8, payload: &[u8], prev: Option<(u64, u64)>) -> Result<()> {
    let mut c = Cursor { b: payload };
    let bad = |what: &str| corrupt(seg, at, what);
    let index_in_range = |index: u64, what: &str| {
        if index > INDEX_MAX {
            Err(bad(&format!("{what} names index {index}, beyond any log")))
        } else {
            Ok(index)
        }
    };
    match kind {
        KIND_ENTRY => {
            let index = index_in_range(c.u64().ok_or_else(|| bad("short entry"))?, "entry")?;
            let data_off = at + HEADER_BYTES + 1 + 8;
            let len = c.b.len() as u32;
            // An entry at or below the current tail replaces it (a truncation record normally
            // precedes it; this keeps replay robust to that being the torn part).
            if let Some(last) = mem.last_index() {
                if index <= last {
                    mem.truncate_from(index);
                } else if index != last + 1 {
                    return Err(bad(&format!("hole in log: entry {index} after {last}")));
                }
            } else if let Some(p) = &mem.purged {
                if index != p.index + 1 {
                    return Err(bad(&format!("hole in log: entry {index} after purge point {}", p.index)));
                }
            }
            if mem.slots.is_empty() {
                mem.first = index;
            }
            let seq = mem.next_seq;
            mem.next_seq += 1;
            mem.slots.push_back(Slot {
                seq,
                location: Some(Location { segment: seg, offset: data_off as u64, len }),
                data: None,
            });
        }
        KIND_VOTE => mem.vote = Some(c.b.to_vec()),
        KIND_COMMITTED => mem.committed = Some(c.b.to_vec()),
        KIND_TRUNCATE_FROM => {
            let index = c.u64().ok_or_else(|| bad("short truncate"))?;
            mem.truncate_from(index);
        }
        KIND_PURGE => {
            let index = index_in_range(c.u64().ok_or_else(|| bad("short purge"))?, "purge")?;
            mem.purge_upto(index);
            mem.purged = Some(Purged { index, data: c.b.to_vec() });
        }
        KIND_CHECKPOINT => {
            let vote = c.opt().ok_or_else(|| bad("bad checkpoint"))?;
            let committed = c.opt().ok_or_else(|| bad("bad checkpoint"))?;
            let purged = match c.u8().ok_or_else(|| bad("bad checkpoint"))? {
                0 => None,
                1 => {
                    let index = index_in_range(c.u64().ok_or_else(|| bad("bad checkpoint"))?, "checkpoint")?;
                    let n = c.u32().ok_or_else(|| bad("bad checkpoint"))? as usize;
                    Some(Purged { index, data: c.take(n).ok_or_else(|| bad("bad checkpoint"))?.to_vec() })
                }
                _ => return Err(bad("bad checkpoint")),
            };
            // The length the previous segment was sealed at (absent in logs written before it
            // was recorded). Nothing to check when that segment was deleted.
            let sealed_prev = match c.u8() {
                None => None,
                Some(1) => Some(c.u64().ok_or_else(|| bad("bad checkpoint"))?),
                Some(_) => return Err(bad("bad checkpoint")),
            };
            if let (Some(sealed), Some((p, len))) = (sealed_prev, prev) {
                if len != sealed {
                    return Err(corrupt(
                        p,
                        len.min(sealed) as usize,
                        &format!("segment sealed at {sealed} bytes is {len} bytes long (cut short or grown)"),
                    ));
                }
            }
            // A checkpoint restates what earlier records said; it only adds information when
            // the segments before it were deleted.
            if vote.is_some() {
                mem.vote = vote;
            }
            if committed.is_some() {
                mem.committed = committed;
            }
            if let Some(p) = purged {
                if mem.purged.as_ref().is_none_or(|q| q.index < p.index) {
                    mem.purge_upto(p.index);
                    mem.purged = Some(p);
                }
            }
        }
        KIND_SYNCED => {}
        other => return Err(bad(&format!("unknown record kind {other}"))),
    }
    Ok(())
}

impl Wal {
    /// Opens the log in `dir` (created if missing), replaying and repairing it.
    pub fn open(dir: &Path, opts: WalOptions) -> Result<Wal> {
        std::fs::create_dir_all(dir)?;
        let segments = list_segments(dir)?;
        let Replayed { mem, last_segment, last_segment_len } = replay(dir, &segments)?;

        let mut readers = Vec::new();
        for &s in &segments {
            readers.push((s, Arc::new(File::open(segment_path(dir, s))?)));
        }
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            opts,
            stats: WalStats::default(),
            mem: Mutex::new(mem),
            readers: Mutex::new(readers),
        });

        let mut writer = Writer {
            shared: shared.clone(),
            segment: 0,
            file: None,
            len: 0,
            zeroed_to: 0,
            segments: segments.iter().map(|&s| (s, None)).collect(),
            buf: Vec::with_capacity(1 << 20),
            synced_to: 0,
            marked_to: 0,
        };
        if segments.is_empty() {
            writer.rotate()?;
        } else {
            let f = OpenOptions::new().read(true).write(true).open(segment_path(dir, last_segment))?;
            writer.zeroed_to = f.metadata()?.len();
            writer.segment = last_segment;
            writer.file = Some(crate::volatile::DataFile::new(f)?);
            writer.len = last_segment_len;
            if last_segment_len == 0 {
                // A crash while a segment was being started can leave it empty (or with only a
                // torn checkpoint, cut away above): give it its checkpoint before any entry.
                writer.start_segment(None)?;
            }
            writer.recompute_max_indexes();
        }
        let (tx, rx) = mpsc::channel();
        let handle = thread::Builder::new().name("wal-writer".into()).spawn(move || writer.run(rx))?;
        Ok(Wal { shared, tx: Mutex::new(Some(tx)), writer: Mutex::new(Some(handle)) })
    }
}
