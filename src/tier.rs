//! `cairn range list` and `cairn node list`: the data tier's ranges and nodes, from a node's
//! `/v1/ranges` and `/v1/nodes` (served on every client URL), as a table or JSON.

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
}

#[derive(Subcommand, Debug)]
pub enum RangeCmd {
    /// Every range: its keys, hash slots, leader, replicas and size.
    List(ListArgs),
}

#[derive(Subcommand, Debug)]
pub enum NodeCmd {
    /// Every data node: its state, replicas, leaders and bytes.
    List(ListArgs),
}

/// GET `path` from `ep` (`http://host:port`): plain HTTP/1.1, one request per connection.
async fn get(ep: &str, path: &str) -> anyhow::Result<Value> {
    let Some(host_port) = ep.strip_prefix("http://") else {
        bail!("{ep}: only http:// endpoints are supported by this command yet");
    };
    let host_port = host_port.trim_end_matches('/');
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(host_port).await?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {host_port}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(5), fut).await.context("timed out")??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").context("not an HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("{ep}{path}: {}", head.lines().next().unwrap_or(""));
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

pub async fn range(cmd: RangeCmd) -> anyhow::Result<ExitCode> {
    let RangeCmd::List(a) = cmd;
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

pub async fn node(cmd: NodeCmd) -> anyhow::Result<ExitCode> {
    let NodeCmd::List(a) = cmd;
    let v = fetch(&a.endpoints, "/v1/nodes").await?;
    let cols = [
        ("ID", "id"),
        ("NAME", "name"),
        ("STATE", "state"),
        ("REDIS", "redis_urls"),
        ("REPLICAS", "replicas"),
        ("LEADERS", "leaders"),
        ("BYTES", "bytes"),
    ];
    print(&v, a.write_out, &cols)?;
    Ok(ExitCode::SUCCESS)
}
