//! `cairn status`: one line per endpoint, like `etcdctl endpoint status -w table`, then the
//! member list.

use std::process::ExitCode;
use std::time::Duration;

use cairn_proto::etcdserverpb as pb;
use cairn_proto::etcdserverpb::cluster_client::ClusterClient;
use cairn_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use clap::Args;

use crate::client::{channel, parse_endpoints};

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Comma-separated client endpoints.
    #[arg(long, default_value = "127.0.0.1:2379", env = "ETCDCTL_ENDPOINTS")]
    pub endpoints: String,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub tls: crate::client::TlsArgs,
}

pub fn human_bytes(n: i64) -> String {
    let n = n as f64;
    if n >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1} GB", n / 1024.0 / 1024.0 / 1024.0)
    } else if n >= 1024.0 * 1024.0 {
        format!("{:.1} MB", n / 1024.0 / 1024.0)
    } else if n >= 1024.0 {
        format!("{:.0} kB", n / 1024.0)
    } else {
        format!("{n} B")
    }
}

pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows[0].len();
    let widths: Vec<usize> = (0..cols).map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0)).collect();
    let line = format!("+{}+\n", widths.iter().map(|w| "-".repeat(w + 2)).collect::<Vec<_>>().join("+"));
    let mut out = line.clone();
    for (i, r) in rows.iter().enumerate() {
        out.push('|');
        for (c, cell) in r.iter().enumerate() {
            out.push_str(&format!(" {cell:<w$} |", w = widths[c]));
        }
        out.push('\n');
        if i == 0 {
            out.push_str(&line);
        }
    }
    out.push_str(&line);
    out
}

pub async fn status_of(url: &str) -> anyhow::Result<pb::StatusResponse> {
    let mut c = MaintenanceClient::new(channel(url)?);
    let mut req = tonic::Request::new(pb::StatusRequest {});
    req.set_timeout(Duration::from_secs(3));
    Ok(c.status(req).await?.into_inner())
}

pub async fn run(a: StatusArgs) -> anyhow::Result<ExitCode> {
    a.tls.install()?;
    let eps = parse_endpoints(&a.endpoints);
    let mut rows = vec![[
        "ENDPOINT",
        "ID",
        "VERSION",
        "DB SIZE",
        "IS LEADER",
        "IS LEARNER",
        "RAFT TERM",
        "RAFT INDEX",
        "RAFT APPLIED INDEX",
        "ERRORS",
    ]
    .map(String::from)
    .to_vec()];
    let mut json = Vec::new();
    let mut failures = 0;
    let mut members = None;
    for ep in &eps {
        match status_of(ep).await {
            Ok(s) => {
                let id = s.header.as_ref().map_or(0, |h| h.member_id);
                rows.push(vec![
                    ep.clone(),
                    format!("{id:x}"),
                    s.version.clone(),
                    human_bytes(s.db_size),
                    (s.leader == id).to_string(),
                    s.is_learner.to_string(),
                    s.raft_term.to_string(),
                    s.raft_index.to_string(),
                    s.raft_applied_index.to_string(),
                    s.errors.join(", "),
                ]);
                json.push(serde_json::json!({
                    "endpoint": ep, "member_id": format!("{id:x}"), "version": s.version, "db_size": s.db_size,
                    "leader": format!("{:x}", s.leader), "is_learner": s.is_learner, "raft_term": s.raft_term,
                    "raft_index": s.raft_index, "raft_applied_index": s.raft_applied_index, "errors": s.errors,
                }));
                if members.is_none() {
                    let mut c = ClusterClient::new(channel(ep)?);
                    if let Ok(r) = c.member_list(pb::MemberListRequest { linearizable: false }).await {
                        members = Some((r.into_inner().members, s.leader));
                    }
                }
            }
            Err(e) => {
                failures += 1;
                eprintln!("failed to get the status of endpoint {ep} ({e})");
            }
        }
    }
    if a.json {
        let ms: Vec<_> = members
            .iter()
            .flat_map(|(ms, _)| ms.iter())
            .map(|m| serde_json::json!({"id": format!("{:x}", m.id), "name": m.name, "peer_urls": m.peer_ur_ls, "client_urls": m.client_ur_ls, "is_learner": m.is_learner}))
            .collect();
        println!("{}", serde_json::json!({"endpoints": json, "members": ms}));
    } else {
        if rows.len() > 1 {
            print!("{}", table(&rows));
        }
        if let Some((ms, leader)) = members {
            let mut rows = vec![["ID", "STATUS", "NAME", "PEER ADDRS", "CLIENT ADDRS", "IS LEARNER", "IS LEADER"]
                .map(String::from)
                .to_vec()];
            for m in ms {
                rows.push(vec![
                    format!("{:x}", m.id),
                    if m.name.is_empty() { "unstarted" } else { "started" }.to_string(),
                    m.name,
                    m.peer_ur_ls.join(","),
                    m.client_ur_ls.join(","),
                    m.is_learner.to_string(),
                    (m.id == leader).to_string(),
                ]);
            }
            print!("{}", table(&rows));
        }
    }
    Ok(if failures == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
