//! Active expiry of Redis keys, as Redis's own expire cycle: a key whose time has passed is
//! already invisible to every read (reads compare it with the leader's clock), but it keeps
//! its space until something deletes it. So on every node, for each range it leads, a task
//! looks at the next few keys after where it stopped last time, and for each expired one
//! proposes `DataCmd::ExpireDelete` through the range's log. That command deletes the key only
//! if it still has the expiry that was seen and that time has passed at the entry's stamp, so
//! a write racing in between (a new SET) is kept, and every replica deletes the same keys.
//!
//! The walk costs at most [`SAMPLE`] keys per led range per round; a hibernating range (see
//! `cairn_raft::range::hibernate`) is walked every [`SLEEPING_EVERY`] rounds only, and is woken
//! only when it holds an expired key.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_range::cmd::{DataCmd, WriteReq};
use cairn_range::keys;
use cairn_range::record::Record;

use crate::data::DataTier;

/// Keys looked at per led range per round, at most.
pub const SAMPLE: usize = 64;
/// A hibernating range is walked once in this many rounds.
pub const SLEEPING_EVERY: u64 = 40;

/// Expired keys this node deleted since it started (`cairn_redis_expired_keys` in /metrics).
pub static EXPIRED_KEYS: AtomicU64 = AtomicU64::new(0);

/// How often a round runs (a hibernating range: every [`SLEEPING_EVERY`] rounds, 10 s).
pub const EVERY: Duration = Duration::from_millis(250);

/// Starts the expiry walk on this node, one round every `every` (`Duration::ZERO`: off).
pub fn start(tier: Arc<DataTier>, every: Duration) {
    if every.is_zero() {
        return;
    }
    let weak = Arc::downgrade(&tier);
    drop(tier);
    tokio::spawn(async move {
        // Where the walk of each range stopped: the next stored key to look at.
        let mut cursors: HashMap<u64, Vec<u8>> = HashMap::new();
        let mut round = 0u64;
        loop {
            tokio::time::sleep(every).await;
            let Some(tier) = weak.upgrade() else { return };
            round += 1;
            let me = tier.node_id();
            for r in tier.host().replicas() {
                if r.leader() != Some(me) || r.sm.frozen() || (r.asleep() && !round.is_multiple_of(SLEEPING_EVERY)) {
                    continue;
                }
                let desc = r.sm.desc();
                let from = cursors.remove(&desc.id).filter(|k| desc.contains(k)).unwrap_or_else(|| desc.start.clone());
                let now = cairn_types::clock::wall_ms() as i64;
                let mut expired = Vec::new();
                let mut seen = 0;
                let mut last = None;
                let walked = r.sm.read(|view| {
                    view.scan(&from, &desc.end, &mut |k, v| {
                        seen += 1;
                        last = Some(k.to_vec());
                        if let (Some(user), Ok(rec)) = (keys::decode(k), Record::decode(v)) {
                            if let Some(at) = rec.expire_at_ms.filter(|at| *at <= now) {
                                expired.push((user.to_vec(), at));
                            }
                        }
                        seen < SAMPLE
                    })
                });
                if !matches!(walked, Ok(Ok(()))) {
                    continue;
                }
                // The next round starts after the last key seen, or over from the start.
                if let (true, Some(mut k)) = (seen >= SAMPLE, last) {
                    k.push(0);
                    cursors.insert(desc.id, k);
                }
                for (key, expire_at_ms) in expired {
                    let stored = keys::encode(&key);
                    let req = WriteReq::Cmd(DataCmd::ExpireDelete { key, expire_at_ms });
                    let bytes = postcard::to_allocvec(&req).expect("serializable");
                    match tier.execute(&stored, false, bytes).await {
                        Ok(b) => {
                            if postcard::from_bytes::<cairn_range::Reply>(&b) == Ok(cairn_range::Reply::Int(1)) {
                                EXPIRED_KEYS.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(e) => {
                            tracing::debug!(range = desc.id, error = %e, "active expiry: delete not done");
                            break;
                        }
                    }
                }
            }
        }
    });
}
