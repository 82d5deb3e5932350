//! An in-memory [`KvAccess`] over a `BTreeMap`, for tests and the RESP front end's test
//! backend.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::exec::{Entries, ExecError, KvAccess, KvRead};

#[derive(Clone, Debug, Default)]
pub struct MemKv {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl MemKv {
    pub fn new() -> MemKv {
        MemKv::default()
    }

    /// Stored entries, including expired ones not yet deleted.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

impl KvRead for MemKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ExecError> {
        Ok(self.map.get(key).cloned())
    }

    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Entries, ExecError> {
        if start >= end {
            return Ok(Vec::new());
        }
        Ok(self
            .map
            .range::<[u8], _>((Bound::Included(start), Bound::Excluded(end)))
            .take(limit)
            .map(|(k, v)| (k.clone(), v[..v.len().min(crate::record::HEADER_BYTES_MAX)].to_vec()))
            .collect())
    }
}

impl KvAccess for MemKv {
    fn put(&mut self, key: &[u8], value: Vec<u8>) -> Result<(), ExecError> {
        self.map.insert(key.to_vec(), value);
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> Result<(), ExecError> {
        self.map.remove(key);
        Ok(())
    }
}
