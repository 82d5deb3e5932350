//! Bad input never crashes a member or loses data: malformed protobuf, a second process on a
//! data directory, corrupted files, nonsense flags.

mod common;

use std::time::Duration;

use bytes::{Buf, BufMut};
use common::*;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// A codec that sends raw bytes, to put arbitrary (malformed) protobuf on the wire.
#[derive(Default)]
struct Raw;
impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}
impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}
impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let v = src.chunk().to_vec();
        src.advance(v.len());
        Ok(Some(v))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_protobuf_is_refused_and_the_member_keeps_serving() {
    let tc = start(3, &[]).await;
    let eps = tc.endpoints();
    let ch = tonic::transport::Endpoint::from_shared(eps[0].clone()).unwrap().connect().await.unwrap();
    let mut grpc = tonic::client::Grpc::new(ch);
    for garbage in [vec![0xff, 0xff, 0xff, 0xff], vec![0x0a, 0x10, 0x01], vec![0x08; 7]] {
        grpc.ready().await.unwrap();
        let path = http::uri::PathAndQuery::from_static("/etcdserverpb.KV/Put");
        let r = grpc.unary(tonic::Request::new(garbage), path, Raw).await;
        let s = r.expect_err("malformed request must fail");
        assert_eq!(s.code(), tonic::Code::Internal, "{s:?}");
        assert!(s.message().starts_with("grpc: error unmarshalling request"), "{s:?}");
    }
    let mut c = client(&eps).await;
    c.put("still", "works", None).await.unwrap();
    assert_eq!(c.get("still", None).await.unwrap().kvs()[0].value(), b"works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_member_ids_are_etcds_not_found() {
    let tc = start(3, &[]).await;
    let mut c = client(&tc.endpoints()).await;
    for e in [c.member_remove(0xdead_beef).await.unwrap_err(), c.member_promote(0xdead_beef).await.unwrap_err()] {
        let s = status(&e).unwrap();
        assert_eq!((s.code(), s.message()), (tonic::Code::NotFound, "etcdserver: member not found"));
    }
    let e = c.member_add(["not a url"], None).await.unwrap_err();
    assert_eq!(status(&e).unwrap().message(), "etcdserver: given member URLs are invalid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_process_on_a_data_dir_is_refused() {
    let tc = start(1, &[]).await;
    let m = &tc.members[0];
    let out = std::process::Command::new(binary())
        .args(["server", "--name", "other", &format!("--data-dir={}", m.data_dir.display())])
        .args(["--listen-client-urls=http://127.0.0.1:0", "--listen-peer-urls=http://127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is in use by another process"), "{err}");
}

fn flip_byte(path: &std::path::Path, at: usize) {
    let mut b = std::fs::read(path).unwrap();
    let i = at.min(b.len() - 1);
    b[i] ^= 0x5a;
    std::fs::write(path, b).unwrap();
}

async fn refuses_to_start(tc: &mut TestCluster, i: usize, expect: &str) {
    tc.restart(i).unwrap();
    // The member must exit by itself with a clear message.
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let log = std::fs::read_to_string(&tc.members[i].log).unwrap();
        if log.contains(expect) {
            assert!(
                tc.status(i, Duration::from_millis(300)).await.is_none(),
                "a member with corrupt data must not serve"
            );
            return;
        }
    }
    panic!("expected {expect:?} in the log:\n{}", tc.logs_tail(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_files_stop_the_member_and_lose_nothing() {
    let mut tc = start(3, &[]).await;
    let eps = tc.endpoints();
    let mut c = client(&eps).await;
    for i in 0..200 {
        c.put(format!("k{i:03}"), format!("v{i}"), None).await.unwrap();
    }
    let leader = tc.wait_leader(Duration::from_secs(5)).await.unwrap();
    let (a, b) = ((leader + 1) % 3, (leader + 2) % 3);
    let check_all = |eps: Vec<String>| async move {
        let mut c = client(&eps).await;
        let r = c.get("k", Some(etcd_client::GetOptions::new().with_prefix())).await.unwrap();
        assert_eq!(r.kvs().len(), 200, "every acknowledged write is still there");
        c.put(format!("after-{}", eps.len()), "x", None).await.unwrap();
    };

    // A flipped byte in the middle of the Raft log: the member refuses to start; the other two
    // carry on with everything.
    tc.stop(a);
    let wal = tc.members[a].data_dir.join("member/wal");
    let seg = std::fs::read_dir(&wal).unwrap().map(|e| e.unwrap().path()).min().unwrap();
    let len = std::fs::metadata(&seg).unwrap().len() as usize;
    flip_byte(&seg, len / 2);
    refuses_to_start(&mut tc, a, "data corruption detected").await;
    check_all(vec![eps[leader].clone(), eps[b].clone()]).await;

    // The operator's repair: remove the member, add a fresh one in its place.
    let list = stdout(&etcdctl(&[eps[leader].clone()], &["member", "list"]));
    let name_a = tc.members[a].name.clone();
    let id_a =
        list.lines().find(|l| l.contains(&format!(", {name_a},"))).unwrap().split(',').next().unwrap().to_string();
    let o = etcdctl(&[eps[leader].clone()], &["member", "remove", &id_a]);
    assert!(o.status.success(), "{}", stderr(&o));
    let fresh = tc.new_member();
    let (name, peer) = (tc.members[fresh].name.clone(), tc.members[fresh].peer_url.clone());
    let o = etcdctl(&[eps[leader].clone()], &["member", "add", &name, &format!("--peer-urls={peer}")]);
    assert!(o.status.success(), "{}", stderr(&o));
    tc.start_member(fresh).unwrap();
    let target = tc.status(leader, Duration::from_secs(2)).await.unwrap().raft_applied_index;
    tc.wait_applied(target, Duration::from_secs(30)).await.unwrap();

    // A flipped byte in a stored value of another member's state store: detected, refused.
    tc.stop(b);
    let db = tc.members[b].data_dir.join("member/state.redb");
    let bytes = std::fs::read(&db).unwrap();
    let at = bytes.windows(4).position(|w| w == b"v150").expect("the value is stored in the file");
    flip_byte(&db, at + 1);
    refuses_to_start(&mut tc, b, "corrupt").await;
    let fresh_ep = tc.members[fresh].client_url.clone();
    check_all(vec![eps[leader].clone(), fresh_ep]).await;
}

#[test]
fn nonsense_flags_are_refused_with_a_clear_message() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(binary()).arg("server").args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let dir = tempfile::tempdir().unwrap();
    let dd = format!("--data-dir={}", dir.path().join("d").display());
    assert!(run(&[&dd, "--initial-cluster-state=sideways"]).contains("--initial-cluster-state"));
    assert!(run(&[&dd, "--max-txn-ops=0"]).contains("--max-txn-ops"));
    assert!(run(&[&dd, "--heartbeat-interval=100", "--election-timeout=200"]).contains("--election-timeout"));
    assert!(run(&[&dd, "--initial-cluster=other=http://127.0.0.1:1"]).contains("--initial-cluster must include"));
    // https:// without a certificate: etcd's TLS flags are named.
    assert!(run(&[&dd, "--listen-client-urls=https://127.0.0.1:0"]).contains("--cert-file"));
}

/// Past the backend quota, writes get etcd's NOSPACE error and the alarm is raised cluster-wide;
/// reads and deletes keep working and nothing stored is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_exceeded_raises_nospace_and_keeps_data() {
    let tc = start(3, &["--quota-backend-bytes=1048576"]).await;
    let eps = tc.endpoints();
    let mut c = client(&eps).await;
    let value = vec![b'q'; 8 * 1024];
    let mut written = 0;
    let err = loop {
        match c.put(format!("fill/{written:05}"), value.clone(), None).await {
            Ok(_) => written += 1,
            Err(e) => break e,
        }
        assert!(written < 10_000, "the quota never triggered");
    };
    let s = status(&err).expect("grpc status");
    assert_eq!((s.code(), s.message()), (tonic::Code::ResourceExhausted, "etcdserver: mvcc: database space exceeded"));
    // The alarm is raised through the log, so every member reports it.
    let mut raised = false;
    for _ in 0..50 {
        let o = etcdctl(&eps, &["alarm", "list"]);
        if stdout(&o).contains("alarm:NOSPACE") {
            raised = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(raised, "NOSPACE alarm not listed");
    let e = c.put("more", "x", None).await.unwrap_err();
    assert_eq!(status(&e).unwrap().code(), tonic::Code::ResourceExhausted);
    let r = c.get("fill/", Some(etcd_client::GetOptions::new().with_prefix().with_count_only())).await.unwrap();
    assert_eq!(r.count(), written, "every acknowledged write is still there");
    assert_eq!(c.delete("fill/00000", None).await.unwrap().deleted(), 1, "deletes still work");
    let o = etcdctl(&eps, &["alarm", "disarm"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stdout(&etcdctl(&eps, &["alarm", "list"])).contains("NOSPACE"));
}
