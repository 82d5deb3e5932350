//! One behaviour suite for every [`Engine`]. Each engine's tests call [`run_all`] with a
//! factory; a new engine passes this suite before it is used.

use std::ops::Bound;

use crate::engine::{Engine, Table, WriteBatch};

/// Makes a fresh, empty engine.
pub type Factory<'a> = &'a dyn Fn() -> Box<dyn Engine>;

pub fn run_all(make: Factory) {
    put_get_delete(make);
    batch_applies_in_order(make);
    tables_are_separate(make);
    scan_bounds_and_order(make);
    scan_stops_when_asked(make);
    reader_is_a_snapshot(make);
    clear_empties_one_table(make);
    binary_keys_and_empty_values(make);
    live_bytes_follow_the_contents(make);
    defragment_keeps_the_contents(make);
}

fn collect(e: &dyn Engine, table: Table, from: Bound<&[u8]>, to: Bound<&[u8]>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    e.reader()
        .unwrap()
        .scan(table, from, to, &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            true
        })
        .unwrap();
    out
}

fn put_get_delete(make: Factory) {
    let e = make();
    assert_eq!(e.get(Table::Kv, b"a").unwrap(), None);
    let mut b = WriteBatch::new();
    b.put(Table::Kv, b"a".to_vec(), b"1".to_vec());
    e.write(b).unwrap();
    assert_eq!(e.get(Table::Kv, b"a").unwrap(), Some(b"1".to_vec()));
    let mut b = WriteBatch::new();
    b.delete(Table::Kv, b"a".to_vec());
    b.delete(Table::Kv, b"never-existed".to_vec());
    e.write(b).unwrap();
    assert_eq!(e.get(Table::Kv, b"a").unwrap(), None);
    e.sync().unwrap();
}

fn batch_applies_in_order(make: Factory) {
    let e = make();
    let mut b = WriteBatch::new();
    b.put(Table::Kv, b"k".to_vec(), b"1".to_vec());
    b.put(Table::Kv, b"k".to_vec(), b"2".to_vec());
    b.delete(Table::Kv, b"k".to_vec());
    b.put(Table::Kv, b"k".to_vec(), b"3".to_vec());
    e.write(b).unwrap();
    assert_eq!(e.get(Table::Kv, b"k").unwrap(), Some(b"3".to_vec()));
}

fn tables_are_separate(make: Factory) {
    let e = make();
    let mut b = WriteBatch::new();
    b.put(Table::Kv, b"k".to_vec(), b"kv".to_vec());
    b.put(Table::Meta, b"k".to_vec(), b"meta".to_vec());
    e.write(b).unwrap();
    assert_eq!(e.get(Table::Kv, b"k").unwrap(), Some(b"kv".to_vec()));
    assert_eq!(e.get(Table::Meta, b"k").unwrap(), Some(b"meta".to_vec()));
}

fn scan_bounds_and_order(make: Factory) {
    let e = make();
    let mut b = WriteBatch::new();
    for k in [&b"c"[..], b"a", b"b", b"d", b"ab"] {
        b.put(Table::Kv, k.to_vec(), k.to_vec());
    }
    e.write(b).unwrap();
    let keys = |v: Vec<(Vec<u8>, Vec<u8>)>| v.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    let all = keys(collect(&*e, Table::Kv, Bound::Unbounded, Bound::Unbounded));
    assert_eq!(all, vec![b"a".to_vec(), b"ab".to_vec(), b"b".to_vec(), b"c".to_vec(), b"d".to_vec()]);
    let mid = keys(collect(&*e, Table::Kv, Bound::Included(b"ab"), Bound::Excluded(b"c")));
    assert_eq!(mid, vec![b"ab".to_vec(), b"b".to_vec()]);
    let excl = keys(collect(&*e, Table::Kv, Bound::Excluded(b"ab"), Bound::Included(b"c")));
    assert_eq!(excl, vec![b"b".to_vec(), b"c".to_vec()]);
    assert!(collect(&*e, Table::Kv, Bound::Included(b"x"), Bound::Unbounded).is_empty());
    assert!(collect(&*e, Table::Kv, Bound::Included(b"c"), Bound::Excluded(b"a")).is_empty());
}

fn scan_stops_when_asked(make: Factory) {
    let e = make();
    let mut b = WriteBatch::new();
    for i in 0u8..10 {
        b.put(Table::Kv, vec![i], vec![i]);
    }
    e.write(b).unwrap();
    let mut n = 0;
    e.reader()
        .unwrap()
        .scan(Table::Kv, Bound::Unbounded, Bound::Unbounded, &mut |_, _| {
            n += 1;
            n < 3
        })
        .unwrap();
    assert_eq!(n, 3);
}

fn reader_is_a_snapshot(make: Factory) {
    let e = make();
    let mut b = WriteBatch::new();
    b.put(Table::Kv, b"k".to_vec(), b"old".to_vec());
    e.write(b).unwrap();
    let r = e.reader().unwrap();
    let mut b = WriteBatch::new();
    b.put(Table::Kv, b"k".to_vec(), b"new".to_vec());
    b.put(Table::Kv, b"k2".to_vec(), b"x".to_vec());
    e.write(b).unwrap();
    assert_eq!(r.get(Table::Kv, b"k").unwrap(), Some(b"old".to_vec()));
    assert_eq!(r.get(Table::Kv, b"k2").unwrap(), None);
    assert_eq!(e.get(Table::Kv, b"k").unwrap(), Some(b"new".to_vec()));
}

fn clear_empties_one_table(make: Factory) {
    let e = make();
    let mut b = WriteBatch::new();
    b.put(Table::Kv, b"a".to_vec(), b"1".to_vec());
    b.put(Table::Meta, b"m".to_vec(), b"1".to_vec());
    e.write(b).unwrap();
    let mut b = WriteBatch::new();
    b.clear(Table::Kv);
    b.put(Table::Kv, b"z".to_vec(), b"2".to_vec());
    e.write(b).unwrap();
    let kv = collect(&*e, Table::Kv, Bound::Unbounded, Bound::Unbounded);
    assert_eq!(kv, vec![(b"z".to_vec(), b"2".to_vec())]);
    assert_eq!(e.get(Table::Meta, b"m").unwrap(), Some(b"1".to_vec()));
}

fn binary_keys_and_empty_values(make: Factory) {
    let e = make();
    let mut b = WriteBatch::new();
    b.put(Table::Kv, vec![0u8, 255, 0], Vec::new());
    b.put(Table::Kv, vec![255u8; 300], vec![0u8; 70_000]);
    e.write(b).unwrap();
    assert_eq!(e.get(Table::Kv, &[0, 255, 0]).unwrap(), Some(Vec::new()));
    assert_eq!(e.get(Table::Kv, &[255u8; 300]).unwrap().unwrap().len(), 70_000);
    assert!(e.size_bytes() > 0);
}

/// The live byte count grows with puts, shrinks with overwrites, deletes and clears, and comes
/// back to where it started when everything written is gone.
fn live_bytes_follow_the_contents(make: Factory) {
    let e = make();
    let empty = e.live_bytes();
    let mut b = WriteBatch::new();
    for i in 0..100u32 {
        b.put(Table::Kv, i.to_be_bytes().to_vec(), vec![7u8; 1000]);
    }
    e.write(b).unwrap();
    let full = e.live_bytes();
    assert!(full >= empty + 100 * 1004, "100 records of 1004 bytes: {empty} -> {full}");
    let mut b = WriteBatch::new();
    for i in 0..100u32 {
        b.put(Table::Kv, i.to_be_bytes().to_vec(), vec![7u8; 10]);
    }
    e.write(b).unwrap();
    let small = e.live_bytes();
    assert!(small < full - 100 * 900, "overwrites with smaller values: {full} -> {small}");
    let mut b = WriteBatch::new();
    for i in 0..50u32 {
        b.delete(Table::Kv, i.to_be_bytes().to_vec());
    }
    b.delete(Table::Kv, b"never written".to_vec());
    e.write(b).unwrap();
    let half = e.live_bytes();
    assert!(half < small && half > empty, "deletes: {small} -> {half}");
    let mut b = WriteBatch::new();
    b.clear(Table::Kv);
    e.write(b).unwrap();
    assert_eq!(e.live_bytes(), empty, "cleared");
}

/// Defragment leaves every record readable and reports the sizes around it.
fn defragment_keeps_the_contents(make: Factory) {
    let e = make();
    let mut b = WriteBatch::new();
    for i in 0..200u32 {
        b.put(Table::Kv, i.to_be_bytes().to_vec(), vec![i as u8; 500]);
    }
    b.put(Table::Meta, b"m".to_vec(), b"1".to_vec());
    e.write(b).unwrap();
    let mut b = WriteBatch::new();
    for i in 0..150u32 {
        b.delete(Table::Kv, i.to_be_bytes().to_vec());
    }
    e.write(b).unwrap();
    let live = e.live_bytes();
    let (before, after) = e.defragment().unwrap();
    assert!(after <= before, "defragment grew the engine: {before} -> {after}");
    assert_eq!(e.live_bytes(), live);
    let kv = collect(&*e, Table::Kv, Bound::Unbounded, Bound::Unbounded);
    assert_eq!(kv.len(), 50);
    assert!(kv.iter().all(|(k, v)| v == &vec![u32::from_be_bytes(k[..].try_into().unwrap()) as u8; 500]));
    assert_eq!(e.get(Table::Meta, b"m").unwrap(), Some(b"1".to_vec()));
    // Writes go on afterwards.
    let mut b = WriteBatch::new();
    b.put(Table::Kv, b"after".to_vec(), b"x".to_vec());
    e.write(b).unwrap();
    assert_eq!(e.get(Table::Kv, b"after").unwrap(), Some(b"x".to_vec()));
}
