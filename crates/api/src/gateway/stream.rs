//! The gateway's streaming calls. As in grpc-gateway: a streaming request body is a sequence of
//! JSON messages (one or more, as they arrive), and a streaming response is one JSON object per
//! line, `{"result": message}`, or `{"error": {"grpc_code", "http_code", "message",
//! "http_status"}}` as the last line when the call fails after it started.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{Buf, BytesMut};
use cairn_proto::etcdserverpb as pb;
use cairn_proto::etcdserverpb::maintenance_server::Maintenance as MaintenanceApi;
use cairn_proto::v3electionpb as el;
use cairn_proto::v3electionpb::election_server::Election as ElectionApi;
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::Status;

use super::{decode, error_response, grpc_request, http_status, read_body, token, Gateway};
use crate::grpc::Api;

/// One line of a streaming response that failed (grpc-gateway's `StreamError`).
#[derive(Serialize)]
struct StreamError<'a> {
    grpc_code: i32,
    http_code: u16,
    message: &'a str,
    http_status: &'a str,
}

/// A line of a streaming response.
fn line<T: Serialize>(item: Result<T, Status>) -> Vec<u8> {
    #[derive(Serialize)]
    enum Line<'a, T> {
        #[serde(rename = "result")]
        Result(&'a T),
        #[serde(rename = "error")]
        Error(StreamError<'a>),
    }
    let l = match &item {
        Ok(msg) => Line::Result(msg),
        Err(s) => {
            let code = http_status(s.code());
            Line::Error(StreamError {
                grpc_code: s.code() as i32,
                http_code: code.as_u16(),
                message: s.message(),
                http_status: code.canonical_reason().unwrap_or(""),
            })
        }
    };
    let mut out = serde_json::to_vec(&l).unwrap_or_else(|e| {
        serde_json::to_vec(&Line::<T>::Error(StreamError {
            grpc_code: tonic::Code::Internal as i32,
            http_code: 500,
            message: &format!("encoding the response: {e}"),
            http_status: "Internal Server Error",
        }))
        .expect("an error line serializes")
    });
    out.push(b'\n');
    out
}

/// A streaming response: each item a line; the stream ends after an error.
fn lines<T, S>(items: S) -> Response
where
    T: Serialize + Send + 'static,
    S: Stream<Item = Result<T, Status>> + Send + 'static,
{
    let body = items
        .scan(false, |failed, item| {
            let out = if *failed { None } else { Some(item) };
            *failed = out.as_ref().is_some_and(|i| i.is_err());
            futures::future::ready(out)
        })
        .map(|item| Ok::<_, std::convert::Infallible>(line(item)));
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], Body::from_stream(body)).into_response()
}

/// The JSON messages of a streaming request body, as they arrive. A message larger than
/// `limit` bytes, or one that does not parse, ends the stream with `InvalidArgument`.
fn json_messages<T>(body: Body, limit: usize) -> impl Stream<Item = Result<T, Status>> + Send + Unpin + 'static
where
    T: DeserializeOwned + Send + 'static,
{
    struct Reader {
        chunks: axum::body::BodyDataStream,
        buf: BytesMut,
        done: bool,
    }
    let reader = Reader { chunks: body.into_data_stream(), buf: BytesMut::new(), done: false };
    Box::pin(futures::stream::unfold(reader, move |mut r| async move {
        loop {
            if r.done {
                return None;
            }
            // A complete value at the front of the buffer?
            let mut values = serde_json::Deserializer::from_slice(&r.buf).into_iter::<T>();
            match values.next() {
                Some(Ok(v)) => {
                    let used = values.byte_offset();
                    r.buf.advance(used);
                    return Some((Ok(v), r));
                }
                Some(Err(e)) if !e.is_eof() => {
                    r.done = true;
                    return Some((Err(Status::invalid_argument(e.to_string())), r));
                }
                // Nothing yet, or an incomplete value: read more.
                _ => {}
            }
            if r.buf.len() > limit {
                r.done = true;
                let msg = format!("gateway: streamed request message larger than max ({limit} bytes)");
                return Some((Err(Status::invalid_argument(msg)), r));
            }
            match r.chunks.next().await {
                Some(Ok(chunk)) => r.buf.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    r.done = true;
                    return Some((Err(Status::cancelled(format!("reading the request: {e}"))), r));
                }
                None => {
                    r.done = true;
                    if r.buf.iter().all(u8::is_ascii_whitespace) {
                        return None;
                    }
                    let e = Status::invalid_argument("unexpected end of JSON input");
                    return Some((Err(e), r));
                }
            }
        }
    }))
}

/// `/v3/watch`: the watch requests of the body, the responses line by line. As with etcd, the
/// stream stays open after the body ends, until the client goes away.
pub(super) async fn watch(State(g): State<Gateway>, headers: HeaderMap, body: Body) -> Response {
    let requests = json_messages::<pb::WatchRequest>(body, g.limit);
    let rx = g.api.watch(token(&headers).map(str::to_string), requests);
    let responses = crate::watch_service::out_stream(rx).map(|out| out.and_then(|o| o.into_message()));
    lines(responses)
}

/// `/v3/lease/keepalive`: each keep-alive of the body answered in turn.
pub(super) async fn keep_alive(State(g): State<Gateway>, headers: HeaderMap, body: Body) -> Response {
    if let Err(e) = g.api.caller(grpc_request(&headers, ()).metadata()) {
        return error_response(&crate::grpc::status(e));
    }
    let requests = json_messages::<pb::LeaseKeepAliveRequest>(body, g.limit);
    lines(g.api.keep_alive(requests))
}

/// `/v3/election/observe`: the election's leader, then every change.
pub(super) async fn observe(State(g): State<Gateway>, headers: HeaderMap, body: Body) -> Response {
    let req = match read_body(body, g.limit).await.and_then(|b| decode::<el::LeaderRequest>(&b)) {
        Ok(r) => r,
        Err(s) => return error_response(&s),
    };
    match <Api as ElectionApi>::observe(&g.api, grpc_request(&headers, req)).await {
        Ok(resp) => lines(resp.into_inner()),
        Err(s) => error_response(&s),
    }
}

/// `/v3/maintenance/snapshot`: the snapshot in chunks (`blob` base64).
pub(super) async fn snapshot(State(g): State<Gateway>, headers: HeaderMap, body: Body) -> Response {
    let req = match read_body(body, g.limit).await.and_then(|b| decode::<pb::SnapshotRequest>(&b)) {
        Ok(r) => r,
        Err(s) => return error_response(&s),
    };
    match <Api as MaintenanceApi>::snapshot(&g.api, grpc_request(&headers, req)).await {
        Ok(resp) => lines(resp.into_inner()),
        Err(s) => error_response(&s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_are_read_as_they_arrive_whatever_the_chunking() {
        let chunks: Vec<Result<&'static str, std::io::Error>> =
            vec![Ok(r#"{"ID":"1"}{"I"#), Ok(r#"D":2}"#), Ok("\n  {\"ID\":\"3\"}\n")];
        let body = Body::from_stream(futures::stream::iter(chunks));
        let got: Vec<_> = json_messages::<pb::LeaseKeepAliveRequest>(body, 1024).collect().await;
        let ids: Vec<i64> = got.into_iter().map(|r| r.unwrap().id).collect();
        assert_eq!(ids, vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn a_bad_or_oversized_message_ends_the_stream_with_invalid_argument() {
        let body = Body::from(r#"{"ID":"1"} {"ID": nonsense}"#);
        let got: Vec<_> = json_messages::<pb::LeaseKeepAliveRequest>(body, 1024).collect().await;
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].as_ref().unwrap_err().code(), tonic::Code::InvalidArgument);
        let body = Body::from(format!(r#"{{"ID":"{}"#, "1".repeat(100)));
        let got: Vec<_> = json_messages::<pb::LeaseKeepAliveRequest>(body, 16).collect().await;
        assert_eq!(got.len(), 1);
        assert!(got[0].as_ref().unwrap_err().message().contains("larger than max"), "{got:?}");
    }

    #[test]
    fn stream_lines_are_results_or_grpc_gateway_errors() {
        let ok = line(Ok(pb::LeaseKeepAliveResponse { id: 5, ttl: 10, ..Default::default() }));
        assert_eq!(String::from_utf8(ok).unwrap(), "{\"result\":{\"ID\":\"5\",\"TTL\":\"10\"}}\n");
        let err = line::<pb::LeaseKeepAliveResponse>(Err(Status::unavailable("etcdserver: no leader")));
        assert_eq!(
            String::from_utf8(err).unwrap(),
            "{\"error\":{\"grpc_code\":14,\"http_code\":503,\"message\":\"etcdserver: no leader\",\"http_status\":\"Service Unavailable\"}}\n"
        );
    }
}
