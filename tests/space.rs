//! Space that can be reclaimed: the quota counts what the store holds (its apply buffer
//! included), compaction removes history in the background, defragment shrinks the file, and
//! after compact, defrag and disarm writes go on. Auto compaction with etcd's flags.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use etcd_client::{CompactionOptions, GetOptions};

const MIB: u64 = 1024 * 1024;

/// The state engine file of every member.
fn engine_files(tc: &TestCluster) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(tc.dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("member/state.redb"))
        .filter(|p| p.exists())
        .collect();
    out.sort();
    out
}

fn file_len(p: &PathBuf) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Puts 60 KB values on ten keys until the quota refuses one; returns how many were taken.
async fn fill_to_quota(c: &mut etcd_client::Client, value: &[u8]) -> u64 {
    let mut written = 0u64;
    let err = loop {
        // Ten keys rewritten again and again: the live keys are small, the history is not.
        match c.put(format!("k{}", written % 10), value.to_vec(), None).await {
            Ok(_) => written += 1,
            Err(e) => break e,
        }
        assert!(written < 2_000, "2,000 puts of 60 KB (120 MB) never reached a 16 MiB quota");
    };
    let s = status(&err).expect("grpc status");
    assert_eq!((s.code(), s.message()), (tonic::Code::ResourceExhausted, "etcdserver: mvcc: database space exceeded"));
    written
}

/// A 16 MiB quota is reached after about 16 MiB of history, even when apply's buffer is
/// larger than the quota and holds all of it (the buffer is counted), and DB SIZE shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_counts_the_history_apply_still_buffers() {
    let tc = start(1, &["--quota-backend-bytes=16777216", "--backend-batch-bytes=67108864"]).await;
    let mut c = client(&tc.endpoints()).await;
    let value = vec![b'v'; 60_000];
    let written = fill_to_quota(&mut c, &value).await;
    let history = written * value.len() as u64;
    assert!(
        history > 16 * MIB * 3 / 4 && history <= 16 * MIB,
        "NOSPACE after {written} puts = {:.1} MiB of history for a 16 MiB quota",
        history as f64 / MIB as f64
    );
    let st = tc.status(0, Duration::from_secs(5)).await.unwrap();
    assert!(
        st.db_size_in_use as u64 >= history,
        "DB SIZE in use {} counts the {history} bytes written",
        st.db_size_in_use
    );
    assert!(st.db_size as u64 >= history, "DB SIZE {} counts the buffer", st.db_size);
    assert!(file_len(&engine_files(&tc)[0]) < MIB, "and the buffer really held it (the file is small)");
}

/// Compact, defragment, disarm: the file shrinks to about its live bytes, DB SIZE follows, and
/// writes go on for as much again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_defrag_disarm_reclaims_space_and_writes_go_on() {
    let tc = start(1, &["--quota-backend-bytes=16777216", "--backend-batch-bytes=1048576"]).await;
    let eps = tc.endpoints();
    let mut c = client(&eps).await;
    let value = vec![b'v'; 60_000];
    let written = fill_to_quota(&mut c, &value).await;
    let file = &engine_files(&tc)[0];

    // Compact everything but the newest revision, physically, then defragment.
    let rev = c.get("k0", None).await.unwrap().header().unwrap().revision();
    c.compact(rev, Some(CompactionOptions::new().with_physical())).await.expect("compact");
    let before = tc.status(0, Duration::from_secs(5)).await.unwrap();
    let len_before = file_len(file);
    assert!(len_before > 12 * MIB, "the history reached the file: {len_before} bytes");
    assert!(
        before.db_size_in_use < (2 * MIB) as i64,
        "a physical compaction frees the quota: in use {}",
        before.db_size_in_use
    );
    let o = etcdctl(&eps, &["defrag"]);
    assert!(o.status.success(), "defrag: {}", stderr(&o));
    let after = tc.status(0, Duration::from_secs(5)).await.unwrap();
    let len_after = file_len(file);
    eprintln!(
        "{written} puts of 60 KB; state.redb {len_before} -> {len_after} bytes; DB SIZE {} -> {}, in use {} -> {}",
        before.db_size, after.db_size, before.db_size_in_use, after.db_size_in_use
    );
    assert!(after.db_size_in_use < (2 * MIB) as i64, "10 live keys of 60 KB: in use {}", after.db_size_in_use);
    assert!(len_after < 2 * MIB, "the file shrank to about its live bytes: {len_before} -> {len_after}");
    assert_eq!(after.db_size as u64, len_after, "DB SIZE is the file once nothing is buffered");

    // Writes are refused until the alarm is disarmed, then go on, compacting as they go.
    assert_eq!(status(&c.put("more", "x", None).await.unwrap_err()).unwrap().code(), tonic::Code::ResourceExhausted);
    let o = etcdctl(&eps, &["alarm", "disarm"]);
    assert!(o.status.success(), "{}", stderr(&o));
    for i in 0..written {
        let r = c.put(format!("k{}", i % 10), value.clone(), None).await;
        let rev = r.unwrap_or_else(|e| panic!("put {i} after disarm: {e}")).header().unwrap().revision();
        if i % 50 == 49 {
            c.compact(rev, None).await.unwrap();
        }
    }
    let r = c.get("k", Some(GetOptions::new().with_prefix())).await.unwrap();
    assert_eq!(r.kvs().len(), 10);
    assert!(r.kvs().iter().all(|kv| kv.value() == value.as_slice()));
}

/// `--auto-compaction-mode periodic --auto-compaction-retention 2s`: the leader compacts on its
/// own, to what was current two seconds before, and the history below is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_auto_compaction_keeps_the_retention_window() {
    let tc = start(3, &["--auto-compaction-mode=periodic", "--auto-compaction-retention=2s"]).await;
    let eps = tc.endpoints();
    let mut c = client(&eps).await;
    let first = c.put("a", "0", None).await.unwrap().header().unwrap().revision();
    let end = Instant::now() + Duration::from_secs(30);
    let mut i = 0;
    let compacted = loop {
        i += 1;
        c.put("a", format!("{i}"), None).await.unwrap();
        if let Err(e) = c.get("a", Some(GetOptions::new().with_revision(first))).await {
            let s = status(&e).expect("grpc status");
            assert_eq!(s.message(), "etcdserver: mvcc: required revision has been compacted");
            break i;
        }
        assert!(Instant::now() < end, "no auto compaction after 30 s with a 2 s retention");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // What was written within the window is still readable at its revision.
    let recent = c.put("a", "recent", None).await.unwrap().header().unwrap().revision();
    assert!(c.get("a", Some(GetOptions::new().with_revision(recent))).await.is_ok());
    assert!(compacted >= 10, "compacted after {compacted} rounds of 100 ms: sooner than the 2 s retention");
    // Bad values are refused at start-up with etcd's meaning spelled out.
    let o = std::process::Command::new(binary())
        .args(["server", "--auto-compaction-mode=revision", "--auto-compaction-retention=1h"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not a number of revisions"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
