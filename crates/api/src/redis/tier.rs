//! The Redis front end's [`Backend`] over the data tier: every command goes to the range(s)
//! holding its keys (`cairn_services::cache`).

use std::future::Future;
use std::sync::{Arc, Mutex};

use cairn_range::cmd::{ReadCmd, WriteReq};
use cairn_range::Reply;
use cairn_services::cache::Cache;

use super::backend::{Backend, ScanCursors};
use super::command::ScanReq;

pub struct TierBackend {
    cache: Arc<Cache>,
    cursors: Mutex<ScanCursors>,
}

impl TierBackend {
    pub fn new(cache: Arc<Cache>) -> TierBackend {
        TierBackend { cache, cursors: Mutex::new(ScanCursors::default()) }
    }
}

impl Backend for TierBackend {
    fn write(&self, req: WriteReq) -> impl Future<Output = Reply> + Send {
        let cache = self.cache.clone();
        async move { cache.write(req).await }
    }

    fn read(&self, cmd: ReadCmd) -> impl Future<Output = Reply> + Send {
        let cache = self.cache.clone();
        async move { cache.read(cmd).await }
    }

    fn scan(&self, req: ScanReq) -> impl Future<Output = Reply> + Send {
        let cache = self.cache.clone();
        let pos = self.cursors.lock().unwrap_or_else(|p| p.into_inner()).position(req.cursor);
        async move {
            let pos = match pos {
                Ok(p) => p,
                Err(e) => return e,
            };
            let page = cache.scan_page(pos, req.count, req.pattern, req.kind).await;
            self.cursors.lock().unwrap_or_else(|p| p.into_inner()).page(page)
        }
    }
}
