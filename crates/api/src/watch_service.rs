//! etcd's Watch gRPC service, routed by hand instead of through the generated `WatchServer`: the
//! same path (`/etcdserverpb.Watch/Watch`) and messages, but a codec that can send a
//! `WatchOut::Shared` response — a header and an event batch encoded once and shared by every
//! watcher that receives the whole batch — without decoding it into a `WatchResponse` first.
//! Everything else is what tonic's generated server does.

use std::convert::Infallible;
use std::task::{Context, Poll};

use cairn_proto::etcdserverpb as pb;
use cairn_services::watch::{OutBatch, Outbound, WatchOut};
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{http, Body, BoxFuture, StdError};
use tonic::{Request, Response, Status, Streaming};

use crate::grpc::Api;

pub const PATH: &str = "/etcdserverpb.Watch/Watch";

/// A stream's responses, one at a time, from the items its task queues.
pub type OutStream = std::pin::Pin<Box<dyn futures::Stream<Item = Outbound> + Send>>;

pub fn out_stream(rx: tokio::sync::mpsc::Receiver<OutBatch>) -> OutStream {
    use futures::StreamExt;
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx).flat_map(futures::stream::iter))
}

/// The Watch service of one member, to add to a router.
#[derive(Clone)]
pub struct WatchService {
    api: Api,
    max_decoding: usize,
}

impl WatchService {
    pub fn new(api: Api, max_decoding: usize) -> Self {
        WatchService { api, max_decoding }
    }
}

impl tonic::server::NamedService for WatchService {
    const NAME: &'static str = "etcdserverpb.Watch";
}

struct Handler(Api);

impl tonic::server::StreamingService<pb::WatchRequest> for Handler {
    type Response = WatchOut;
    type ResponseStream = OutStream;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<Streaming<pb::WatchRequest>>) -> Self::Future {
        let api = self.0.clone();
        Box::pin(async move { api.watch_stream(request).await })
    }
}

impl<B> tower::Service<http::Request<B>> for WatchService
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != PATH {
            return Box::pin(async { Ok(Status::unimplemented("").into_http()) });
        }
        let handler = Handler(self.api.clone());
        let max = self.max_decoding;
        Box::pin(async move {
            let mut grpc =
                tonic::server::Grpc::new(WatchCodec).apply_max_message_size_config(Some(max), Some(usize::MAX));
            Ok(grpc.streaming(handler, req).await)
        })
    }
}

/// Requests decoded with prost; responses encoded by `WatchOut`.
#[derive(Default)]
struct WatchCodec;

struct OutEncoder;
struct RequestDecoder;

impl Encoder for OutEncoder {
    type Item = WatchOut;
    type Error = Status;

    fn encode(&mut self, item: WatchOut, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst).map_err(|e| Status::internal(format!("encoding a watch response: {e}")))
    }
}

impl Decoder for RequestDecoder {
    type Item = pb::WatchRequest;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<pb::WatchRequest>, Status> {
        // tonic's own wording, which `grpc::grpc_go_decode_errors` turns into grpc-go's.
        pb::WatchRequest::decode(src).map(Some).map_err(|e| Status::internal(e.to_string()))
    }
}

impl Codec for WatchCodec {
    type Encode = WatchOut;
    type Decode = pb::WatchRequest;
    type Encoder = OutEncoder;
    type Decoder = RequestDecoder;

    fn encoder(&mut self) -> OutEncoder {
        OutEncoder
    }

    fn decoder(&mut self) -> RequestDecoder {
        RequestDecoder
    }
}
