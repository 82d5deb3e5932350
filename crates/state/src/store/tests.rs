//! MVCC semantics, checked against etcd's documented behaviour.

use super::*;
use crate::command::{Command, Op, Response};
use crate::rev::Rev;
use crate::watch::HistoryError;
use cairn_proto::mvccpb::KeyValue;
use cairn_storage::{MemEngine, Reader, Table, WriteBatch, WriteOp};
use pb::compare::{CompareResult, CompareTarget, TargetUnion};
use pb::request_op::Request;
use pb::response_op::Response as R;

fn store() -> Store {
    Store::open(Arc::new(MemEngine::new())).unwrap()
}

fn apply(s: &Store, op: Op) -> Response {
    let mut b = s.begin(0).unwrap();
    let r = b.apply(&Command::new(0, op)).unwrap();
    b.commit().unwrap();
    // No compaction thread runs here: carry out a compaction at once.
    s.finish_compaction().unwrap();
    r
}

fn put(s: &Store, k: &str, v: &str) -> pb::PutResponse {
    match apply(s, Op::Put(pb::PutRequest { key: k.into(), value: v.into(), prev_kv: true, ..Default::default() })) {
        Response::Put(p) => p,
        other => panic!("{other:?}"),
    }
}

fn del(s: &Store, k: &str, end: &str) -> pb::DeleteRangeResponse {
    match apply(s, Op::DeleteRange(pb::DeleteRangeRequest { key: k.into(), range_end: end.into(), prev_kv: true })) {
        Response::DeleteRange(d) => d,
        other => panic!("{other:?}"),
    }
}

fn get(s: &Store, k: &str) -> Option<KeyValue> {
    s.range(&pb::RangeRequest { key: k.into(), ..Default::default() }).unwrap().kvs.pop()
}

fn rng(k: &str, end: &str) -> pb::RangeRequest {
    pb::RangeRequest { key: k.into(), range_end: end.into(), ..Default::default() }
}

fn keys(r: &pb::RangeResponse) -> Vec<String> {
    r.kvs.iter().map(|kv| String::from_utf8(kv.key.clone()).unwrap()).collect()
}

fn rev(r: &pb::PutResponse) -> i64 {
    r.header.as_ref().unwrap().revision
}

#[test]
fn revisions_start_at_one_and_count_write_requests() {
    let s = store();
    assert_eq!(s.current_revision(), 1);
    assert_eq!(s.range(&rng("a", "")).unwrap().header.unwrap().revision, 1);
    assert_eq!(rev(&put(&s, "a", "1")), 2);
    assert_eq!(rev(&put(&s, "b", "1")), 3);
    let kv = get(&s, "a").unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 2, 1));
    let p = put(&s, "a", "2");
    assert_eq!(rev(&p), 4);
    assert_eq!(p.prev_kv.unwrap().value, b"1");
    let kv = get(&s, "a").unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version, kv.value), (2, 4, 2, b"2".to_vec()));
}

#[test]
fn delete_bumps_revision_only_when_it_deletes() {
    let s = store();
    put(&s, "a", "1");
    let d = del(&s, "zzz", "");
    assert_eq!((d.deleted, d.header.unwrap().revision), (0, 2));
    assert_eq!(s.current_revision(), 2);
    let d = del(&s, "a", "");
    assert_eq!((d.deleted, d.header.unwrap().revision), (1, 3));
    assert_eq!(d.prev_kvs[0].value, b"1");
    assert_eq!(get(&s, "a"), None);
    put(&s, "a", "again");
    let kv = get(&s, "a").unwrap();
    assert_eq!((kv.create_revision, kv.version), (4, 1), "version restarts after delete");
}

#[test]
fn delete_range_shares_one_revision() {
    let s = store();
    for k in ["a", "b", "c", "d"] {
        put(&s, k, "v");
    }
    let d = del(&s, "b", "d");
    assert_eq!(d.deleted, 2);
    assert_eq!(d.header.unwrap().revision, 6);
    assert_eq!(keys(&s.range(&rng("a", "\0")).unwrap()), vec!["a", "d"]);
}

#[test]
fn range_prefix_from_key_limit_count() {
    let s = store();
    for k in ["a", "b/1", "b/2", "b/3", "c"] {
        put(&s, k, k);
    }
    let r = s.range(&rng("b/", "b0")).unwrap();
    assert_eq!(keys(&r), vec!["b/1", "b/2", "b/3"]);
    assert_eq!(r.count, 3);
    let r = s.range(&pb::RangeRequest { limit: 2, ..rng("b/", "b0") }).unwrap();
    assert_eq!(keys(&r), vec!["b/1", "b/2"]);
    assert!(r.more);
    assert_eq!(r.count, 3, "count ignores the limit");
    let r = s.range(&pb::RangeRequest { limit: 3, ..rng("b/", "b0") }).unwrap();
    assert!(!r.more);
    assert_eq!(keys(&s.range(&rng("b/2", "\0")).unwrap()), vec!["b/2", "b/3", "c"]);
    assert_eq!(keys(&s.range(&rng("\0", "\0")).unwrap()).len(), 5);
    assert!(s.range(&rng("c", "a")).unwrap().kvs.is_empty(), "end before start is empty");
    let r = s.range(&pb::RangeRequest { count_only: true, ..rng("a", "\0") }).unwrap();
    assert_eq!((r.count, r.kvs.len()), (5, 0));
    let r = s.range(&pb::RangeRequest { keys_only: true, ..rng("a", "") }).unwrap();
    assert!(r.kvs[0].value.is_empty());
}

#[test]
fn range_at_old_revisions_and_errors() {
    let s = store();
    put(&s, "k", "v1"); // 2
    put(&s, "k", "v2"); // 3
    del(&s, "k", ""); // 4
    put(&s, "k", "v3"); // 5
    let at = |r: i64| s.range(&pb::RangeRequest { revision: r, ..rng("k", "") });
    assert!(at(1).unwrap().kvs.is_empty());
    assert_eq!(at(2).unwrap().kvs[0].value, b"v1");
    assert_eq!(at(3).unwrap().kvs[0].version, 2);
    assert!(at(4).unwrap().kvs.is_empty());
    assert_eq!(at(5).unwrap().kvs[0].value, b"v3");
    assert_eq!(at(5).unwrap().header.unwrap().revision, 5);
    assert_eq!(at(6).unwrap_err(), Error::FutureRev);
    match apply(&s, Op::Compact(pb::CompactionRequest { revision: 3, physical: true })) {
        Response::Compact(c) => assert_eq!(c.header.unwrap().revision, 5),
        other => panic!("{other:?}"),
    }
    assert_eq!(at(2).unwrap_err(), Error::Compacted);
    assert_eq!(at(3).unwrap().kvs[0].value, b"v2", "the compaction revision itself stays readable");
    assert_eq!(
        apply(&s, Op::Compact(pb::CompactionRequest { revision: 3, physical: false })),
        Response::Error(Error::Compacted)
    );
    assert_eq!(
        apply(&s, Op::Compact(pb::CompactionRequest { revision: 9, physical: false })),
        Response::Error(Error::FutureRev)
    );
}

#[test]
fn compaction_deletes_records_and_survives_reopen() {
    let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
    let s = Store::open(engine.clone()).unwrap();
    for i in 0..10 {
        put(&s, "k", &format!("v{i}"));
    }
    put(&s, "gone", "x");
    del(&s, "gone", "");
    s.flush().unwrap();
    let before = engine.size_bytes();
    apply(&s, Op::Compact(pb::CompactionRequest { revision: s.current_revision(), physical: true }));
    s.flush().unwrap();
    assert!(engine.size_bytes() < before);
    let reopened = Store::open(engine.clone()).unwrap();
    assert_eq!(reopened.current_revision(), s.current_revision());
    assert_eq!(reopened.compact_revision(), s.current_revision());
    let kv = get(&reopened, "k").unwrap();
    assert_eq!((kv.version, kv.create_revision, kv.value), (10, 2, b"v9".to_vec()));
    assert_eq!(get(&reopened, "gone"), None);
}

#[test]
fn sort_and_filters() {
    let s = store();
    put(&s, "a", "3"); // 2
    put(&s, "b", "1"); // 3
    put(&s, "c", "2"); // 4
    put(&s, "a", "4"); // 5
    use pb::range_request::{SortOrder, SortTarget};
    let sorted = |target: SortTarget, order: SortOrder| {
        keys(
            &s.range(&pb::RangeRequest { sort_target: target as i32, sort_order: order as i32, ..rng("a", "\0") })
                .unwrap(),
        )
    };
    assert_eq!(sorted(SortTarget::Key, SortOrder::Descend), vec!["c", "b", "a"]);
    assert_eq!(sorted(SortTarget::Value, SortOrder::Ascend), vec!["b", "c", "a"]);
    assert_eq!(
        sorted(SortTarget::Mod, SortOrder::None),
        vec!["b", "c", "a"],
        "non-key targets sort ascending by default"
    );
    assert_eq!(sorted(SortTarget::Create, SortOrder::Descend), vec!["c", "b", "a"]);
    assert_eq!(sorted(SortTarget::Version, SortOrder::Descend)[0], "a");
    let r = s.range(&pb::RangeRequest { min_mod_revision: 4, ..rng("a", "\0") }).unwrap();
    assert_eq!(keys(&r), vec!["a", "c"]);
    let r = s.range(&pb::RangeRequest { max_create_revision: 3, ..rng("a", "\0") }).unwrap();
    assert_eq!(keys(&r), vec!["a", "b"]);
    let r = s
        .range(&pb::RangeRequest {
            sort_target: SortTarget::Value as i32,
            sort_order: SortOrder::Descend as i32,
            limit: 1,
            ..rng("a", "\0")
        })
        .unwrap();
    assert_eq!((keys(&r), r.more), (vec!["a".to_string()], true), "limit applies after sorting");
}

#[test]
fn equal_sort_values_keep_key_order_in_both_directions() {
    let s = store();
    for (k, v) in [("a", "x"), ("b", "y"), ("c", "x"), ("d", "y")] {
        put(&s, k, v);
    }
    use pb::range_request::{SortOrder, SortTarget};
    let sorted = |order: SortOrder| {
        keys(
            &s.range(&pb::RangeRequest {
                sort_target: SortTarget::Value as i32,
                sort_order: order as i32,
                ..rng("a", "\0")
            })
            .unwrap(),
        )
    };
    assert_eq!(sorted(SortOrder::Ascend), vec!["a", "c", "b", "d"]);
    assert_eq!(sorted(SortOrder::Descend), vec!["b", "d", "a", "c"], "etcd's order for ties: by key");
    // keys_only drops the values after sorting by them.
    let r = s
        .range(&pb::RangeRequest {
            sort_target: SortTarget::Value as i32,
            sort_order: SortOrder::Descend as i32,
            keys_only: true,
            ..rng("a", "\0")
        })
        .unwrap();
    assert_eq!(keys(&r), vec!["b", "d", "a", "c"]);
    assert!(r.kvs.iter().all(|kv| kv.value.is_empty()));
}

fn cmp(key: &str, target: CompareTarget, result: CompareResult, v: TargetUnion) -> pb::Compare {
    pb::Compare {
        key: key.into(),
        target: target as i32,
        result: result as i32,
        target_union: Some(v),
        range_end: vec![],
    }
}

fn txn(s: &Store, t: pb::TxnRequest) -> pb::TxnResponse {
    match apply(s, Op::Txn(t)) {
        Response::Txn(t) => t,
        other => panic!("{other:?}"),
    }
}

fn op_put(k: &str, v: &str) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Request::RequestPut(pb::PutRequest { key: k.into(), value: v.into(), ..Default::default() })),
    }
}

fn op_get(k: &str) -> pb::RequestOp {
    pb::RequestOp { request: Some(Request::RequestRange(rng(k, ""))) }
}

#[test]
fn txn_compare_branches_and_one_revision() {
    let s = store();
    put(&s, "k", "v"); // 2
    let t = pb::TxnRequest {
        compare: vec![cmp("k", CompareTarget::Value, CompareResult::Equal, TargetUnion::Value(b"v".to_vec()))],
        success: vec![op_put("k", "v2"), op_put("other", "x"), op_get("k")],
        failure: vec![op_get("k")],
    };
    let r = txn(&s, t.clone());
    assert!(r.succeeded);
    assert_eq!(r.header.unwrap().revision, 3, "all writes of a txn share one revision");
    match &r.responses[2].response {
        Some(R::ResponseRange(rr)) => {
            assert_eq!(rr.kvs[0].value, b"v2", "reads see the txn's own writes")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(get(&s, "other").unwrap().mod_revision, 3);
    let r = txn(&s, t);
    assert!(!r.succeeded);
    assert_eq!(r.header.unwrap().revision, 3, "a read-only txn takes no revision");
    assert_eq!(s.current_revision(), 3);
}

#[test]
fn ops_in_a_write_txn_answer_with_its_revision_so_far() {
    let s = store();
    put(&s, "k", "v"); // 2
    let op_del = |k: &str| pb::RequestOp {
        request: Some(Request::RequestDeleteRange(pb::DeleteRangeRequest { key: k.into(), ..Default::default() })),
    };
    let nested = pb::TxnRequest { compare: vec![], success: vec![op_get("k")], failure: vec![] };
    let t = pb::TxnRequest {
        compare: vec![],
        success: vec![
            op_get("k"),
            op_del("missing"),
            op_put("k", "w"),
            op_get("k"),
            op_del("missing"),
            pb::RequestOp { request: Some(Request::RequestTxn(nested)) },
        ],
        failure: vec![],
    };
    let r = txn(&s, t);
    let revision = |op: &pb::ResponseOp| match &op.response {
        Some(R::ResponseRange(r)) => r.header.as_ref().map(|h| h.revision),
        Some(R::ResponseDeleteRange(d)) => d.header.as_ref().map(|h| h.revision),
        Some(R::ResponsePut(p)) => p.header.as_ref().map(|h| h.revision),
        Some(R::ResponseTxn(t)) => t.header.as_ref().map(|h| h.revision),
        None => None,
    };
    // Before the first write: the revision the txn started at; after it: the one it writes.
    // A nested txn has an empty header (etcd fills in the outermost one only); its ops do not.
    let revs: Vec<_> = r.responses.iter().map(revision).collect();
    assert_eq!(revs, [Some(2), Some(2), Some(3), Some(3), Some(3), Some(0)]);
    match &r.responses[5].response {
        Some(R::ResponseTxn(n)) => assert_eq!(revision(&n.responses[0]), Some(3)),
        other => panic!("{other:?}"),
    }
    assert_eq!(r.header.unwrap().revision, 3);
}

#[test]
fn txn_compare_targets() {
    let s = store();
    put(&s, "k", "v"); // 2
    put(&s, "k", "w"); // 3
    let ok = |c: pb::Compare| txn(&s, pb::TxnRequest { compare: vec![c], success: vec![], failure: vec![] }).succeeded;
    use CompareResult::*;
    use CompareTarget::*;
    assert!(ok(cmp("k", Version, Equal, TargetUnion::Version(2))));
    assert!(ok(cmp("k", Create, Equal, TargetUnion::CreateRevision(2))));
    assert!(ok(cmp("k", Mod, Greater, TargetUnion::ModRevision(2))));
    assert!(ok(cmp("k", Mod, Less, TargetUnion::ModRevision(4))));
    assert!(ok(cmp("k", Value, NotEqual, TargetUnion::Value(b"v".to_vec()))));
    assert!(ok(cmp("k", Lease, Equal, TargetUnion::Lease(0))));
    assert!(!ok(cmp("k", Version, Greater, TargetUnion::Version(2))));
    // A missing key has version 0 and create revision 0; a value compare on it fails.
    assert!(ok(cmp("missing", Version, Equal, TargetUnion::Version(0))));
    assert!(ok(cmp("missing", Create, Equal, TargetUnion::CreateRevision(0))));
    assert!(!ok(cmp("missing", Value, Equal, TargetUnion::Value(vec![]))));
    // A compare over a range holds only if every key satisfies it.
    put(&s, "k2", "w");
    let mut c = cmp("k", Value, Equal, TargetUnion::Value(b"w".to_vec()));
    c.range_end = b"l".to_vec();
    assert!(ok(c.clone()));
    put(&s, "k3", "other");
    assert!(!ok(c));
}

#[test]
fn nested_txn_and_state_dependent_errors() {
    let s = store();
    put(&s, "a", "1"); // 2
    let nested = pb::TxnRequest {
        compare: vec![cmp("a", CompareTarget::Version, CompareResult::Equal, TargetUnion::Version(1))],
        success: vec![op_put("b", "from-nested")],
        failure: vec![],
    };
    let t = pb::TxnRequest {
        compare: vec![],
        success: vec![op_put("a", "2"), pb::RequestOp { request: Some(Request::RequestTxn(nested)) }],
        failure: vec![],
    };
    let r = txn(&s, t);
    // The nested compare was evaluated before the outer put (etcd evaluates the whole path first).
    match &r.responses[1].response {
        Some(R::ResponseTxn(n)) => assert!(n.succeeded),
        other => panic!("{other:?}"),
    }
    assert_eq!(get(&s, "b").unwrap().mod_revision, 3);
    // ignore_value on a missing key fails the whole txn and changes nothing.
    let t = pb::TxnRequest {
        compare: vec![],
        success: vec![
            op_put("c", "x"),
            pb::RequestOp {
                request: Some(Request::RequestPut(pb::PutRequest {
                    key: b"missing".to_vec(),
                    ignore_value: true,
                    ..Default::default()
                })),
            },
        ],
        failure: vec![],
    };
    assert_eq!(apply(&s, Op::Txn(t)), Response::Error(Error::KeyNotFound));
    assert_eq!(get(&s, "c"), None);
    assert_eq!(s.current_revision(), 3);
}

#[test]
fn ignore_value_keeps_value() {
    let s = store();
    put(&s, "k", "keep");
    match apply(&s, Op::Put(pb::PutRequest { key: b"k".to_vec(), ignore_value: true, ..Default::default() })) {
        Response::Put(p) => assert_eq!(p.header.unwrap().revision, 3),
        other => panic!("{other:?}"),
    }
    let kv = get(&s, "k").unwrap();
    assert_eq!((kv.value, kv.version), (b"keep".to_vec(), 2));
    assert_eq!(
        apply(&s, Op::Put(pb::PutRequest { key: b"nope".to_vec(), ignore_value: true, ..Default::default() })),
        Response::Error(Error::KeyNotFound)
    );
}

#[test]
fn nospace_alarm_blocks_puts_but_not_deletes() {
    let s = store();
    put(&s, "k", "v");
    let activate = pb::AlarmRequest {
        action: pb::alarm_request::AlarmAction::Activate as i32,
        member_id: 7,
        alarm: pb::AlarmType::Nospace as i32,
    };
    match apply(&s, Op::Alarm(activate)) {
        Response::Alarm(a) => assert_eq!(a.alarms.len(), 1),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        apply(&s, Op::Put(pb::PutRequest { key: b"x".to_vec(), ..Default::default() })),
        Response::Error(Error::NoSpace)
    );
    assert_eq!(del(&s, "k", "").deleted, 1);
    let disarm = pb::AlarmRequest { action: pb::alarm_request::AlarmAction::Deactivate as i32, member_id: 0, alarm: 0 };
    apply(&s, Op::Alarm(disarm));
    assert!(s.alarms().is_empty());
    put(&s, "x", "ok");
}

#[test]
fn batch_is_invisible_until_commit_and_reads_within_see_it() {
    let s = Arc::new(store());
    put(&s, "k", "old");
    let mut b = s.begin(0).unwrap();
    b.apply(&Command::new(
        0,
        Op::Put(pb::PutRequest { key: b"k".to_vec(), value: b"new".to_vec(), ..Default::default() }),
    ))
    .unwrap();
    // A put later in the same batch sees the earlier one (prev_kv).
    let r = b
        .apply(&Command::new(
            0,
            Op::Put(pb::PutRequest {
                key: b"k".to_vec(),
                value: b"newer".to_vec(),
                prev_kv: true,
                ..Default::default()
            }),
        ))
        .unwrap();
    match r {
        Response::Put(p) => assert_eq!(p.prev_kv.unwrap().value, b"new"),
        other => panic!("{other:?}"),
    }
    let reader = {
        let s = s.clone();
        std::thread::spawn(move || get(&s, "k").unwrap().value)
    };
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(!reader.is_finished(), "a reader waits for the batch");
    b.commit().unwrap();
    assert_eq!(reader.join().unwrap(), b"newer");
}

#[test]
fn member_attrs_persist() {
    let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
    let s = Store::open(engine.clone()).unwrap();
    let attrs = MemberAttrs { name: "n1".into(), client_urls: vec!["http://x:2379".into()] };
    apply(&s, Op::SetMemberAttrs { id: 42, attrs: attrs.clone() });
    s.flush().unwrap();
    assert_eq!(Store::open(engine.clone()).unwrap().members().get(&42), Some(&attrs));
    let mut b = s.begin(0).unwrap();
    b.retain_members(&BTreeSet::from([7]));
    b.commit().unwrap();
    s.flush().unwrap();
    assert!(Store::open(engine).unwrap().members().is_empty());
}

#[test]
fn the_range_directory_changes_only_by_compare_and_swap_and_persists() {
    use cairn_cluster::directory::{Descriptor, DirectoryOp, NodeRecord};
    let d = |id: u64, start: &[u8], end: &[u8], epoch: u64| Descriptor {
        id,
        start: start.to_vec(),
        end: end.to_vec(),
        epoch,
        replicas: vec![1, 2, 3],
        learners: vec![],
        conf: 0,
    };
    let applied = |r: Response| match r {
        Response::Directory { applied, .. } => applied,
        other => panic!("{other:?}"),
    };
    let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
    let s = Store::open(engine.clone()).unwrap();
    // A bootstrap that does not tile the keyspace is refused; one that does lands once.
    assert!(!applied(apply(&s, Op::Directory(DirectoryOp::Bootstrap { put: vec![d(1, b"", b"m", 1)] }))));
    assert!(applied(apply(&s, Op::Directory(DirectoryOp::Bootstrap { put: vec![d(1, b"", b"", 1)] }))));
    assert!(!applied(apply(&s, Op::Directory(DirectoryOp::Bootstrap { put: vec![d(9, b"", b"", 1)] }))));
    // A split of range 1 at "m", made from epoch 1.
    let split =
        DirectoryOp::Update { expect: vec![(1, 1)], put: vec![d(1, b"", b"m", 2), d(2, b"m", b"", 2)], remove: vec![] };
    assert!(applied(apply(&s, Op::Directory(split.clone()))));
    // The same decision again (made from the same, now stale, view) is refused.
    assert!(!applied(apply(&s, Op::Directory(split))));
    // So is a change that would leave keys to no range.
    let gap = DirectoryOp::Update { expect: vec![(2, 2)], put: vec![], remove: vec![2] };
    assert!(!applied(apply(&s, Op::Directory(gap))));
    // A merge back.
    let merge = DirectoryOp::Update { expect: vec![(1, 2), (2, 2)], put: vec![d(1, b"", b"", 3)], remove: vec![2] };
    assert!(applied(apply(&s, Op::Directory(merge))));
    // A replica change reported by the range's leader lands; an older report after it does not.
    let moved = Descriptor { replicas: vec![1, 2, 4], conf: 9, ..d(1, b"", b"", 3) };
    assert!(applied(apply(
        &s,
        Op::Directory(DirectoryOp::Update { expect: vec![(1, 3)], put: vec![moved.clone()], remove: vec![] })
    )));
    let stale = Descriptor { conf: 5, ..d(1, b"", b"", 3) };
    assert!(!applied(apply(
        &s,
        Op::Directory(DirectoryOp::Update { expect: vec![(1, 3)], put: vec![stale], remove: vec![] })
    )));
    // Reserved ids are never handed out twice, and never collide with a range's (2 was merged
    // away, and is not reused).
    let reserve = |s: &Store| match apply(s, Op::Directory(DirectoryOp::Reserve)) {
        Response::Directory { applied: true, reserved, .. } => reserved,
        other => panic!("{other:?}"),
    };
    assert_eq!(reserve(&s), 3);
    assert_eq!(reserve(&s), 4);
    let node = NodeRecord {
        id: 5,
        name: "n5".into(),
        redis_urls: vec!["redis://127.0.0.1:6379".into()],
        ..Default::default()
    };
    assert!(applied(apply(&s, Op::Directory(DirectoryOp::Node(node.clone())))));
    assert_eq!(s.ranges().values().cloned().collect::<Vec<_>>(), vec![moved]);
    // Neither the etcd keyspace nor its revision saw any of it.
    assert_eq!(s.current_revision(), 1);
    assert!(s.range(&rng("\0", "\0")).unwrap().kvs.is_empty());
    s.flush().unwrap();
    let again = Store::open(engine).unwrap();
    assert_eq!(again.ranges(), s.ranges());
    assert_eq!(again.nodes().get(&5), Some(&node));
    assert_eq!(reserve(&again), 5);
}

#[test]
fn snapshot_roundtrip_rebuilds_the_same_store() {
    let s = store();
    for i in 0..50 {
        put(&s, &format!("k{}", i % 7), &format!("v{i}"));
    }
    del(&s, "k3", "");
    apply(&s, Op::Compact(pb::CompactionRequest { revision: 20, physical: true }));
    let mut file = Vec::new();
    s.flush().unwrap();
    crate::snapshot::export(&*s.engine().reader().unwrap(), &[], &mut file).unwrap();
    let other: Arc<dyn Engine> = Arc::new(MemEngine::new());
    crate::snapshot::import(&*other, std::io::Cursor::new(file)).unwrap();
    let t = Store::open(other).unwrap();
    assert_eq!(t.current_revision(), s.current_revision());
    assert_eq!(t.compact_revision(), 20);
    let all = rng("\0", "\0");
    assert_eq!(t.range(&all).unwrap().kvs, s.range(&all).unwrap().kvs);
    let old = pb::RangeRequest { revision: 25, ..all };
    assert_eq!(t.range(&old).unwrap().kvs, s.range(&old).unwrap().kvs);
}

#[test]
fn read_only_txn_matches_the_logged_path() {
    let s = store();
    put(&s, "k", "v");
    let t = pb::TxnRequest {
        compare: vec![cmp("k", CompareTarget::Value, CompareResult::Equal, TargetUnion::Value(b"v".to_vec()))],
        success: vec![
            op_get("k"),
            pb::RequestOp {
                request: Some(Request::RequestTxn(pb::TxnRequest {
                    compare: vec![],
                    success: vec![op_get("missing")],
                    failure: vec![],
                })),
            },
        ],
        failure: vec![],
    };
    let local = s.txn_read_only(&t).unwrap();
    let logged = txn(&s, t);
    assert_eq!(local, logged);
    assert_eq!(s.current_revision(), 2, "no revision taken");
}

#[test]
fn buffered_changes_are_visible_before_and_after_a_flush_and_lost_only_unflushed() {
    let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
    let s = Store::open(engine.clone()).unwrap();
    put(&s, "a", "1");
    assert_eq!(get(&s, "a").unwrap().value, b"1", "readable while only buffered");
    assert_eq!(Store::open(engine.clone()).unwrap().current_revision(), 1, "not in the engine yet");
    s.flush().unwrap();
    put(&s, "b", "2");
    assert_eq!(get(&s, "a").unwrap().value, b"1", "readable from the engine after the flush");
    // A crash now loses "b" from the engine; the Raft log re-applies it (not modelled here).
    let reopened = Store::open(engine.clone()).unwrap();
    assert_eq!(reopened.current_revision(), 2);
    assert_eq!(get(&reopened, "b"), None);
    // Enough changes flush by themselves.
    for i in 0..FLUSH_OPS {
        put(&s, &format!("k{i}"), "v");
    }
    assert!(Store::open(engine).unwrap().current_revision() > 3);
}

#[test]
fn a_batch_applies_each_op_as_its_own_request() {
    let s = store();
    let ops = vec![
        Op::Put(pb::PutRequest { key: b"a".to_vec(), value: b"1".to_vec(), ..Default::default() }),
        Op::Put(pb::PutRequest { key: b"missing".to_vec(), ignore_value: true, ..Default::default() }),
        Op::Put(pb::PutRequest { key: b"a".to_vec(), value: b"2".to_vec(), prev_kv: true, ..Default::default() }),
        Op::DeleteRange(pb::DeleteRangeRequest { key: b"zzz".to_vec(), ..Default::default() }),
    ];
    match apply(&s, Op::Batch(ops)) {
        Response::Batch(rs) => {
            assert_eq!(rs.len(), 4);
            match &rs[0] {
                Response::Put(p) => assert_eq!(p.header.as_ref().unwrap().revision, 2),
                other => panic!("{other:?}"),
            }
            assert_eq!(rs[1], Response::Error(Error::KeyNotFound), "one failed op does not fail the others");
            match &rs[2] {
                Response::Put(p) => {
                    assert_eq!(p.header.as_ref().unwrap().revision, 3, "each op takes its own revision");
                    assert_eq!(p.prev_kv.as_ref().unwrap().value, b"1", "and sees the ops before it");
                }
                other => panic!("{other:?}"),
            }
            match &rs[3] {
                Response::DeleteRange(d) => assert_eq!((d.deleted, d.header.as_ref().unwrap().revision), (0, 3)),
                other => panic!("{other:?}"),
            }
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(get(&s, "a").unwrap().version, 2);
}

fn ev_summary(events: &[cairn_proto::mvccpb::Event]) -> Vec<(i32, String, i64)> {
    events
        .iter()
        .map(|e| {
            let kv = e.kv.as_ref().unwrap();
            (e.r#type, String::from_utf8(kv.key.clone()).unwrap(), kv.mod_revision)
        })
        .collect()
}

const PUT: i32 = 0;
const DELETE: i32 = 1;

#[test]
fn feed_publishes_each_batch_in_order_only_when_subscribed() {
    let s = store();
    put(&s, "a", "0"); // nobody subscribed: nothing to receive later
    let mut sub = s.subscribe();
    assert_eq!(sub.current, 2);
    put(&s, "a", "1");
    del(&s, "a", "");
    txn(&s, pb::TxnRequest { success: vec![op_put("x/1", "v"), op_put("x/2", "v")], ..Default::default() });
    let mut got = Vec::new();
    while let Ok(Some(Feed::Events(b))) = sub.feed.try_recv() {
        got.push((b.revision, ev_summary(&b.events)));
    }
    assert_eq!(
        got,
        vec![
            (3, vec![(PUT, "a".into(), 3)]),
            (4, vec![(DELETE, "a".into(), 4)]),
            (5, vec![(PUT, "x/1".into(), 5), (PUT, "x/2".into(), 5)]),
        ]
    );
}

#[test]
fn history_reads_events_by_revision_across_the_flush_buffer() {
    let s = store();
    for i in 0..10 {
        put(&s, &format!("k/{i}"), "v");
        if i == 4 {
            s.flush().unwrap(); // revisions 2..=6 in the engine, the rest buffered
        }
    }
    del(&s, "k/3", "");
    put(&s, "other", "v");
    let h = s.history(b"k/", b"k0", 5, usize::MAX).unwrap();
    assert_eq!(h.current, 13);
    assert_eq!(h.through, 13);
    let revs: Vec<i64> = ev_summary(&h.events).iter().map(|e| e.2).collect();
    assert_eq!(revs, vec![5, 6, 7, 8, 9, 10, 11, 12]);
    assert_eq!(ev_summary(&h.events).last().unwrap().0, DELETE);
    // A single key.
    let h = s.history(b"k/3", b"", 1, usize::MAX).unwrap();
    assert_eq!(ev_summary(&h.events), vec![(PUT, "k/3".into(), 5), (DELETE, "k/3".into(), 12)]);
    // In chunks: stops after the revision that passes the byte limit.
    let h = s.history(b"k/", b"k0", 2, 1).unwrap();
    assert_eq!(h.events.len(), 1);
    assert_eq!(h.through, 2);
    let h = s.history(b"k/", b"k0", 14, usize::MAX).unwrap();
    assert!(h.events.is_empty());
}

#[test]
fn history_below_the_compaction_is_refused_and_prev_kv_reads_old_versions() {
    let s = store();
    put(&s, "a", "1"); // 2
    put(&s, "a", "2"); // 3
    put(&s, "a", "3"); // 4
    assert_eq!(s.get_at(b"a", 3).unwrap().value, b"2");
    assert_eq!(s.get_at(b"a", 1), None);
    apply(&s, Op::Compact(pb::CompactionRequest { revision: 3, physical: false }));
    assert_eq!(s.history(b"a", b"", 2, usize::MAX).unwrap_err(), HistoryError::Compacted(3));
    let h = s.history(b"a", b"", 3, usize::MAX).unwrap();
    assert_eq!(ev_summary(&h.events), vec![(PUT, "a".into(), 3), (PUT, "a".into(), 4)]);
    assert_eq!(s.get_at(b"a", 2), None, "compacted");
}

#[test]
fn snapshot_install_tells_subscribers_to_resync() {
    let s = store();
    let mut sub = s.subscribe();
    s.replace(|_| Ok::<(), StoreError>(())).unwrap();
    assert!(matches!(sub.feed.try_recv(), Ok(Some(Feed::Resync))));
}

#[test]
fn history_of_a_sparse_range_comes_in_bounded_steps() {
    let s = store();
    for i in 0..(watch::HISTORY_SCAN_RECORDS + 100) {
        put(&s, &format!("noise/{i}"), "v");
    }
    let last = rev(&put(&s, "a", "1"));
    let mut from = 2;
    let mut steps = 0;
    let mut found = Vec::new();
    loop {
        let h = s.history(b"a", b"", from, usize::MAX).unwrap();
        steps += 1;
        assert!(h.through >= from - 1 && h.through <= h.current);
        found.extend(ev_summary(&h.events));
        from = h.through + 1;
        if h.through == h.current {
            break;
        }
    }
    assert_eq!(steps, 2, "one scan-limited step, then the rest");
    assert_eq!(found, vec![(PUT, "a".into(), last)]);
    // A start in the future stays put.
    let h = s.history(b"a", b"", last + 10, usize::MAX).unwrap();
    assert_eq!(h.through, last + 9);
}

fn grant(s: &Store, id: i64, ttl: i64) -> Response {
    apply(s, Op::LeaseGrant(pb::LeaseGrantRequest { id, ttl }))
}

fn put_lease(s: &Store, k: &str, v: &str, lease: i64) -> Response {
    apply(s, Op::Put(pb::PutRequest { key: k.into(), value: v.into(), lease, ..Default::default() }))
}

#[test]
fn leases_attach_keys_and_revoke_deletes_them_in_one_revision() {
    let s = store();
    assert!(matches!(put_lease(&s, "x", "1", 7), Response::Error(Error::LeaseNotFound)));
    assert!(matches!(grant(&s, 7, 10), Response::LeaseGrant(g) if g.id == 7 && g.ttl == 10));
    assert!(matches!(grant(&s, 7, 10), Response::Error(Error::LeaseExist)));
    let rev0 = s.current_revision();
    assert_eq!(rev0, 1, "granting does not take a revision");
    put_lease(&s, "a", "1", 7);
    put_lease(&s, "b", "1", 7);
    put_lease(&s, "c", "1", 7);
    assert_eq!(get(&s, "a").unwrap().lease, 7);
    // Re-put without a lease detaches; deleting detaches.
    put(&s, "c", "2");
    del(&s, "b", "");
    let l = s.lease(7).unwrap();
    assert_eq!(l.keys.into_iter().collect::<Vec<_>>(), vec![b"a".to_vec()]);
    // ignore_lease keeps the attachment.
    apply(&s, Op::Put(pb::PutRequest { key: "a".into(), value: "2".into(), ignore_lease: true, ..Default::default() }));
    assert_eq!(get(&s, "a").unwrap().lease, 7);
    put_lease(&s, "d", "1", 7);
    let before = s.current_revision();
    let mut sub = s.subscribe();
    match apply(&s, Op::LeaseRevoke(pb::LeaseRevokeRequest { id: 7 })) {
        Response::LeaseRevoke(r) => assert_eq!(r.header.unwrap().revision, before + 1),
        other => panic!("{other:?}"),
    }
    assert!(get(&s, "a").is_none() && get(&s, "d").is_none());
    assert_eq!(get(&s, "c").unwrap().value, b"2");
    assert!(s.lease(7).is_none());
    assert!(matches!(
        apply(&s, Op::LeaseRevoke(pb::LeaseRevokeRequest { id: 7 })),
        Response::Error(Error::LeaseNotFound)
    ));
    // Watchers see one revision with both deletes.
    match sub.feed.try_recv() {
        Ok(Some(Feed::Events(b))) => {
            assert_eq!(ev_summary(&b.events), vec![(DELETE, "a".into(), before + 1), (DELETE, "d".into(), before + 1)])
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn leases_and_attachments_survive_reopen_and_txn_checks_leases() {
    let engine: Arc<dyn cairn_storage::Engine> = Arc::new(MemEngine::new());
    let s = Store::open(engine.clone()).unwrap();
    grant(&s, 1, 30);
    grant(&s, 2, 60);
    put_lease(&s, "a", "1", 1);
    put_lease(&s, "b", "1", 2);
    put_lease(&s, "b", "2", 1); // moved to lease 1
    let t = pb::TxnRequest {
        success: vec![pb::RequestOp {
            request: Some(Request::RequestPut(pb::PutRequest { key: "z".into(), lease: 99, ..Default::default() })),
        }],
        ..Default::default()
    };
    assert!(matches!(apply(&s, Op::Txn(t)), Response::Error(Error::LeaseNotFound)));
    s.flush().unwrap();
    drop(s);
    let s = Store::open(engine).unwrap();
    assert_eq!(s.leases(), vec![(1, 30), (2, 60)]);
    assert_eq!(s.lease(1).unwrap().keys.len(), 2);
    assert!(s.lease(2).unwrap().keys.is_empty());
}

#[test]
fn auth_changes_persist_and_guarded_writes_refuse_an_older_auth_revision() {
    use crate::auth::AuthOp;
    let engine: Arc<dyn cairn_storage::Engine> = Arc::new(MemEngine::new());
    let s = Store::open(engine.clone()).unwrap();
    let auth = |op| apply(&s, Op::Auth(op));
    assert!(matches!(auth(AuthOp::Enable { secret: vec![1] }), Response::Error(Error::RootUserNotExist)));
    auth(AuthOp::UserAdd { name: "root".into(), hash: "h".into(), no_password: false });
    auth(AuthOp::UserGrantRole { user: "root".into(), role: "root".into() });
    auth(AuthOp::Enable { secret: vec![1] });
    let checked_at = s.auth().revision;
    assert!(s.auth().enabled && checked_at == 3);
    let guarded = |rev| Op::Guarded {
        auth_revision: rev,
        user: "root".into(),
        op: Box::new(Op::Put(pb::PutRequest { key: "k".into(), value: "v".into(), ..Default::default() })),
    };
    assert!(matches!(apply(&s, guarded(checked_at)), Response::Put(_)));
    // The auth store moves on (say, a permission is revoked): a write checked before is refused
    // and changes nothing.
    auth(AuthOp::RoleAdd { name: "r".into() });
    let rev = s.current_revision();
    assert!(matches!(apply(&s, guarded(checked_at)), Response::Error(Error::AuthOldRevision)));
    assert_eq!(s.current_revision(), rev);
    // With auth enabled: no user; a lease revoke touching a key the user may not write; auth
    // changes need the root role at apply, not an unchanged auth revision.
    let as_user =
        |user: &str, rev: u64, op: Op| Op::Guarded { auth_revision: rev, user: user.into(), op: Box::new(op) };
    let now = s.auth().revision;
    let put = Op::Put(pb::PutRequest { key: "k".into(), value: "v".into(), ..Default::default() });
    assert!(matches!(apply(&s, as_user("", now, put)), Response::Error(Error::UserEmpty)));
    grant(&s, 5, 60);
    let leased = Op::Put(pb::PutRequest { key: "k".into(), value: "v".into(), lease: 5, ..Default::default() });
    assert!(matches!(apply(&s, as_user("root", now, leased)), Response::Put(_)));
    apply(
        &s,
        as_user("root", 0, Op::Auth(AuthOp::UserAdd { name: "bob".into(), hash: "h".into(), no_password: false })),
    );
    let now = s.auth().revision;
    let revoke = || Op::LeaseRevoke(pb::LeaseRevokeRequest { id: 5 });
    assert!(matches!(apply(&s, as_user("bob", now, revoke())), Response::Error(Error::PermissionDenied)));
    assert_eq!(s.lease(5).unwrap().keys.len(), 1, "a refused revoke deleted nothing");
    let bob_adds = as_user("bob", now, Op::Auth(AuthOp::RoleAdd { name: "x".into() }));
    assert!(matches!(apply(&s, bob_adds), Response::Error(Error::PermissionDenied)));
    assert!(matches!(
        apply(&s, as_user("root", 0, Op::Auth(AuthOp::RoleAdd { name: "x".into() }))),
        Response::Done { .. }
    ));
    assert!(matches!(apply(&s, as_user("root", s.auth().revision, revoke())), Response::LeaseRevoke(_)));
    s.flush().unwrap();
    drop(s);
    let s = Store::open(engine).unwrap();
    assert_eq!(s.auth().revision, 6);
    assert!(s.auth().enabled && s.auth().roles.contains_key("r") && s.auth().users.contains_key("bob"));
}

/// An engine whose writes wait while a gate is shut, either before or after the write reaches
/// the inner engine: the two states a background flush can be seen in.
struct GatedEngine {
    inner: MemEngine,
    after: bool,
    open: std::sync::Mutex<bool>,
    cv: std::sync::Condvar,
    started: std::sync::atomic::AtomicUsize,
}

impl GatedEngine {
    fn new(after: bool) -> Arc<GatedEngine> {
        Arc::new(GatedEngine {
            inner: MemEngine::new(),
            after,
            open: std::sync::Mutex::new(true),
            cv: std::sync::Condvar::new(),
            started: Default::default(),
        })
    }

    fn set_open(&self, open: bool) {
        *self.open.lock().unwrap() = open;
        self.cv.notify_all();
    }

    fn wait_open(&self) {
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.cv.wait(open).unwrap();
        }
    }
}

impl Engine for GatedEngine {
    fn reader(&self) -> cairn_storage::Result<Box<dyn Reader + Send + Sync>> {
        self.inner.reader()
    }
    fn write(&self, batch: WriteBatch) -> cairn_storage::Result<()> {
        self.started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if !self.after {
            self.wait_open();
        }
        self.inner.write(batch)?;
        if self.after {
            self.wait_open();
        }
        Ok(())
    }
    fn sync(&self) -> cairn_storage::Result<()> {
        self.inner.sync()
    }
    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }
    fn live_bytes(&self) -> u64 {
        self.inner.live_bytes()
    }
    fn defragment(&self) -> cairn_storage::Result<(u64, u64)> {
        self.inner.defragment()
    }
}

/// Puts `{prefix}{n:05}` = `v{n}` until the store hands a full buffer to the engine; returns
/// how many. Fails if a put waits for that write (the gate is shut).
fn fill_until_a_flush_starts(s: &Arc<Store>, e: &Arc<GatedEngine>, prefix: &str) -> usize {
    let (s, e, prefix) = (s.clone(), e.clone(), prefix.to_string());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let before = e.started.load(std::sync::atomic::Ordering::SeqCst);
        let mut n = 0;
        while e.started.load(std::sync::atomic::Ordering::SeqCst) == before {
            put(&s, &format!("{prefix}{n:05}"), &format!("v{n}"));
            n += 1;
            assert!(n <= 2 * FLUSH_OPS, "no flush started after {n} puts");
        }
        // One more: the commit that started the write has returned, and the next one too.
        put(&s, &format!("{prefix}{n:05}"), &format!("v{n}"));
        tx.send(n + 1).unwrap();
    });
    rx.recv_timeout(std::time::Duration::from_secs(20)).expect("apply waited for the engine write")
}

/// While a full buffer is written to the engine in the background, apply goes on and every
/// record stays readable exactly once — by key, at an old revision, through history — whether
/// or not the engine holds the write yet; once the write is done, the same from the engine.
#[test]
fn a_background_flush_blocks_nothing_and_every_record_reads_the_same() {
    for after in [false, true] {
        let e = GatedEngine::new(after);
        let s = Arc::new(Store::open(e.clone()).unwrap());
        put(&s, "a/old", "x"); // revision 2, in the engine after this flush
        s.flush().unwrap();
        e.set_open(false);
        let n = fill_until_a_flush_starts(&s, &e, "b/"); // revisions 3..
                                                         // Every b/ record is in the buffer being written; the gate holds the write. Apply must
                                                         // not wait for it: run more writes on another thread, with a deadline.
        let (tx, rx) = std::sync::mpsc::channel();
        let s2 = s.clone();
        std::thread::spawn(move || {
            put(&s2, "a/old", "y");
            put(&s2, "b/00000", "again");
            for i in 0..10 {
                put(&s2, &format!("c/{i}"), "v");
            }
            // Compaction removes superseded records: a/old@2 in the engine, b/00000@3 in the
            // buffer being written.
            apply(&s2, Op::Compact(pb::CompactionRequest { revision: 10, physical: false }));
            tx.send(()).unwrap();
        });
        rx.recv_timeout(std::time::Duration::from_secs(20)).expect("apply waited for the background flush");
        let current = s.current_revision();
        assert_eq!(current, 2 + n as i64 + 12);
        let check = |when: &str, current: i64| {
            assert_eq!(get(&s, "a/old").unwrap().value, b"y", "{when}");
            assert_eq!(get(&s, "b/00000").unwrap().value, b"again", "{when}");
            assert_eq!(
                get(&s, &format!("b/{:05}", n - 1)).unwrap().value,
                format!("v{}", n - 1).into_bytes(),
                "{when}"
            );
            let mut at = rng("b/", "b0");
            at.revision = 12;
            let old = s.range(&at).unwrap();
            assert_eq!(keys(&old).len(), 10, "{when}: b/ keys at revision 12");
            assert_eq!(old.kvs[0].value, b"v0", "{when}: b/00000 as it was at revision 12");
            assert_eq!(keys(&s.range(&rng("b/", "b0")).unwrap()).len(), n, "{when}");
            // History from the compaction on: every revision once, in order.
            let h = s.history(b"\0", b"\xff", 10, usize::MAX).unwrap();
            assert_eq!(h.through, current, "{when}");
            let revs: Vec<i64> = h.events.iter().map(|ev| ev.kv.as_ref().unwrap().mod_revision).collect();
            let want: Vec<i64> = (10..=current).collect();
            assert!(revs == want, "{when}: history has {} events for {} revisions", revs.len(), want.len());
        };
        check(&format!("during the flush (gate after the write: {after})"), current);
        e.set_open(true);
        while s.flush_stats().flushes.load(std::sync::atomic::Ordering::SeqCst) < 2 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        put(&s, "d", "v"); // this commit drops the finished flush's buffer
        let current = current + 1;
        assert_eq!(s.current_revision(), current);
        check(&format!("after the flush (gate after the write: {after})"), current);
        s.flush().unwrap();
        let reopened = Store::open(e.clone()).unwrap();
        assert_eq!(reopened.current_revision(), current);
        assert_eq!(get(&reopened, "b/00000").unwrap().value, b"again");
    }
}

/// A snapshot install replaces the engine's contents only after a background write in flight
/// has landed, so the write cannot land on top of the installed state.
#[test]
fn replace_waits_for_a_background_flush() {
    let e = GatedEngine::new(false);
    let s = Arc::new(Store::open(e.clone()).unwrap());
    e.set_open(false);
    fill_until_a_flush_starts(&s, &e, "k");
    let (tx, rx) = std::sync::mpsc::channel();
    let s2 = s.clone();
    let e2 = e.clone();
    std::thread::spawn(move || {
        let installed_after = s2.replace(|engine| {
            // What the flush wrote is already there when the install starts.
            let r = engine.reader().unwrap();
            let found = r.get(Table::Kv, &Rev::new(2, 0).to_key()).unwrap().is_some();
            engine.write(WriteBatch { ops: vec![WriteOp::Clear { table: Table::Kv }] }).unwrap();
            Ok::<_, StoreError>(found)
        });
        tx.send(installed_after.unwrap()).unwrap();
        drop(e2);
    });
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(rx.try_recv().is_err(), "replace went ahead while the flush was held");
    e.set_open(true);
    assert!(rx.recv_timeout(std::time::Duration::from_secs(20)).unwrap(), "the flushed records were in the engine");
}

#[test]
fn an_origin_op_naming_this_member_is_answered_by_commit_and_applies_as_its_op() {
    let (s, twin) = (store(), store());
    let me = 7;
    let put_a = Op::Put(pb::PutRequest { key: "a".into(), value: "1".into(), ..Default::default() });
    let put_b = Op::Put(pb::PutRequest { key: "b".into(), value: "2".into(), ..Default::default() });
    let txn = Op::Txn(pb::TxnRequest {
        compare: vec![cmp("a", CompareTarget::Value, CompareResult::Equal, TargetUnion::Value("1".into()))],
        success: vec![op_put("c", "3"), op_get("a")],
        failure: vec![],
    });
    let origin = |member, id, op: &Op| Op::Origin { member, id, op: Box::new(op.clone()) };
    let tagged = Op::Batch(vec![
        origin(me, 11, &put_a),
        // Another member's forwarded write: not this member's to answer.
        origin(me + 1, 12, &put_b),
        origin(me, 12, &txn),
    ]);
    let plain = Op::Batch(vec![put_a.clone(), put_b.clone(), txn.clone()]);

    let mut b = s.begin(me).unwrap();
    let got = b.apply(&Command::new(0, tagged)).unwrap();
    let answers = b.commit().unwrap();

    // Exactly what the untagged ops give on a twin store: an origin changes nothing in apply.
    assert_eq!(got, apply(&twin, plain));
    let Response::Batch(rs) = got else { panic!("{got:?}") };
    assert_eq!(answers, vec![Answer { id: 11, response: rs[0].clone() }, Answer { id: 12, response: rs[2].clone() }]);
    assert!(matches!(rs[2], Response::Txn(ref t) if t.succeeded));
    // Visible by the time the answers are handed out: a read right after sees the write.
    assert_eq!(get(&s, "a").unwrap().mod_revision, s.current_revision() - 2);
}

#[test]
fn a_refused_guarded_write_answers_its_waiter_with_the_refusal_whichever_wraps_which() {
    use crate::auth::AuthOp;
    let s = store();
    let auth = |op| apply(&s, Op::Auth(op));
    auth(AuthOp::UserAdd { name: "root".into(), hash: "h".into(), no_password: false });
    auth(AuthOp::UserGrantRole { user: "root".into(), role: "root".into() });
    auth(AuthOp::UserAdd { name: "bob".into(), hash: "h".into(), no_password: false });
    auth(AuthOp::Enable { secret: vec![1] });
    grant(&s, 5, 60);
    apply(&s, Op::Put(pb::PutRequest { key: "k".into(), value: "v".into(), lease: 5, ..Default::default() }));
    let now = s.auth().revision;
    let guarded = |user: &str, rev, op: Op| Op::Guarded { auth_revision: rev, user: user.into(), op: Box::new(op) };
    let origin = |id, op: Op| Op::Origin { member: 3, id, op: Box::new(op) };
    let revoke = || Op::LeaseRevoke(pb::LeaseRevokeRequest { id: 5 });
    let put = || Op::Put(pb::PutRequest { key: "x".into(), value: "1".into(), ..Default::default() });

    // The order the leader builds (origin outside the guard), and the other one: apply's checks
    // see through the tag either way.
    let (stale, denied, admin) = (1, 2, 3);
    let rev = s.current_revision();
    let mut b = s.begin(3).unwrap();
    let got = b
        .apply(&Command::new(
            0,
            Op::Batch(vec![
                origin(stale, guarded("root", now - 1, put())),
                guarded("bob", now, origin(denied, revoke())),
                guarded("bob", now, origin(admin, Op::Auth(AuthOp::RoleAdd { name: "x".into() }))),
            ]),
        ))
        .unwrap();
    let answers = b.commit().unwrap();
    let Response::Batch(rs) = got else { panic!("{got:?}") };
    assert!(rs.iter().all(|r| matches!(r, Response::Error(_))), "{rs:?}");
    // The refusal is the answer of the tagged write; a refused guard never reaches the tag
    // inside it, so those two are left to the leader's reply.
    assert_eq!(answers, vec![Answer { id: stale, response: Response::Error(Error::AuthOldRevision) }]);
    assert_eq!(s.current_revision(), rev, "refused writes changed nothing");
    assert_eq!(s.lease(5).unwrap().keys.len(), 1);
    assert!(!s.auth().roles.contains_key("x"));
}

/// The buffer goes to the engine once it holds `--backend-batch-bytes`, long before it holds
/// `FLUSH_OPS` changes, and the space the store reports counts it before and after.
#[test]
fn buffer_is_bounded_in_bytes_and_counted() {
    let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
    let s = Store::open(engine.clone()).unwrap();
    s.set_batch_bytes(1 << 20);
    let value = "x".repeat(60_000);
    put(&s, "first", &value);
    let held = s.space();
    assert!(held.in_use_bytes >= 60_000, "a buffered put counts: {held:?}");
    assert!(engine.live_bytes() < 60_000, "and is not in the engine yet");
    for i in 0..50 {
        put(&s, &format!("k{i}"), &value);
    }
    s.flush().unwrap();
    assert!(s.flush_stats().flushes.load(std::sync::atomic::Ordering::Relaxed) >= 3, "3 MB through a 1 MiB buffer");
    let space = s.space();
    assert!(space.in_use_bytes >= 51 * 60_000, "{space:?}");
    assert_eq!(space.in_use_bytes, engine.live_bytes(), "nothing buffered after a flush");
}

/// Puts `k00000`.. = `v{round}` on `n` keys, `rounds` times, one apply batch per round (no
/// compaction is carried out in between, unlike `apply`).
fn put_rounds(s: &Store, n: usize, rounds: usize) {
    for round in 0..rounds {
        let mut b = s.begin(0).unwrap();
        for i in 0..n {
            let p = pb::PutRequest {
                key: format!("k{i:05}").into(),
                value: format!("v{round}").into(),
                ..Default::default()
            };
            b.apply(&Command::new(0, Op::Put(p))).unwrap();
        }
        b.commit().unwrap();
    }
}

/// A compaction is carried out in steps of at most `STEP_KEYS` keys; between them reads and
/// writes go on and see the same answers; at the end the engine has lost the old records.
#[test]
fn compaction_runs_in_bounded_steps() {
    let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
    let s = Store::open(engine.clone()).unwrap();
    let n = 3 * compact::STEP_KEYS + 10;
    put_rounds(&s, n, 3);
    s.flush().unwrap();
    let before = engine.live_bytes();
    let rev = s.current_revision();
    let mut b = s.begin(0).unwrap();
    b.apply(&Command::new(0, Op::Compact(pb::CompactionRequest { revision: rev, physical: false }))).unwrap();
    b.commit().unwrap();
    let all = rng("k", "l");
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let soon = || std::time::Instant::now() + std::time::Duration::from_millis(10);
    assert!(!rt.block_on(s.wait_compacted(rev, soon())), "not physically done before any step");
    let mut steps = 0;
    while s.compact_step().unwrap() {
        steps += 1;
        // Mid-way: every key still reads its newest value, and writes go on.
        let r = s.range(&all).unwrap();
        assert_eq!(r.kvs.len(), n);
        assert!(r.kvs.iter().all(|kv| kv.value == b"v2" && kv.version == 3));
        assert_eq!(s.range(&pb::RangeRequest { revision: rev - 1, ..all.clone() }).unwrap_err(), Error::Compacted);
    }
    assert!(steps >= 3, "{n} keys in steps of {}: {steps} steps", compact::STEP_KEYS);
    let later = std::time::Instant::now() + std::time::Duration::from_secs(5);
    assert!(rt.block_on(s.wait_compacted(rev, later)), "physically done once the removals are written");
    s.flush().unwrap();
    let after = engine.live_bytes();
    assert!(after < before * 2 / 5, "two of three versions gone: {before} -> {after}");
    let kv = get(&s, "k00007").unwrap();
    assert_eq!((kv.version, kv.create_revision, kv.value), (3, 9, b"v2".to_vec()));
    assert_eq!(s.compact_stats().removed.load(std::sync::atomic::Ordering::Relaxed), 2 * n as u64);
}

/// A stop part-way through a compaction leaves old records in the engine; the reopened store
/// schedules the walk again and removes them.
#[test]
fn compaction_cut_short_resumes_after_reopen() {
    let engine: Arc<dyn Engine> = Arc::new(MemEngine::new());
    let s = Store::open(engine.clone()).unwrap();
    put_rounds(&s, 2 * compact::STEP_KEYS, 2);
    let rev = s.current_revision();
    let mut b = s.begin(0).unwrap();
    b.apply(&Command::new(0, Op::Compact(pb::CompactionRequest { revision: rev, physical: false }))).unwrap();
    b.commit().unwrap();
    assert!(s.compact_step().unwrap(), "one step of several");
    s.flush().unwrap();
    let part = engine.live_bytes();
    drop(s);
    let s = Store::open(engine.clone()).unwrap();
    assert_eq!(s.compact_revision(), rev);
    s.finish_compaction().unwrap();
    s.flush().unwrap();
    assert!(engine.live_bytes() < part, "the reopened store finished the walk");
    assert_eq!(get(&s, "k01999").unwrap().value, b"v1");
}

/// A range read in chunks answers exactly what one pass under the lock answers, for every
/// option that changes what is read.
#[test]
fn chunked_range_answers_as_one_pass() {
    let s = store();
    let n = 2 * read::READ_CHUNK_KEYS + 123;
    for round in 0..2 {
        let mut b = s.begin(0).unwrap();
        for i in 0..n {
            if round == 1 && i % 3 != 0 {
                continue;
            }
            let p = pb::PutRequest {
                key: format!("k{i:05}").into(),
                value: format!("v{round}-{i}").into(),
                ..Default::default()
            };
            b.apply(&Command::new(0, Op::Put(p))).unwrap();
        }
        b.commit().unwrap();
    }
    del(&s, "k00100", "k00200");
    let mid = 2 + n as i64 + 5;
    let base = rng("k", "l");
    let cases = vec![
        base.clone(),
        pb::RangeRequest { limit: 10, ..base.clone() },
        pb::RangeRequest { limit: 1500, ..base.clone() },
        pb::RangeRequest { count_only: true, ..base.clone() },
        pb::RangeRequest { keys_only: true, ..base.clone() },
        pb::RangeRequest { revision: mid, ..base.clone() },
        pb::RangeRequest { key: b"k01000".to_vec(), range_end: vec![0], ..base.clone() },
        pb::RangeRequest { sort_order: 2, sort_target: 3, limit: 7, ..base.clone() },
        pb::RangeRequest { min_mod_revision: mid, ..base.clone() },
        pb::RangeRequest { key: b"k9".to_vec(), range_end: b"k1".to_vec(), ..base.clone() },
    ];
    for r in cases {
        let chunked = s.range_in_chunks(&r).map_err(Error::from).unwrap();
        let view = s.view().unwrap();
        let one = range(&view, &r, view.state.revs.current()).map_err(Error::from).unwrap();
        drop(view);
        assert_eq!(chunked, one, "{r:?}");
    }
    assert_eq!(s.range(&base).unwrap().count, (n - 100) as i64);
    assert_eq!(s.range(&pb::RangeRequest { revision: 999_999, ..base.clone() }).unwrap_err(), Error::FutureRev);

    // A read-only Txn reads its ranges the same way, and answers as one pass in apply does: both
    // branches, nested transactions, a range at an older revision, single keys.
    let op = |r: pb::RangeRequest| pb::RequestOp { request: Some(pb::request_op::Request::RequestRange(r)) };
    let nested = pb::TxnRequest {
        compare: vec![cmp("k00007", CompareTarget::Version, CompareResult::Greater, TargetUnion::Version(1))],
        success: vec![op(pb::RangeRequest { limit: 1500, ..base.clone() }), op(rng("k00042", ""))],
        failure: vec![op(pb::RangeRequest { count_only: true, ..base.clone() })],
    };
    for succeeded in [true, false] {
        let value = if succeeded { "v1-0" } else { "nope" };
        let t = pb::TxnRequest {
            compare: vec![cmp("k00000", CompareTarget::Value, CompareResult::Equal, TargetUnion::Value(value.into()))],
            success: vec![
                op(base.clone()),
                op(pb::RangeRequest { revision: mid, ..base.clone() }),
                pb::RequestOp { request: Some(pb::request_op::Request::RequestTxn(nested.clone())) },
            ],
            failure: vec![op(pb::RangeRequest { keys_only: true, ..base.clone() }), op(rng("k00003", ""))],
        };
        let chunked = s.txn_read_only(&t).unwrap();
        // The same transaction through the log is read in one pass, inside apply.
        let one = txn(&s, t);
        assert_eq!(chunked.succeeded, succeeded);
        assert_eq!(chunked, one);
    }
}

/// Compaction leaves alone the history a chunked read is reading, until the read lets go.
#[test]
fn a_pinned_read_holds_compaction_back() {
    let s = store();
    for i in 0..10 {
        put(&s, "k", &format!("v{i}"));
    }
    *s.read_pins.lock().entry(3).or_default() += 1;
    let mut b = s.begin(0).unwrap();
    b.apply(&Command::new(0, Op::Compact(pb::CompactionRequest { revision: 8, physical: false }))).unwrap();
    b.commit().unwrap();
    let removed = || s.compact_stats().removed.load(std::sync::atomic::Ordering::Relaxed);
    assert!(s.compact_step().unwrap(), "waits while a read at 3 runs");
    assert_eq!(removed(), 0);
    drop(read::Pin { pins: &s.read_pins, at: 3 });
    s.finish_compaction().unwrap();
    assert_eq!(removed(), 6, "revisions 2..=7 of k");
}
