//! Random and damaged bytes into the decoders of Raft's bytes from outside the process: the
//! peer messages `raft::server` decodes (postcard, as it does), and what the log store reads
//! back from the log. Nothing may panic; the log store refuses what it cannot use, naming it.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use cairn_raft::types::{Entry, LogId, SnapshotMeta, StoredMembership, TypeConfig, Vote};
use cairn_raft::{LogStore, PeerNode};
use cairn_state::{Command, Op};
use cairn_storage::wal::{Wal, WalOptions};
use openraft::entry::RaftEntry;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, TransferLeaderRequest,
    VoteRequest, VoteResponse,
};
use openraft::storage::RaftLogStorage;
use openraft::RaftLogReader;
use proptest::prelude::*;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(openraft::impls::leader_id_adv::LeaderId { term, node_id: 1 }, index)
}

fn membership() -> openraft::Membership<u64, PeerNode> {
    openraft::Membership::new_with_defaults(vec![BTreeSet::from([1, 2, 3])], [])
}

/// Every peer message type `raft::server` and `raft::network` decode, decoded from `b`.
fn decode_every_message(b: &[u8]) {
    let _ = postcard::from_bytes::<AppendEntriesRequest<TypeConfig>>(b);
    let _ = postcard::from_bytes::<AppendEntriesResponse<TypeConfig>>(b);
    let _ = postcard::from_bytes::<VoteRequest<TypeConfig>>(b);
    let _ = postcard::from_bytes::<VoteResponse<TypeConfig>>(b);
    let _ = postcard::from_bytes::<TransferLeaderRequest<TypeConfig>>(b);
    let _ = postcard::from_bytes::<SnapshotResponse<TypeConfig>>(b);
    let _ = postcard::from_bytes::<StreamAppendResult<TypeConfig>>(b);
    let _ = postcard::from_bytes::<(Vote, SnapshotMeta)>(b);
    let _ = postcard::from_bytes::<Entry>(b);
    let _ = postcard::from_bytes::<Option<LogId>>(b);
    let _ = postcard::from_bytes::<StoredMembership>(b);
}

/// An append as a leader sends it: a blank entry, a membership change, a batch of commands.
fn append_request() -> Vec<u8> {
    let put = |k: &str| {
        Op::Put(cairn_proto::etcdserverpb::PutRequest { key: k.into(), value: b"v".to_vec(), ..Default::default() })
    };
    let req = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(2, 1),
        prev_log_id: Some(log_id(1, 4)),
        entries: vec![
            Entry::new_blank(log_id(2, 5)),
            Entry::new_membership(log_id(2, 6), membership()),
            Entry::new_normal(log_id(2, 7), Command::new(9, Op::Batch(vec![put("a"), put("b")]))),
        ],
        leader_commit: Some(log_id(1, 4)),
    };
    postcard::to_allocvec(&req).unwrap()
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn random_peer_messages_decode_or_refuse(b in prop::collection::vec(any::<u8>(), 0..256)) {
        decode_every_message(&b);
    }

    #[test]
    fn damaged_peer_messages_decode_or_refuse(
        flips in prop::collection::vec((any::<usize>(), 1u8..=255), 1..4),
        cut in any::<usize>(),
        garbage in prop::collection::vec(any::<u8>(), 0..16),
    ) {
        let good = append_request();
        let mut b = good.clone();
        for (at, mask) in flips {
            let len = b.len();
            b[at % len] ^= mask;
        }
        decode_every_message(&b);
        decode_every_message(&good[..cut % good.len()]);
        decode_every_message(&[&good[..], &garbage].concat());
    }
}

/// A log whose records hold `entries` (index, bytes) and the given vote, committed and purge
/// bytes, read through the log store: errors are fine, panics are not.
fn read_back(
    entries: Vec<(u64, Vec<u8>)>,
    vote: Option<Vec<u8>>,
    committed: Option<Vec<u8>>,
    purge: Option<Vec<u8>>,
) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), WalOptions { unsafe_no_fsync: true, ..WalOptions::default() }).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    if !entries.is_empty() {
        let tx = tx.clone();
        wal.append(
            entries.into_iter().map(|(i, b)| (i, Bytes::from(b))).collect(),
            Box::new(move |r| tx.send(r).unwrap()),
        )
        .unwrap();
        rx.recv().unwrap().unwrap();
    }
    if let Some(v) = vote {
        wal.save_vote(v, Box::new(move |r| tx.send(r).unwrap())).unwrap();
        rx.recv().unwrap().unwrap();
    }
    if let Some(c) = committed {
        wal.save_committed(c).unwrap();
    }
    if let Some(p) = purge {
        wal.purge(0, p).unwrap();
    }
    let mut store = LogStore::new(Arc::new(wal));
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        let mut errors = Vec::new();
        let mut note = |r: Result<(), std::io::Error>| {
            if let Err(e) = r {
                errors.push(e.to_string());
            }
        };
        note(store.try_get_log_entries(0..u64::MAX).await.map(drop));
        note(store.read_vote().await.map(drop));
        note(store.read_committed().await.map(drop));
        note(store.get_log_state().await.map(drop));
        errors
    })
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn the_log_store_refuses_what_it_cannot_decode(
        entries in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..32), 0..4),
        vote in prop::option::of(prop::collection::vec(any::<u8>(), 0..16)),
        committed in prop::option::of(prop::collection::vec(any::<u8>(), 0..16)),
        purge in prop::option::of(prop::collection::vec(any::<u8>(), 0..16)),
    ) {
        let entries = entries.into_iter().enumerate().map(|(i, b)| (i as u64 + 1, b)).collect();
        for e in read_back(entries, vote, committed, purge) {
            prop_assert!(e.contains("raft log"), "an error that does not say where: {}", e);
        }
    }
}

/// An entry stored at one index that says it is another is refused, not handed to openraft.
#[test]
fn an_entry_at_the_wrong_index_is_refused() {
    let e = postcard::to_allocvec(&Entry::new_blank(log_id(1, 7))).unwrap();
    let errors = read_back(vec![(3, e)], None, None, None);
    assert!(errors.iter().any(|e| e.contains("stored at index 3 says it is entry 7")), "{errors:?}");
    // The same entry at its own index reads back.
    let e = postcard::to_allocvec(&Entry::new_blank(log_id(1, 3))).unwrap();
    assert!(read_back(vec![(3, e)], None, None, None).is_empty());
}
