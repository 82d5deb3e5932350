//! The measurement behind cairn's choice of state engine (ARCHITECTURE.md, "Storage").
//!
//! It models the state machine's apply path: each committed Raft batch becomes one
//! atomic, *non-durable* engine commit holding `BATCH` revision records plus the
//! applied-index meta record; durability comes from the Raft log, and the engine is
//! flushed durably only when a snapshot is taken. Then it measures point reads of
//! random revisions (the read path after the in-memory key index) and a full scan
//! (the index rebuild at start-up).
//!
//! Run: `cargo run --release --manifest-path bench/engine-choice/Cargo.toml`
use std::time::Instant;

const BATCHES: u64 = 4_000;
const BATCH: u64 = 64;
const VALUE_BYTES: usize = 256;
const READS: u64 = 200_000;

fn rev_key(rev: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&rev.to_be_bytes());
    k
}

fn rng(state: &mut u64) -> u64 {
    // xorshift64*: deterministic, dependency-free; quality is irrelevant here.
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

fn report(engine: &str, phase: &str, ops: u64, secs: f64) {
    println!("{engine:6} {phase:28} {:>12.0} ops/s  ({ops} ops in {secs:.3}s)", ops as f64 / secs);
}

fn bench_redb(dir: &std::path::Path) {
    use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
    const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
    const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
    let db = Database::create(dir.join("redb")).unwrap();
    let value = vec![7u8; VALUE_BYTES];
    let t = Instant::now();
    let mut rev = 0;
    for b in 0..BATCHES {
        let mut txn = db.begin_write().unwrap();
        txn.set_durability(Durability::None).unwrap();
        {
            let mut kv = txn.open_table(KV).unwrap();
            for _ in 0..BATCH {
                rev += 1;
                kv.insert(&rev_key(rev)[..], &value[..]).unwrap();
            }
            txn.open_table(META).unwrap().insert("applied", b).unwrap();
        }
        txn.commit().unwrap();
    }
    report("redb", "apply (non-durable commits)", BATCHES * BATCH, t.elapsed().as_secs_f64());
    let t = Instant::now();
    let mut txn = db.begin_write().unwrap();
    txn.set_durability(Durability::Immediate).unwrap();
    txn.commit().unwrap();
    println!("redb   durable flush                {:>9.1} ms", t.elapsed().as_secs_f64() * 1e3);
    let t = Instant::now();
    for b in 0..200u64 {
        let txn = db.begin_write().unwrap();
        {
            let mut kv = txn.open_table(KV).unwrap();
            for _ in 0..BATCH {
                rev += 1;
                kv.insert(&rev_key(rev)[..], &value[..]).unwrap();
            }
            txn.open_table(META).unwrap().insert("applied", b).unwrap();
        }
        txn.commit().unwrap();
    }
    report("redb", "apply (durable commits)", 200 * BATCH, t.elapsed().as_secs_f64());
    let t = Instant::now();
    let txn = db.begin_read().unwrap();
    let kv = txn.open_table(KV).unwrap();
    let mut s = 42;
    for _ in 0..READS {
        let r = rng(&mut s) % (BATCHES * BATCH) + 1;
        assert!(kv.get(&rev_key(r)[..]).unwrap().is_some());
    }
    report("redb", "point reads", READS, t.elapsed().as_secs_f64());
    let t = Instant::now();
    let n = kv.iter().unwrap().count() as u64;
    report("redb", "full scan", n, t.elapsed().as_secs_f64());
}

fn bench_fjall(dir: &std::path::Path) {
    use fjall::{Database, KeyspaceCreateOptions, PersistMode, Readable};
    let db = Database::builder(dir.join("fjall")).open().unwrap();
    let kv = db.keyspace("kv", KeyspaceCreateOptions::default).unwrap();
    let meta = db.keyspace("meta", KeyspaceCreateOptions::default).unwrap();
    let value = vec![7u8; VALUE_BYTES];
    let t = Instant::now();
    let mut rev = 0;
    for b in 0..BATCHES {
        let mut batch = db.batch();
        for _ in 0..BATCH {
            rev += 1;
            batch.insert(&kv, rev_key(rev).to_vec(), value.clone());
        }
        batch.insert(&meta, "applied", b.to_be_bytes().to_vec());
        batch.commit().unwrap();
    }
    report("fjall", "apply (non-durable commits)", BATCHES * BATCH, t.elapsed().as_secs_f64());
    let t = Instant::now();
    db.persist(PersistMode::SyncAll).unwrap();
    println!("fjall  durable flush                {:>9.1} ms", t.elapsed().as_secs_f64() * 1e3);
    let t = Instant::now();
    for b in 0..200u64 {
        let mut batch = db.batch().durability(Some(PersistMode::SyncData));
        for _ in 0..BATCH {
            rev += 1;
            batch.insert(&kv, rev_key(rev).to_vec(), value.clone());
        }
        batch.insert(&meta, "applied", b.to_be_bytes().to_vec());
        batch.commit().unwrap();
    }
    report("fjall", "apply (durable commits)", 200 * BATCH, t.elapsed().as_secs_f64());
    let t = Instant::now();
    let snap = db.snapshot();
    let mut s = 42;
    for _ in 0..READS {
        let r = rng(&mut s) % (BATCHES * BATCH) + 1;
        assert!(snap.get(&kv, rev_key(r)).unwrap().is_some());
    }
    report("fjall", "point reads", READS, t.elapsed().as_secs_f64());
    let t = Instant::now();
    let n = snap.iter(&kv).count() as u64;
    report("fjall", "full scan", n, t.elapsed().as_secs_f64());
}

fn main() {
    let dir = tempfile::tempdir_in(".").unwrap();
    bench_redb(dir.path());
    bench_fjall(dir.path());
}
