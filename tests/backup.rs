//! Backups and migration on real clusters: `etcdctl snapshot save` under write load,
//! `cairn snapshot status|restore` into a new cluster (new member ids, the same revisions and
//! history), a damaged backup refused, `Maintenance.Hash`, and a live etcd mirrored into cairn
//! with `etcdctl make-mirror`.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_testkit::cluster::{ClusterSpec, ProcessCluster};
use common::*;
use etcd_client::GetOptions;

fn cairn(args: &[&str]) -> std::process::Output {
    Command::new(binary()).args(args).output().expect("cairn runs")
}

/// Every key at a revision: value, create, mod, version, lease.
type Dump = BTreeMap<Vec<u8>, (Vec<u8>, i64, i64, i64, i64)>;

/// Every live key with its value and revisions, at `rev` (0: now), through `ep`.
async fn everything(ep: &str, rev: i64) -> Dump {
    let mut c = client(&[ep.to_string()]).await;
    let r = c.get(vec![0u8], Some(GetOptions::new().with_from_key().with_revision(rev))).await.expect("range");
    r.kvs()
        .iter()
        .map(|kv| {
            (
                kv.key().to_vec(),
                (kv.value().to_vec(), kv.create_revision(), kv.mod_revision(), kv.version(), kv.lease()),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_under_load_restores_into_a_new_cluster() {
    let src = start(3, &[]).await;
    let eps = src.endpoints();
    let mut c = client(&eps).await;
    let lease = c.lease_grant(600, None).await.unwrap().id();
    c.put("leased", "x", Some(etcd_client::PutOptions::new().with_lease(lease))).await.unwrap();
    for i in 0..200 {
        c.put(format!("pre/{i:03}"), format!("v{i}"), None).await.unwrap();
    }
    c.delete("pre/000", None).await.unwrap();

    // Writers keep going while the snapshot is taken.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (stop, eps) = (stop.clone(), eps.clone());
        writers.push(tokio::spawn(async move {
            let mut c = client(&eps).await;
            let mut acked = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                if let Ok(r) = c.put(format!("load/{w}/{n}"), format!("{n}"), None).await {
                    acked.push(r.header().unwrap().revision());
                }
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Every write acknowledged before the save starts is in the copy.
    let before = c.get("leased", None).await.unwrap().header().unwrap().revision();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.db");
    let file_s = file.display().to_string();
    let saved = etcdctl(&eps[1..2], &["snapshot", "save", &file_s]);
    assert!(saved.status.success(), "etcdctl snapshot save: {}", stderr(&saved));
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = 0;
    for w in writers {
        acked += w.await.unwrap().len();
    }
    assert!(acked > 50, "the writers made progress during the save ({acked})");

    let st = cairn(&["snapshot", "status", &file_s, "-w", "json"]);
    assert!(st.status.success(), "{}", stderr(&st));
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    let rev = st["revision"].as_i64().unwrap();
    assert!(rev >= before, "the copy (revision {rev}) has every write acknowledged before the save ({before})");
    let table = cairn(&["snapshot", "status", &file_s, "-w", "table"]);
    assert!(stdout(&table).contains("TOTAL KEYS"), "{}", stdout(&table));
    let want = everything(&eps[0], rev).await;
    assert!(want.len() > 200, "{}", want.len());
    let src_ids: Vec<u64> = c.member_list().await.unwrap().members().iter().map(|m| m.id()).collect();

    // Restore every member of a new cluster from the file.
    let dir2 = tempfile::Builder::new().prefix("cairn-restore-").tempdir().unwrap();
    let spec =
        ClusterSpec { binary: binary(), size: 3, dir: dir2.path().to_path_buf(), extra_args: vec![], docker: None };
    let mut dst = ProcessCluster::prepare(spec).unwrap();
    let ic = dst.members.iter().map(|m| format!("{}={}", m.name, m.peer_url)).collect::<Vec<_>>().join(",");
    for m in &dst.members {
        let out = cairn(&[
            "snapshot",
            "restore",
            &file_s,
            "--name",
            &m.name,
            "--data-dir",
            &m.data_dir.display().to_string(),
            "--initial-cluster",
            &ic,
            "--initial-cluster-token",
            "etcd-cluster",
            "--initial-advertise-peer-urls",
            &m.peer_url,
        ]);
        assert!(out.status.success(), "restore {}: {}", m.name, stderr(&out));
    }
    for i in 0..3 {
        dst.start_member(i).unwrap();
    }
    dst.wait_leader(Duration::from_secs(30)).await.expect("the restored cluster elects a leader");
    dst.wait_ready(Duration::from_secs(30)).await.expect("ready");
    let deps = dst.endpoints();
    for ep in &deps {
        assert_eq!(everything(ep, 0).await, want, "member {ep} holds exactly the copy");
    }
    let mut d = client(&deps).await;
    let ids: Vec<u64> = d.member_list().await.unwrap().members().iter().map(|m| m.id()).collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.iter().all(|id| !src_ids.contains(id)), "new member ids: {ids:x?} vs {src_ids:x?}");
    // History and revisions go on: the copy's old revisions are readable, the next write follows.
    let old = d.get("pre/001", Some(GetOptions::new().with_revision(rev - 1))).await.unwrap();
    assert_eq!(old.kvs().len(), 1);
    let next = d.put("after", "restore", None).await.unwrap();
    assert_eq!(next.header().unwrap().revision(), rev + 1);
    let ttl = d.lease_time_to_live(lease, None).await.unwrap();
    assert!(ttl.ttl() > 0, "the lease was restored: {ttl:?}");
    drop(dst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_backup_is_refused_with_a_clear_message() {
    let src = start(1, &[]).await;
    let eps = src.endpoints();
    let mut c = client(&eps).await;
    for i in 0..100 {
        c.put(format!("k{i}"), "v", None).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("b.db");
    let saved = etcdctl(&eps, &["snapshot", "save", &file.display().to_string()]);
    assert!(saved.status.success(), "{}", stderr(&saved));
    let good = std::fs::read(&file).unwrap();
    for (what, bytes) in [
        ("one flipped byte", {
            let mut b = good.clone();
            b[good.len() / 2] ^= 0x01;
            b
        }),
        ("truncated", good[..good.len() - 1000.min(good.len() / 2)].to_vec()),
    ] {
        let bad = dir.path().join("bad.db");
        std::fs::write(&bad, bytes).unwrap();
        let st = cairn(&["snapshot", "status", &bad.display().to_string()]);
        assert!(!st.status.success(), "{what}: status accepted it");
        assert!(stderr(&st).contains("cannot be used"), "{what}: {}", stderr(&st));
        let target = dir.path().join("restored");
        let r =
            cairn(&["snapshot", "restore", &bad.display().to_string(), "--data-dir", &target.display().to_string()]);
        assert!(!r.status.success(), "{what}: restore accepted it");
        assert!(
            stderr(&r).contains("sha256 mismatch") || stderr(&r).contains("multiple of 512"),
            "{what}: {}",
            stderr(&r)
        );
        assert!(!target.exists(), "{what}: a refused restore leaves nothing behind");
    }
    // Into a directory in use: refused, as etcdutl.
    let used = dir.path().join("used");
    std::fs::create_dir_all(used.join("member")).unwrap();
    let r = cairn(&["snapshot", "restore", &file.display().to_string(), "--data-dir", &used.display().to_string()]);
    assert!(!r.status.success() && stderr(&r).contains("exists"), "{}", stderr(&r));
}

/// `Maintenance.Hash` (the whole store) agrees across members at the same applied index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_hash_agrees_across_members() {
    let tc = start(3, &[]).await;
    let eps = tc.endpoints();
    let mut c = client(&eps).await;
    for i in 0..300 {
        c.put(format!("h{i}"), format!("{i}"), None).await.unwrap();
    }
    let index = tc.status(0, Duration::from_secs(5)).await.unwrap().raft_applied_index;
    tc.wait_applied(index, Duration::from_secs(10)).await.unwrap();
    let mut hashes = Vec::new();
    for ep in &eps {
        let mut m = client(std::slice::from_ref(ep)).await;
        hashes.push(m.hash().await.expect("Hash").hash());
    }
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:x?}");
    c.put("one-more", "x", None).await.unwrap();
    // Member 0 may be a follower that has not applied the write yet: Hash reads its own state.
    let mut m = client(&[eps[0].clone()]).await;
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while m.hash().await.unwrap().hash() == hashes[0] {
        assert!(std::time::Instant::now() < end, "a write does not change the hash");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Migration from a live etcd (Debian's etcd-server) with `etcdctl make-mirror`: the keys
/// there, then the changes made while the mirror runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn make_mirror_migrates_a_live_etcd_into_cairn() {
    let tc = start(3, &[]).await;
    let etcd = Etcd::start(&[]).await;
    let etcd_url = etcd.url.clone();
    let mut e = etcd_client::Client::connect([etcd_url.clone()], None).await.unwrap();
    for i in 0..100 {
        e.put(format!("app/{i:03}"), format!("v{i}"), None).await.unwrap();
    }
    let dest = tc.endpoints()[1].trim_start_matches("http://").to_string();
    let mut mirror = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", etcd_url.trim_start_matches("http://"), "make-mirror", "--no-dest-prefix", &dest])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcdctl");
    let cairn_ep = tc.endpoints()[0].clone();
    let values = |m: Dump| -> BTreeMap<Vec<u8>, Vec<u8>> { m.into_iter().map(|(k, v)| (k, v.0)).collect() };
    let wait_same = |label: &'static str| {
        let (cairn_ep, etcd_url) = (cairn_ep.clone(), etcd_url.clone());
        async move {
            let end = Instant::now() + Duration::from_secs(30);
            loop {
                let (a, b) = (values(everything(&etcd_url, 0).await), values(everything(&cairn_ep, 0).await));
                if a == b {
                    return a.len();
                }
                assert!(Instant::now() < end, "{label}: cairn has {} keys, etcd {}", b.len(), a.len());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(wait_same("initial sync").await, 100);
    // Changes made while the mirror runs follow.
    for i in 100..150 {
        e.put(format!("app/{i:03}"), format!("v{i}"), None).await.unwrap();
    }
    for i in 0..10 {
        e.delete(format!("app/{i:03}"), None).await.unwrap();
    }
    e.put("app/050", "changed", None).await.unwrap();
    assert_eq!(wait_same("live changes").await, 140);
    let _ = mirror.kill();
    let _ = mirror.wait();
}
