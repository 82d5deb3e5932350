//! Execution semantics that the differential suite against Redis cannot reach: other types
//! (WRONGTYPE), expired keys still in storage, expiry deletes racing writes, spans, paging,
//! corrupt records, and determinism.

use cairn_range::cmd::{DataCmd, ExpireCond, GetExExpiry, ReadCmd, SetCond, SetExpiry, TtlForm};
use cairn_range::exec::{self, ExecError, KvAccess, KvRead, SCAN_PAGE_ENTRIES};
use cairn_range::keys::{self, KeySpan};
use cairn_range::mem::MemKv;
use cairn_range::record::{Kind, Record};
use cairn_range::Reply;
use proptest::prelude::*;

const NOW: i64 = 1_700_000_000_000;

fn k(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn apply(kv: &mut MemKv, cmd: DataCmd, now: i64) -> Reply {
    exec::apply(&cmd, kv, now).expect("apply")
}

fn read(kv: &MemKv, cmd: ReadCmd, now: i64) -> Reply {
    exec::read(&cmd, kv, now).expect("read")
}

fn set(key: &str, value: &str, expiry: SetExpiry) -> DataCmd {
    DataCmd::Set { key: k(key), value: k(value), cond: SetCond::Always, get: false, expiry }
}

fn get(key: &str) -> ReadCmd {
    ReadCmd::Get { key: k(key) }
}

fn bulk(s: &str) -> Reply {
    Reply::bulk(s.as_bytes())
}

fn put_record(kv: &mut MemKv, key: &str, r: &Record) {
    kv.put(&keys::encode(key.as_bytes()), r.encode()).unwrap();
}

#[test]
fn other_types_answer_wrongtype() {
    let mut kv = MemKv::new();
    let list = Record { kind: Kind::List, value: vec![1, 2, 3], expire_at_ms: None, version: 1 };
    put_record(&mut kv, "l", &list);
    let wrong = Reply::err("WRONGTYPE Operation against a key holding the wrong kind of value");
    let writes = vec![
        DataCmd::Set { key: k("l"), value: k("v"), cond: SetCond::Always, get: true, expiry: SetExpiry::Clear },
        DataCmd::GetSet { key: k("l"), value: k("v") },
        DataCmd::GetDel { key: k("l") },
        DataCmd::GetEx { key: k("l"), expiry: GetExExpiry::Invalid("ERR x".into()) },
        DataCmd::Append { key: k("l"), value: k("v") },
        DataCmd::SetRange { key: k("l"), offset: 0, value: k("v") },
        DataCmd::IncrBy { key: k("l"), by: 1 },
        DataCmd::IncrByFloat { key: k("l"), by: k("x") },
    ];
    for w in writes {
        assert_eq!(apply(&mut kv, w.clone(), NOW), wrong, "{w:?}");
    }
    for r in [get("l"), ReadCmd::StrLen { key: k("l") }, ReadCmd::GetRange { key: k("l"), start: 0, end: -1 }] {
        assert_eq!(read(&kv, r.clone(), NOW), wrong, "{r:?}");
    }
    // Errors change nothing.
    assert_eq!(kv.get(&keys::encode(b"l")).unwrap(), Some(list.encode()));
    // Commands that do not care about the type.
    assert_eq!(read(&kv, ReadCmd::Type { key: k("l") }, NOW), Reply::Simple("list".into()));
    assert_eq!(read(&kv, ReadCmd::MGet { keys: vec![k("l")] }, NOW), Reply::Array(vec![Reply::Null]));
    assert_eq!(read(&kv, ReadCmd::Exists { keys: vec![k("l")] }, NOW), Reply::Int(1));
    // A plain SET replaces any type.
    assert_eq!(apply(&mut kv, set("l", "s", SetExpiry::Clear), NOW), Reply::ok());
    assert_eq!(read(&kv, get("l"), NOW), bulk("s"));
    let scan_lists =
        ReadCmd::Scan { span: KeySpan::redis(), after: None, count: 10, pattern: None, kind: Some(k("list")) };
    put_record(&mut kv, "l2", &list);
    assert_eq!(read(&kv, scan_lists, NOW), Reply::Array(vec![Reply::Null, Reply::Array(vec![bulk("l2")])]));
}

#[test]
fn expired_keys_are_absent_until_deleted() {
    let mut kv = MemKv::new();
    apply(&mut kv, set("e", "v", SetExpiry::At(NOW + 10)), NOW);
    assert_eq!(read(&kv, get("e"), NOW + 9), bulk("v"));
    let later = NOW + 10;
    assert_eq!(read(&kv, get("e"), later), Reply::Null);
    assert_eq!(read(&kv, ReadCmd::Exists { keys: vec![k("e")] }, later), Reply::Int(0));
    assert_eq!(
        read(&kv, ReadCmd::Ttl { key: k("e"), form: TtlForm { millis: true, absolute: false } }, later),
        Reply::Int(-2)
    );
    assert_eq!(read(&kv, ReadCmd::DbSize { span: KeySpan::redis() }, later), Reply::Int(0));
    // Still stored.
    assert_eq!(kv.len(), 1);
    // The expired value does not leak into writes: INCR starts from 0, without the TTL.
    assert_eq!(apply(&mut kv, DataCmd::IncrBy { key: k("e"), by: 5 }, later), Reply::Int(5));
    let r = Record::decode(&kv.get(&keys::encode(b"e")).unwrap().unwrap()).unwrap();
    assert_eq!(r.expire_at_ms, None);
    assert_eq!(r.version, later as u64);
    // DEL of an expired key removes it but does not count it.
    apply(&mut kv, set("d", "v", SetExpiry::At(NOW)), NOW - 1);
    assert_eq!(apply(&mut kv, DataCmd::Del { keys: vec![k("d")] }, NOW), Reply::Int(0));
    assert_eq!(kv.get(&keys::encode(b"d")).unwrap(), None);
}

#[test]
fn expire_delete_spares_a_rewritten_key() {
    let mut kv = MemKv::new();
    apply(&mut kv, set("x", "old", SetExpiry::At(NOW)), NOW - 100);
    // Not yet expired at the apply's time: kept.
    let del = DataCmd::ExpireDelete { key: k("x"), expire_at_ms: NOW };
    assert_eq!(apply(&mut kv, del.clone(), NOW - 1), Reply::Int(0));
    // The key was rewritten (new expiry) after the leader saw it expired: kept.
    apply(&mut kv, set("x", "new", SetExpiry::At(NOW + 1000)), NOW + 1);
    assert_eq!(apply(&mut kv, del.clone(), NOW + 2), Reply::Int(0));
    assert_eq!(read(&kv, get("x"), NOW + 2), bulk("new"));
    // Rewritten without expiry: kept.
    apply(&mut kv, set("x", "newer", SetExpiry::Clear), NOW + 3);
    assert_eq!(apply(&mut kv, del, NOW + 4), Reply::Int(0));
    // The expiry the leader saw, and expired: deleted.
    apply(&mut kv, set("y", "v", SetExpiry::At(NOW)), NOW - 5);
    let del_y = DataCmd::ExpireDelete { key: k("y"), expire_at_ms: NOW };
    assert_eq!(apply(&mut kv, del_y, NOW), Reply::Int(1));
    assert_eq!(kv.get(&keys::encode(b"y")).unwrap(), None);
}

#[test]
fn flush_and_counts_stay_inside_their_span() {
    let mut kv = MemKv::new();
    let names: Vec<String> = (0..3000).map(|i| format!("key{i}")).collect();
    for n in &names {
        apply(&mut kv, set(n, "v", SetExpiry::Clear), NOW);
    }
    assert!(names.len() > 2 * SCAN_PAGE_ENTRIES);
    let low = KeySpan::slots(0, 8191);
    let high = KeySpan::slots(8192, 16383);
    let in_low = names.iter().filter(|n| keys::slot(n.as_bytes()) < 8192).count() as i64;
    assert_eq!(read(&kv, ReadCmd::DbSize { span: low.clone() }, NOW), Reply::Int(in_low));
    assert_eq!(read(&kv, ReadCmd::DbSize { span: KeySpan::redis() }, NOW), Reply::Int(3000));
    match read(&kv, ReadCmd::Keys { span: high.clone(), pattern: k("*") }, NOW) {
        Reply::Array(v) => assert_eq!(v.len() as i64, 3000 - in_low),
        other => panic!("{other:?}"),
    }
    assert_eq!(apply(&mut kv, DataCmd::Flush { span: low }, NOW), Reply::ok());
    assert_eq!(read(&kv, ReadCmd::DbSize { span: KeySpan::redis() }, NOW), Reply::Int(3000 - in_low));
    assert_eq!(read(&kv, ReadCmd::DbSize { span: high }, NOW), Reply::Int(3000 - in_low));
}

/// Follow SCAN pages to the end.
fn scan_all(kv: &MemKv, count: usize, pattern: Option<&str>, now: i64) -> Vec<Vec<u8>> {
    let mut after = None;
    let mut out = Vec::new();
    for _ in 0..10_000 {
        let cmd =
            ReadCmd::Scan { span: KeySpan::redis(), after: after.clone(), count, pattern: pattern.map(k), kind: None };
        let Reply::Array(parts) = read(kv, cmd, now) else { panic!("scan reply") };
        let Reply::Array(keys) = &parts[1] else { panic!("keys") };
        out.extend(keys.iter().map(|r| match r {
            Reply::Bulk(b) => b.clone(),
            other => panic!("{other:?}"),
        }));
        match &parts[0] {
            Reply::Bulk(next) => after = Some(next.clone()),
            Reply::Null => return out,
            other => panic!("{other:?}"),
        }
    }
    panic!("scan did not finish");
}

#[test]
fn scan_pages_visit_every_live_key_once() {
    let mut kv = MemKv::new();
    for i in 0..57 {
        let expiry = if i % 5 == 0 { SetExpiry::At(NOW) } else { SetExpiry::Clear };
        apply(&mut kv, set(&format!("s{i}"), "v", expiry), NOW - 1);
    }
    for count in [1, 3, 10, 57, 1000] {
        let mut got = scan_all(&kv, count, None, NOW);
        let n = got.len();
        got.sort();
        got.dedup();
        assert_eq!(got.len(), n, "a key came twice with COUNT {count}");
        let mut want: Vec<Vec<u8>> = (0..57).filter(|i| i % 5 != 0).map(|i| format!("s{i}").into_bytes()).collect();
        want.sort();
        assert_eq!(got, want, "COUNT {count}");
    }
    let got = scan_all(&kv, 4, Some("s1?"), NOW);
    assert_eq!(got.len(), 8, "{got:?}"); // s11..s19 without s15
}

#[test]
fn corrupt_records_are_errors() {
    let mut kv = MemKv::new();
    kv.put(&keys::encode(b"bad"), vec![9, 9, 9]).unwrap();
    assert!(matches!(exec::read(&get("bad"), &kv, NOW), Err(ExecError::Corruption { .. })));
    assert!(matches!(
        exec::apply(&DataCmd::IncrBy { key: k("bad"), by: 1 }, &mut kv, NOW),
        Err(ExecError::Corruption { .. })
    ));
    assert!(matches!(
        exec::read(&ReadCmd::DbSize { span: KeySpan::redis() }, &kv, NOW),
        Err(ExecError::Corruption { .. })
    ));
    // A stored key whose slot does not match its bytes is corruption too.
    kv.put(b"r\x00\x01foo", Record::string(vec![], None, 0).encode()).unwrap();
    kv.delete(&keys::encode(b"bad")).unwrap();
    assert!(matches!(
        exec::read(&ReadCmd::Keys { span: KeySpan::redis(), pattern: k("*") }, &kv, NOW),
        Err(ExecError::Corruption { .. })
    ));
}

#[test]
fn long_keys_are_refused_before_any_write() {
    let mut kv = MemKv::new();
    let long = vec![b'k'; keys::KEY_BYTES_MAX + 1];
    let cmd = DataCmd::MSet { pairs: vec![(k("short"), k("v")), (long.clone(), k("v"))] };
    assert_eq!(apply(&mut kv, cmd, NOW), Reply::err(format!("ERR key is longer than {} bytes", keys::KEY_BYTES_MAX)));
    assert!(kv.is_empty());
    let at_limit = vec![b'k'; keys::KEY_BYTES_MAX];
    let cmd = DataCmd::SetNx { key: at_limit, value: k("v") };
    assert_eq!(apply(&mut kv, cmd, NOW), Reply::Int(1));
}

#[test]
fn expire_conditions() {
    let mut kv = MemKv::new();
    let exp = |at, nx, xx, gt, lt| DataCmd::Expire { key: k("t"), at_ms: at, cond: ExpireCond { nx, xx, gt, lt } };
    apply(&mut kv, set("t", "v", SetExpiry::Clear), NOW);
    // XX LT on a key without expiry: XX fails although LT alone would pass.
    assert_eq!(apply(&mut kv, exp(NOW + 10, false, true, false, true), NOW), Reply::Int(0));
    assert_eq!(apply(&mut kv, exp(NOW + 10, false, false, false, true), NOW), Reply::Int(1));
    assert_eq!(apply(&mut kv, exp(NOW + 5, false, true, false, true), NOW), Reply::Int(1));
    assert_eq!(apply(&mut kv, exp(NOW + 5, false, true, true, false), NOW), Reply::Int(0));
    assert_eq!(apply(&mut kv, exp(NOW + 6, false, true, true, false), NOW), Reply::Int(1));
    // A time in the past deletes, when the condition holds.
    assert_eq!(apply(&mut kv, exp(NOW - 1, true, false, false, false), NOW), Reply::Int(0));
    assert_eq!(apply(&mut kv, exp(NOW, false, false, false, false), NOW), Reply::Int(1));
    assert_eq!(kv.len(), 0);
}

fn arb_cmd() -> impl Strategy<Value = DataCmd> {
    let key = prop::sample::select(vec!["a", "b", "c", "{a}d"]).prop_map(k);
    let val = prop::collection::vec(prop::sample::select(vec![b'1', b'2', b'x', b'-']), 0..4);
    let at = (NOW - 5)..(NOW + 50);
    prop_oneof![
        (key.clone(), val.clone(), at.clone()).prop_map(|(key, value, at)| DataCmd::Set {
            key,
            value,
            cond: SetCond::Always,
            get: true,
            expiry: SetExpiry::At(at)
        }),
        (key.clone(), val.clone()).prop_map(|(key, value)| DataCmd::Append { key, value }),
        (key.clone(), -3i64..3).prop_map(|(key, by)| DataCmd::IncrBy { key, by }),
        (key.clone(), at).prop_map(|(key, at_ms)| DataCmd::Expire { key, at_ms, cond: ExpireCond::ALWAYS }),
        (key.clone(), key.clone()).prop_map(|(from, to)| DataCmd::Rename { from, to }),
        key.clone().prop_map(|key| DataCmd::Persist { key }),
        prop::collection::vec(key, 1..3).prop_map(|keys| DataCmd::Del { keys }),
    ]
}

proptest! {
    /// Two replicas applying the same log at the same stamps end byte-identical, with the
    /// same replies, and error replies change nothing.
    #[test]
    fn apply_is_deterministic(log in prop::collection::vec((arb_cmd(), 0i64..20), 1..40)) {
        let (mut a, mut b) = (MemKv::new(), MemKv::new());
        let mut now = NOW;
        for (cmd, step) in log {
            now += step;
            let before = a.scan(b"", b"\xff", usize::MAX).unwrap();
            let ra = exec::apply(&cmd, &mut a, now).unwrap();
            let rb = exec::apply(&cmd, &mut b, now).unwrap();
            prop_assert_eq!(&ra, &rb);
            if ra.is_error() {
                prop_assert_eq!(before, a.scan(b"", b"\xff", usize::MAX).unwrap());
            }
        }
        prop_assert_eq!(a.scan(b"", b"\xff", usize::MAX).unwrap(), b.scan(b"", b"\xff", usize::MAX).unwrap());
    }

    /// Random stored bytes never make apply or read panic.
    #[test]
    fn random_stored_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..40), cmd in arb_cmd()) {
        let mut kv = MemKv::new();
        for key in ["a", "b", "c", "{a}d"] {
            kv.put(&keys::encode(key.as_bytes()), bytes.clone()).unwrap();
        }
        let _ = exec::apply(&cmd, &mut kv, NOW);
        let _ = exec::read(&ReadCmd::DbSize { span: KeySpan::redis() }, &kv, NOW);
        let _ = exec::read(&get("a"), &kv, NOW);
    }

    /// Random bytes never make the command decoder panic.
    #[test]
    fn random_command_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..80)) {
        let _ = postcard::from_bytes::<DataCmd>(&bytes);
        let _ = postcard::from_bytes::<ReadCmd>(&bytes);
    }
}

/// Scans (SCAN, KEYS, DBSIZE, FLUSHALL) read records' headers only: the map hands them at most
/// `HEADER_BYTES_MAX` bytes of each value, and expiry and TYPE filters still hold. (A scan
/// once copied every value it passed: `SCAN 0 COUNT 100000` over 1 MiB values was 100 GiB.)
#[test]
fn scans_read_only_the_headers_of_records() {
    use cairn_range::record::HEADER_BYTES_MAX;
    let mut kv = MemKv::new();
    put_record(&mut kv, "big", &Record::string(vec![7; 1 << 20], None, 1));
    put_record(&mut kv, "gone", &Record::string(vec![7; 1 << 20], Some(NOW - 1), 1));
    put_record(&mut kv, "later", &Record::string(vec![7; 1 << 20], Some(NOW + 60_000), 1));
    put_record(&mut kv, "list", &Record { kind: Kind::List, value: vec![1; 1000], expire_at_ms: None, version: 1 });
    let page = kv.scan(&KeySpan::redis().start, &KeySpan::redis().end, 100).unwrap();
    assert_eq!(page.len(), 4);
    assert!(page.iter().all(|(_, v)| v.len() <= HEADER_BYTES_MAX), "a scan copied a value");
    assert_eq!(read(&kv, ReadCmd::DbSize { span: KeySpan::redis() }, NOW), Reply::Int(3));
    let mut all = scan_all(&kv, 10, None, NOW);
    all.sort();
    assert_eq!(all, vec![k("big"), k("later"), k("list")]);
    let lists = ReadCmd::Scan { span: KeySpan::redis(), after: None, count: 10, pattern: None, kind: Some(k("list")) };
    assert_eq!(read(&kv, lists, NOW), Reply::Array(vec![Reply::Null, Reply::Array(vec![bulk("list")])]));
    let Reply::Array(mut keys) = read(&kv, ReadCmd::Keys { span: KeySpan::redis(), pattern: k("*") }, NOW) else {
        panic!("keys")
    };
    keys.sort_by_key(|r| match r {
        Reply::Bulk(b) => b.clone(),
        other => panic!("{other:?}"),
    });
    assert_eq!(keys, vec![bulk("big"), bulk("later"), bulk("list")]);
    // A record cut inside its header is still corruption.
    kv.put(&keys::encode(b"cut"), Record::string(vec![], Some(NOW), 1).encode()[..16].to_vec()).unwrap();
    assert!(matches!(
        exec::read(&ReadCmd::DbSize { span: KeySpan::redis() }, &kv, NOW),
        Err(ExecError::Corruption { .. })
    ));
}

/// One MGET returns at most `MGET_REPLY_BYTES_MAX` bytes of values: a key named many times
/// over once made a node build a reply of any size (terabytes from a 70 kB command).
#[test]
fn mget_refuses_a_reply_past_its_bound() {
    let mut kv = MemKv::new();
    put_record(&mut kv, "big", &Record::string(vec![7; 4 << 20], None, 1));
    // (Compared without printing: a failure would print the values.)
    let small = read(&kv, ReadCmd::MGet { keys: vec![k("big"), k("none")] }, NOW);
    assert!(small == Reply::Array(vec![Reply::Bulk(vec![7; 4 << 20]), Reply::Null]), "MGET of two keys");
    let many = (exec::MGET_REPLY_BYTES_MAX >> 22) + 1;
    let too_big = read(&kv, ReadCmd::MGet { keys: vec![k("big"); many] }, NOW);
    assert!(too_big == exec::mget_too_big(), "MGET of {many} x 4 MiB was not refused");
}

/// A value past the record's bound that reaches a range's log (the front end refuses it, but a
/// node of another version or setting might not) is an error reply, not a panic in every
/// replica that applies it; nothing is written.
#[test]
fn values_past_the_bound_are_refused_before_any_write() {
    // (Zeroed pages the kernel hands out lazily, one command's at a time.)
    let huge = || vec![0u8; cairn_range::record::VALUE_BYTES_MAX + 1];
    let cmds: Vec<Box<dyn Fn() -> DataCmd>> = vec![
        Box::new(|| DataCmd::Set {
            key: k("a"),
            value: huge(),
            cond: SetCond::Always,
            get: false,
            expiry: SetExpiry::Clear,
        }),
        Box::new(|| DataCmd::SetNx { key: k("a"), value: huge() }),
        Box::new(|| DataCmd::GetSet { key: k("a"), value: huge() }),
        Box::new(|| DataCmd::Append { key: k("a"), value: huge() }),
        Box::new(|| DataCmd::SetRange { key: k("a"), offset: 0, value: huge() }),
        Box::new(|| DataCmd::MSet { pairs: vec![(k("b"), k("v")), (k("a"), huge())] }),
        Box::new(|| DataCmd::MSetNx { pairs: vec![(k("b"), k("v")), (k("a"), huge())] }),
    ];
    let too_big = Reply::err("ERR string exceeds maximum allowed size (proto-max-bulk-len)");
    for (i, cmd) in cmds.iter().enumerate() {
        let mut kv = MemKv::new();
        // (Compared without printing the command: a failure would print 512 MiB.)
        let r = exec::apply(&cmd(), &mut kv, NOW);
        assert!(matches!(&r, Ok(reply) if *reply == too_big), "command {i}: {:?}", r.map(|_| ()));
        assert!(kv.is_empty(), "command {i} wrote");
    }
}
