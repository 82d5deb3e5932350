//! The operator's HTTP endpoints on a real cluster: `/livez`, `/health`, `/ready`, `/metrics`,
//! `/v1/status`, and what they say when the member loses its quorum or is catching up.

mod common;

use std::time::{Duration, Instant};

use cairn_testkit::http::get;
use common::*;
use etcd_client::GetOptions;

async fn code(url: &str, path: &str) -> u16 {
    match get(url, path).await {
        Ok((c, _)) => c,
        Err(e) => panic!("GET {url}{path}: {e}"),
    }
}

/// Polls until `GET path` answers `want`, or panics after `within`. A member that is still
/// starting (connection refused) has not answered yet.
async fn wait_code(url: &str, path: &str, want: u16, within: Duration) {
    let end = Instant::now() + within;
    loop {
        let c = get(url, path).await.map(|(c, _)| c);
        if matches!(c, Ok(c) if c == want) {
            return;
        }
        assert!(Instant::now() < end, "GET {url}{path} still answers {c:?}, expected {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_report_health_readiness_and_metrics() {
    let tc = start(3, &[]).await;
    let eps = tc.endpoints();
    let leader = tc.wait_leader(Duration::from_secs(10)).await.unwrap();
    for url in &eps {
        wait_code(url, "/ready", 200, Duration::from_secs(10)).await;
        assert_eq!(code(url, "/readyz").await, 200);
        assert_eq!(code(url, "/livez").await, 200);
        let (c, body) = get(url, "/health").await.unwrap();
        assert_eq!((c, body.as_str()), (200, r#"{"health":"true","reason":""}"#));
        let (c, metrics) = get(url, "/metrics").await.unwrap();
        assert_eq!(c, 200);
        assert!(metrics.contains("etcd_server_has_leader 1"), "{metrics}");
        let (c, status) = get(url, "/v1/status").await.unwrap();
        assert_eq!(c, 200);
        let v: serde_json::Value = serde_json::from_str(&status).unwrap_or_else(|e| panic!("{e}: {status}"));
        assert_eq!(v["members"].as_array().map(|m| m.len()), Some(3), "{status}");
    }
    let (_, m) = get(&eps[leader], "/metrics").await.unwrap();
    assert!(m.contains("etcd_server_is_leader 1"), "{m}");
    // Each body under its own content type: Prometheus text 0.0.4 unless OpenMetrics is asked
    // for. In 0.0.4 a counter's HELP and TYPE carry its sample's name; `# EOF` is OpenMetrics'.
    let curl = |accept: &str| {
        let o = std::process::Command::new("curl")
            .args(["-s", "-D", "-", "-H", &format!("Accept: {accept}"), &format!("{}/metrics", eps[leader])])
            .output()
            .expect("curl (scripts/test installs it)");
        String::from_utf8_lossy(&o.stdout).to_lowercase()
    };
    let plain = curl("text/plain");
    assert!(plain.contains("content-type: text/plain; version=0.0.4"), "{plain}");
    assert!(plain.contains("# type etcd_server_leader_changes_seen_total counter"), "{plain}");
    assert!(plain.contains("# help etcd_server_leader_changes_seen_total "), "{plain}");
    assert!(!plain.contains("# eof"), "{plain}");
    let open = curl("application/openmetrics-text; version=1.0.0,text/plain;q=0.5");
    assert!(open.contains("content-type: application/openmetrics-text"), "{open}");
    assert!(open.trim_end().ends_with("# eof"), "{open}");
    assert_eq!(code(&eps[leader], "/no-such-page").await, 404);

    // Prometheus's own linter passes, apart from etcd's legacy names, kept for its dashboards
    // (gauges named `*_total`).
    let (_, body) = get(&eps[leader], "/metrics").await.unwrap();
    let mut lint = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian prometheus; scripts/test installs it)");
    std::io::Write::write_all(&mut lint.stdin.take().unwrap(), body.as_bytes()).unwrap();
    let out = lint.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let legacy = [
        "etcd_debugging_mvcc_watcher_total",
        "etcd_debugging_mvcc_watch_stream_total",
        "etcd_debugging_mvcc_keys_total",
    ];
    for line in report.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            legacy
                .iter()
                .any(|n| line.starts_with(&format!("{n} non-counter metrics should not have \"_total\" suffix"))),
            "promtool: {line}\n{report}"
        );
    }
}

/// A member cut off from its quorum is alive but neither healthy nor ready; it becomes ready
/// again once the others come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_without_quorum_is_live_but_not_ready() {
    let mut tc = start(3, &[]).await;
    let eps = tc.endpoints();
    wait_code(&eps[0], "/ready", 200, Duration::from_secs(10)).await;
    tc.pause(1);
    tc.pause(2);
    // Within an election timeout or two, member 0 has no leader and no read can complete.
    wait_code(&eps[0], "/ready", 503, Duration::from_secs(5)).await;
    wait_code(&eps[0], "/health", 503, Duration::from_secs(5)).await;
    assert_eq!(code(&eps[0], "/livez").await, 200);
    tc.resume(1);
    tc.resume(2);
    wait_code(&eps[0], "/ready", 200, Duration::from_secs(15)).await;
    wait_code(&eps[0], "/health", 200, Duration::from_secs(5)).await;
}

/// Once a restarted member says it is ready, its local (serializable) reads include every write
/// acknowledged before the check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_means_caught_up() {
    let mut tc = start(3, &[]).await;
    let eps = tc.endpoints();
    let leader = tc.wait_leader(Duration::from_secs(10)).await.unwrap();
    let lagger = (leader + 1) % 3;
    tc.kill(lagger);
    let live: Vec<String> = eps.iter().enumerate().filter(|(i, _)| *i != lagger).map(|(_, e)| e.clone()).collect();
    let mut cli = client(&live).await;
    for i in 0..300 {
        cli.put(format!("r/{i:04}"), "x", None).await.unwrap();
    }
    tc.restart(lagger).unwrap();
    wait_code(&eps[lagger], "/ready", 200, Duration::from_secs(30)).await;
    let mut own = client(std::slice::from_ref(&eps[lagger])).await;
    let r = own.get("r/", Some(GetOptions::new().with_prefix().with_serializable().with_count_only())).await.unwrap();
    assert_eq!(r.count(), 300, "a ready member must have applied every acknowledged write");
}
