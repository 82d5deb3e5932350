//! Property tests of recovery: random bytes, records with valid checksums but arbitrary
//! contents, and a real log with bytes flipped, cut off or appended. Opening the log must never
//! panic: it recovers (cutting off a torn tail) or refuses with [`Error::Corruption`] naming the
//! segment file; and what it recovers is a prefix of what was written.

use std::path::Path;
use std::sync::OnceLock;

use proptest::prelude::*;

use super::record::{
    checkpoint_payload, encode_record, KIND_CHECKPOINT, KIND_COMMITTED, KIND_ENTRY, KIND_PURGE, KIND_SYNCED,
    KIND_TRUNCATE_FROM, KIND_VOTE,
};
use super::*;

/// Few cases: every case opens a real log (files, a writer thread, an fsync or two).
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

fn opts() -> WalOptions {
    WalOptions { segment_bytes: 512, cache_bytes: 256, unsafe_no_fsync: true, faults: None }
}

fn payload(i: u64) -> Vec<u8> {
    format!("entry-{i}-{}", "y".repeat((i % 7) as usize)).into_bytes()
}

/// Entries read back: (index, bytes).
type Entries = Vec<(u64, Vec<u8>)>;

/// Writes `segments` as a log directory and opens it; on success, reads everything back.
fn open_files(dir: &Path, segments: &[Vec<u8>]) -> Result<(WalState, Entries)> {
    for (i, bytes) in segments.iter().enumerate() {
        std::fs::write(segment_path(dir, i as u64 + 1), bytes).unwrap();
    }
    let wal = Wal::open(dir, opts())?;
    let entries = wal.read(0, u64::MAX, usize::MAX)?.into_iter().map(|(i, b)| (i, b.to_vec())).collect();
    let state = wal.state();
    wal.close();
    Ok((state, entries))
}

/// A refusal must say what is wrong and where: a corruption error naming the segment file.
fn assert_clear_refusal(e: &Error) {
    match e {
        Error::Corruption(msg) => assert!(msg.contains("wal-"), "corruption error names no segment: {msg}"),
        other => panic!("recovery failed with something other than a corruption error: {other}"),
    }
}

/// The segments of a log written by the real writer: entries 1..=60 in batches of three,
/// each batch fsynced, with a vote and committed positions along the way; several segments.
fn written_log() -> &'static Vec<Vec<u8>> {
    static LOG: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        {
            let wal = Wal::open(dir.path(), WalOptions { unsafe_no_fsync: false, ..opts() }).unwrap();
            for b in 0..20u64 {
                let (tx, rx) = std::sync::mpsc::channel();
                let batch = (b * 3 + 1..=b * 3 + 3).map(|i| (i, Bytes::from(payload(i)))).collect();
                wal.append(batch, Box::new(move |r| tx.send(r).unwrap())).unwrap();
                rx.recv().unwrap().unwrap();
                if b == 4 {
                    let (tx, rx) = std::sync::mpsc::channel();
                    wal.save_vote(b"vote-7".to_vec(), Box::new(move |r| tx.send(r).unwrap())).unwrap();
                    rx.recv().unwrap().unwrap();
                }
                wal.save_committed(format!("c-{}", b * 3).into_bytes()).unwrap();
            }
            wal.close();
        }
        let segs = list_segments(dir.path()).unwrap();
        assert!(segs.len() >= 3, "the log must span several segments");
        assert_eq!(segs.first(), Some(&1));
        segs.iter().map(|&s| std::fs::read(segment_path(dir.path(), s)).unwrap()).collect()
    })
}

/// Entries recovered must be entries 1..=k for some k, with the bytes written; vote and
/// committed, if recovered, must be values that were written.
fn assert_prefix(state: &WalState, entries: &[(u64, Vec<u8>)]) {
    for (n, (index, data)) in entries.iter().enumerate() {
        assert_eq!(*index, n as u64 + 1, "recovered entries are not a prefix: {:?}", &entries[..=n]);
        assert_eq!(*data, payload(*index), "entry {index} came back with other bytes");
    }
    if let Some(v) = &state.vote {
        assert_eq!(v, b"vote-7", "a vote that was never written");
    }
    if let Some(c) = &state.committed {
        let c = String::from_utf8(c.clone()).expect("a committed position that was never written");
        assert!(c.starts_with("c-"), "a committed position that was never written: {c}");
    }
}

#[derive(Debug, Clone)]
enum Damage {
    /// XOR one byte (at a position taken modulo the file's length) with a non-zero mask.
    Flip { seg: usize, at: usize, mask: u8 },
    /// Cut the file at a position (modulo its length + 1).
    Truncate { seg: usize, at: usize },
    /// Append bytes to the file.
    Append { seg: usize, bytes: Vec<u8> },
    /// Append zeros, as the writer's zeroed-ahead space after a crash.
    Zeros { seg: usize, n: usize },
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<usize>(), any::<usize>(), 1u8..=255).prop_map(|(seg, at, mask)| Damage::Flip { seg, at, mask }),
        (any::<usize>(), any::<usize>()).prop_map(|(seg, at)| Damage::Truncate { seg, at }),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..64))
            .prop_map(|(seg, bytes)| Damage::Append { seg, bytes }),
        (any::<usize>(), 1usize..2048).prop_map(|(seg, n)| Damage::Zeros { seg, n }),
    ]
}

fn apply_damage(segs: &mut [Vec<u8>], d: &Damage) {
    let n = segs.len();
    match d {
        Damage::Flip { seg, at, mask } => {
            let s = &mut segs[seg % n];
            if !s.is_empty() {
                let len = s.len();
                s[at % len] ^= mask;
            }
        }
        Damage::Truncate { seg, at } => {
            let s = &mut segs[seg % n];
            let len = s.len();
            s.truncate(at % (len + 1));
        }
        Damage::Append { seg, bytes } => segs[seg % n].extend_from_slice(bytes),
        Damage::Zeros { seg, n: z } => {
            let s = &mut segs[seg % n];
            s.resize(s.len() + z, 0);
        }
    }
}

/// Index values that probe the in-memory index's arithmetic.
fn index() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..8, Just(u64::MAX), Just(u64::MAX - 1), Just(u64::MAX - 2), any::<u64>()]
}

fn opt_bytes() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop::option::of(prop::collection::vec(any::<u8>(), 0..8))
}

/// One record with a valid checksum and arbitrary (but mostly well-shaped) contents.
fn record() -> impl Strategy<Value = Vec<u8>> {
    let body = prop_oneof![
        (index(), prop::collection::vec(any::<u8>(), 0..8))
            .prop_map(|(i, d)| (KIND_ENTRY, [&i.to_le_bytes()[..], &d].concat())),
        opt_bytes().prop_map(|v| (KIND_VOTE, v.unwrap_or_default())),
        opt_bytes().prop_map(|v| (KIND_COMMITTED, v.unwrap_or_default())),
        index().prop_map(|i| (KIND_TRUNCATE_FROM, i.to_le_bytes().to_vec())),
        (index(), opt_bytes()).prop_map(|(i, d)| (KIND_PURGE, [&i.to_le_bytes()[..], &d.unwrap_or_default()].concat())),
        (opt_bytes(), opt_bytes(), prop::option::of((index(), prop::collection::vec(any::<u8>(), 0..8)))).prop_map(
            |(v, c, p)| {
                let purged = p.map(|(index, data)| Purged { index, data });
                (KIND_CHECKPOINT, checkpoint_payload(&v, &c, &purged, None))
            }
        ),
        Just((KIND_SYNCED, vec![])),
        // Unknown kinds, and payloads too short for their kind.
        (any::<u8>(), prop::collection::vec(any::<u8>(), 0..12)).prop_map(|(k, p)| (k, p)),
    ];
    body.prop_map(|(kind, payload)| {
        let mut out = Vec::new();
        encode_record(kind, &[&payload], &mut out);
        out
    })
}

proptest! {
    #![proptest_config(config(512))]

    /// Arbitrary bytes as segment files.
    #[test]
    fn random_segment_files_never_panic(
        segs in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..600), 1..4),
    ) {
        let dir = tempfile::tempdir().unwrap();
        if let Err(e) = open_files(dir.path(), &segs) {
            assert_clear_refusal(&e);
        }
    }

    /// Segments made of records whose checksums are valid but whose contents are arbitrary:
    /// holes, indexes at the end of the range, unknown kinds, short payloads.
    #[test]
    fn records_with_valid_checksums_and_any_contents_never_panic(
        segs in prop::collection::vec(
            (any::<bool>(), prop::collection::vec(record(), 0..12)),
            1..4,
        ),
    ) {
        let files: Vec<Vec<u8>> = segs
            .into_iter()
            .map(|(checkpoint_first, records)| {
                let mut f = Vec::new();
                if checkpoint_first {
                    encode_record(KIND_CHECKPOINT, &[&checkpoint_payload(&None, &None, &None, None)], &mut f);
                }
                f.extend(records.concat());
                f
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        if let Err(e) = open_files(dir.path(), &files) {
            assert_clear_refusal(&e);
        }
    }

    /// A log the writer wrote, damaged: bytes flipped, files cut short, garbage or zeros
    /// appended. Recovery keeps a prefix of what was written, or refuses to open.
    #[test]
    fn a_damaged_log_recovers_a_prefix_or_is_refused(damages in prop::collection::vec(damage(), 1..4)) {
        let mut segs = written_log().clone();
        for d in &damages {
            apply_damage(&mut segs, d);
        }
        let dir = tempfile::tempdir().unwrap();
        match open_files(dir.path(), &segs) {
            Ok((state, entries)) => assert_prefix(&state, &entries),
            Err(e) => assert_clear_refusal(&e),
        }
    }
}

/// The undamaged log comes back whole (the property above would pass vacuously otherwise).
#[test]
fn the_undamaged_log_comes_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (state, entries) = open_files(dir.path(), written_log()).unwrap();
    assert_eq!(entries.len(), 60);
    assert_prefix(&state, &entries);
    assert_eq!(state.vote.as_deref(), Some(&b"vote-7"[..]));
}

/// Damage to the tail of the last segment loses at most the damaged batch: a torn tail.
#[test]
fn a_cut_in_the_last_segment_is_a_torn_tail() {
    let mut segs = written_log().clone();
    // The last segment holds only a checkpoint and a committed position: drop it, so the one
    // before, full of entries, is the last.
    segs.pop();
    let last = segs.last_mut().unwrap();
    last.truncate(last.len() / 2);
    let dir = tempfile::tempdir().unwrap();
    let (state, entries) = open_files(dir.path(), &segs).unwrap();
    assert!(!entries.is_empty() && entries.len() < 60);
    assert_prefix(&state, &entries);
}

/// The offsets just past each sync mark of a segment: where a cut leaves whole batches only.
fn batch_ends(seg: &[u8]) -> Vec<usize> {
    let mut at = 0;
    let mut ends = Vec::new();
    while let super::record::Parsed::Record { kind, next, .. } = super::record::parse_at(seg, at) {
        if kind == KIND_SYNCED {
            ends.push(next);
        }
        at = next;
    }
    ends
}

/// A sealed segment cut at a batch boundary looks whole record by record; the next segment's
/// checkpoint says how long it was sealed, so the cut is found. (Without it, cutting every
/// entry out of the first segment left a log starting later, with no error.)
#[test]
fn a_sealed_segment_cut_between_batches_is_refused() {
    let log = written_log();
    for seg in 0..log.len() - 1 {
        let ends = batch_ends(&log[seg]);
        assert!(ends.len() >= 2, "segment {seg} must hold several batches");
        for &end in &ends[..ends.len() - 1] {
            let mut segs = log.clone();
            segs[seg].truncate(end);
            let dir = tempfile::tempdir().unwrap();
            let e = open_files(dir.path(), &segs).map(|_| ()).unwrap_err();
            assert_clear_refusal(&e);
            assert!(e.to_string().contains("cut short"), "{e}");
        }
    }
}

/// A segment missing from the middle of the log is corruption, not a shorter log.
#[test]
fn a_missing_segment_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = written_log();
    for (i, bytes) in log.iter().enumerate() {
        if i != 1 {
            std::fs::write(segment_path(dir.path(), i as u64 + 1), bytes).unwrap();
        }
    }
    let e = Wal::open(dir.path(), opts()).map(|_| ()).unwrap_err();
    assert_clear_refusal(&e);
    assert!(e.to_string().contains("missing"), "{e}");
}

/// A record with a valid checksum naming index `u64::MAX` used to overflow the in-memory index
/// (a panic in debug builds); now it is corruption.
#[test]
fn an_index_beyond_any_log_is_refused() {
    for (kind, payload) in [
        (KIND_ENTRY, [&u64::MAX.to_le_bytes()[..], b"x"].concat()),
        (KIND_PURGE, u64::MAX.to_le_bytes().to_vec()),
        (KIND_CHECKPOINT, checkpoint_payload(&None, &None, &Some(Purged { index: u64::MAX, data: vec![] }), None)),
    ] {
        let mut f = Vec::new();
        encode_record(KIND_CHECKPOINT, &[&checkpoint_payload(&None, &None, &None, None)], &mut f);
        encode_record(KIND_ENTRY, &[&(u64::MAX - 1).to_le_bytes(), b"y"], &mut f);
        encode_record(kind, &[&payload], &mut f);
        let dir = tempfile::tempdir().unwrap();
        let e = open_files(dir.path(), &[f]).map(|_| ()).unwrap_err();
        assert_clear_refusal(&e);
        assert!(e.to_string().contains("beyond any log"), "{e}");
    }
}
