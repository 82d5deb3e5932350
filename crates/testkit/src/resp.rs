//! A Redis client speaking just enough RESP2 for the demo and the chaos harness (commands as
//! arrays of bulk strings; simple, error, integer, bulk and array replies). Written here rather
//! than pulling in redis-rs, whose dependency tree is larger than all the code using this;
//! redis-cli, redis-py and redis-benchmark are the clients the acceptance tests use.

use std::time::Duration;

/// One connection.
pub struct Resp {
    r: tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
}

/// A RESP2 reply.
#[derive(Debug, PartialEq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
    Int(i64),
}

impl Resp {
    pub async fn connect(addr: &str) -> std::io::Result<Resp> {
        let s = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await??;
        s.set_nodelay(true)?;
        let (r, w) = s.into_split();
        Ok(Resp { r: tokio::io::BufReader::new(r), w })
    }

    /// Sends one command and reads its reply, within `timeout`.
    pub async fn call(&mut self, args: &[&[u8]], timeout: Duration) -> std::io::Result<Reply> {
        use tokio::io::AsyncWriteExt;
        let mut b = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            b.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            b.extend_from_slice(a);
            b.extend_from_slice(b"\r\n");
        }
        self.w.write_all(&b).await?;
        tokio::time::timeout(timeout, self.reply()).await?
    }

    fn reply(&mut self) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Reply>> + Send + '_>> {
        Box::pin(async move {
            use tokio::io::{AsyncBufReadExt, AsyncReadExt};
            let mut line = String::new();
            self.r.read_line(&mut line).await?;
            let body = line.trim_end();
            let bad = || std::io::Error::other(format!("unexpected reply {line:?}"));
            let num = |s: &str| s.parse::<i64>().map_err(|_| bad());
            Ok(match body.as_bytes().first() {
                Some(b'+') => Reply::Simple(body[1..].into()),
                Some(b'-') => Reply::Error(body[1..].into()),
                Some(b':') => Reply::Int(num(&body[1..])?),
                Some(b'$') if num(&body[1..])? < 0 => Reply::Bulk(None),
                Some(b'$') => {
                    let mut v = vec![0; num(&body[1..])? as usize + 2];
                    self.r.read_exact(&mut v).await?;
                    v.truncate(v.len() - 2);
                    Reply::Bulk(Some(v))
                }
                Some(b'*') => {
                    let n = num(&body[1..])?.max(0);
                    let mut items = Vec::with_capacity(n as usize);
                    for _ in 0..n {
                        items.push(self.reply().await?);
                    }
                    Reply::Array(items)
                }
                _ => return Err(bad()),
            })
        })
    }
}
