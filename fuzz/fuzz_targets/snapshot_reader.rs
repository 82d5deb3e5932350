//! Snapshot files and backups on arbitrary bytes: verifying, importing and restoring must never
//! panic, and a refused import or restore leaves the engine as it was.

#![no_main]

use std::io::Cursor;

use cairn_state::backup;
use cairn_storage::{Engine, MemEngine, Table, WriteBatch};
use libfuzzer_sys::fuzz_target;

fn one_record() -> MemEngine {
    let e = MemEngine::new();
    let mut b = WriteBatch::new();
    b.put(Table::Kv, b"before".to_vec(), b"import".to_vec());
    e.write(b).unwrap();
    e
}

fuzz_target!(|data: &[u8]| {
    let _ = cairn_state::verify(Cursor::new(data));
    let e = one_record();
    if cairn_state::import(&e, Cursor::new(data)).is_err() {
        assert_eq!(e.get(Table::Kv, b"before").unwrap(), Some(b"import".to_vec()));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("backup.db");
    std::fs::write(&path, data).unwrap();
    let _ = backup::status(&path);
    let _ = backup::restore(&path, &MemEngine::new());
});
