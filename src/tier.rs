//! `cairn range list|split|merge|move|transfer-leader` and `cairn node list|remove`: the data tier's ranges
//! and nodes, from a node's `/v1/ranges` and `/v1/nodes` (served on every client URL), as a
//! table or JSON, and the changes operators ask for (`POST /v1/ranges/...`).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::parse_endpoints;
use crate::status::{human_bytes, table};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Comma-separated client endpoints; the first that answers is asked.
    #[arg(long, default_value = "127.0.0.1:2379", env = "ETCDCTL_ENDPOINTS")]
    pub endpoints: String,
    /// Output format.
    #[arg(short = 'w', long = "write-out", value_enum, default_value = "table")]
    pub write_out: Format,
    /// `NAME:PASSWORD` of a user with the root role, when cairn's auth is enabled (changes
    /// only; etcdctl's flag).
    #[arg(long, env = "ETCDCTL_USER")]
    pub user: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum RangeCmd {
    /// Every range: its keys, hash slots, leader, replicas and size.
    List(ListArgs),
    /// Split the range holding KEY at KEY (Redis keys: at a hash slot's start). The split is
    /// one command in the range's log: no data is copied.
    Split {
        /// A key as `range list` prints keys (`\xNN` escapes), e.g. `r\x20\x00`.
        #[arg(required_unless_present = "slot", conflicts_with = "slot")]
        key: Option<String>,
        /// Split at the start of this Redis hash slot instead.
        #[arg(long)]
        slot: Option<u16>,
        #[command(flatten)]
        list: ListArgs,
    },
    /// Merge a range with the range on its right (both must be on the same nodes): the right
    /// one is frozen, and its keys join the left one through its log.
    Merge {
        id: u64,
        #[command(flatten)]
        list: ListArgs,
    },
    /// Move a range's replica from one node to another (nodes by name or id): the new replica
    /// is caught up, then swapped in.
    Move {
        id: u64,
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        #[command(flatten)]
        list: ListArgs,
    },
    /// Hand a range's leadership to another of its replicas.
    TransferLeader {
        id: u64,
        #[arg(long)]
        to: String,
        #[command(flatten)]
        list: ListArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum NodeCmd {
    /// Every data node: its state, replicas, leaders and bytes.
    List(ListArgs),
    /// Remove a node: its range replicas move to the other nodes (progress is shown), then a
    /// data node (joined with --join) leaves the cluster. A voter of the meta group is drained
    /// of ranges; `etcdctl member remove` then takes it out of the meta group.
    Remove {
        name: String,
        /// How long to wait for its replicas to move.
        #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
        timeout: Duration,
        #[command(flatten)]
        list: ListArgs,
    },
}

/// GET `path` from `ep` (`http://host:port`): plain HTTP/1.1, one request per connection.
async fn get(ep: &str, path: &str) -> anyhow::Result<Value> {
    request(ep, "GET", path, None, None, Duration::from_secs(5)).await
}

/// One HTTP/1.1 request with an optional JSON body; a non-200 answer is an error carrying the
/// server's `error` message.
async fn request(
    ep: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
    token: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<Value> {
    let Some(host_port) = ep.strip_prefix("http://") else {
        bail!("{ep}: only http:// endpoints are supported by this command yet");
    };
    let host_port = host_port.trim_end_matches('/');
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(host_port).await?;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let ct = if body.is_empty() { "" } else { "Content-Type: application/json\r\n" };
        let auth = token.map(|t| format!("Authorization: {t}\r\n")).unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host_port}\r\nConnection: close\r\n{ct}{auth}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(timeout, fut).await.context("timed out")??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").context("not an HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") {
        let status = head.lines().next().unwrap_or("");
        match serde_json::from_str::<Value>(body).ok().and_then(|v| v["error"].as_str().map(String::from)) {
            Some(e) => bail!("{e} ({status})"),
            None => bail!("{ep}{path}: {status}"),
        }
    }
    serde_json::from_str(body).with_context(|| format!("{ep}{path}: not JSON"))
}

async fn fetch(endpoints: &str, path: &str) -> anyhow::Result<Value> {
    let mut last = None;
    for ep in parse_endpoints(endpoints) {
        match get(&ep, path).await {
            Ok(v) => return Ok(v),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no endpoints given")))
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

fn print(v: &Value, format: Format, cols: &[(&str, &str)]) -> anyhow::Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(v)?),
        Format::Table => {
            let mut rows = vec![cols.iter().map(|(h, _)| h.to_string()).collect::<Vec<_>>()];
            for item in v.as_array().context("expected a list")? {
                rows.push(
                    cols.iter()
                        .map(|(_, k)| match (*k, &item[*k]) {
                            ("bytes", Value::Number(n)) => human_bytes(n.as_i64().unwrap_or(0)),
                            (_, x) => text(x),
                        })
                        .collect(),
                );
            }
            print!("{}", table(&rows));
        }
    }
    Ok(())
}

/// POSTs a change to the first endpoint that can be reached (a refusal is final: the change
/// ran nowhere, or its outcome is told). With `--user`, as that user: a token from etcd's
/// `/v3/auth/authenticate` goes in the `Authorization` header.
async fn change(list: &ListArgs, path: &str, body: Value, timeout: Duration) -> anyhow::Result<Value> {
    let mut last = None;
    for ep in parse_endpoints(&list.endpoints) {
        let token = match &list.user {
            None => None,
            Some(u) => {
                let (name, password) = u.split_once(':').context("--user takes NAME:PASSWORD")?;
                let creds = serde_json::json!({ "name": name, "password": password });
                match request(&ep, "POST", "/v3/auth/authenticate", Some(&creds), None, Duration::from_secs(10)).await {
                    Ok(v) => Some(v["token"].as_str().context("no token in the answer to authenticate")?.to_string()),
                    Err(e) if e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some()) => {
                        last = Some(e);
                        continue;
                    }
                    Err(e) => return Err(e.context(format!("--user {name}"))),
                }
            }
        };
        match request(&ep, "POST", path, Some(&body), token.as_deref(), timeout).await {
            Ok(v) => return Ok(v),
            Err(e) if e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some()) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no endpoints given")))
}

fn done(v: &Value, format: Format, line: String) -> anyhow::Result<ExitCode> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(v)?),
        Format::Table => println!("{line}"),
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn range(cmd: RangeCmd) -> anyhow::Result<ExitCode> {
    let a = match cmd {
        RangeCmd::List(a) => a,
        RangeCmd::Split { key, slot, list } => {
            let body = match (key, slot) {
                (Some(k), _) => serde_json::json!({ "key": k }),
                (None, s) => serde_json::json!({ "slot": s }),
            };
            let v = change(&list, "/v1/ranges/split", body, Duration::from_secs(15)).await?;
            return done(&v, list.write_out, format!("range {} split: the new range is {}", v["range"], v["new"]));
        }
        RangeCmd::Merge { id, list } => {
            let v = change(&list, &format!("/v1/ranges/{id}/merge"), Value::Null, Duration::from_secs(15)).await?;
            return done(&v, list.write_out, format!("range {} merged into range {id}", v["merged"]));
        }
        RangeCmd::Move { id, from, to, list } => {
            let body = serde_json::json!({ "from": from, "to": to });
            let v = change(&list, &format!("/v1/ranges/{id}/move"), body, Duration::from_secs(160)).await?;
            return done(&v, list.write_out, format!("range {id} moved from {from} to {to}"));
        }
        RangeCmd::TransferLeader { id, to, list } => {
            let body = serde_json::json!({ "to": to });
            let path = format!("/v1/ranges/{id}/transfer-leader");
            let v = change(&list, &path, body, Duration::from_secs(15)).await?;
            return done(&v, list.write_out, format!("range {id} is led by {to}"));
        }
    };
    let v = fetch(&a.endpoints, "/v1/ranges").await?;
    let cols = [
        ("ID", "id"),
        ("START", "start"),
        ("END", "end"),
        ("EPOCH", "epoch"),
        ("SLOTS", "slots"),
        ("LEADER", "leader"),
        ("REPLICAS", "replicas"),
        ("BYTES", "bytes"),
    ];
    print(&v, a.write_out, &cols)?;
    Ok(ExitCode::SUCCESS)
}

/// `cairn node remove`: drain, then wait with a progress bar until the node holds no replica
/// and (a data node) has left.
async fn remove_node(name: &str, timeout: Duration, list: &ListArgs) -> anyhow::Result<ExitCode> {
    let ep = &list.endpoints;
    change(list, &format!("/v1/nodes/{name}/drain"), Value::Null, Duration::from_secs(15)).await?;
    let find = |v: &Value| v.as_array().and_then(|a| a.iter().find(|n| n["name"] == name).cloned());
    let start = find(&fetch(ep, "/v1/nodes").await?).and_then(|n| n["replicas"].as_u64()).unwrap_or(0);
    let bar = indicatif::ProgressBar::new(start);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} replicas moved, {elapsed}")
            .expect("a valid template"),
    );
    bar.set_message(format!("draining {name}"));
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let Some(n) = find(&fetch(ep, "/v1/nodes").await?) else { break };
        let left = n["replicas"].as_u64().unwrap_or(0);
        bar.set_position(start.saturating_sub(left));
        if left == 0 && n["role"] == "voter" {
            bar.abandon();
            bail!(
                "{name} holds no range replica now, but it is a voter of the meta group: remove it with `etcdctl member remove {}`",
                n["id"].as_str().unwrap_or("ID")
            );
        }
        if std::time::Instant::now() >= deadline {
            bar.abandon();
            bail!("{name} still holds {left} range replicas after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bar.finish();
    done(&serde_json::json!({ "node": name, "state": "removed" }), list.write_out, format!("{name} removed"))
}

pub async fn node(cmd: NodeCmd) -> anyhow::Result<ExitCode> {
    let a = match cmd {
        NodeCmd::List(a) => a,
        NodeCmd::Remove { name, timeout, list } => return remove_node(&name, timeout, &list).await,
    };
    let v = fetch(&a.endpoints, "/v1/nodes").await?;
    let cols = [
        ("ID", "id"),
        ("NAME", "name"),
        ("STATE", "state"),
        ("ROLE", "role"),
        ("REDIS", "redis_urls"),
        ("REPLICAS", "replicas"),
        ("LEADERS", "leaders"),
        ("BYTES", "bytes"),
    ];
    print(&v, a.write_out, &cols)?;
    Ok(ExitCode::SUCCESS)
}
