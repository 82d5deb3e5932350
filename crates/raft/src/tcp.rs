//! TCP streams for gRPC whose small frames share write syscalls.
//!
//! h2 (the HTTP/2 under tonic) writes frames through a 16 KiB buffer. Over a stream that
//! supports vectored writes, as a plain `TcpStream` does, it copies a DATA frame's payload
//! into that buffer only below 256 bytes; a larger one is chained behind the buffer and must be
//! flushed before any other frame is queued. A put of a 256-byte value is a DATA frame of about
//! 290 bytes, so every request (or response) of 256 B–16 KiB costs a `writev` of its own — and on
//! loopback the kernel delivers the segment and wakes the reader inside that syscall — instead of
//! sharing one write with the frames queued beside it. Without vectored writes h2 copies payloads
//! below 1 KiB, and frames queued together leave in one `write`. Under the put benchmark
//! (`scripts/profile-put`) the load generator went from 2.3 socket writes per put to 0.2 and the
//! leader from 0.9 to 0.1; CPU per put fell 6 % on the members and 17 % in the load generator.
//!
//! A payload of 1 KiB or more is still chained rather than copied; without vectored writes it
//! leaves in a second `write` after the buffer instead of sharing one `writev` with it (a
//! replication batch of a few KiB: two syscalls instead of one, still fewer than before overall).
//!
//! [`Coalescing`] is a stream that reports no vectored-write support and otherwise passes
//! everything through; [`connect`] opens one for a tonic channel (the CLI tools, `cairn bench`,
//! the peer channels for replication and forwarding), and the client and peer listeners wrap the
//! streams they accept in it. Under TLS, h2 writes to the TLS stream, which reports vectored
//! writes, so TLS connections keep h2's default behaviour; the wrapper passes rustls's vectored
//! writes through unchanged.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A byte stream that tells its writer it has no vectored writes (see the module docs).
#[derive(Debug)]
pub struct Coalescing<S>(pub S);

impl<S: AsyncRead + Unpin> AsyncRead for Coalescing<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalescing<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    /// Passed through for writers that call it regardless (rustls hands its queued TLS records
    /// over in one vectored write); h2 asks [`Self::is_write_vectored`] first and does not.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for Coalescing<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.connect_info()
    }
}

/// How long [`connect`] waits for a TCP connection; its error says the request never left.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// The bound on connecting as a whole, TLS handshake included: [`lazy_channel`] sets it as the
/// endpoint's `connect_timeout` (tonic wraps the connector, TLS and all, in it). Longer than
/// [`CONNECT_TIMEOUT`], so a TCP connect that fails reports itself as such ("tcp connect
/// error", safe to retry elsewhere) rather than as this timeout's bare "deadline has elapsed";
/// without it a peer that accepts TCP but never answers the handshake would hold the connection
/// attempt, and every request queued on it, indefinitely.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// Connects to the host and port of `uri` (scheme aside: tonic adds TLS on top for `https`),
/// with `TCP_NODELAY`. For [`tonic::transport::Endpoint::connect_with_connector_lazy`].
pub async fn connect(uri: tonic::codegen::http::Uri) -> io::Result<hyper_util::rt::TokioIo<Coalescing<TcpStream>>> {
    // The messages start as hyper's connector's do: callers tell "never reached the server"
    // (safe to retry anywhere) from "connection lost" by them.
    let err = |kind, what: String| io::Error::new(kind, format!("tcp connect error: {uri}: {what}"));
    let host = uri.host().ok_or_else(|| err(io::ErrorKind::InvalidInput, "no host".into()))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
    let s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host, port)))
        .await
        .map_err(|_| err(io::ErrorKind::TimedOut, "timed out".into()))?
        .map_err(|e| err(e.kind(), e.to_string()))?;
    s.set_nodelay(true).map_err(|e| err(e.kind(), e.to_string()))?;
    Ok(hyper_util::rt::TokioIo::new(Coalescing(s)))
}

/// Whether a failed call never reached its server: no connection could be made, so nothing
/// it asked for ran (safe to send elsewhere).
pub fn never_connected(s: &tonic::Status) -> bool {
    let m = s.message();
    s.code() == tonic::Code::Unavailable && (m.contains("tcp connect error") || m.contains("error trying to connect"))
}

/// A lazily connected channel to `ep` over [`Coalescing`] streams, connecting within
/// [`CONNECT_TIMEOUT`] (TCP) and [`HANDSHAKE_TIMEOUT`] (TCP and TLS).
pub fn lazy_channel(ep: &tonic::transport::Endpoint) -> tonic::transport::Channel {
    ep.clone().connect_timeout(HANDSHAKE_TIMEOUT).connect_with_connector_lazy(tower::service_fn(connect))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn passes_bytes_through_and_reports_no_vectored_writes() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let uri: tonic::codegen::http::Uri = format!("http://{addr}").parse().unwrap();
        let (client, server) = tokio::join!(connect(uri), l.accept());
        let mut client = client.unwrap().into_inner();
        let mut server = Coalescing(server.unwrap().0);
        assert!(!client.is_write_vectored() && !server.is_write_vectored());
        assert!(client.0.is_write_vectored(), "a plain TCP stream has vectored writes; the wrapper hides them");
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        server.write_all(b"pong").await.unwrap();
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        // A writer that writes vectored anyway (rustls does) gets every slice through.
        let bufs = [io::IoSlice::new(b"ab"), io::IoSlice::new(b"cdef")];
        let n = client.write_vectored(&bufs).await.unwrap();
        assert_eq!(n, 6, "the whole vectored write went to the socket in one call");
        let mut six = [0u8; 6];
        server.read_exact(&mut six).await.unwrap();
        assert_eq!(&six, b"abcdef");
    }

    #[tokio::test]
    async fn refused_connection_is_an_error() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let uri: tonic::codegen::http::Uri = format!("http://{addr}").parse().unwrap();
        let e = connect(uri).await.unwrap_err();
        assert!(e.to_string().starts_with("tcp connect error"), "{e}");
    }
}
