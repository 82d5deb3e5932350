//! A check of the shared log's files before raft-engine opens them: damage is refused, only a
//! torn tail is let through.
//!
//! raft-engine's `TolerateTailCorruption` drops everything in the newest file from the first
//! batch that fails to decode, taking it for the tail a crash tore. It cannot tell that from a
//! batch damaged after it was synced (a bad sector, a stray write): it then drops entries this
//! node acknowledged, which Raft's safety rests on, with only a warning, and it truncates the
//! file, so the evidence is gone too. It also empties a newest file whose header is bad.
//!
//! What tells them apart here: the shared log has one writer, which syncs each write (one
//! batch) before it starts the next (`log::writer`), so only the last batch can be torn. A new
//! file's header shares its first sector with the first batch's header, and raft-engine syncs
//! the old file before it starts a new one. A bad batch followed by a batch written after it was
//! synced before it went bad. So, before raft-engine opens the append queue:
//!
//! - every file but the newest must be whole: each batch's footer checksum, and the last
//!   batch's entries checksum (raft-engine refuses such damage there too, as it opens older
//!   files read-only; checked here for one clear message);
//! - in the newest file, at the first batch whose footer fails: when its header still gives its
//!   length and a batch of this file's life (its footer checksum holds) starts right after it,
//!   it is damage, not a tear, and the log is refused; so is a bad file header with an intact
//!   first batch after it.
//!
//! Batches left from a reused file's earlier life carry another file number in their footer
//! checksum (raft-engine's signature), so they are not taken for later writes. As raft-engine
//! does, only the files from the last gap in their numbers on count (older ones are left over).
//!
//! Limits (damage taken for a torn tail, and dropped as raft-engine drops it):
//! - damage that destroys a batch's header (16 bytes) or spans two batches, since nothing then
//!   says where the next batch starts; one bad first sector of the newest file (its header and
//!   the first batch's) empties that file;
//! - bad entries in the last intact batch before a tear: the bytes after it may be a reused
//!   file's stale data, which says nothing about when they were written.
//!
//! The next batch is looked for only where the header says, not at every offset, so that user
//! values in the log can hardly forge one in what a crash left behind and stop a node from
//! starting (a forger would need the offsets and file number of a future torn write). Entries
//! blocks other than a file's last are not read here: raft-engine checks each one when it reads
//! it. The rewrite queue (raft-engine's own compaction, several writes per sync, so a tear there
//! cannot be told from damage) is left to raft-engine.
//!
//! A log written in the unsafe no-fsync mode may hold several torn batches: such a log is
//! marked ([`UNSYNCED_MARK`]), and damage in its newest file is taken for tears until everything
//! it holds has been synced and the mark is gone.
//!
//! raft-engine 0.4 offers no check that does not repair, so this reads its file format itself
//! (`file_pipe_log/format.rs` and `log_batch.rs` there): a file is a header (magic, version,
//! alignment) and then batches; a batch is a 16-byte header (`len << 8 | compression` and the
//! footer's offset, both big-endian), the entries with their CRC-32, and a footer (the items)
//! with its CRC-32 XORed with the file's number. The tests pin the format: they write through
//! raft-engine and walk what it wrote.

use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MAGIC: &[u8] = b"RAFT-LOG-FILE-HEADER-9986AB3E47F320B394C8E84916EB0ED5";
/// A file header: the magic, the version, and (version 2) the alignment.
const FILE_HEADER_BYTES_MAX: usize = MAGIC.len() + 16;
const BATCH_HEADER_BYTES: u64 = 16;
const CHECKSUM_BYTES: usize = 4;
const APPEND_SUFFIX: &str = ".raftlog";
const SEQ_DIGITS: usize = 16;
/// The file in the log's directory that says it was written without fsync.
pub const UNSYNCED_MARK: &str = "UNSYNCED";

/// What a walk reads: a file, by positioned reads, or bytes in memory (tests).
trait Source {
    fn size(&self) -> u64;
    /// The `n` bytes at `at`, or `None` when they run past the end.
    fn get(&self, at: u64, n: u64) -> io::Result<Option<Vec<u8>>>;
}

/// A log file, read through a window of [`WINDOW_BYTES`] that moves forward as the walk does:
/// the walk reads each batch's header and footer, and reading those one by one cost a disk
/// round trip per batch on a cold page cache (3.7 s for a 690 MB log; the file read whole,
/// 1.1 s). Reads past the window's end refill it from where they start; larger ones go to the
/// file directly.
struct FileSource {
    file: std::fs::File,
    size: u64,
    /// The window: the file's bytes from `.0` on.
    window: std::cell::RefCell<(u64, Vec<u8>)>,
}

/// The bytes a [`FileSource`] reads at once.
const WINDOW_BYTES: u64 = 4 << 20;

impl FileSource {
    fn new(file: std::fs::File, size: u64) -> FileSource {
        FileSource { file, size, window: Default::default() }
    }
}

impl Source for FileSource {
    fn size(&self) -> u64 {
        self.size
    }
    fn get(&self, at: u64, n: u64) -> io::Result<Option<Vec<u8>>> {
        let Some(end) = at.checked_add(n).filter(|end| *end <= self.size) else { return Ok(None) };
        let len = usize::try_from(n).map_err(io::Error::other)?;
        if n > WINDOW_BYTES {
            let mut b = vec![0; len];
            self.file.read_exact_at(&mut b, at)?;
            return Ok(Some(b));
        }
        let mut w = self.window.borrow_mut();
        if at < w.0 || end > w.0 + w.1.len() as u64 {
            let fill = WINDOW_BYTES.min(self.size - at) as usize;
            w.1.resize(fill, 0);
            self.file.read_exact_at(&mut w.1, at)?;
            w.0 = at;
        }
        let from = (at - w.0) as usize;
        Ok(Some(w.1[from..from + len].to_vec()))
    }
}

impl Source for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn get(&self, at: u64, n: u64) -> io::Result<Option<Vec<u8>>> {
        let end = at.checked_add(n);
        Ok(end.and_then(|end| <[u8]>::get(self, at as usize..end as usize)).map(<[u8]>::to_vec))
    }
}

/// A file's format, from its header.
struct Format {
    /// Where the first batch starts.
    start: u64,
    /// XORed into each footer's checksum (format 2): the file's number.
    signature: Option<u32>,
    /// Batches start at multiples of it, zeros between (0: no alignment).
    alignment: u64,
}

fn be_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(..8)?.try_into().ok()?))
}

fn format(head: &[u8], seq: u64) -> Option<Format> {
    let rest = head.strip_prefix(MAGIC)?;
    match be_u64(rest)? {
        1 => Some(Format { start: MAGIC.len() as u64 + 8, signature: None, alignment: 0 }),
        2 => Some(Format {
            start: MAGIC.len() as u64 + 16,
            signature: Some(seq as u32),
            alignment: be_u64(rest.get(8..)?)?,
        }),
        _ => None,
    }
}

/// Whether the `n` bytes at `at` end in the CRC-32 of the rest, XORed with `signature`. Read
/// in chunks: a damaged header may claim a block as large as the file.
fn checksum_holds(src: &(impl Source + ?Sized), at: u64, n: u64, signature: Option<u32>) -> io::Result<bool> {
    const CHUNK: u64 = 1 << 20;
    let sum_bytes = CHECKSUM_BYTES as u64;
    if n <= sum_bytes {
        return Ok(false);
    }
    let Some(sum) = src.get(at + n - sum_bytes, sum_bytes)? else { return Ok(false) };
    let stored = u32::from_le_bytes(sum[..].try_into().expect("4 bytes")) ^ signature.unwrap_or(0);
    let mut crc = crc32fast::Hasher::new();
    let (mut from, end) = (at, at + n - sum_bytes);
    while from < end {
        let len = CHUNK.min(end - from);
        let Some(b) = src.get(from, len)? else { return Ok(false) };
        crc.update(&b);
        from += len;
    }
    Ok(crc.finalize() == stored)
}

/// A batch's header: its length and its footer's offset.
#[derive(Clone, Copy)]
struct Header {
    len: u64,
    footer: u64,
}

/// The batch header at `at`, when it makes sense and the batch fits in the file.
fn header_at(src: &(impl Source + ?Sized), at: u64) -> io::Result<Option<Header>> {
    let Some(h) = src.get(at, BATCH_HEADER_BYTES)? else { return Ok(None) };
    let (len_and_kind, footer) = (be_u64(&h).expect("16 bytes"), be_u64(&h[8..]).expect("16 bytes"));
    // The compression: none (0) or LZ4 (1).
    let len = len_and_kind >> 8;
    let fits = at.checked_add(len).is_some_and(|end| end <= src.size());
    Ok((len_and_kind & 0xff <= 1 && footer >= BATCH_HEADER_BYTES && footer <= len && fits)
        .then_some(Header { len, footer }))
}

/// The batch at `at` when its header makes sense and its footer's checksum holds: written in
/// this file's life (raft-engine's reader takes the same for a batch).
fn batch_at(src: &(impl Source + ?Sized), at: u64, signature: Option<u32>) -> io::Result<Option<Header>> {
    let Some(h) = header_at(src, at)? else { return Ok(None) };
    Ok(checksum_holds(src, at + h.footer, h.len - h.footer, signature)?.then_some(h))
}

/// Whether the entries block of the batch at `at` is whole.
fn entries_hold(src: &(impl Source + ?Sized), at: u64, h: Header) -> io::Result<bool> {
    if h.footer == BATCH_HEADER_BYTES {
        return Ok(true);
    }
    checksum_holds(src, at + BATCH_HEADER_BYTES, h.footer - BATCH_HEADER_BYTES, None)
}

/// Whether everything from `at` to the end is zeros (what raft-engine allocated ahead).
fn zeros_from(src: &(impl Source + ?Sized), mut at: u64) -> io::Result<bool> {
    const CHUNK: u64 = 1 << 20;
    while at < src.size() {
        let n = CHUNK.min(src.size() - at);
        if src.get(at, n)?.is_none_or(|b| b.iter().any(|x| *x != 0)) {
            return Ok(false);
        }
        at += n;
    }
    Ok(true)
}

/// What a walk of one file found.
#[derive(Debug, PartialEq, Eq)]
enum Walk {
    /// Whole to its end (or to zeros).
    Whole,
    /// The newest file's last write, torn from `at` on: raft-engine drops it.
    Torn { at: u64 },
    /// Damage to data that was synced.
    Damaged(String),
}

/// Walks one file, number `seq`; `newest`: the newest file, whose last batch may be torn.
fn walk(src: &(impl Source + ?Sized), seq: u64, newest: bool) -> io::Result<Walk> {
    let head = src.get(0, FILE_HEADER_BYTES_MAX.min(src.size() as usize) as u64)?.unwrap_or_default();
    let Some(f) = format(&head, seq) else {
        // A new file's header is synced before its first batch: an intact batch after a bad
        // header means the header went bad later.
        for (start, signature) in [(MAGIC.len() as u64 + 16, Some(seq as u32)), (MAGIC.len() as u64 + 8, None)] {
            if batch_at(src, start, signature)?.is_some() {
                return Ok(Walk::Damaged(format!(
                    "the file header is damaged, and the batch at offset {start} is intact"
                )));
            }
        }
        return Ok(if newest { Walk::Torn { at: 0 } } else { Walk::Damaged("the file header is damaged".into()) });
    };
    let mut at = f.start;
    let mut last: Option<(u64, Header)> = None;
    let mut torn = None;
    while at < src.size() {
        if let Some(h) = batch_at(src, at, f.signature)? {
            last = Some((at, h));
            at += h.len;
            continue;
        }
        if f.alignment > 0 {
            let aligned = at.div_ceil(f.alignment) * f.alignment;
            if aligned > at
                && aligned <= src.size()
                && src.get(at, aligned - at)?.is_some_and(|b| b.iter().all(|x| *x == 0))
            {
                at = aligned;
                continue;
            }
        }
        if !newest {
            return Ok(Walk::Damaged(format!("the batch at offset {at} is damaged, and newer files follow")));
        }
        if let Some(h) = header_at(src, at)? {
            let next = at + h.len;
            if next < src.size() && batch_at(src, next, f.signature)?.is_some() {
                return Ok(Walk::Damaged(format!(
                    "the batch at offset {at} is damaged, and a batch written after it follows at offset {next}"
                )));
            }
        }
        if !zeros_from(src, at)? {
            torn = Some(at);
        }
        break;
    }
    // raft-engine checks the entries of each file's last batch as it opens the file, and cuts
    // a bad one: in the newest file that is the last write, torn; in an older one, damage.
    if let Some((at, h)) = last {
        if !entries_hold(src, at, h)? {
            if !newest {
                return Ok(Walk::Damaged(format!("the entries of the last batch, at offset {at}, are damaged")));
            }
            torn = Some(torn.map_or(at, |t| t.min(at)));
        }
    }
    Ok(torn.map_or(Walk::Whole, |at| Walk::Torn { at }))
}

/// The append queue's files in `dir` that raft-engine reads, oldest first: those after the
/// last gap in their numbers (older ones are left over from a purge a crash cut short).
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
    let run = files.windows(2).rposition(|w| w[1].0 != w[0].0 + 1).map_or(0, |i| i + 1);
    Ok(files.split_off(run))
}

/// What [`check`] walked: the append queue's files and their bytes.
#[derive(Debug, Default, Clone, Copy)]
pub struct Checked {
    pub files: usize,
    pub bytes: u64,
}

/// Checks the shared log's append queue in `dir` (see the module's doc): an error names the
/// file and the offsets when a batch there is damaged rather than torn.
pub fn check(dir: &Path) -> io::Result<Checked> {
    let unsynced = dir.join(UNSYNCED_MARK).try_exists()?;
    let files = append_files(dir)?;
    let newest = files.last().map(|(seq, _)| *seq);
    let mut checked = Checked::default();
    for (seq, path) in files {
        let file = std::fs::File::open(&path)?;
        let size = file.metadata()?.len();
        checked.files += 1;
        checked.bytes += size;
        let src = FileSource::new(file, size);
        let is_newest = Some(seq) == newest;
        match walk(&src, seq, is_newest)? {
            Walk::Whole => {}
            Walk::Torn { at } => {
                tracing::warn!(file = %path.display(), offset = at, "range log: a torn last write is dropped")
            }
            Walk::Damaged(what) if is_newest && unsynced => {
                tracing::warn!(file = %path.display(), what, "range log: written without fsync; its tail is dropped")
            }
            Walk::Damaged(what) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "range log {}: {what}; the log is not opened, since raft-engine would drop what \
                         it holds from there on. The node's range replicas must be re-created from their \
                         peers: remove the node (`cairn node remove`), clear its data directory and join \
                         it again",
                        path.display()
                    ),
                ));
            }
        }
    }
    Ok(checked)
}

/// Marks the log in `dir` as written without fsync (see [`UNSYNCED_MARK`]), durably, before
/// any such write.
pub fn mark_unsynced(dir: &Path) -> io::Result<()> {
    std::fs::File::create(dir.join(UNSYNCED_MARK))?.sync_all()?;
    std::fs::File::open(dir)?.sync_all()
}

/// Once the log in `dir` is opened with fsync again: syncs every file it holds (what the
/// no-fsync run wrote), then removes the mark.
pub fn clear_unsynced(dir: &Path) -> io::Result<()> {
    let mark = dir.join(UNSYNCED_MARK);
    if !mark.try_exists()? {
        return Ok(());
    }
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_file() && p != mark {
            std::fs::File::open(&p)?.sync_all()?;
        }
    }
    // The names too (raft-engine renames and removes files without syncing the directory).
    std::fs::File::open(dir)?.sync_all()?;
    std::fs::remove_file(&mark)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Where each batch of `file` (number `seq`) starts, up to the first bad one (for tests that
/// damage a log raft-engine wrote).
#[cfg(test)]
pub(crate) fn batch_starts(file: &[u8], seq: u64) -> Vec<u64> {
    let Some(f) = format(file, seq) else { return Vec::new() };
    let mut at = f.start;
    let mut starts = Vec::new();
    while let Ok(Some(h)) = batch_at(file, at, f.signature) {
        starts.push(at);
        at += h.len;
    }
    starts
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file read through the window gives the bytes the file holds, for reads forward,
    /// backward, across the window's end, past the file's end and larger than the window.
    #[test]
    fn the_window_reads_what_the_file_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let size = 2 * WINDOW_BYTES + 12_345;
        let bytes: Vec<u8> = (0..size).map(|i| (i * 7 + i / 4096) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let src = FileSource::new(std::fs::File::open(&path).unwrap(), size);
        let w = WINDOW_BYTES;
        let reads = [
            (0, 16),
            (100, 1000),
            (w - 8, 16),
            (w + 5, 16),
            (3, 5),
            (w - 1, w),
            (0, w + 1),
            (size - 16, 16),
            (size - 16, 17),
            (size, 0),
            (size + 1, 0),
            (u64::MAX, 2),
            (2 * w - 4, 8),
            (10, w),
        ];
        for (at, n) in reads {
            assert_eq!(src.get(at, n).unwrap(), Source::get(&bytes[..], at, n).unwrap(), "{n} bytes at {at}");
        }
    }

    fn batch(entries: &[u8], items: &[u8], signature: u32) -> Vec<u8> {
        let mut e = entries.to_vec();
        if !e.is_empty() {
            e.extend_from_slice(&crc32fast::hash(entries).to_le_bytes());
        }
        let mut f = items.to_vec();
        f.extend_from_slice(&(crc32fast::hash(items) ^ signature).to_le_bytes());
        let footer = BATCH_HEADER_BYTES as usize + e.len();
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

    fn walk_of(f: &[u8], seq: u64, newest: bool) -> Walk {
        walk(f, seq, newest).unwrap()
    }

    fn damaged(w: Walk) -> bool {
        matches!(w, Walk::Damaged(_))
    }

    #[test]
    fn a_walk_tells_a_torn_tail_from_damage_to_synced_batches() {
        let seq = 7;
        let bs: Vec<Vec<u8>> = (0..3u8).map(|i| batch(&[i; 100], &[i; 20], seq as u32)).collect();
        let start = FILE_HEADER_BYTES_MAX as u64;
        let third = start + 2 * bs[0].len() as u64;
        let whole = file(&bs);
        assert_eq!(walk_of(&whole, seq, true), Walk::Whole);
        assert_eq!(walk_of(&whole, seq, false), Walk::Whole);
        // The last batch torn: a tail in the newest file, damage in an older one.
        let mut f = whole.clone();
        f.truncate(whole.len() - 30);
        assert_eq!(walk_of(&f, seq, true), Walk::Torn { at: third });
        assert!(damaged(walk_of(&f, seq, false)));
        // ... torn in its entries only (its footer whole): the same.
        let mut f = whole.clone();
        f[third as usize + 20] ^= 1;
        assert_eq!(walk_of(&f, seq, true), Walk::Torn { at: third });
        assert!(damaged(walk_of(&f, seq, false)));
        // Zeros after the last batch (allocated ahead): whole.
        let mut f = whole.clone();
        f.resize(whole.len() + 4096, 0);
        assert_eq!(walk_of(&f, seq, true), Walk::Whole);
        // The last batch's footer torn (its header whole), zeros after it: a tail.
        let mut f = whole.clone();
        let n = f.len();
        f[n - 3] ^= 1;
        f.resize(n + 4096, 0);
        assert_eq!(walk_of(&f, seq, true), Walk::Torn { at: third });
        // A torn batch whose header gives its length, followed exactly there by a batch of the
        // file's earlier life (another number): a tail; by a batch of this life: damage.
        for (signature, is_damage) in [(3u32, false), (seq as u32, true)] {
            let mut g = file(&bs[..2]);
            let mut torn = bs[2].clone();
            let l = torn.len();
            torn[l - 3] ^= 1;
            g.extend_from_slice(&torn);
            g.extend_from_slice(&batch(&[9; 100], &[9; 20], signature));
            let w = walk_of(&g, seq, true);
            assert_eq!(damaged(w), is_damage, "a batch signed {signature} after a torn one");
        }
        // The middle batch's footer damaged, with a batch of this life after it: damage.
        let mut f = whole.clone();
        f[start as usize + 2 * bs[0].len() - 6] ^= 1;
        assert!(damaged(walk_of(&f, seq, true)));
        // ... also when the batch after it is torn in its entries (its footer written).
        f[third as usize + 20] ^= 1;
        assert!(damaged(walk_of(&f, seq, true)));
        // A damaged file header with an intact first batch: damage; a torn one (nothing
        // intact after it): a tail.
        let mut f = whole.clone();
        f[3] ^= 1;
        assert!(damaged(walk_of(&f, seq, true)));
        assert!(damaged(walk_of(&f, seq, false)));
        assert_eq!(walk_of(&f[..40], seq, true), Walk::Torn { at: 0 });
        assert!(damaged(walk_of(&f[..40], seq, false)));
        // An empty newest file, or one holding only its header: nothing lost.
        assert_eq!(walk_of(&[], seq, true), Walk::Torn { at: 0 });
        assert_eq!(walk_of(&file(&[]), seq, true), Walk::Whole);
        // Batches of another file number are not this file's.
        assert_eq!(walk_of(&whole, seq + 1, true), Walk::Torn { at: start });
    }

    #[test]
    fn only_the_files_after_the_last_gap_count() {
        let dir = tempfile::tempdir().unwrap();
        for seq in [1u64, 2, 5, 6, 7] {
            std::fs::write(dir.path().join(format!("{seq:016}{APPEND_SUFFIX}")), b"").unwrap();
        }
        std::fs::write(dir.path().join(format!("{:016}.raftlog.reserved", 9)), b"").unwrap();
        let seqs: Vec<u64> = append_files(dir.path()).unwrap().into_iter().map(|(s, _)| s).collect();
        assert_eq!(seqs, vec![5, 6, 7]);
    }
}
