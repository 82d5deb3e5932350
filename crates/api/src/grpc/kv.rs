//! etcd's KV service.

use cairn_proto::etcdserverpb as pb;
use cairn_proto::etcdserverpb::kv_server::Kv as KvApi;
use prost::Message;
use tonic::{Request, Response, Status};

use super::Api;

#[tonic::async_trait]
impl KvApi for Api {
    async fn range(&self, req: Request<pb::RangeRequest>) -> Result<Response<pb::RangeResponse>, Status> {
        self.call("Range", req, |w, r| w.range(r), |r| self.kv.range(r)).await
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        self.call(
            "Put",
            req,
            |w, r| w.put(r),
            |r| async move {
                self.check_size(r.encoded_len())?;
                self.kv.put(r).await
            },
        )
        .await
    }

    async fn delete_range(
        &self,
        req: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        self.call(
            "DeleteRange",
            req,
            |w, r| w.delete(r),
            |r| async move {
                self.check_size(r.encoded_len())?;
                self.kv.delete_range(r).await
            },
        )
        .await
    }

    async fn txn(&self, req: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        self.call(
            "Txn",
            req,
            |w, r| w.txn(r),
            |r| async move {
                self.check_size(r.encoded_len())?;
                self.kv.txn(r).await
            },
        )
        .await
    }

    async fn compact(&self, req: Request<pb::CompactionRequest>) -> Result<Response<pb::CompactionResponse>, Status> {
        self.call("Compact", req, |_, _| Ok(()), |r| self.kv.compact(r)).await
    }
}
