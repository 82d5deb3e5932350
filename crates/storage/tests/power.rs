//! Power loss with the volatile storage layer on (a process of its own: the switch is global).
//! The log is abandoned without closing (`mem::forget`: its writer never runs again, as after
//! a power cut) and reopened from what the disk holds.

use std::sync::mpsc::channel;

use bytes::Bytes;
use cairn_storage::wal::{Wal, WalOptions};

fn append_acked(wal: &Wal, from: u64, n: u64) {
    for i in from..from + n {
        let (tx, rx) = channel();
        wal.append(vec![(i, Bytes::from(format!("entry-{i}")))], Box::new(move |r| tx.send(r).unwrap())).unwrap();
        rx.recv().unwrap().expect("acknowledged");
    }
}

#[test]
fn acknowledged_entries_survive_power_loss_and_no_fsync_loses_them() {
    cairn_storage::volatile::enable();
    let opts = |no_fsync: bool| WalOptions { segment_bytes: 1 << 30, unsafe_no_fsync: no_fsync, ..Default::default() };

    // fsync on: every acknowledged entry is on the disk.
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), opts(false)).unwrap();
    append_acked(&wal, 0, 300);
    std::mem::forget(wal);
    let wal = Wal::open(dir.path(), opts(false)).unwrap();
    assert_eq!(wal.state().last_index, Some(299), "every acknowledged entry survived");
    std::mem::forget(wal);

    // fsync off (`--unsafe-no-fsync`): entries are acknowledged and then lost with the power.
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), opts(true)).unwrap();
    append_acked(&wal, 0, 300);
    std::mem::forget(wal);
    let wal = Wal::open(dir.path(), opts(true)).unwrap();
    assert_eq!(wal.state().last_index, None, "nothing acknowledged without fsync reached the disk");
}
