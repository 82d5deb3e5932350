//! How much space redb allocates for values of a given size.
//!
//! The 10 GiB data-set run (`scripts/bench-dataset`, 16,384-byte values) left each node's redb
//! file at 2.2x its data. This writes about 400 MB of values of each size, 512 to a
//! transaction, under keys in a scattered order (as hash slots give), with 16 bytes added to
//! each value for the record header and checksum cairn stores with it, and prints the pages
//! redb allocated against the bytes stored.
//!
//! `cargo run --release --manifest-path bench/redb-value-sizes/Cargo.toml`

use redb::{Database, Durability, TableDefinition};

const T: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
/// What cairn adds to a Redis value (record header, checksum), about.
const OVERHEAD: usize = 16;
const BYTES: usize = 400_000_000;

fn main() {
    println!("| value bytes | data MB | file MB | allocated MB | allocated / data |");
    println!("|---:|---:|---:|---:|---:|");
    for size in [1024usize, 4096, 8192, 15_000, 16_300, 16_384, 20_000, 32_768] {
        let dir = tempfile_dir(size);
        let path = dir.join("e.redb");
        let db = Database::create(&path).expect("create");
        let n = BYTES / size;
        let value = vec![b'x'; size + OVERHEAD];
        let mut i = 0;
        while i < n {
            let mut txn = db.begin_write().expect("txn");
            txn.set_durability(Durability::None).expect("durability");
            {
                let mut t = txn.open_table(T).expect("table");
                for _ in 0..512.min(n - i) {
                    let k = format!("r{:08x}", (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32);
                    t.insert(k.as_bytes(), value.as_slice()).expect("insert");
                    i += 1;
                }
            }
            txn.commit().expect("commit");
        }
        let txn = db.begin_write().expect("txn");
        let st = txn.stats().expect("stats");
        let allocated = st.allocated_pages() * st.page_size() as u64;
        let file = std::fs::metadata(&path).expect("file").len();
        let data = (n * size) as u64;
        println!(
            "| {size} | {} | {} | {} | {:.2} |",
            data / 1_000_000,
            file / 1_000_000,
            allocated / 1_000_000,
            allocated as f64 / data as f64
        );
        txn.abort().expect("abort");
        drop(db);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

fn tempfile_dir(size: usize) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("redb-value-sizes-{}-{size}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
