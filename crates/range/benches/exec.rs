//! A GET as a range's applier runs it, over 100,000 keys of 256-byte values in memory:
//! `cargo bench -p cairn-range --bench exec`. Three cases: the command alone
//! (`cairn_range::read`: the key's encoding, the engine's get, the record's decoding, the
//! reply); the same with the postcard encoding a range request carries it in and the reply's
//! (encode the command, decode it, read, encode the reply, decode it), as a read served on the
//! node that leads its range pays too; and a plain SET through `cairn_range::apply`. The
//! encodings cost about a fifth of the command here, but nothing measurable in a node's CPU
//! per GET when a path without them was tried (BENCHMARKS.md).

use cairn_range::cmd::{DataCmd, ReadCmd, SetCond, SetExpiry};
use cairn_range::mem::MemKv;
use cairn_range::Reply;
use criterion::{criterion_group, criterion_main, Criterion};

const KEYS: u64 = 100_000;

fn key(i: u64) -> Vec<u8> {
    format!("key:{i:012}").into_bytes()
}

fn set(i: u64) -> DataCmd {
    DataCmd::Set { key: key(i), value: vec![7u8; 256], cond: SetCond::Always, get: false, expiry: SetExpiry::Clear }
}

/// The keys in a fixed scattered order (a multiplicative step, coprime to KEYS), so that
/// successive reads do not walk the map in order.
fn scattered(n: u64) -> u64 {
    n.wrapping_mul(7_919) % KEYS
}

fn exec(c: &mut Criterion) {
    let mut kv = MemKv::new();
    for i in 0..KEYS {
        cairn_range::apply(&set(i), &mut kv, 1).unwrap();
    }
    // The commands are made before timing: only their execution is measured.
    let gets: Vec<ReadCmd> = (0..KEYS).map(|n| ReadCmd::Get { key: key(scattered(n)) }).collect();
    let sets: Vec<DataCmd> = (0..KEYS).map(|n| set(scattered(n))).collect();
    let mut g = c.benchmark_group("exec");
    let mut n = 0usize;
    let mut next = || {
        n = (n + 1) % KEYS as usize;
        n
    };
    g.bench_function("get", |b| {
        b.iter(|| {
            let reply = cairn_range::read(&gets[next()], &kv, 2).unwrap();
            assert!(matches!(reply, Reply::Bulk(_)));
            reply
        })
    });
    g.bench_function("get, encoded as a range request carries it", |b| {
        b.iter(|| {
            let cmd = postcard::to_allocvec(&gets[next()]).unwrap();
            let cmd: ReadCmd = postcard::from_bytes(&cmd).unwrap();
            let reply = cairn_range::read(&cmd, &kv, 2).unwrap();
            let bytes = postcard::to_allocvec(&reply).unwrap();
            let reply: Reply = postcard::from_bytes(&bytes).unwrap();
            assert!(matches!(reply, Reply::Bulk(_)));
            reply
        })
    });
    g.bench_function("set", |b| b.iter(|| cairn_range::apply(&sets[next()], &mut kv, 3).unwrap()));
    g.finish();
}

criterion_group!(benches, exec);
criterion_main!(benches);
