//! Unit tests of the log: round trips through reopen, truncation, purge and segment deletion,
//! the read cache, torn tails, torn batches, corruption, and group commit.

use super::*;
use std::fs::OpenOptions;
use std::io::Write;
use std::sync::mpsc::channel;

use super::record::{encode_record, KIND_ENTRY, KIND_SYNCED};
use super::writer::ZERO_AHEAD_BYTES;

fn opts() -> WalOptions {
    WalOptions { segment_bytes: 4096, cache_bytes: 1024, unsafe_no_fsync: false, faults: None }
}

fn append_sync(wal: &Wal, entries: Vec<(u64, &[u8])>) {
    let (tx, rx) = channel();
    let entries = entries.into_iter().map(|(i, d)| (i, Bytes::copy_from_slice(d))).collect();
    wal.append(entries, Box::new(move |r| tx.send(r).unwrap())).unwrap();
    rx.recv().unwrap().unwrap();
}

fn all(wal: &Wal) -> Vec<(u64, Vec<u8>)> {
    wal.read(0, u64::MAX, usize::MAX).unwrap().into_iter().map(|(i, b)| (i, b.to_vec())).collect()
}

fn payload(i: u64) -> Vec<u8> {
    format!("entry-{i}-{}", "x".repeat((i % 50) as usize)).into_bytes()
}

#[test]
fn append_read_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let wal = Wal::open(dir.path(), opts()).unwrap();
        for i in 0..200u64 {
            append_sync(&wal, vec![(i, &payload(i))]);
        }
        let (tx, rx) = channel();
        wal.save_vote(b"vote-1".to_vec(), Box::new(move |r| tx.send(r).unwrap())).unwrap();
        rx.recv().unwrap().unwrap();
        wal.save_committed(b"c-150".to_vec()).unwrap();
        let got = all(&wal);
        assert_eq!(got.len(), 200);
        assert_eq!(got[17], (17, payload(17)));
    }
    let wal = Wal::open(dir.path(), opts()).unwrap();
    let st = wal.state();
    assert_eq!(st.vote, Some(b"vote-1".to_vec()));
    assert_eq!(st.committed, Some(b"c-150".to_vec()));
    assert_eq!((st.first_index, st.last_index), (Some(0), Some(199)));
    let got = all(&wal);
    for (i, (idx, data)) in got.iter().enumerate() {
        assert_eq!(*idx, i as u64);
        assert_eq!(*data, payload(i as u64));
    }
    assert!(list_segments(dir.path()).unwrap().len() > 2, "small segments must have rotated");
}

#[test]
fn truncate_then_overwrite_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let wal = Wal::open(dir.path(), opts()).unwrap();
        append_sync(&wal, (0..10).map(|i| (i, &b"old"[..])).collect());
        wal.truncate_from(6).unwrap();
        append_sync(&wal, vec![(6, b"new6"), (7, b"new7")]);
        assert_eq!(all(&wal).len(), 8);
    }
    let wal = Wal::open(dir.path(), opts()).unwrap();
    let got = all(&wal);
    assert_eq!(got.len(), 8);
    assert_eq!(got[5].1, b"old");
    assert_eq!(got[6].1, b"new6");
    assert_eq!(got[7].1, b"new7");
}

#[test]
fn purge_deletes_old_segments_and_keeps_state() {
    let dir = tempfile::tempdir().unwrap();
    {
        let wal = Wal::open(dir.path(), opts()).unwrap();
        let (tx, rx) = channel();
        wal.save_vote(b"v".to_vec(), Box::new(move |r| tx.send(r).unwrap())).unwrap();
        rx.recv().unwrap().unwrap();
        for i in 0..300u64 {
            append_sync(&wal, vec![(i, &payload(i))]);
        }
        let before = list_segments(dir.path()).unwrap().len();
        wal.purge(250, b"p250".to_vec()).unwrap();
        let (tx, rx) = channel();
        wal.sync(Box::new(move |r| tx.send(r).unwrap())).unwrap();
        rx.recv().unwrap().unwrap();
        let after = list_segments(dir.path()).unwrap().len();
        assert!(after < before, "segments {before} -> {after}");
    }
    let wal = Wal::open(dir.path(), opts()).unwrap();
    let st = wal.state();
    assert_eq!(st.vote, Some(b"v".to_vec()), "vote carried by checkpoints");
    assert_eq!(st.purged, Some(Purged { index: 250, data: b"p250".to_vec() }));
    assert_eq!((st.first_index, st.last_index), (Some(251), Some(299)));
    append_sync(&wal, vec![(300, b"next")]);
}

#[test]
fn purge_beyond_last_then_append_after_it() {
    // A snapshot install purges past the end of the log; appends resume after it.
    let dir = tempfile::tempdir().unwrap();
    {
        let wal = Wal::open(dir.path(), opts()).unwrap();
        append_sync(&wal, vec![(0, b"a"), (1, b"b")]);
        wal.purge(99, b"p99".to_vec()).unwrap();
        append_sync(&wal, vec![(100, b"c")]);
    }
    let wal = Wal::open(dir.path(), opts()).unwrap();
    assert_eq!(all(&wal), vec![(100, b"c".to_vec())]);
}

#[test]
fn evicted_entries_are_read_back_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), WalOptions { cache_bytes: 100, ..opts() }).unwrap();
    for i in 0..100u64 {
        append_sync(&wal, vec![(i, &payload(i))]);
    }
    assert!(wal.shared.mem.lock().cached_bytes <= 100 + 100);
    let got = all(&wal);
    assert_eq!(got.len(), 100);
    for (i, d) in got {
        assert_eq!(d, payload(i));
    }
}

#[test]
fn read_respects_byte_budget_but_returns_at_least_one() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), opts()).unwrap();
    append_sync(&wal, (0..10).map(|i| (i, &[7u8; 100][..])).collect());
    assert_eq!(wal.read(0, 10, 250).unwrap().len(), 2);
    assert_eq!(wal.read(0, 10, 1).unwrap().len(), 1);
    assert_eq!(wal.read(3, 5, usize::MAX).unwrap().len(), 2);
}

/// A log in `dir` holding entries `0..n` (`payload(i)` each), each appended and synced.
fn appended(dir: &Path, opts: WalOptions, n: u64) -> Wal {
    let wal = Wal::open(dir, opts).unwrap();
    for i in 0..n {
        append_sync(&wal, vec![(i, &payload(i))]);
    }
    wal
}

/// Writes `bytes` followed by the zeroed-ahead space a crash leaves at the end of a segment.
fn write_crashed(path: &Path, mut bytes: Vec<u8>) {
    bytes.resize(bytes.len() + ZERO_AHEAD_BYTES as usize, 0);
    std::fs::write(path, &bytes).unwrap();
}

fn last_segment(dir: &Path) -> PathBuf {
    segment_path(dir, *list_segments(dir).unwrap().last().unwrap())
}

#[test]
fn torn_tail_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    {
        let wal = Wal::open(dir.path(), WalOptions { segment_bytes: 1 << 30, ..opts() }).unwrap();
        for i in 0..5u64 {
            append_sync(&wal, vec![(i, b"data")]);
        }
    }
    // Simulate a crash in the middle of writing a sixth record.
    let path = last_segment(dir.path());
    let mut rec = Vec::new();
    encode_record(KIND_ENTRY, &[&5u64.to_le_bytes(), b"data"], &mut rec);
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(&rec[..rec.len() - 3]).unwrap();
    drop(f);
    let len_before = std::fs::metadata(&path).unwrap().len();
    let wal = Wal::open(dir.path(), opts()).unwrap();
    assert_eq!(wal.state().last_index, Some(4));
    assert!(std::fs::metadata(&path).unwrap().len() < len_before);
    append_sync(&wal, vec![(5, b"again")]);
    drop(wal);
    let wal = Wal::open(dir.path(), opts()).unwrap();
    assert_eq!(all(&wal).last().unwrap(), &(5, b"again".to_vec()));
}

#[test]
fn zeroed_ahead_space_is_the_end_of_the_log_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let path;
    {
        let _wal = appended(dir.path(), WalOptions { segment_bytes: 1 << 30, ..opts() }, 5);
        // While the log is open, the space after its records is already written.
        path = last_segment(dir.path());
        let on_disk = std::fs::read(&path).unwrap();
        assert!(on_disk.len() as u64 >= ZERO_AHEAD_BYTES, "{} bytes", on_disk.len());
        assert_eq!(on_disk.last(), Some(&0));
    }
    // A clean close cuts the segment back to its records.
    let records_len = std::fs::metadata(&path).unwrap().len();
    assert!(records_len < 4096, "{records_len}");
    // A crash leaves the zeros: the log ends at its last record, nothing is lost or refused.
    write_crashed(&path, std::fs::read(&path).unwrap());
    {
        let wal = Wal::open(dir.path(), opts()).unwrap();
        assert_eq!(all(&wal).len(), 5);
        append_sync(&wal, vec![(5, b"more")]);
    }
    let wal = Wal::open(dir.path(), opts()).unwrap();
    assert_eq!(all(&wal).last().unwrap(), &(5, b"more".to_vec()));
    drop(wal);
    // A record torn inside the zeroed space is a torn tail; damage before it is corruption.
    let mut bytes = std::fs::read(&path).unwrap();
    let end = bytes.len();
    let mut rec = Vec::new();
    encode_record(KIND_ENTRY, &[&6u64.to_le_bytes(), b"torn"], &mut rec);
    bytes.extend_from_slice(&rec[..rec.len() - 2]);
    write_crashed(&path, bytes);
    {
        let wal = Wal::open(dir.path(), opts()).unwrap();
        assert_eq!(wal.state().last_index, Some(5));
    }
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[end / 2] ^= 0xff;
    write_crashed(&path, bytes);
    assert!(matches!(Wal::open(dir.path(), opts()), Err(Error::Corruption(_))));
}

#[test]
fn a_segment_left_empty_by_a_crash_gets_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    drop(appended(dir.path(), opts(), 100));
    // A crash right after a new segment was created, before its checkpoint reached the disk.
    let last = last_segment(dir.path());
    let kept = {
        std::fs::OpenOptions::new().write(true).open(&last).unwrap().set_len(0).unwrap();
        let wal = Wal::open(dir.path(), opts()).unwrap();
        let kept = wal.state().last_index.unwrap();
        append_sync(&wal, vec![(kept + 1, b"after")]);
        kept
    };
    let wal = Wal::open(dir.path(), opts()).unwrap();
    assert_eq!(wal.state().last_index, Some(kept + 1));
    assert_eq!(all(&wal).last().unwrap(), &(kept + 1, b"after".to_vec()));
}

#[test]
fn a_batch_torn_over_zeroed_space_is_a_torn_tail_not_corruption() {
    let dir = tempfile::tempdir().unwrap();
    drop(appended(dir.path(), WalOptions { segment_bytes: 1 << 30, ..opts() }, 5));
    let path = last_segment(dir.path());
    let clean = std::fs::read(&path).unwrap();
    let end = clean.len();
    // The next batch, never synced: two 5,000-byte entries over the zeroed-ahead space, of
    // which the disk kept the later blocks but not the first.
    let mut batch = Vec::new();
    encode_record(KIND_ENTRY, &[&5u64.to_le_bytes(), &[7u8; 5000]], &mut batch);
    encode_record(KIND_ENTRY, &[&6u64.to_le_bytes(), &[8u8; 5000]], &mut batch);
    let torn = |hole: std::ops::Range<usize>| {
        let mut bytes = clean.clone();
        let mut b = batch.clone();
        b[hole].fill(0);
        bytes.extend_from_slice(&b);
        write_crashed(&path, bytes);
    };
    // The block holding the batch's start was not written: the log ends at entry 4.
    torn(0..4096 - end % 4096);
    assert_eq!(Wal::open(dir.path(), opts()).unwrap().state().last_index, Some(4));
    // A block in the middle of the first record was not written: the same.
    torn(4096 - end % 4096 + 512..4096 - end % 4096 + 1024);
    assert_eq!(Wal::open(dir.path(), opts()).unwrap().state().last_index, Some(4));
    // Garbage in the unsynced batch, with no zero sector at all: the sectors of a batch reach
    // the disk in any order, and no sync mark follows, so it is still a torn tail.
    let mut damaged = clean.clone();
    let mut b = batch.clone();
    b[100] ^= 0xff;
    damaged.extend_from_slice(&b);
    write_crashed(&path, damaged.clone());
    assert_eq!(Wal::open(dir.path(), opts()).unwrap().state().last_index, Some(4));
    // The same damage followed by a sync mark (a later batch was written after an fsync that
    // covered it): the damaged bytes had been durable, so corruption.
    encode_record(KIND_SYNCED, &[], &mut damaged);
    encode_record(KIND_ENTRY, &[&7u64.to_le_bytes(), b"later"], &mut damaged);
    write_crashed(&path, damaged);
    assert!(matches!(Wal::open(dir.path(), opts()), Err(Error::Corruption(_))));
    // Damage inside what the segment held when it was closed (sealed with a mark at its end):
    // corruption, crash or not.
    let mut closed = clean.clone();
    closed[end / 2] ^= 0xff;
    std::fs::write(&path, &closed).unwrap();
    assert!(matches!(Wal::open(dir.path(), opts()), Err(Error::Corruption(_))));
}

/// A power cut tears the batch being synced in any order of sectors: whatever the disk kept
/// of it, the log reopens at the last batch that was synced, or at a later intact prefix.
#[test]
fn a_batch_torn_in_any_order_of_sectors_reopens_at_a_synced_prefix() {
    let dir = tempfile::tempdir().unwrap();
    drop(appended(dir.path(), WalOptions { segment_bytes: 1 << 30, ..opts() }, 5));
    let path = last_segment(dir.path());
    let clean = std::fs::read(&path).unwrap();
    let mut batch = Vec::new();
    encode_record(KIND_SYNCED, &[], &mut batch);
    for i in 5..12u64 {
        encode_record(KIND_ENTRY, &[&i.to_le_bytes(), &vec![i as u8; 700]], &mut batch);
    }
    let sectors = batch.len().div_ceil(512);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..50 {
        let mut bytes = clean.clone();
        let mut b = batch.clone();
        for s in 0..sectors {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x & 1 == 0 {
                let r = s * 512..((s + 1) * 512).min(b.len());
                // A sector the disk did not keep holds what was there before: zeros, or an
                // older write's garbage.
                b[r].fill(if x & 2 == 0 { 0 } else { 0xa5 });
            }
        }
        bytes.extend_from_slice(&b);
        bytes.extend_from_slice(&[0u8; 4096]);
        write_crashed(&path, bytes);
        let wal = Wal::open(dir.path(), opts()).expect("a torn tail is never taken for corruption");
        let last = wal.state().last_index.unwrap();
        assert!((4..12).contains(&last), "{last}");
        for (i, data) in all(&wal).into_iter().skip(5) {
            assert_eq!(data, vec![i as u8; 700], "only intact entries are kept");
        }
    }
}

#[test]
fn sealed_segments_end_at_their_last_record() {
    let dir = tempfile::tempdir().unwrap();
    let wal = appended(dir.path(), opts(), 200);
    let segs = list_segments(dir.path()).unwrap();
    assert!(segs.len() >= 2);
    for &seg in &segs[..segs.len() - 1] {
        let bytes = std::fs::read(segment_path(dir.path(), seg)).unwrap();
        assert_ne!(bytes.last(), Some(&0), "segment {seg} ends in zeros");
    }
    drop(wal);
    assert_eq!(all(&Wal::open(dir.path(), opts()).unwrap()).len(), 200);
}

#[test]
fn garbled_last_record_is_torn_but_garbled_middle_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    {
        let wal = Wal::open(dir.path(), WalOptions { segment_bytes: 1 << 30, ..opts() }).unwrap();
        for i in 0..5u64 {
            append_sync(&wal, vec![(i, b"data")]);
        }
    }
    let path = last_segment(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    // Flip a byte inside the last record (the sync mark the log was closed with): a torn
    // tail, cut off; no entry is lost.
    bytes[n - 2] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    {
        let wal = Wal::open(dir.path(), opts()).unwrap();
        assert_eq!(wal.state().last_index, Some(4));
    }
    // Now flip a byte in the middle: valid records follow, so it is corruption.
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    match Wal::open(dir.path(), opts()) {
        Err(Error::Corruption(msg)) => assert!(msg.contains("checksum"), "{msg}"),
        Err(e) => panic!("expected corruption, got {e}"),
        Ok(_) => panic!("expected corruption, got a log"),
    }
}

#[test]
fn a_flipped_length_field_in_the_middle_is_corruption_not_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let offsets = {
        let wal = Wal::open(dir.path(), WalOptions { segment_bytes: 1 << 30, ..opts() }).unwrap();
        for i in 0..20u64 {
            append_sync(&wal, vec![(i, &payload(i))]);
        }
        let m = wal.shared.mem.lock();
        m.slots.iter().map(|s| s.location.unwrap().offset).collect::<Vec<_>>()
    };
    let path = last_segment(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    // The length field of entry 10's record: 8 + 1 + 8 bytes before its payload.
    let rec = offsets[10] as usize - (HEADER_BYTES + 1 + 8);
    bytes[rec + 2] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    match Wal::open(dir.path(), opts()) {
        Err(Error::Corruption(msg)) => assert!(msg.contains("before valid records"), "{msg}"),
        Err(e) => panic!("expected corruption, got {e}"),
        Ok(w) => panic!("expected corruption, got a log ending at {:?}", w.state().last_index),
    }
}

#[test]
fn corruption_in_sealed_segment_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let wal = Wal::open(dir.path(), opts()).unwrap();
        for i in 0..200u64 {
            append_sync(&wal, vec![(i, &payload(i))]);
        }
    }
    let segs = list_segments(dir.path()).unwrap();
    assert!(segs.len() >= 2);
    let path = segment_path(dir.path(), segs[0]);
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0x55;
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(Wal::open(dir.path(), opts()), Err(Error::Corruption(_))));
}

#[test]
fn group_commit_batches_concurrent_appends() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Arc::new(Wal::open(dir.path(), WalOptions { segment_bytes: 1 << 30, ..opts() }).unwrap());
    let (tx, rx) = channel();
    for i in 0..1000u64 {
        let tx = tx.clone();
        wal.append(vec![(i, Bytes::from_static(b"x"))], Box::new(move |r| tx.send((i, r)).unwrap())).unwrap();
    }
    drop(tx);
    let mut got: Vec<u64> = rx
        .iter()
        .map(|(i, r)| {
            r.unwrap();
            i
        })
        .collect();
    got.sort_unstable();
    assert_eq!(got, (0..1000).collect::<Vec<_>>());
}

/// A log in `dir` holding entries 0..10, whose writer meets the fault set in the returned slot.
fn ten_entries_with_faults(dir: &Path) -> (Wal, Arc<parking_lot::Mutex<Option<IoFault>>>) {
    let armed = Arc::new(parking_lot::Mutex::new(None::<IoFault>));
    let hook = {
        let armed = armed.clone();
        FaultHook(Arc::new(move || *armed.lock()))
    };
    let wal = Wal::open(dir, WalOptions { faults: Some(hook), ..opts() }).unwrap();
    for i in 0..10u64 {
        append_sync(&wal, vec![(i, &payload(i))]);
    }
    (wal, armed)
}

/// A failed write or fsync is never retried: the batch's callers get the error, the log accepts
/// nothing more, and a reopened log holds every entry synced before it (plus, after a failed
/// fsync, what the file happens to hold; a half-written batch is cut off as a torn tail).
#[test]
fn a_failed_write_or_fsync_stops_the_log_and_is_never_retried() {
    for fault in [IoFault::SyncError, IoFault::WriteError, IoFault::ShortWrite] {
        let dir = tempfile::tempdir().unwrap();
        let (wal, armed) = ten_entries_with_faults(dir.path());
        *armed.lock() = Some(fault);
        let (tx, rx) = channel();
        wal.append(vec![(10, Bytes::from(payload(10)))], Box::new(move |r| tx.send(r).unwrap())).unwrap();
        let e = rx.recv().unwrap().unwrap_err();
        assert!(e.to_string().contains("os error 5"), "{fault:?}: {e}");
        // The fault is gone, but the log does not try again.
        *armed.lock() = None;
        let again = wal.append(vec![(11, Bytes::from(payload(11)))], Box::new(|_| {}));
        assert!(matches!(again, Err(Error::Failed(_))), "{fault:?}: {again:?}");
        let (tx, rx) = channel();
        let sync = wal.sync(Box::new(move |r| tx.send(r).unwrap()));
        assert!(sync.is_err() || rx.recv().unwrap().is_err(), "{fault:?}: a sync after the failure must fail");
        drop(wal);

        let wal = Wal::open(dir.path(), opts()).unwrap();
        let got = all(&wal);
        let expect: Vec<_> = (0..10u64).map(|i| (i, payload(i))).collect();
        match fault {
            // The write went through before fsync failed: the file may hold entry 10.
            IoFault::SyncError => assert!(got == expect || got[..10] == expect[..], "{fault:?}: {got:?}"),
            _ => assert_eq!(got, expect, "{fault:?}: exactly the synced entries"),
        }
        let next = got.len() as u64;
        append_sync(&wal, vec![(next, &payload(next))]);
    }
}

/// A full disk is waited out: the write waits (nothing is acknowledged, nothing fails), the log
/// says its disk is full, and once space returns the same write goes through and the log goes
/// on; a reopened log has everything.
#[test]
fn a_full_disk_is_waited_out_and_the_log_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, armed) = ten_entries_with_faults(dir.path());
    *armed.lock() = Some(IoFault::NoSpace);
    let (tx, rx) = channel();
    wal.append(vec![(10, Bytes::from(payload(10)))], Box::new(move |r| tx.send(r).unwrap())).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !wal.disk_full() {
        assert!(std::time::Instant::now() < deadline, "the log never said its disk is full");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(rx.recv_timeout(std::time::Duration::from_millis(500)).is_err(), "nothing acknowledged while full");
    *armed.lock() = None;
    rx.recv_timeout(std::time::Duration::from_secs(5)).expect("written once space returned").unwrap();
    assert!(!wal.disk_full());
    append_sync(&wal, vec![(11, &payload(11))]);
    drop(wal);
    let wal = Wal::open(dir.path(), opts()).unwrap();
    assert_eq!(all(&wal), (0..12u64).map(|i| (i, payload(i))).collect::<Vec<_>>());
}
