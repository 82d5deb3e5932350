//! openraft's own storage conformance suite, run against cairn's log store and state machine.

use std::sync::Arc;

use cairn_raft::{LogStore, StateMachine, TypeConfig};
use cairn_state::Store;
use cairn_storage::wal::{Wal, WalOptions};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().unwrap();
        let wal = Arc::new(Wal::open(&dir.path().join("wal"), WalOptions::default()).unwrap());
        let engine = cairn_storage::RedbEngine::open(&dir.path().join("state.redb"), 1 << 20).unwrap();
        let store = Arc::new(Store::open(Arc::new(engine)).unwrap());
        let sm = StateMachine::open(store, 1, &dir.path().join("snap")).unwrap();
        Ok((dir, LogStore::new(wal), sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite() {
    Suite::test_all(Builder).await.unwrap();
}
