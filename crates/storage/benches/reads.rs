//! Point reads through a fresh reader, as a range serves a GET: `cargo bench -p cairn-storage
//! --bench reads`. 100,000 keys of 256-byte values in redb, with and without the write
//! buffer in front, and with writes committing between reads (each commit makes a new reader);
//! through one reader with and without the read cache; and the write buffer's flushes by size.

use std::sync::Arc;

use cairn_storage::{BufferLimits, BufferedEngine, Engine, RedbEngine, Table, WriteBatch};
use criterion::{criterion_group, criterion_main, Criterion};

const KEYS: u32 = 100_000;

fn key(i: u32) -> Vec<u8> {
    format!("key:{i:012}").into_bytes()
}

fn filled(dir: &std::path::Path) -> Arc<RedbEngine> {
    let e = Arc::new(RedbEngine::open(&dir.join("db"), 256 << 20).unwrap());
    for chunk in 0..KEYS / 10_000 {
        let mut b = WriteBatch::new();
        for i in chunk * 10_000..(chunk + 1) * 10_000 {
            b.put(Table::Kv, key(i), vec![7u8; 256]);
        }
        e.write(b).unwrap();
    }
    e
}

fn reads(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let redb = filled(dir.path());
    let mut i = 0u32;
    let mut next = move || {
        i = (i.wrapping_mul(2_654_435_761).wrapping_add(12_345)) % KEYS;
        key(i)
    };
    c.bench_function("redb: reader + get", |b| {
        b.iter(|| redb.reader().unwrap().get(Table::Kv, &next()).unwrap().unwrap());
    });
    let off = BufferLimits { read_cache_bytes: 0, ..Default::default() };
    let buffered = BufferedEngine::new(redb.clone(), off);
    c.bench_function("buffered: reader + get", |b| {
        b.iter(|| buffered.reader().unwrap().get(Table::Kv, &next()).unwrap().unwrap());
    });
    // A range shares one reader between the reads that arrive before its next commit.
    let reader = buffered.reader().unwrap();
    c.bench_function("buffered, no read cache: get (one reader)", |b| {
        b.iter(|| reader.get(Table::Kv, &next()).unwrap().unwrap());
    });
    let cached = BufferedEngine::new(redb.clone(), BufferLimits::default());
    let reader = cached.reader().unwrap();
    for i in 0..KEYS {
        reader.get(Table::Kv, &key(i)).unwrap().unwrap();
    }
    c.bench_function("buffered, read cache warm: get (one reader)", |b| {
        b.iter(|| reader.get(Table::Kv, &next()).unwrap().unwrap());
    });
    let mut n = 0u32;
    c.bench_function("redb: reader + get, a commit every 64 reads", |b| {
        b.iter(|| {
            n += 1;
            if n.is_multiple_of(64) {
                let mut w = WriteBatch::new();
                w.put(Table::Kv, key(n % KEYS), vec![8u8; 256]);
                redb.write(w).unwrap();
            }
            redb.reader().unwrap().get(Table::Kv, &next()).unwrap().unwrap()
        });
    });
}

/// Random overwrites of the 100,000 keys through the write buffer, flushed to redb by its
/// thread, by keys per flush: whether fewer, larger redb commits (each rewrites every B-tree
/// page it touches) make a range's applies cheaper. This times the writer only: the flushes
/// run on the buffer's own thread, on another core, so their cost hardly shows here (the three
/// sizes took 169-176 ms). On a loaded node that thread's CPU is taken from apply; node CPU per
/// SET in a cluster is the measure that showed the difference (BENCHMARKS.md).
fn overwrites(c: &mut Criterion) {
    let mut g = c.benchmark_group("buffered: 200,000 random overwrites, then sync");
    g.sample_size(10);
    for entries in [16_384usize, 65_536, 131_072] {
        g.bench_function(format!("{entries} keys per flush"), |b| {
            b.iter_custom(|iters| {
                let mut total = std::time::Duration::ZERO;
                for _ in 0..iters {
                    let dir = tempfile::tempdir().unwrap();
                    let e = BufferedEngine::new(
                        filled(dir.path()),
                        BufferLimits { bytes: 32 << 20, entries, ..Default::default() },
                    );
                    let mut i = 7u32;
                    let start = std::time::Instant::now();
                    for _ in 0..200_000 {
                        i = (i.wrapping_mul(2_654_435_761).wrapping_add(12_345)) % KEYS;
                        let mut w = WriteBatch::new();
                        w.put(Table::Kv, key(i), vec![9u8; 256]);
                        e.write(w).unwrap();
                    }
                    e.sync().unwrap();
                    total += start.elapsed();
                }
                total
            });
        });
    }
}

/// The write buffer itself, with nothing flushed (its limits above the load): 100,000 writes
/// of distinct keys, with a reader taken (and dropped) every 16 writes, as reads between a
/// range's applies take them; then point reads of keys it holds, through one reader. Its maps
/// are what a read of a recently written key and every write pay for.
fn buffer(c: &mut Criterion) {
    let mut g = c.benchmark_group("buffer");
    g.sample_size(10);
    let big = BufferLimits { bytes: 1 << 30, entries: 1 << 20, read_cache_bytes: 0 };
    let fill_with = |e: &BufferedEngine, key: &dyn Fn(u32) -> Vec<u8>, reader_every: u32| {
        for i in 0..KEYS {
            let mut w = WriteBatch::new();
            w.put(Table::Kv, key(i), vec![9u8; 256]);
            e.write(w).unwrap();
            if i % reader_every == 0 {
                drop(e.reader().unwrap());
            }
        }
    };
    let fill = |e: &BufferedEngine| fill_with(e, &key, 16);
    let mut timed = |name: &str, key: &dyn Fn(u32) -> Vec<u8>, reader_every: u32| {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = std::time::Duration::ZERO;
                for _ in 0..iters {
                    let e = BufferedEngine::new(Arc::new(cairn_storage::MemEngine::new()), big);
                    let start = std::time::Instant::now();
                    fill_with(&e, key, reader_every);
                    total += start.elapsed();
                }
                total
            });
        });
    };
    timed("100,000 writes, a reader every 16", &key, 16);
    // As the data tier stores Redis keys: a prefix byte and the key's hash slot first, in
    // the order a load of random keys writes them; with readers between, and with none (a
    // SET load: apply and GETs read without taking a reader).
    let slotted = |i: u32| {
        // A permutation of 0..KEYS (the factor is prime to it): every key once.
        let i = (u64::from(i) * 2_654_435_761 % u64::from(KEYS)) as u32;
        let slot = (i.wrapping_mul(40_503) >> 4) as u16 % 16_384;
        let mut k = vec![b'r'];
        k.extend_from_slice(&slot.to_be_bytes());
        k.extend_from_slice(&key(i));
        k
    };
    timed("100,000 writes of slotted keys in random order, a reader every 16", &slotted, 16);
    timed("100,000 writes of slotted keys in random order, no reader", &slotted, KEYS);
    let e = BufferedEngine::new(Arc::new(cairn_storage::MemEngine::new()), big);
    fill(&e);
    let reader = e.reader().unwrap();
    let mut i = 0u32;
    g.bench_function("get of a buffered key (one reader)", |b| {
        b.iter(|| {
            i = (i.wrapping_mul(2_654_435_761).wrapping_add(12_345)) % KEYS;
            reader.get(Table::Kv, &key(i)).unwrap().unwrap()
        });
    });
    g.finish();
}

criterion_group!(benches, reads, overwrites, buffer);
criterion_main!(benches);
