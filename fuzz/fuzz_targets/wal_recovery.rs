//! The Raft log's recovery on arbitrary segment files: the input is split at each `0xF7 0x5E`
//! (at most four segments). Opening must never panic: it recovers or refuses with a corruption
//! error naming the segment.

#![no_main]

use cairn_storage::wal::{Wal, WalOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let mut rest = data;
    for seq in 1..=4u64 {
        let (seg, next) = match rest.windows(2).position(|w| w == [0xF7, 0x5E]) {
            Some(at) if seq < 4 => (&rest[..at], &rest[at + 2..]),
            _ => (rest, &[][..]),
        };
        std::fs::write(dir.path().join(format!("wal-{seq:016}.log")), seg).unwrap();
        rest = next;
        if rest.is_empty() {
            break;
        }
    }
    let opts = WalOptions { segment_bytes: 4096, cache_bytes: 1024, unsafe_no_fsync: true, faults: None };
    match Wal::open(dir.path(), opts) {
        Ok(wal) => {
            let _ = wal.read(0, u64::MAX, usize::MAX);
            let _ = wal.state();
            wal.close();
        }
        Err(cairn_storage::Error::Corruption(msg)) => assert!(msg.contains("wal-"), "{msg}"),
        Err(e) => panic!("recovery failed with something other than corruption: {e}"),
    }
});
