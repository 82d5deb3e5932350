//! The peer port trusts nothing it cannot check: every call must name this member's cluster
//! (etcd's `X-Etcd-Cluster-ID`), a forwarded request that would write must name the client it
//! runs for, and without a TLS client certificate on the peer connection the leader believes
//! that name only when the client's own token proves it. Each call here is made by hand on a
//! member's peer listener, as a stranger on the network could.

mod common;

use cairn_proto::etcdserverpb as pb;
use cairn_proto::peer::peer_client::PeerClient;
use cairn_proto::peer::ranges_client::RangesClient;
use cairn_proto::peer::{
    forward_reply::Response as Fr, forward_request::Request as Fq, ClusterInfoRequest, ForwardRequest, RaftRequest,
    RangeBatchRequest, RangeMessage, RangeStreamRequest, SnapshotChunk,
};
use common::start;
use tonic::transport::Channel;
use tonic::Code;

async fn peer(url: &str) -> PeerClient<Channel> {
    PeerClient::connect(url.to_string()).await.expect("connect to the peer port")
}

/// A peer call carrying `cluster` as its cluster ID (hex, as members send it), or none.
fn call<T>(msg: T, cluster: Option<String>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(id) = cluster {
        r.metadata_mut().insert("x-etcd-cluster-id", id.parse().unwrap());
    }
    r
}

fn put(key: &str, value: &str) -> Option<Fq> {
    Some(Fq::Put(pb::PutRequest { key: key.into(), value: value.into(), ..Default::default() }))
}

/// Sends `req` as one request of a forwarded batch (message kind 8 of the meta group,
/// `u64::MAX`), the message members send on the range transport's stream, here on its
/// `Ranges/Batch` call; its own result.
async fn forward_batched(
    r: &mut RangesClient<Channel>,
    req: ForwardRequest,
    cluster: Option<String>,
) -> Result<cairn_proto::peer::ForwardReply, tonic::Status> {
    use cairn_proto::peer::{forward_result::Result as R, ForwardBatchReply, ForwardBatchRequest};
    use prost::Message;
    let data = ForwardBatchRequest { requests: vec![req] }.encode_to_vec();
    let msg = RangeMessage { group: u64::MAX, kind: 8, data: data.into() };
    let reply = r.batch(call(RangeBatchRequest { messages: vec![msg], ttl_ms: 0 }, cluster)).await?.into_inner();
    assert_eq!(reply.results.len(), 1, "{reply:?}");
    let result = &reply.results[0];
    assert_eq!(result.error, "", "the meta group takes forwarded batches");
    let mut results = ForwardBatchReply::decode(&result.data[..]).expect("a forwarded batch's answer").results;
    assert_eq!(results.len(), 1, "{results:?}");
    match results.pop().and_then(|r| r.result).expect("a result") {
        R::Reply(reply) => Ok(reply),
        R::Error(e) => Err(tonic::Status::new(Code::from_i32(e.code), e.message)),
    }
}

fn assert_refused<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, msg: &str) {
    let s = r.expect_err("the call should be refused");
    assert_eq!(s.code(), code, "{s:?}");
    assert!(s.message().contains(msg), "{:?} should contain {msg:?}", s.message());
}

#[tokio::test(flavor = "multi_thread")]
async fn peer_calls_must_name_this_cluster() {
    let tc = start(3, &[]).await;
    let mut cli = common::client(&tc.endpoints()).await;
    let st = cli.status().await.unwrap();
    let cluster = st.header().unwrap().cluster_id();
    let term = st.raft_term();
    let ours = Some(format!("{cluster:x}"));
    let theirs = Some(format!("{:x}", cluster ^ 1));

    for m in &tc.members {
        let mut p = peer(&m.peer_url).await;
        // Raft's own calls: the cluster ID is checked before the message is even decoded.
        let garbage = || RaftRequest { data: vec![0xff; 8].into() };
        assert_refused(p.vote(call(garbage(), None)).await, Code::FailedPrecondition, "cluster ID missing");
        assert_refused(p.vote(call(garbage(), theirs.clone())).await, Code::FailedPrecondition, "cluster ID mismatch");
        assert_refused(
            p.append_entries(call(garbage(), theirs.clone())).await,
            Code::FailedPrecondition,
            "cluster ID mismatch",
        );
        assert_refused(p.vote(call(garbage(), ours.clone())).await, Code::InvalidArgument, "bad raft message");
        let stream = futures::stream::iter(vec![garbage()]);
        assert_refused(p.stream_append(call(stream, theirs.clone())).await, Code::FailedPrecondition, "mismatch");
        let chunks = futures::stream::iter(vec![SnapshotChunk::default()]);
        assert_refused(p.install_snapshot(call(chunks, None)).await, Code::FailedPrecondition, "missing");

        // Forwarded requests too.
        let fwd = ForwardRequest { request: put("k", "theirs"), auth_revision: Some(0), ..Default::default() };
        assert_refused(p.forward(call(fwd, theirs.clone())).await, Code::FailedPrecondition, "cluster ID mismatch");

        // The data tier's batches, as calls and as a stream.
        let mut r = RangesClient::connect(m.peer_url.clone()).await.expect("connect to the peer port");
        assert_refused(
            r.batch(call(RangeBatchRequest::default(), theirs.clone())).await,
            Code::FailedPrecondition,
            "mismatch",
        );
        let batches = futures::stream::iter(vec![RangeStreamRequest::default()]);
        assert_refused(r.stream(call(batches, None)).await, Code::FailedPrecondition, "missing");

        // A joining member asks before it knows the ID; another cluster's member is refused.
        let info = p.cluster_info(call(ClusterInfoRequest {}, None)).await.expect("cluster info").into_inner();
        assert_eq!(info.cluster_id, cluster);
        assert_eq!(info.members.len(), 3);
        assert_refused(
            p.cluster_info(call(ClusterInfoRequest {}, theirs.clone())).await,
            Code::FailedPrecondition,
            "mismatch",
        );
    }

    // None of it disturbed the cluster: the same term, and writes go on.
    cli.put("after", "ok", None).await.expect("put after the refused calls");
    let st = cli.status().await.unwrap();
    assert_eq!(st.raft_term(), term, "refused calls must not move the term");
    let r = cli.get("k", None).await.unwrap();
    assert!(r.kvs().is_empty(), "no refused forward was applied");
}

/// A `Ranges/Stream` answers each batch under the id it was sent with, whatever the order,
/// and a message it cannot handle gets its own error, not the stream's end.
#[tokio::test(flavor = "multi_thread")]
async fn a_range_stream_answers_each_batch_by_its_id() {
    let tc = start(1, &[]).await;
    let mut cli = common::client(&tc.endpoints()).await;
    let st = cli.status().await.unwrap();
    let ours = Some(format!("{:x}", st.header().unwrap().cluster_id()));
    let mut r = RangesClient::connect(tc.members[0].peer_url.clone()).await.expect("connect to the peer port");

    let msg = |kind: u32, data: &[u8]| RangeMessage { group: 1, kind, data: data.to_vec().into() };
    let batch = |id: u64, messages: Vec<RangeMessage>| RangeStreamRequest {
        id,
        batch: Some(RangeBatchRequest { messages, ttl_ms: 0 }),
    };
    let sent = vec![
        // An unknown kind, and a forwarded request (kind 7) that does not decode.
        batch(7, vec![msg(99, b""), msg(7, &[0xff; 3])]),
        batch(3, vec![msg(7, &[0xff; 3])]),
        batch(0, vec![]),
    ];
    let mut replies = r.stream(call(futures::stream::iter(sent), ours)).await.expect("stream opened").into_inner();
    let mut got = std::collections::BTreeMap::new();
    while let Some(reply) = replies.message().await.expect("a reply") {
        let errors: Vec<String> = reply.reply.unwrap_or_default().results.into_iter().map(|r| r.error).collect();
        assert!(got.insert(reply.id, errors).is_none(), "batch {} answered twice", reply.id);
    }
    assert_eq!(got.keys().copied().collect::<Vec<_>>(), vec![0, 3, 7], "each batch answered once");
    assert!(got[&0].is_empty());
    assert_eq!(got[&7].len(), 2);
    assert!(got[&7][0].contains("unknown range message kind 99"), "{:?}", got[&7]);
    assert!(got[&7][1].contains("undecodable forwarded request"), "{:?}", got[&7]);
    assert_eq!(got[&3].len(), 1);
    assert!(got[&3][0].contains("undecodable forwarded request"), "{:?}", got[&3]);
}

/// The meta group's Raft messages travel in the range transport's batches, under the group id
/// no range has: on a `Ranges/Stream` the member's meta group answers them (here a vote from a
/// stranger with an older term, refused with the member's own vote); its appends are refused on
/// a `Ranges/Batch` call, where nothing keeps them in order; a bad one gets its own error.
#[tokio::test(flavor = "multi_thread")]
async fn the_meta_groups_messages_travel_in_the_range_batches() {
    const META: u64 = cairn_raft::range::mux::META_GROUP;
    let tc = start(1, &[]).await;
    let mut cli = common::client(&tc.endpoints()).await;
    cli.put("k", "v", None).await.expect("a write, so the member has voted in a term");
    let st = cli.status().await.unwrap();
    let ours = Some(format!("{:x}", st.header().unwrap().cluster_id()));
    let mut r = RangesClient::connect(tc.members[0].peer_url.clone()).await.expect("connect to the peer port");

    let msg = |kind: u32, data: Vec<u8>| RangeMessage { group: META, kind, data: data.into() };
    let vote = openraft::raft::VoteRequest::<cairn_raft::TypeConfig>::new(cairn_raft::types::Vote::new(0, 99), None);
    let vote = postcard::to_allocvec(&vote).unwrap();
    let sent = vec![RangeStreamRequest {
        id: 1,
        batch: Some(RangeBatchRequest {
            messages: vec![msg(2, vote.clone()), msg(1, vec![0xff; 3]), msg(6, vec![])],
            ttl_ms: 0,
        }),
    }];
    let mut replies = r.stream(call(futures::stream::iter(sent), ours.clone())).await.expect("stream").into_inner();
    let reply = replies.message().await.expect("a reply").expect("the batch is answered");
    let results = reply.reply.unwrap().results;
    assert_eq!(results.len(), 3);
    assert!(results[0].error.is_empty(), "{:?}", results[0]);
    let answer: openraft::raft::VoteResponse<cairn_raft::TypeConfig> =
        postcard::from_bytes(&results[0].data).expect("a vote response");
    assert!(!answer.vote_granted, "an older term is refused: {answer:?}");
    assert!(answer.vote.leader_id().term > 0, "the member's own vote comes back: {answer:?}");
    assert!(results[1].error.contains("bad meta group message"), "{:?}", results[1]);
    assert!(results[2].error.contains("not one of the meta group's"), "{:?}", results[2]);

    let batch = RangeBatchRequest { messages: vec![msg(1, vec![0xff; 3]), msg(2, vote)], ttl_ms: 0 };
    let results = r.batch(call(batch, ours)).await.expect("a batch call").into_inner().results;
    assert!(results[0].error.contains("travel only on a Ranges/Stream"), "{:?}", results[0]);
    assert!(results[1].error.is_empty(), "a vote may come in a call: {:?}", results[1]);
}

/// The leader of a 1-member cluster with auth enabled, reached on its peer port without a TLS
/// client certificate: a forwarded write runs only if the client's token proves the user it
/// names, and one that names no client is refused, never applied unchecked.
#[tokio::test(flavor = "multi_thread")]
async fn forwarded_writes_are_believed_only_with_the_clients_token() {
    let tc = start(1, &[]).await;
    let ep = tc.endpoints();
    let mut cli = common::client(&ep).await;
    let st = cli.status().await.unwrap();
    let ours = Some(format!("{:x}", st.header().unwrap().cluster_id()));

    let mut a = cli.auth_client();
    a.role_add("app").await.unwrap();
    a.role_grant_permission("app", etcd_client::Permission::read_write("app/").with_prefix()).await.unwrap();
    for (user, role) in [("root", "root"), ("alice", "app")] {
        a.user_add(user, "pw", None).await.unwrap();
        a.user_grant_role(user, role).await.unwrap();
    }
    a.auth_enable().await.unwrap();
    let token = |user: &'static str| {
        let ep = ep[0].clone();
        async move {
            let mut c = cairn_proto::etcdserverpb::auth_client::AuthClient::connect(ep).await.unwrap();
            let r = c.authenticate(pb::AuthenticateRequest { name: user.into(), password: "pw".into() }).await;
            r.unwrap().into_inner().token
        }
    };
    let (root, alice) = (token("root").await, token("alice").await);
    let mut rc = cairn_proto::etcdserverpb::auth_client::AuthClient::connect(ep[0].clone()).await.unwrap();
    let mut status = tonic::Request::new(pb::AuthStatusRequest {});
    status.metadata_mut().insert("token", root.parse().unwrap());
    let revision = rc.auth_status(status).await.unwrap().into_inner().auth_revision;

    let mut p = peer(&tc.members[0].peer_url).await;
    let mut batched = RangesClient::connect(tc.members[0].peer_url.clone()).await.expect("connect to the peer port");
    let fwd = |value: &str, auth_revision: Option<u64>, user: &str, token: &str| ForwardRequest {
        request: put("secret", value),
        auth_revision,
        auth_user: user.into(),
        auth_token: token.into(),
        ..Default::default()
    };
    let refused = [
        // Names root, proves nothing.
        (fwd("forged", Some(revision), "root", ""), Code::InvalidArgument, "user name is empty"),
        // Names root with a made-up token, or with alice's.
        (fwd("forged", Some(revision), "root", "eyJ1.c2ln"), Code::Unauthenticated, "invalid auth token"),
        (fwd("forged", Some(revision), "root", &alice), Code::Unauthenticated, "invalid auth token"),
        // Names nobody: not proposed unguarded.
        (fwd("forged", None, "", ""), Code::PermissionDenied, "names no client"),
        // Alice proves herself, but may not write there (apply's guard, as for any client).
        (fwd("forged", Some(revision), "alice", &alice), Code::PermissionDenied, "permission denied"),
    ];
    // Alike as a call of its own and as one of a batch on the range transport (how members
    // forward now): a connection without a client certificate proves nothing either way.
    for (req, code, msg) in refused {
        assert_refused(p.forward(call(req.clone(), ours.clone())).await, code, msg);
        assert_refused(forward_batched(&mut batched, req, ours.clone()).await, code, msg);
    }
    let ok = p.forward(call(fwd("root's", Some(revision), "root", &root), ours.clone())).await;
    assert!(matches!(ok.expect("root's own forwarded put").into_inner().response, Some(Fr::Put(_))));
    let mut batched_put = fwd("root's, batched", Some(revision), "root", &root);
    batched_put.request = put("secret-batched", "root's, batched");
    let ok = forward_batched(&mut batched, batched_put, ours.clone()).await;
    assert!(matches!(ok.expect("root's own batched put").response, Some(Fr::Put(_))));

    let mut kv = cairn_proto::etcdserverpb::kv_client::KvClient::connect(ep[0].clone()).await.unwrap();
    let mut get = tonic::Request::new(pb::RangeRequest { key: b"secret".to_vec(), ..Default::default() });
    get.metadata_mut().insert("token", root.parse().unwrap());
    let r = kv.range(get).await.unwrap().into_inner();
    assert_eq!(r.kvs.len(), 1);
    assert_eq!(r.kvs[0].value, b"root's", "only the proven write was applied");
    assert_eq!(r.kvs[0].version, 1, "and only once");
    let mut get = tonic::Request::new(pb::RangeRequest { key: b"secret-batched".to_vec(), ..Default::default() });
    get.metadata_mut().insert("token", root.parse().unwrap());
    let r = kv.range(get).await.unwrap().into_inner();
    assert_eq!(r.kvs.len(), 1);
    assert_eq!(r.kvs[0].value, b"root's, batched");
}

/// Bytes under `dir`, recursively.
fn du(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => du(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// A snapshot being received is bounded: twice the backend quota, and never below 64 MiB. One
/// that keeps coming past that is refused and what was written of it removed, so a peer (or
/// anyone on the peer port) cannot fill the disk.
#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_past_its_bound_is_refused_and_removed() {
    const MIB: usize = 1 << 20;
    let tc = start(1, &["--quota-backend-bytes", &MIB.to_string()]).await;
    let mut cli = common::client(&tc.endpoints()).await;
    let ours = format!("{:x}", cli.status().await.unwrap().header().unwrap().cluster_id());
    let before = du(&tc.members[0].data_dir);

    let header =
        postcard::to_allocvec(&(cairn_raft::types::Vote::new(1, 1), cairn_raft::types::SnapshotMeta::default()))
            .unwrap();
    let data = bytes::Bytes::from(vec![7u8; MIB]);
    let mut chunks = vec![SnapshotChunk { header: header.into(), data: data.clone() }];
    chunks.extend((0..64).map(|_| SnapshotChunk { header: Default::default(), data: data.clone() }));
    let mut p = peer(&tc.members[0].peer_url).await;
    let r = p.install_snapshot(call(futures::stream::iter(chunks), Some(ours))).await;
    assert_refused(r, Code::ResourceExhausted, &format!("snapshot larger than {} bytes", 64 * MIB));

    let after = du(&tc.members[0].data_dir);
    assert!(after < before + 8 * MIB as u64, "the refused snapshot's bytes were removed: {before} -> {after}");
    cli.put("after", "ok", None).await.expect("the member goes on");
}

/// The peer ports' ESTABLISHED TCP connections on this machine, by the port they go to
/// (`/proc/net/tcp` and `tcp6`: the client side of a loopback connection is the socket whose
/// remote port is the peer port).
fn connections_to(ports: &[u16]) -> std::collections::BTreeMap<u16, usize> {
    let mut n: std::collections::BTreeMap<u16, usize> = ports.iter().map(|p| (*p, 0)).collect();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st ...; st 01 is ESTABLISHED.
            if f.len() < 4 || f[3] != "01" {
                continue;
            }
            let rem_port = f[2].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            if let Some(c) = rem_port.and_then(|p| n.get_mut(&p)) {
                *c += 1;
            }
        }
    }
    n
}

/// Everything a member sends another travels on one connection: the meta group's appends,
/// votes and heartbeats, requests forwarded to the meta leader, and every range's batched
/// messages and forwarded Redis commands. After etcd writes through every member and Redis
/// writes to keys in every range through every node, each peer port has exactly one
/// connection from each other member.
#[tokio::test(flavor = "multi_thread")]
async fn members_share_one_connection_per_peer() {
    let tc = start(3, &[]).await;
    let eps = tc.endpoints();
    // etcd writes through each member: followers forward theirs to the meta leader.
    for ep in &eps {
        let mut cli = common::client(std::slice::from_ref(ep)).await;
        for i in 0..20 {
            cli.put(format!("k{i}"), "v", None).await.expect("put");
        }
    }
    // Redis writes through each node to keys of many slots (every range): a node that does not
    // lead a key's range forwards it.
    let redis = tc.redis_addrs();
    let end = std::time::Instant::now() + std::time::Duration::from_secs(30);
    for addr in &redis {
        let mut c = cairn_testkit::resp::Resp::connect(addr).await.expect("connect to the Redis port");
        for i in 0..200 {
            let key = format!("key:{i}");
            loop {
                let r = c.call(&[b"SET", key.as_bytes(), b"v"], std::time::Duration::from_secs(5)).await;
                match r {
                    Ok(cairn_testkit::resp::Reply::Simple(s)) if s == "OK" => break,
                    other => {
                        // The data tier forms after the meta group.
                        assert!(std::time::Instant::now() < end, "SET {key} on {addr}: {other:?}");
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    }
                }
            }
        }
    }
    let ports: Vec<u16> = tc
        .members
        .iter()
        .map(|m| m.peer_url.rsplit(':').next().unwrap().trim_end_matches('/').parse().unwrap())
        .collect();
    let n = connections_to(&ports);
    for (port, count) in &n {
        assert_eq!(*count, 2, "connections to peer port {port} (one from each other member expected): {n:?}");
    }
}
