//! Real-client acceptance of the JSON gateway: Patroni (Debian's `patroni`) runs a 3-node
//! PostgreSQL cluster with cairn as its etcd3 DCS. `scripts/patroni-demo` kills the PostgreSQL
//! primary (Patroni must promote a replica), then the cairn leader (Patroni must keep its
//! primary and leader key), and checks that no acknowledged commit was lost.

use std::process::Command;

#[test]
fn patroni_fails_over_on_cairn_and_loses_no_commit() {
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/patroni-demo"))
        .args(["--cairn", env!("CARGO_BIN_EXE_cairn")])
        .output()
        .expect("scripts/patroni-demo runs (Debian's python3)");
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or_default();
    let summary: serde_json::Value =
        serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {text}\n{}", String::from_utf8_lossy(&out.stderr)));
    assert!(out.status.success() && summary["ok"] == true, "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(summary["committed"].as_u64().unwrap_or(0) > 100, "{summary}");
    assert_eq!(summary["lost_committed"], 0, "{summary}");
    assert_eq!(summary["primary_demoted_during_cairn_failover"], false, "{summary}");
    assert_eq!(summary["leader_key_kept"], true, "{summary}");
}
