//! A minimal HTTP/1.1 client for the tests and the chaos harness, talking to cairn's own
//! endpoints (`/health`, `/ready`, `/metrics`, `/debug/faults`). Written here rather than pulling
//! in an HTTP client crate: requests are small, one per connection, and never leave loopback.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends one request (`Connection: close`) and returns the status code and the body.
pub async fn request(host_port: &str, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(host_port).await?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host_port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad HTTP response: {text:.80}")))?;
        let body = match text.split_once("\r\n\r\n") {
            Some((head, rest)) if head.to_ascii_lowercase().contains("transfer-encoding: chunked") => dechunk(rest),
            Some((_, rest)) => rest.to_string(),
            None => String::new(),
        };
        Ok((code, body))
    };
    tokio::time::timeout(Duration::from_secs(5), fut).await.map_err(|_| std::io::Error::other("timed out"))?
}

/// `GET url` where `url` is `http://host:port` (a member's client URL) and `path` starts with `/`.
pub async fn get(url: &str, path: &str) -> std::io::Result<(u16, String)> {
    request(host_port(url), "GET", path, "").await
}

pub fn host_port(url: &str) -> &str {
    url.trim_start_matches("http://").trim_end_matches('/')
}

/// Decodes a chunked body (hyper chunks bodies of unknown length).
fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}
