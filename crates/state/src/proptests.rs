//! Property tests: random and damaged bytes into every decoder of this crate that reads data
//! from outside the process — stored records (the store's load), snapshot and backup files,
//! the command encoding of the log, the auth store, revision keys, and client requests (the
//! gRPC and gateway bodies, then [`crate::validate`]). None may panic; damaged files must be
//! refused, and a refused import must leave the engine as it was.

use std::io::Cursor;
use std::sync::Arc;

use cairn_proto::etcdserverpb as pb;
use cairn_proto::mvccpb::KeyValue;
use cairn_storage::{Engine, MemEngine, Table, WriteBatch};
use cairn_types::Limits;
use proptest::prelude::*;
use prost::Message;

use crate::auth::AuthState;
use crate::backup;
use crate::command::{Command, Op, Response};
use crate::rev::Rev;
use crate::snapshot::{export, import, verify, SnapshotError};
use crate::store::{Store, META_AUTH, META_COMPACT, META_LEASE_PREFIX, META_REV};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

/// Small revision numbers, their edges, and anything.
fn revision() -> impl Strategy<Value = i64> {
    prop_oneof![-2i64..12, Just(i64::MIN), Just(i64::MAX), Just(i64::MAX - 1), any::<i64>()]
}

/// A `kv` record: `[flag][KeyValue]`, well formed or not.
fn kv_record() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    let key = prop_oneof![(revision(), revision()).prop_map(|(m, s)| Rev::new(m, s).to_key().to_vec()), bytes(20)];
    let kv =
        (prop::sample::select(vec![b"a".to_vec(), b"b".to_vec(), vec![]]), revision(), revision(), revision(), 0i64..3)
            .prop_map(|(key, create_revision, mod_revision, version, lease)| KeyValue {
                key,
                create_revision,
                mod_revision,
                version,
                value: b"v".to_vec(),
                lease,
            });
    let value = prop_oneof![(0u8..3, kv).prop_map(|(flag, kv)| [vec![flag], kv.encode_to_vec()].concat()), bytes(24),];
    (key, value)
}

/// A `meta` record the store reads at load.
fn meta_record() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    let i64_value = prop_oneof![revision().prop_map(|r| r.to_be_bytes().to_vec()), bytes(10)];
    prop_oneof![
        i64_value.clone().prop_map(|v| (META_REV.to_vec(), v)),
        i64_value.clone().prop_map(|v| (META_COMPACT.to_vec(), v)),
        (bytes(10), bytes(16)).prop_map(|(id, v)| ([&b"member/"[..], &id].concat(), v)),
        bytes(14).prop_map(|k| ([&b"alarm/"[..], &k].concat(), vec![])),
        (0i64..3, i64_value).prop_map(|(id, ttl)| ([META_LEASE_PREFIX, &id.to_be_bytes()].concat(), ttl)),
        prop_oneof![bytes(32), Just(AuthState::default().encode())].prop_map(|v| (META_AUTH.to_vec(), v)),
    ]
}

/// The same bytes with one of: a byte flipped, cut short, garbage appended.
fn mutate(good: &[u8], how: u8, at: usize, garbage: &[u8]) -> Vec<u8> {
    let mut b = good.to_vec();
    match how % 3 {
        0 => {
            let len = b.len();
            b[at % len] ^= 1 + (at as u8 % 255);
        }
        1 => b.truncate(at % good.len()),
        _ => b.extend_from_slice(if garbage.is_empty() { &[0] } else { garbage }),
    }
    b
}

/// A store with some history, leases, an alarm and a member, for snapshots and backups.
fn store_with_history() -> Store {
    let s = Store::open(Arc::new(MemEngine::new())).unwrap();
    let mut b = s.begin(0).unwrap();
    b.apply(&Command::new(0, Op::LeaseGrant(pb::LeaseGrantRequest { ttl: 60, id: 7 }))).unwrap();
    for i in 0..20 {
        let key = format!("k{}", i % 5).into_bytes();
        let lease = if i == 3 { 7 } else { 0 };
        b.apply(&Command::new(0, Op::Put(pb::PutRequest { key, value: vec![b'v'; i], lease, ..Default::default() })))
            .unwrap();
    }
    b.apply(&Command::new(0, Op::DeleteRange(pb::DeleteRangeRequest { key: b"k1".to_vec(), ..Default::default() })))
        .unwrap();
    b.commit().unwrap();
    s
}

fn snapshot_file() -> &'static Vec<u8> {
    static FILE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let s = store_with_history();
        s.flush().unwrap();
        let mut file = Vec::new();
        export(&*s.engine().reader().unwrap(), b"header", &mut file).unwrap();
        file
    })
}

fn backup_file() -> &'static Vec<u8> {
    static FILE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    FILE.get_or_init(|| backup::write_backup(&store_with_history(), 1, 2, 3, Vec::new()).unwrap().0)
}

/// Engine records: (table, key, value).
type Records = Vec<(Table, Vec<u8>, Vec<u8>)>;

/// Everything an engine holds, for "nothing changed".
fn contents(e: &dyn Engine) -> Records {
    let r = e.reader().unwrap();
    let mut out = Vec::new();
    for t in Table::ALL {
        r.scan(t, std::ops::Bound::Unbounded, std::ops::Bound::Unbounded, &mut |k, v| {
            out.push((t, k.to_vec(), v.to_vec()));
            true
        })
        .unwrap();
    }
    out
}

fn engine_with_one_record() -> MemEngine {
    let e = MemEngine::new();
    let mut b = WriteBatch::new();
    b.put(Table::Kv, b"before".to_vec(), b"import".to_vec());
    e.write(b).unwrap();
    e
}

/// Imports `file` into an engine holding one record: either the import succeeds, or it fails
/// and the record is still there, alone.
fn import_all_or_nothing(file: &[u8]) -> Result<Vec<u8>, SnapshotError> {
    let e = engine_with_one_record();
    let before = contents(&e);
    let r = import(&e, Cursor::new(file));
    if r.is_err() {
        assert_eq!(contents(&e), before, "a refused import changed the engine");
    }
    r
}

/// Opens a store on whatever the engine holds, then reads everything and applies a write.
fn open_and_use(e: MemEngine) {
    let Ok(s) = Store::open(Arc::new(e)) else { return };
    let all = pb::RangeRequest { key: vec![0], range_end: vec![0], ..Default::default() };
    let _ = s.range(&all);
    let _ = s.history(&[0], &[0], 1, 1 << 20);
    let batch = s.begin(0);
    if let Ok(mut b) = batch {
        for key in [&b"a"[..], b"b"] {
            let _ = b.apply(&Command::new(0, Op::Put(pb::PutRequest { key: key.to_vec(), ..Default::default() })));
        }
        let _ = b.commit();
    }
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn revision_keys_decode_or_refuse(k in bytes(20)) {
        if let Some(rev) = Rev::from_key(&k) {
            prop_assert_eq!(rev.to_key().to_vec(), k);
        }
    }

    /// Log entries and forwarded proposals: random bytes, and valid encodings damaged.
    #[test]
    fn commands_decode_or_refuse(b in bytes(256), how in any::<u8>(), at in any::<usize>(), garbage in bytes(8)) {
        let _ = postcard::from_bytes::<Command>(&b);
        let _ = postcard::from_bytes::<Op>(&b);
        let _ = postcard::from_bytes::<Response>(&b);
        let good = postcard::to_allocvec(&Command::new(
            9,
            Op::Batch(vec![
                Op::Put(pb::PutRequest { key: b"k".to_vec(), value: b"v".to_vec(), ..Default::default() }),
                Op::Origin {
                    member: 1,
                    id: 2,
                    op: Box::new(Op::Guarded { auth_revision: 3, user: "u".into(), op: Box::new(Op::Compact(Default::default())) }),
                },
            ]),
        ))
        .unwrap();
        let _ = postcard::from_bytes::<Command>(&mutate(&good, how, at, &garbage));
    }

    #[test]
    fn auth_records_decode_or_refuse(b in bytes(128)) {
        if let Ok(a) = AuthState::decode(&b) {
            let _ = a.encode();
        }
    }

    /// A store opened on arbitrary records: it loads or reports corruption, and what it loads
    /// can be read and written without a panic.
    #[test]
    fn a_store_loads_any_records_or_refuses(
        kv in prop::collection::vec(kv_record(), 0..8),
        meta in prop::collection::vec(meta_record(), 0..6),
    ) {
        let e = MemEngine::new();
        let mut b = WriteBatch::new();
        for (k, v) in kv {
            b.put(Table::Kv, k, v);
        }
        for (k, v) in meta {
            b.put(Table::Meta, k, v);
        }
        e.write(b).unwrap();
        open_and_use(e);
    }

    #[test]
    fn random_snapshot_files_are_refused(b in bytes(200), magic in any::<bool>()) {
        let b = if magic { [&b"CAIRNSNP\x01\0\0\0"[..], &b].concat() } else { b };
        prop_assert!(verify(Cursor::new(&b)).is_err());
        prop_assert!(import_all_or_nothing(&b).is_err());
    }

    /// A damaged snapshot is never accepted (the CRC32C over the file catches a flipped byte
    /// always, a cut or appended bytes but for a 2^-32 chance), and nothing is imported.
    #[test]
    fn damaged_snapshot_files_are_refused(how in any::<u8>(), at in any::<usize>(), garbage in bytes(16)) {
        let bad = mutate(snapshot_file(), how, at, &garbage);
        prop_assert!(verify(Cursor::new(&bad)).is_err());
        prop_assert!(import_all_or_nothing(&bad).is_err());
    }

    /// Snapshot files with a valid checksum over arbitrary records (a writer bug, or damage
    /// before the checksum was taken): refused before anything is written, or imported whole.
    /// The store then opens on them or reports corruption.
    #[test]
    fn checksummed_snapshots_with_any_records_import_whole_or_not_at_all(
        records in prop::collection::vec((0u8..3, bytes(20), bytes(20)), 0..6),
        tail in bytes(12),
        end in any::<bool>(),
    ) {
        let mut body = b"CAIRNSNP\x01\0\0\0".to_vec();
        body.extend_from_slice(&0u32.to_le_bytes());
        for (table, k, v) in &records {
            body.push(*table);
            body.extend_from_slice(&(k.len() as u32).to_le_bytes());
            body.extend_from_slice(k);
            body.extend_from_slice(&(v.len() as u32).to_le_bytes());
            body.extend_from_slice(v);
        }
        if end {
            body.push(0xFF);
        }
        body.extend_from_slice(&tail);
        let crc = crc32c::crc32c(&body);
        body.extend_from_slice(&crc.to_le_bytes());
        let e = engine_with_one_record();
        if import(&e, Cursor::new(&body)).is_ok() {
            open_and_use(e);
        }
    }

    #[test]
    fn damaged_backups_are_refused(how in any::<u8>(), at in any::<usize>(), garbage in bytes(16), random in bytes(600)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.db");
        for bad in [mutate(backup_file(), how, at, &garbage), random] {
            std::fs::write(&path, &bad).unwrap();
            prop_assert!(backup::status(&path).is_err());
            let e = MemEngine::new();
            prop_assert!(backup::restore(&path, &e).is_err());
            prop_assert!(contents(&e).is_empty(), "a refused restore wrote to the engine");
        }
    }

    /// gRPC bodies: random protobuf into etcd's request types, then the edge checks.
    #[test]
    fn grpc_bodies_decode_and_validate(b in bytes(256), txn_ops_max in 0usize..8, key_bytes_max in 0usize..8) {
        let limits = Limits { txn_ops_max, key_bytes_max, ..Limits::default() };
        if let Ok(r) = pb::RangeRequest::decode(&b[..]) {
            let _ = crate::validate::range(&r, &limits);
        }
        if let Ok(r) = pb::PutRequest::decode(&b[..]) {
            let _ = crate::validate::put(&r, &limits);
        }
        if let Ok(r) = pb::DeleteRangeRequest::decode(&b[..]) {
            let _ = crate::validate::delete_range(&r, &limits);
        }
        if let Ok(r) = pb::TxnRequest::decode(&b[..]) {
            let _ = crate::validate::txn(&r, &limits);
        }
        let _ = pb::CompactionRequest::decode(&b[..]);
        let _ = pb::LeaseGrantRequest::decode(&b[..]);
        let _ = pb::AuthenticateRequest::decode(&b[..]);
        let _ = pb::WatchRequest::decode(&b[..]);
    }

    /// Transactions of any shape (nested, overlapping deletes, empty ops) through the checks.
    #[test]
    fn any_txn_validates_or_is_refused(t in txn(3), txn_ops_max in 0usize..10) {
        let limits = Limits { txn_ops_max, key_bytes_max: 4, ..Limits::default() };
        let _ = crate::validate::txn(&t, &limits);
        // And through the wire: the same request decoded back is checked the same way.
        let back = pb::TxnRequest::decode(&t.encode_to_vec()[..]).unwrap();
        prop_assert_eq!(crate::validate::txn(&back, &limits).is_ok(), crate::validate::txn(&t, &limits).is_ok());
    }

    /// Gateway bodies: random JSON-ish text into the protobuf JSON mapping the gateway uses.
    #[test]
    fn gateway_bodies_decode_and_validate(s in json_ish(), b in bytes(64)) {
        let limits = Limits::default();
        for body in [s.as_bytes(), &b[..]] {
            if let Ok(r) = serde_json::from_slice::<pb::PutRequest>(body) {
                let _ = crate::validate::put(&r, &limits);
            }
            if let Ok(r) = serde_json::from_slice::<pb::RangeRequest>(body) {
                let _ = crate::validate::range(&r, &limits);
            }
            if let Ok(r) = serde_json::from_slice::<pb::TxnRequest>(body) {
                let _ = crate::validate::txn(&r, &limits);
            }
            let _ = serde_json::from_slice::<pb::DeleteRangeRequest>(body);
            let _ = serde_json::from_slice::<pb::LeaseGrantRequest>(body);
        }
    }
}

/// Text made of JSON's punctuation, digits, some letters and field names the bodies use.
fn json_ish() -> impl Strategy<Value = String> {
    let piece = prop::sample::select(vec![
        "{",
        "}",
        "[",
        "]",
        "\"",
        ":",
        ",",
        " ",
        "0",
        "1",
        "-",
        "9",
        "e",
        "a",
        "null",
        "true",
        "\"key\"",
        "\"value\"",
        "\"success\"",
        "\"requestPut\"",
        "\"compare\"",
        "\"rangeEnd\"",
        "\"sortOrder\"",
        "\"lease\"",
        "\"YQ==\"",
        "\"AA\"",
        "\"99999999999999999999\"",
    ]);
    prop::collection::vec(piece, 0..40).prop_map(|p| p.concat())
}

fn small_key() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(vec![0u8, b'a', b'b', b'c']), 0..6)
}

fn request_op(depth: u32) -> BoxedStrategy<pb::RequestOp> {
    use pb::request_op::Request;
    let leaf = prop_oneof![
        Just(None),
        (small_key(), small_key(), any::<i32>(), any::<i32>()).prop_map(|(key, range_end, sort_order, sort_target)| {
            Some(Request::RequestRange(pb::RangeRequest {
                key,
                range_end,
                sort_order,
                sort_target,
                ..Default::default()
            }))
        }),
        (small_key(), bytes(2), any::<bool>(), any::<bool>(), 0i64..2).prop_map(
            |(key, value, ignore_value, ignore_lease, lease)| Some(Request::RequestPut(pb::PutRequest {
                key,
                value,
                ignore_value,
                ignore_lease,
                lease,
                ..Default::default()
            }))
        ),
        (small_key(), small_key()).prop_map(|(key, range_end)| Some(Request::RequestDeleteRange(
            pb::DeleteRangeRequest { key, range_end, ..Default::default() }
        ))),
    ];
    let op = if depth == 0 {
        leaf.boxed()
    } else {
        prop_oneof![3 => leaf, 1 => txn(depth - 1).prop_map(|t| Some(Request::RequestTxn(t)))].boxed()
    };
    op.prop_map(|request| pb::RequestOp { request }).boxed()
}

fn txn(depth: u32) -> BoxedStrategy<pb::TxnRequest> {
    (
        prop::collection::vec(small_key().prop_map(|key| pb::Compare { key, ..Default::default() }), 0..3),
        prop::collection::vec(request_op(depth), 0..4),
        prop::collection::vec(request_op(depth), 0..4),
    )
        .prop_map(|(compare, success, failure)| pb::TxnRequest { compare, success, failure })
        .boxed()
}

/// Ops nested far deeper than any leader writes: refused, not a stack overflow.
#[test]
fn deeply_nested_ops_are_refused() {
    // `Op::Batch` is variant 8: [8, 1] opens a batch of one op; 100,000 of them nest that deep.
    let mut b = vec![0u8];
    for _ in 0..100_000 {
        b.extend_from_slice(&[8, 1]);
    }
    b.push(3);
    b.push(0);
    assert!(postcard::from_bytes::<Command>(&b).is_err());
    // The limit is where it says.
    let nest = |depth: usize| {
        let mut op = Op::Compact(Default::default());
        for _ in 0..depth {
            op = Op::Batch(vec![op]);
        }
        postcard::to_allocvec(&Command::new(1, op)).unwrap()
    };
    assert!(postcard::from_bytes::<Command>(&nest(crate::command::NESTING_MAX)).is_ok());
    assert!(postcard::from_bytes::<Command>(&nest(crate::command::NESTING_MAX + 1)).is_err());
    // What a leader writes (a batch of forwarded, checked requests) still decodes.
    let cmd = Command::new(
        1,
        Op::Batch(vec![Op::Origin {
            member: 1,
            id: 2,
            op: Box::new(Op::Guarded {
                auth_revision: 0,
                user: String::new(),
                op: Box::new(Op::Compact(Default::default())),
            }),
        }]),
    );
    assert_eq!(postcard::from_bytes::<Command>(&postcard::to_allocvec(&cmd).unwrap()).unwrap(), cmd);
}

/// The undamaged files pass (the properties above would hold vacuously otherwise).
#[test]
fn the_undamaged_files_are_accepted() {
    assert_eq!(verify(Cursor::new(snapshot_file())).unwrap(), b"header");
    let e = MemEngine::new();
    import(&e, Cursor::new(snapshot_file())).unwrap();
    assert_eq!(Store::open(Arc::new(e)).unwrap().current_revision(), 22);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.db");
    std::fs::write(&path, backup_file()).unwrap();
    assert_eq!(backup::status(&path).unwrap().revision, 22);
}

/// Stored state that used to panic at load (`LocalRevisions::new` asserted, the key index
/// asserted revision order) is now reported as corruption naming the key.
#[test]
fn bad_stored_revisions_are_corruption() {
    let put = |rev: Rev, version: i64| {
        let kv =
            KeyValue { key: b"a".to_vec(), create_revision: 2, mod_revision: rev.main, version, ..Default::default() };
        (rev.to_key().to_vec(), [vec![0], kv.encode_to_vec()].concat())
    };
    let cases: Vec<(&str, Records)> = vec![
        ("store/rev", vec![(Table::Meta, META_REV.to_vec(), 0i64.to_be_bytes().to_vec())]),
        ("store/rev", vec![(Table::Meta, META_REV.to_vec(), i64::MAX.to_be_bytes().to_vec())]),
        ("store/compact_rev", vec![(Table::Meta, META_COMPACT.to_vec(), 9i64.to_be_bytes().to_vec())]),
        ("bad revision key", {
            let (k2, v2) = put(Rev::new(2, 0), 1);
            let (k3, v3) = put(Rev::new(-3, 0), 2);
            vec![
                (Table::Meta, META_REV.to_vec(), 5i64.to_be_bytes().to_vec()),
                (Table::Kv, k2, v2),
                (Table::Kv, k3, v3),
            ]
        }),
        ("do not fit", {
            let (k, v) = put(Rev::new(2, 0), i64::MAX);
            vec![(Table::Meta, META_REV.to_vec(), 5i64.to_be_bytes().to_vec()), (Table::Kv, k, v)]
        }),
    ];
    for (want, records) in cases {
        let e = MemEngine::new();
        let mut b = WriteBatch::new();
        for (t, k, v) in records {
            b.put(t, k, v);
        }
        e.write(b).unwrap();
        let err = Store::open(Arc::new(e)).map(|_| ()).unwrap_err();
        assert!(matches!(err, crate::StoreError::Corrupt(_)), "{err}");
        assert!(err.to_string().contains(want), "{want}: {err}");
    }
}
