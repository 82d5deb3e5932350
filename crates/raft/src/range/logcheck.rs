//! A check of the shared log's files before raft-engine opens them: damage is refused, only a
//! torn tail is let through.
//!
//! raft-engine's `TolerateTailCorruption` drops everything in the newest file from the first
//! batch that fails to decode, taking it for the tail a crash tore. It cannot tell that from a
//! batch damaged after it was synced (a bad sector, a stray write): it then drops entries this
//! node acknowledged, which Raft's safety rests on, with only a warning, and it truncates the
//! file, so the evidence is gone too. (It also truncates the last batch of an older file when
//! only that batch's entries block is bad.)
//!
//! What tells them apart here: the shared log has one writer, which syncs each write before it
//! starts the next (`log::writer`), so only the last write can be torn. A bad batch followed by
//! an intact one was synced before it went bad. So, before raft-engine opens the append queue:
//!
//! - every file but the newest must be intact to its end (raft-engine refuses most damage there
//!   itself; this also refuses the case it truncates);
//! - in the newest file, at the first bad batch: when its header still gives its length and the
//!   batch right after it is intact, the bad batch is damage, not a tear, and the log is refused.
//!
//! A batch is intact when both its checksums hold. Batches left from a reused file's earlier
//! life carry another file number in their checksum (raft-engine's signature), so they are not
//! taken for later writes. Limits: damage that destroys a batch's header (16 bytes) or spans two
//! batches is still taken for a tail, since nothing then says where the next batch starts. The
//! next batch is looked for only where the header says, not at every offset: user values in the
//! log could otherwise forge an "intact" batch in what a crash left behind, and stop a node from
//! starting. The rewrite queue (raft-engine's own compaction, written with several writes per
//! sync) is not checked.
//!
//! raft-engine 0.4 offers no check that does not repair, so this reads its file format itself
//! (`file_pipe_log/format.rs` and `log_batch.rs` there): a file is a header (magic, version,
//! alignment) and then batches; a batch is a 16-byte header (`len << 8 | compression` and the
//! footer's offset, both big-endian), the entries with their CRC-32, and a footer (the items)
//! with its CRC-32 XORed with the file's number. The tests pin the format: they write through
//! raft-engine and walk what it wrote.

use std::io;
use std::path::{Path, PathBuf};

const MAGIC: &[u8] = b"RAFT-LOG-FILE-HEADER-9986AB3E47F320B394C8E84916EB0ED5";
const BATCH_HEADER_BYTES: usize = 16;
const CHECKSUM_BYTES: usize = 4;
const APPEND_SUFFIX: &str = ".raftlog";
const SEQ_DIGITS: usize = 16;

/// A file's format, from its header.
struct Format {
    /// Where the first batch starts.
    start: usize,
    /// XORed into each footer's checksum (format 2): the file's number.
    signature: Option<u32>,
    /// Batches start at multiples of it, zeros between (0: no alignment).
    alignment: usize,
}

fn be_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(..8)?.try_into().ok()?))
}

fn format(file: &[u8], seq: u64) -> Option<Format> {
    let rest = file.strip_prefix(MAGIC)?;
    match be_u64(rest)? {
        1 => Some(Format { start: MAGIC.len() + 8, signature: None, alignment: 0 }),
        2 => Some(Format {
            start: MAGIC.len() + 16,
            signature: Some(seq as u32),
            alignment: usize::try_from(be_u64(rest.get(8..)?)?).ok()?,
        }),
        _ => None,
    }
}

/// Whether `block`'s last 4 bytes are the CRC-32 of the rest, XORed with `signature`.
fn checksum_holds(block: &[u8], signature: Option<u32>) -> bool {
    if block.len() <= CHECKSUM_BYTES {
        return false;
    }
    let (data, sum) = block.split_at(block.len() - CHECKSUM_BYTES);
    let stored = u32::from_le_bytes(sum.try_into().expect("4 bytes")) ^ signature.unwrap_or(0);
    crc32fast::hash(data) == stored
}

/// The batch header at `at`: the batch's length and its footer's offset, when they make sense
/// and the batch fits in the file.
fn header_at(file: &[u8], at: usize) -> Option<(usize, usize)> {
    let h = file.get(at..at.checked_add(BATCH_HEADER_BYTES)?)?;
    let len_and_kind = be_u64(h)?;
    // The compression: none (0) or LZ4 (1).
    if len_and_kind & 0xff > 1 {
        return None;
    }
    let len = usize::try_from(len_and_kind >> 8).ok()?;
    let footer = usize::try_from(be_u64(&h[8..])?).ok()?;
    if footer < BATCH_HEADER_BYTES || footer > len || at.checked_add(len)? > file.len() {
        return None;
    }
    Some((len, footer))
}

/// The length of the intact batch at `at`, or `None`.
fn intact_at(file: &[u8], at: usize, signature: Option<u32>) -> Option<usize> {
    let (len, footer) = header_at(file, at)?;
    let batch = &file[at..at + len];
    let entries = &batch[BATCH_HEADER_BYTES..footer];
    let ok = checksum_holds(&batch[footer..], signature) && (entries.is_empty() || checksum_holds(entries, None));
    ok.then_some(len)
}

/// What a walk of one file found.
#[derive(Debug, PartialEq, Eq)]
enum Walk {
    /// Intact batches to the end (or to zeros the alignment allows).
    Intact,
    /// The first bad batch is at `at`; `next` is where the batch after it starts when its
    /// header says so and that batch is intact.
    Bad { at: usize, next: Option<usize> },
}

fn walk(file: &[u8], seq: u64) -> Walk {
    let Some(f) = format(file, seq) else {
        return Walk::Bad { at: 0, next: None };
    };
    let mut at = f.start;
    while at < file.len() {
        if let Some(len) = intact_at(file, at, f.signature) {
            at += len;
            continue;
        }
        if f.alignment > 0 {
            let aligned = at.div_ceil(f.alignment) * f.alignment;
            if aligned > at && aligned <= file.len() && file[at..aligned].iter().all(|b| *b == 0) {
                at = aligned;
                continue;
            }
        }
        let next = header_at(file, at)
            .map(|(len, _)| at + len)
            .filter(|n| *n < file.len() && intact_at(file, *n, f.signature).is_some());
        return Walk::Bad { at, next };
    }
    Walk::Intact
}

/// Where each intact batch of `file` starts, up to the first bad one (for tests that damage
/// a log raft-engine wrote).
#[cfg(test)]
pub(crate) fn batch_starts(file: &[u8], seq: u64) -> Vec<usize> {
    let Some(f) = format(file, seq) else { return Vec::new() };
    let mut at = f.start;
    let mut starts = Vec::new();
    while let Some(len) = intact_at(file, at, f.signature) {
        starts.push(at);
        at += len;
    }
    starts
}

/// The append queue's files in `dir`, oldest first.
pub(crate) fn append_files(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(digits) = name.strip_suffix(APPEND_SUFFIX) else { continue };
        if digits.len() != SEQ_DIGITS {
            continue;
        }
        if let Ok(seq) = digits.parse::<u64>() {
            files.push((seq, e.path()));
        }
    }
    files.sort();
    Ok(files)
}

/// Checks the shared log's append queue in `dir` (see the module's doc): an error names the
/// file and the offsets when a batch there is damaged rather than torn.
pub fn check(dir: &Path) -> io::Result<()> {
    let files = append_files(dir)?;
    let newest = files.last().map(|(seq, _)| *seq);
    for (seq, path) in files {
        let file = std::fs::read(&path)?;
        let refuse = |what: String| {
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "range log {}: {what}; entries this node acknowledged would be lost, so the log is \
                     not opened. Its range replicas must be re-created from their peers: remove the \
                     node (`cairn node remove`), clear its data directory and join it again",
                    path.display()
                ),
            ))
        };
        match walk(&file, seq) {
            Walk::Intact => {}
            Walk::Bad { at, .. } if Some(seq) != newest => {
                return refuse(format!("the batch at offset {at} is damaged, and newer files follow"));
            }
            Walk::Bad { at, next: Some(next) } => {
                return refuse(format!(
                    "the batch at offset {at} is damaged, and an intact batch written after it follows at \
                     offset {next}"
                ));
            }
            Walk::Bad { at, next: None } => {
                tracing::warn!(file = %path.display(), offset = at, "range log: a torn tail is dropped");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(entries: &[u8], items: &[u8], signature: u32) -> Vec<u8> {
        let mut e = entries.to_vec();
        if !e.is_empty() {
            e.extend_from_slice(&crc32fast::hash(entries).to_le_bytes());
        }
        let mut f = items.to_vec();
        f.extend_from_slice(&(crc32fast::hash(items) ^ signature).to_le_bytes());
        let footer = BATCH_HEADER_BYTES + e.len();
        let len = footer + f.len();
        let mut b = ((len as u64) << 8).to_be_bytes().to_vec();
        b.extend_from_slice(&(footer as u64).to_be_bytes());
        b.extend(e);
        b.extend(f);
        b
    }

    fn file(batches: &[Vec<u8>]) -> Vec<u8> {
        let mut f = MAGIC.to_vec();
        f.extend_from_slice(&2u64.to_be_bytes());
        f.extend_from_slice(&0u64.to_be_bytes());
        for b in batches {
            f.extend_from_slice(b);
        }
        f
    }

    #[test]
    fn a_walk_tells_a_torn_tail_from_damage_before_intact_batches() {
        let seq = 7;
        let bs: Vec<Vec<u8>> = (0..3u8).map(|i| batch(&[i; 100], &[i; 20], seq as u32)).collect();
        let start = MAGIC.len() + 16;
        let mut f = file(&bs);
        assert_eq!(walk(&f, seq), Walk::Intact);
        // The last batch torn: a tail.
        let whole = f.len();
        f.truncate(whole - 30);
        assert_eq!(walk(&f, seq), Walk::Bad { at: start + 2 * bs[0].len(), next: None });
        // ... or followed by zeros, or by a batch of the file's earlier life (another number).
        f.resize(whole + 4096, 0);
        assert!(matches!(walk(&f, seq), Walk::Bad { next: None, .. }));
        let mut g = file(&bs[..2]);
        g.extend_from_slice(&bs[2][..60]);
        g.extend_from_slice(&batch(&[9; 100], &[9; 20], 3));
        assert!(matches!(walk(&g, seq), Walk::Bad { next: None, .. }));
        // The middle batch damaged in its entries, or its items: intact batches follow.
        for flip in [BATCH_HEADER_BYTES + 10, bs[0].len() - 6] {
            let mut f = file(&bs);
            f[start + bs[0].len() + flip] ^= 1;
            assert_eq!(walk(&f, seq), Walk::Bad { at: start + bs[0].len(), next: Some(start + 2 * bs[0].len()) });
        }
        // A batch of another file number is not intact here.
        assert!(matches!(walk(&file(&bs), seq + 1), Walk::Bad { at, .. } if at == start));
    }
}
