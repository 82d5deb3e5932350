//! The memory engine: a `BTreeMap` per table behind a lock. For unit tests and as the
//! reference behaviour of the conformance suite.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::engine::{Engine, Reader, Table, WriteBatch, WriteOp};
use crate::Result;

type Tables = HashMap<Table, Arc<BTreeMap<Vec<u8>, Vec<u8>>>>;

/// Tables are `Arc`ed so a reader is a cheap clone of the current version (copy-on-write:
/// a write clones only the tables it touches, and only while a reader holds the old one).
#[derive(Default)]
pub struct MemEngine {
    tables: RwLock<Tables>,
}

impl MemEngine {
    pub fn new() -> Self {
        let mut t = Tables::new();
        for table in Table::ALL {
            t.insert(table, Arc::new(BTreeMap::new()));
        }
        MemEngine { tables: RwLock::new(t) }
    }
}

struct MemReader {
    tables: Tables,
}

impl Reader for MemReader {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.tables[&table].get(key).cloned())
    }

    fn scan(
        &self,
        table: Table,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        let map = &self.tables[&table];
        let from = from.map(|b| b.to_vec());
        let to = to.map(|b| b.to_vec());
        if let (Bound::Included(a) | Bound::Excluded(a), Bound::Included(b) | Bound::Excluded(b)) = (&from, &to) {
            if a > b {
                return Ok(());
            }
        }
        for (k, v) in map.range::<Vec<u8>, _>((from, to)) {
            if !visit(k, v) {
                break;
            }
        }
        Ok(())
    }
}

impl Engine for MemEngine {
    fn reader(&self) -> Result<Box<dyn Reader + Send + Sync>> {
        Ok(Box::new(MemReader { tables: self.tables.read().clone() }))
    }

    fn write(&self, batch: WriteBatch) -> Result<()> {
        let mut tables = self.tables.write();
        for op in batch.ops {
            match op {
                WriteOp::Put { table, key, value } => {
                    Arc::make_mut(tables.get_mut(&table).expect("all tables exist")).insert(key, value);
                }
                WriteOp::Delete { table, key } => {
                    Arc::make_mut(tables.get_mut(&table).expect("all tables exist")).remove(&key);
                }
                WriteOp::Clear { table } => {
                    tables.insert(table, Arc::new(BTreeMap::new()));
                }
            }
        }
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }

    fn size_bytes(&self) -> u64 {
        self.live_bytes()
    }

    fn live_bytes(&self) -> u64 {
        let tables = self.tables.read();
        tables.values().flat_map(|m| m.iter()).map(|(k, v)| (k.len() + v.len()) as u64).sum()
    }

    fn defragment(&self) -> Result<(u64, u64)> {
        let size = self.size_bytes();
        Ok((size, size))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn conformance() {
        crate::conformance::run_all(&|| Box::new(super::MemEngine::new()));
    }
}
