//! The etcd v3 KV API through the `etcd-client` crate, on a real 3-member cluster: semantics,
//! headers, and etcd's errors for bad requests.

mod common;

use common::*;
use etcd_client::{
    Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_semantics_through_every_member() {
    let tc = start(3, &[]).await;
    let eps = tc.endpoints();
    // A client per member: writes through followers are forwarded to the leader.
    let mut c: Vec<_> = Vec::new();
    for e in &eps {
        c.push(client(std::slice::from_ref(e)).await);
    }

    let r = c[0].get("nothing", None).await.unwrap();
    assert_eq!(r.header().unwrap().revision(), 1, "an empty store is at revision 1");
    let cluster_id = r.header().unwrap().cluster_id();
    assert_ne!(cluster_id, 0);

    let p = c[1].put("a", "1", None).await.unwrap();
    assert_eq!(p.header().unwrap().revision(), 2);
    assert_eq!(p.header().unwrap().cluster_id(), cluster_id);
    assert!(p.header().unwrap().raft_term() >= 1);
    let p = c[2].put("a", "2", Some(PutOptions::new().with_prev_key())).await.unwrap();
    assert_eq!(p.prev_key().unwrap().value(), b"1");
    for cli in c.iter_mut() {
        // Linearizable reads on every member see the latest write.
        let r = cli.get("a", None).await.unwrap();
        let kv = &r.kvs()[0];
        assert_eq!((kv.value(), kv.create_revision(), kv.mod_revision(), kv.version()), (&b"2"[..], 2, 3, 2));
    }
    let old = c[0].get("a", Some(GetOptions::new().with_revision(2))).await.unwrap();
    assert_eq!(old.kvs()[0].value(), b"1");

    for k in ["p/1", "p/2", "p/3", "q"] {
        c[0].put(k, k, None).await.unwrap();
    }
    let r = c[1].get("p/", Some(GetOptions::new().with_prefix())).await.unwrap();
    assert_eq!(r.count(), 3);
    let r = c[1].get("p/", Some(GetOptions::new().with_prefix().with_limit(2))).await.unwrap();
    assert_eq!((r.kvs().len(), r.more(), r.count()), (2, true, 3));
    let r = c[2]
        .get("p/", Some(GetOptions::new().with_prefix().with_sort(SortTarget::Key, SortOrder::Descend)))
        .await
        .unwrap();
    assert_eq!(r.kvs()[0].key(), b"p/3");
    let r = c[2].get("p/", Some(GetOptions::new().with_from_key().with_keys_only())).await.unwrap();
    assert_eq!(r.kvs().len(), 4);
    assert!(r.kvs()[0].value().is_empty());
    let r = c[0].get("p/", Some(GetOptions::new().with_prefix().with_count_only())).await.unwrap();
    assert_eq!((r.count(), r.kvs().len()), (3, 0));
    let r = c[0].get("a", Some(GetOptions::new().with_serializable())).await.unwrap();
    assert_eq!(r.kvs().len(), 1);

    let d = c[1].delete("p/", Some(DeleteOptions::new().with_prefix().with_prev_key())).await.unwrap();
    assert_eq!((d.deleted(), d.prev_kvs().len()), (3, 3));
    let rev_after_delete = d.header().unwrap().revision();

    // Txn: compare, both branches, nested reads, one revision for all writes.
    let txn = Txn::new()
        .when([Compare::value("a", CompareOp::Equal, "2"), Compare::version("a", CompareOp::Greater, 1)])
        .and_then([TxnOp::put("a", "3", None), TxnOp::put("b", "x", None), TxnOp::get("a", None)])
        .or_else([TxnOp::get("a", None)]);
    let t = c[2].txn(txn).await.unwrap();
    assert!(t.succeeded());
    assert_eq!(t.header().unwrap().revision(), rev_after_delete + 1);
    match &t.op_responses()[2] {
        TxnOpResponse::Get(g) => assert_eq!(g.kvs()[0].value(), b"3"),
        other => panic!("unexpected {other:?}"),
    }
    let t = c[0]
        .txn(Txn::new().when([Compare::value("a", CompareOp::Equal, "2")]).or_else([TxnOp::get("b", None)]))
        .await
        .unwrap();
    assert!(!t.succeeded());
    assert_eq!(t.header().unwrap().revision(), rev_after_delete + 1, "a read-only txn takes no revision");

    // Compaction.
    let cur = c[0].get("a", None).await.unwrap().header().unwrap().revision();
    c[1].compact(cur - 1, None).await.unwrap();
    let e = c[2].get("a", Some(GetOptions::new().with_revision(2))).await.unwrap_err();
    let s = status(&e).expect("grpc status");
    assert_eq!(
        (s.code(), s.message()),
        (tonic::Code::OutOfRange, "etcdserver: mvcc: required revision has been compacted")
    );
    let e = c[2].get("a", Some(GetOptions::new().with_revision(cur + 100))).await.unwrap_err();
    assert_eq!(status(&e).unwrap().message(), "etcdserver: mvcc: required revision is a future revision");
    let e = c[0].compact(cur - 1, None).await.unwrap_err();
    assert_eq!(status(&e).unwrap().code(), tonic::Code::OutOfRange);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_etcds_errors_and_change_nothing() {
    let tc = start(3, &["--max-txn-ops=8", "--max-request-bytes=65536"]).await;
    let eps = tc.endpoints();
    let mut c = client(&eps).await;
    c.put("keep", "me", None).await.unwrap();

    let check = |e: etcd_client::Error, code: tonic::Code, msg: &str| {
        let s = status(&e).unwrap_or_else(|| panic!("expected a gRPC status, got {e}"));
        assert_eq!((s.code(), s.message()), (code, msg));
    };
    check(c.put("", "v", None).await.unwrap_err(), tonic::Code::InvalidArgument, "etcdserver: key is not provided");
    check(c.get("", None).await.unwrap_err(), tonic::Code::InvalidArgument, "etcdserver: key is not provided");
    let many = Txn::new().and_then((0..9).map(|i| TxnOp::put(format!("k{i}"), "v", None)).collect::<Vec<_>>());
    check(
        c.txn(many).await.unwrap_err(),
        tonic::Code::InvalidArgument,
        "etcdserver: too many operations in txn request",
    );
    let dup = Txn::new().and_then([TxnOp::put("d", "1", None), TxnOp::put("d", "2", None)]);
    check(
        c.txn(dup).await.unwrap_err(),
        tonic::Code::InvalidArgument,
        "etcdserver: duplicate key given in txn request",
    );
    let big = vec![b'x'; 100 * 1024];
    check(c.put("big", big, None).await.unwrap_err(), tonic::Code::InvalidArgument, "etcdserver: request is too large");
    // Above the gRPC limit (request limit + 512 KiB) gRPC itself refuses the message.
    let huge = vec![b'x'; 700 * 1024];
    let e = c.put("huge", huge, None).await.unwrap_err();
    let s = status(&e).expect("grpc status");
    assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{e}");
    assert!(s.message().starts_with("grpc: received message larger than max ("), "{e}");
    check(
        c.put("missing", "", Some(PutOptions::new().with_ignore_value())).await.unwrap_err(),
        tonic::Code::InvalidArgument,
        "etcdserver: key not found",
    );
    check(
        c.put("keep", "v", Some(PutOptions::new().with_ignore_value())).await.unwrap_err(),
        tonic::Code::InvalidArgument,
        "etcdserver: value is provided",
    );
    check(
        c.put("x", "v", Some(PutOptions::new().with_lease(12345))).await.unwrap_err(),
        tonic::Code::NotFound,
        "etcdserver: requested lease not found",
    );
    // Nothing above changed the store, and the cluster still serves.
    let r = c.get("", Some(GetOptions::new().with_from_key())).await.unwrap();
    assert_eq!(r.kvs().len(), 1);
    assert_eq!(r.kvs()[0].value(), b"me");
    assert_eq!(r.header().unwrap().revision(), 2);
}
