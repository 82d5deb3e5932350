//! The load generator's side of a watch stream, kept cheap: `cairn bench` receives every event of
//! every watcher (millions per second with 10,000 watchers) on the same two cores as the members
//! it measures, so it reads each `WatchResponse` straight from its encoding — created, canceled,
//! and the first bytes of each event's value (the put's send time) — instead of decoding it into
//! owned messages. Hand-written because it reads five fields of a fixed, public message layout
//! (etcd's `rpc.proto` / `kv.proto` field numbers) and a general decoder is exactly the cost
//! being avoided.

use bytes::{Buf, Bytes};
use cairn_proto::etcdserverpb as pb;
use prost::encoding::{decode_key, decode_varint, WireType};
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

/// A response that is not a well-formed `WatchResponse`.
#[derive(Debug)]
pub struct ScanError(String);

impl ScanError {
    fn bad(why: &str) -> ScanError {
        ScanError(why.to_string())
    }
}

impl From<prost::DecodeError> for ScanError {
    fn from(e: prost::DecodeError) -> Self {
        ScanError(e.to_string())
    }
}

impl std::fmt::Display for ScanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed watch response: {}", self.0)
    }
}

impl std::error::Error for ScanError {}

/// What the load generator needs from one `WatchResponse`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Scanned {
    pub created: bool,
    pub canceled: bool,
    pub events: usize,
}

/// Reads `msg` (an encoded `WatchResponse`), calling `on_value` with each event's value.
pub fn scan(mut msg: &[u8], mut on_value: impl FnMut(&[u8])) -> Result<Scanned, ScanError> {
    let mut out = Scanned::default();
    while msg.has_remaining() {
        let (tag, wt) = decode_key(&mut msg)?;
        match (tag, wt) {
            (3, WireType::Varint) => out.created = decode_varint(&mut msg)? != 0,
            (4, WireType::Varint) => out.canceled = decode_varint(&mut msg)? != 0,
            (11, WireType::LengthDelimited) => {
                let mut event = take(&mut msg)?;
                out.events += 1;
                // Event: field 2 is the KeyValue, whose field 5 is the value.
                while event.has_remaining() {
                    match decode_key(&mut event)? {
                        (2, WireType::LengthDelimited) => {
                            let mut kv = take(&mut event)?;
                            while kv.has_remaining() {
                                match decode_key(&mut kv)? {
                                    (5, WireType::LengthDelimited) => on_value(take(&mut kv)?),
                                    (_, wt) => skip(&mut kv, wt)?,
                                }
                            }
                        }
                        (_, wt) => skip(&mut event, wt)?,
                    }
                }
            }
            (_, wt) => skip(&mut msg, wt)?,
        }
    }
    Ok(out)
}

fn take<'a>(b: &mut &'a [u8]) -> Result<&'a [u8], ScanError> {
    let len = decode_varint(b)? as usize;
    if len > b.len() {
        return Err(ScanError::bad("length beyond the message"));
    }
    let (head, rest) = b.split_at(len);
    *b = rest;
    Ok(head)
}

fn skip(b: &mut &[u8], wt: WireType) -> Result<(), ScanError> {
    let n = match wt {
        WireType::Varint => {
            decode_varint(b)?;
            0
        }
        WireType::SixtyFourBit => 8,
        WireType::ThirtyTwoBit => 4,
        WireType::LengthDelimited => {
            take(b)?;
            0
        }
        WireType::StartGroup | WireType::EndGroup => return Err(ScanError::bad("groups are not used")),
    };
    if n > b.len() {
        return Err(ScanError::bad("field beyond the message"));
    }
    b.advance(n);
    Ok(())
}

/// gRPC codec for the Watch call: requests encoded as usual, responses left as bytes.
#[derive(Default, Clone)]
pub struct RawWatchCodec;

pub struct RequestEncoder;
pub struct BytesDecoder;

impl Encoder for RequestEncoder {
    type Item = pb::WatchRequest;
    type Error = Status;

    fn encode(&mut self, item: pb::WatchRequest, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst).map_err(|e| Status::internal(e.to_string()))
    }
}

impl Decoder for BytesDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl Codec for RawWatchCodec {
    type Encode = pb::WatchRequest;
    type Decode = Bytes;
    type Encoder = RequestEncoder;
    type Decoder = BytesDecoder;

    fn encoder(&mut self) -> RequestEncoder {
        RequestEncoder
    }

    fn decoder(&mut self) -> BytesDecoder {
        BytesDecoder
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::mvccpb::{Event, KeyValue};

    #[test]
    fn scan_reads_what_prost_encodes() {
        let kv = |v: &str| KeyValue { key: b"k".to_vec(), value: v.into(), mod_revision: 9, ..Default::default() };
        let r = pb::WatchResponse {
            header: Some(pb::ResponseHeader { revision: 9, member_id: 3, ..Default::default() }),
            watch_id: 7,
            created: true,
            cancel_reason: "x".into(),
            events: vec![
                Event { kv: Some(kv("1234567890123456rest")), prev_kv: Some(kv("old")), r#type: 0 },
                Event { kv: Some(kv("second")), prev_kv: None, r#type: 1 },
            ],
            ..Default::default()
        };
        let mut values = Vec::new();
        let s = scan(&r.encode_to_vec(), |v| values.push(v.to_vec())).unwrap();
        assert_eq!(s, Scanned { created: true, canceled: false, events: 2 });
        assert_eq!(values, vec![b"1234567890123456rest".to_vec(), b"second".to_vec()]);
        let c = pb::WatchResponse { canceled: true, ..Default::default() };
        assert_eq!(scan(&c.encode_to_vec(), |_| {}).unwrap(), Scanned { created: false, canceled: true, events: 0 });
        // Truncated input is an error, never a panic.
        let enc = r.encode_to_vec();
        for n in 0..enc.len() {
            let _ = scan(&enc[..n], |_| {});
        }
        assert!(scan(&enc[..enc.len() - 3], |_| {}).is_err());
    }
}
