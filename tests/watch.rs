//! etcd's Watch API on a real cluster, through the `etcd-client` crate and `etcdctl`: live
//! events and history, prev_kv, filters, cancel, progress, compaction, fragments, refused
//! creates, a slow watcher, and watches across a leader change and a reconnect.

mod common;

use std::time::Duration;

use common::*;
use etcd_client::{EventType, GetOptions, WatchFilterType, WatchOptions, WatchResponse, WatchStream};

/// The next response, or a panic after `within`.
async fn next(w: &mut WatchStream, within: Duration) -> WatchResponse {
    match tokio::time::timeout(within, w.message()).await {
        Ok(Ok(Some(r))) => r,
        Ok(other) => panic!("watch stream ended: {other:?}"),
        Err(_) => panic!("no watch response within {within:?}"),
    }
}

/// (type, key, value, mod_revision) of each event.
fn events(r: &WatchResponse) -> Vec<(EventType, String, String, i64)> {
    r.events()
        .iter()
        .map(|e| {
            let kv = e.kv().unwrap();
            (e.event_type(), kv.key_str().unwrap().to_string(), kv.value_str().unwrap().to_string(), kv.mod_revision())
        })
        .collect()
}

/// Collects events for `watch_id` until `n` have arrived.
async fn collect(w: &mut WatchStream, watch_id: i64, n: usize) -> Vec<(EventType, String, String, i64)> {
    let mut out = Vec::new();
    while out.len() < n {
        let r = next(w, Duration::from_secs(20)).await;
        assert!(!r.canceled(), "canceled: {}", r.cancel_reason());
        if r.watch_id() == watch_id {
            out.extend(events(&r));
        }
    }
    assert_eq!(out.len(), n, "more events than expected: {out:?}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_live_history_prev_kv_filters_cancel_and_progress() {
    let tc = start(3, &[]).await;
    let eps = tc.endpoints();
    let leader = tc.wait_leader(Duration::from_secs(10)).await.unwrap();
    let follower = eps[(leader + 1) % 3].clone();
    let mut writer = client(&eps).await;
    let mut watcher = client(std::slice::from_ref(&follower)).await;

    // A follower serves the watch from its own applied state.
    let mut w = watcher.watch("w/", Some(WatchOptions::new().with_prefix().with_prev_key())).await.unwrap();
    let created = next(&mut w, Duration::from_secs(5)).await;
    assert!(created.created() && !created.canceled());
    let id = created.watch_id();
    let start = created.header().unwrap().revision();

    writer.put("w/a", "1", None).await.unwrap();
    writer.put("w/a", "2", None).await.unwrap();
    writer.put("other", "x", None).await.unwrap();
    writer.delete("w/a", None).await.unwrap();
    let mut got = Vec::new();
    let mut prevs = Vec::new();
    while got.len() < 3 {
        let r = next(&mut w, Duration::from_secs(10)).await;
        assert_eq!(r.watch_id(), id);
        for e in r.events() {
            prevs.push(e.prev_kv().map(|kv| kv.value_str().unwrap().to_string()));
        }
        got.extend(events(&r));
        // The header's revision covers the events it carries.
        assert!(r.header().unwrap().revision() >= got.last().unwrap().3);
    }
    let r1 = start + 1;
    assert_eq!(
        got,
        vec![
            (EventType::Put, "w/a".into(), "1".into(), r1),
            (EventType::Put, "w/a".into(), "2".into(), r1 + 1),
            (EventType::Delete, "w/a".into(), "".into(), r1 + 3),
        ]
    );
    assert_eq!(prevs, vec![None, Some("1".into()), Some("2".into())], "prev_kv: none for a create");

    // Second watcher on the same stream: history from r1, deletes only.
    w.watch(
        "w/",
        Some(WatchOptions::new().with_prefix().with_start_revision(r1).with_filters([WatchFilterType::NoPut])),
    )
    .await
    .unwrap();
    let created = next(&mut w, Duration::from_secs(5)).await;
    assert!(created.created());
    let id2 = created.watch_id();
    assert_ne!(id2, id);
    assert_eq!(collect(&mut w, id2, 1).await, vec![(EventType::Delete, "w/a".into(), "".into(), r1 + 3)]);

    // Progress: answered with watch id -1 and a revision everything up to has been sent.
    w.request_progress().await.unwrap();
    let p = next(&mut w, Duration::from_secs(5)).await;
    assert_eq!(p.watch_id(), -1);
    assert!(p.events().is_empty());
    assert_eq!(p.header().unwrap().revision(), r1 + 3);

    // Cancel: acknowledged; no more events for it.
    w.cancel(id).await.unwrap();
    let c = next(&mut w, Duration::from_secs(5)).await;
    assert!(c.canceled() && c.watch_id() == id);
    writer.delete("w/", Some(etcd_client::DeleteOptions::new().with_prefix())).await.unwrap();
    writer.put("w/b", "1", None).await.unwrap();
    writer.delete("w/b", None).await.unwrap();
    let r = next(&mut w, Duration::from_secs(10)).await;
    assert_eq!(r.watch_id(), id2, "the canceled watcher got events");
    assert_eq!(events(&r)[0].0, EventType::Delete);
}

/// Watchers created with progress_notify hear the current revision every interval when
/// nothing else was sent to them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_progress_notifications() {
    let tc = start(3, &["--experimental-watch-progress-notify-interval=300ms"]).await;
    // One member for the put and the watches: a member answers a put once it has applied it
    // (waiting up to a second for that), so the watches start after it. (Through different
    // members, as with etcd, a watch on a member that has not applied the put yet would start
    // before it and deliver it.)
    let mut cli = client(&tc.endpoints()[..1]).await;
    let rev = cli.put("p/x", "1", None).await.unwrap().header().unwrap().revision();
    let mut w = cli.watch("p/", Some(WatchOptions::new().with_prefix().with_progress_notify())).await.unwrap();
    let id = next(&mut w, Duration::from_secs(5)).await.watch_id();
    let mut quiet = cli.watch("q/", Some(WatchOptions::new().with_prefix())).await.unwrap();
    assert!(next(&mut quiet, Duration::from_secs(5)).await.created());
    for _ in 0..2 {
        let p = next(&mut w, Duration::from_secs(3)).await;
        assert_eq!(p.watch_id(), id);
        assert!(p.events().is_empty());
        assert_eq!(p.header().unwrap().revision(), rev);
    }
    // A watcher that did not ask gets none.
    assert!(tokio::time::timeout(Duration::from_secs(1), quiet.message()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_start_is_canceled_and_bad_creates_are_refused_like_etcd() {
    let tc = start(3, &[]).await;
    let eps = tc.endpoints();
    // One member: another may not have applied the compaction yet and would still serve the
    // history below it (etcd's members apply at their own pace, too).
    let mut cli = client(&eps[..1]).await;
    let first = cli.put("c", "1", None).await.unwrap().header().unwrap().revision();
    cli.put("c", "2", None).await.unwrap();
    let last = cli.put("c", "3", None).await.unwrap().header().unwrap().revision();
    cli.compact(last, None).await.unwrap();

    let mut w = cli.watch("c", Some(WatchOptions::new().with_start_revision(first))).await.unwrap();
    let created = next(&mut w, Duration::from_secs(5)).await;
    assert!(created.created());
    let c = next(&mut w, Duration::from_secs(5)).await;
    assert!(c.canceled(), "{c:?}");
    assert_eq!(c.compact_revision(), last);
    // At the compaction revision itself: allowed (etcd keeps the latest version there).
    let mut w = cli.watch("c", Some(WatchOptions::new().with_start_revision(last))).await.unwrap();
    assert!(next(&mut w, Duration::from_secs(5)).await.created());
    let r = next(&mut w, Duration::from_secs(5)).await;
    assert_eq!(events(&r), vec![(EventType::Put, "c".into(), "3".into(), last)]);

    // An empty range and a duplicate watch id: created and canceled at once, etcd's reasons.
    let mut w = cli.watch("b", Some(WatchOptions::new().with_range("a"))).await.unwrap();
    let r = next(&mut w, Duration::from_secs(5)).await;
    assert!(r.created() && r.canceled());
    assert_eq!(r.watch_id(), -1);
    assert_eq!(r.cancel_reason(), "mvcc: watcher range is empty");
    w.watch("x", Some(WatchOptions::new().with_watch_id(7))).await.unwrap();
    assert_eq!(next(&mut w, Duration::from_secs(5)).await.watch_id(), 7);
    w.watch("y", Some(WatchOptions::new().with_watch_id(7))).await.unwrap();
    let r = next(&mut w, Duration::from_secs(5)).await;
    assert!(r.canceled());
    assert_eq!(r.cancel_reason(), "mvcc: duplicate watch ID provided on the WatchStream");
    // Nothing stored was touched.
    assert_eq!(cli.get("c", None).await.unwrap().kvs()[0].value(), b"3");
}

/// Responses larger than the request size limit are split when the watcher asks for fragments
/// (checked on the raw gRPC stream: clients reassemble fragments and hide the flag).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_history_arrives_in_fragments() {
    use cairn_proto::etcdserverpb as pb;
    let tc = start(3, &["--max-request-bytes=20000", "--max-key-bytes=1000"]).await;
    let eps = tc.endpoints();
    let mut cli = client(&eps).await;
    let first = cli.put("f/0", "x".repeat(10_000), None).await.unwrap().header().unwrap().revision();
    // 800 KB of history: more than the limit plus etcd's 512 KiB allowance for gRPC overhead.
    let mut last = first;
    for i in 1..80 {
        last = cli.put(format!("f/{i}"), "x".repeat(10_000), None).await.unwrap().header().unwrap().revision();
    }
    // Member 0 serves the watch: once it has applied every put, the whole history is one
    // catch-up (which must come in fragments). A member still applying would send the last
    // puts afterwards as live events (a race in this test that CI once hit).
    let mut kv0 = pb::kv_client::KvClient::connect(eps[0].clone()).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let probe = pb::RangeRequest { key: b"f/0".to_vec(), serializable: true, ..Default::default() };
        let r = kv0.range(probe).await.unwrap().into_inner();
        if r.header.unwrap().revision >= last {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "member 0 never applied revision {last}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut raw = pb::watch_client::WatchClient::connect(eps[0].clone()).await.unwrap();
    let create = pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(pb::WatchCreateRequest {
            key: b"f/".to_vec(),
            range_end: b"f0".to_vec(),
            start_revision: first,
            fragment: true,
            ..Default::default()
        })),
    };
    // Keep the request side open: the stream lives as long as the sender.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(create).await.unwrap();
    let mut responses = raw.watch(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    let created = responses.message().await.unwrap().unwrap();
    assert!(created.created);
    let mut parts = Vec::new();
    let mut n = 0;
    while n < 80 {
        let r = tokio::time::timeout(Duration::from_secs(10), responses.message()).await.unwrap().unwrap().unwrap();
        n += r.events.len();
        parts.push((r.fragment, r.events.iter().map(|e| e.kv.as_ref().unwrap().mod_revision).collect::<Vec<_>>()));
    }
    drop(tx);
    assert!(parts.len() > 1, "expected several fragments: {parts:?}");
    assert!(parts[..parts.len() - 1].iter().all(|p| p.0), "all but the last marked fragment: {parts:?}");
    assert!(!parts.last().unwrap().0);
    let revs: Vec<i64> = parts.iter().flat_map(|p| p.1.clone()).collect();
    assert_eq!(revs, (first..first + 80).collect::<Vec<_>>());
}

/// A watcher whose client does not read falls behind the event feed; once it reads again it
/// still gets every event, in order, from the store's history. Writes did not wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_watcher_catches_up_without_gaps() {
    let tc = start(3, &[]).await;
    let eps = tc.endpoints();
    let mut cli = client(&eps).await;
    let mut watcher = client(&eps[..1]).await;
    let mut w = watcher.watch("s/", Some(WatchOptions::new().with_prefix())).await.unwrap();
    let created = next(&mut w, Duration::from_secs(5)).await;
    let base = created.header().unwrap().revision();
    let n = 150;
    // A second watcher on the same stream, from a revision in the future: the catch-up after the
    // lag must not move it backwards.
    let future = base + n as i64 + 20;
    w.watch("s/", Some(WatchOptions::new().with_prefix().with_start_revision(future))).await.unwrap();
    let created2 = next(&mut w, Duration::from_secs(5)).await;
    assert!(created2.created());
    // More event bytes than the feed keeps for a receiver that is behind (64 MiB) plus what the
    // stream queues for its client (`OUTBOUND_QUEUE` items, one applied batch each) and the
    // HTTP/2 windows. One put at a time, so each log entry holds one event of 1 MB whatever the
    // proposal batching does (an apply call can still span several entries).
    let value = "v".repeat(1_000_000);
    for i in 0..n {
        cli.put(format!("s/{i:05}"), value.clone(), None).await.unwrap();
    }
    let (mut first, mut second) = (Vec::new(), Vec::new());
    // Read (and so catch up, while the store is still below the future watcher's start), then
    // write past that start, then read the rest.
    for (want, late) in [(n, true), (n + 30, false)] {
        while first.len() < want || (!late && second.len() < 11) {
            let r = next(&mut w, Duration::from_secs(20)).await;
            assert!(!r.canceled(), "canceled: {}", r.cancel_reason());
            let revs = events(&r).into_iter().map(|e| e.3);
            if r.watch_id() == created.watch_id() {
                first.extend(revs);
            } else if r.watch_id() == created2.watch_id() {
                second.extend(revs);
            }
        }
        if late {
            for i in 0..30 {
                cli.put(format!("s/late/{i:02}"), "v", None).await.unwrap();
            }
        }
    }
    assert_eq!(first, (base + 1..=base + n as i64 + 30).collect::<Vec<_>>(), "gap or duplicate");
    assert_eq!(
        second,
        (future..=base + n as i64 + 30).collect::<Vec<_>>(),
        "the future watcher got events before its start"
    );
    let (_, metrics) = cairn_testkit::http::get(&eps[0], "/metrics").await.unwrap();
    let resyncs: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("cairn_watch_resyncs_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(resyncs > 0.0, "the watcher never fell behind the feed; the test did not exercise catch-up");
    let count = cli.get("s/", Some(GetOptions::new().with_prefix().with_count_only())).await.unwrap().count();
    assert_eq!(count, n as i64 + 30);
}

/// Watches on a follower keep going while the leader is killed; a client that reconnects to
/// another member from its last revision + 1 continues with no gap and no duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_across_leader_kill_and_reconnect() {
    let mut tc = start(3, &[]).await;
    let eps = tc.endpoints();
    let leader = tc.wait_leader(Duration::from_secs(10)).await.unwrap();
    let a = (leader + 1) % 3;
    let b = (leader + 2) % 3;
    let mut wc = client(std::slice::from_ref(&eps[a])).await;
    let mut w = wc.watch("k/", Some(WatchOptions::new().with_prefix())).await.unwrap();
    let created = next(&mut w, Duration::from_secs(5)).await;
    let base = created.header().unwrap().revision();
    let writer_eps = eps.clone();
    let writes = tokio::spawn(async move {
        let mut c = client_with_timeout(&writer_eps, Duration::from_secs(2)).await;
        let mut acked = 0;
        let mut i = 0;
        while acked < 300 {
            i += 1;
            if c.put(format!("k/{i:05}"), "v", None).await.is_ok() {
                acked += 1;
            }
        }
        i
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    tc.kill(leader);
    let attempts = writes.await.unwrap();
    // Everything committed: read through the survivors.
    let mut c = client(&[eps[a].clone(), eps[b].clone()]).await;
    let committed =
        c.get("k/", Some(GetOptions::new().with_prefix().with_count_only())).await.unwrap().count() as usize;
    assert!(committed >= 300 && committed <= attempts as usize);
    let first_half = collect(&mut w, created.watch_id(), committed / 2).await;
    drop(w);
    // Reconnect elsewhere from the last revision seen + 1.
    let last = first_half.last().unwrap().3;
    let mut wc2 = client(std::slice::from_ref(&eps[b])).await;
    let mut w2 = wc2.watch("k/", Some(WatchOptions::new().with_prefix().with_start_revision(last + 1))).await.unwrap();
    let created2 = next(&mut w2, Duration::from_secs(5)).await;
    let second_half = collect(&mut w2, created2.watch_id(), committed - committed / 2).await;
    let revs: Vec<i64> = first_half.iter().chain(second_half.iter()).map(|e| e.3).collect();
    let mut sorted = revs.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(revs, sorted, "out of order or duplicated");
    assert_eq!(revs.len(), committed);
    // Every event is a committed key, each key once.
    let mut keys: Vec<String> = first_half.iter().chain(second_half.iter()).map(|e| e.1.clone()).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), committed);
    assert!(revs[0] > base);
}

/// `etcdctl watch` prints events as etcd's does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_watch_prints_events() {
    let tc = start(3, &[]).await;
    let eps = tc.endpoints();
    let mut cli = client(&eps).await;
    let first = cli.put("e/1", "one", None).await.unwrap().header().unwrap().revision();
    cli.put("e/2", "two", None).await.unwrap();
    cli.delete("e/1", None).await.unwrap();
    let hostports: Vec<String> = eps.iter().map(|e| e.trim_start_matches("http://").to_string()).collect();
    // History replay from `first`; etcdctl watches until killed.
    let child = std::process::Command::new("timeout")
        .args(["3", "etcdctl"])
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", hostports.join(",")))
        .args(["watch", "--prefix", "e/", &format!("--rev={first}"), "--prev-kv"])
        .output()
        .expect("etcdctl");
    let out = stdout(&child);
    // With --prev-kv etcdctl prints the previous key-value before the event's own.
    assert_eq!(out, "PUT\ne/1\none\nPUT\ne/2\ntwo\nDELETE\ne/1\none\ne/1\n\n", "stderr: {}", stderr(&child));
}

/// clientv3's `WithRequireLeader` (`hasleader` metadata): on a member cut off from the others,
/// a watch that asked for a leader is ended with `etcdserver: no leader` within a few
/// election timeouts, and requests that ask are refused with the same error; a plain watch
/// stays open, and everything works again once the member has a leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_leader_ends_watches_and_refuses_requests_without_a_leader() {
    let mut tc = start(3, &[]).await;
    let eps = tc.endpoints();
    let leader = tc.wait_leader(Duration::from_secs(10)).await.unwrap();
    // Watch on a follower; cut it off by pausing the other two.
    let f = (leader + 1) % 3;
    let opts = etcd_client::ConnectOptions::new()
        .with_require_leader(true)
        .with_timeout(Duration::from_secs(3))
        .with_connect_timeout(Duration::from_secs(1));
    let mut strict = etcd_client::Client::connect([eps[f].clone()], Some(opts)).await.unwrap();
    let mut plain = client(std::slice::from_ref(&eps[f])).await;
    let mut requiring = strict.watch("k", None).await.unwrap();
    let mut relaxed = plain.watch("k", None).await.unwrap();
    strict.get("k", None).await.expect("a leader is known");
    assert!(next(&mut relaxed, Duration::from_secs(5)).await.created(), "the plain watch is created");
    for i in 0..3 {
        if i != f {
            tc.pause(i);
        }
    }
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match requiring.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the watch that requires a leader is ended within 10 s");
    let e = ended.expect_err("ended with an error");
    assert_eq!(
        status(&e).map(|s| (s.code(), s.message().to_string())),
        Some((tonic::Code::Unavailable, "etcdserver: no leader".to_string())),
        "{e:?}"
    );
    let e = strict.get("k", None).await.expect_err("refused without a leader");
    assert_eq!(status(&e).map(|s| s.message().to_string()).as_deref(), Some("etcdserver: no leader"), "{e:?}");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), relaxed.message()).await.is_err(),
        "the plain watch stays open and silent"
    );
    for i in 0..3 {
        if i != f {
            tc.resume(i);
        }
    }
    let end = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        if strict.get("k", None).await.is_ok() {
            break;
        }
        assert!(std::time::Instant::now() < end, "requests that require a leader work again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    plain.put("k", "after", None).await.unwrap();
    let r = next(&mut relaxed, Duration::from_secs(10)).await;
    assert_eq!(events(&r)[0].2, "after", "the plain watch lived through it");
}
