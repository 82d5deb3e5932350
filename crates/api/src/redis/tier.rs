//! The Redis front end's [`Backend`] over the data tier: every command goes to the range(s)
//! holding its keys (`cairn_services::cache`).

use std::future::Future;
use std::sync::{Arc, Mutex};

use cairn_range::cmd::{ReadCmd, WriteReq};
use cairn_range::Reply;
use cairn_services::auth::Auth;
use cairn_services::cache::Cache;

use super::backend::{Backend, ClusterView, NodeAddr, ScanCursors, SlotShard};
use super::command::ScanReq;

pub struct TierBackend {
    cache: Arc<Cache>,
    cursors: Mutex<ScanCursors>,
    /// cairn's users: with auth enabled (`etcdctl auth enable`), a connection must AUTH (or
    /// HELLO AUTH) as one of them first.
    auth: Option<Auth>,
}

impl TierBackend {
    pub fn new(cache: Arc<Cache>) -> TierBackend {
        TierBackend { cache, cursors: Mutex::new(ScanCursors::default()), auth: None }
    }

    /// Checks AUTH against cairn's users (those etcd's Auth API manages).
    pub fn with_auth(mut self, auth: Auth) -> TierBackend {
        self.auth = Some(auth);
        self
    }
}

/// Redis Cluster's 40-character node id for a cairn node.
fn node_id(id: u64) -> String {
    format!("{id:040x}")
}

/// `host` and `port` of a `redis://host:port` (or `rediss://`) URL.
fn host_port(url: &str) -> Option<(String, u16)> {
    let rest = url.strip_prefix("redis://").or_else(|| url.strip_prefix("rediss://"))?.trim_end_matches('/');
    let (h, p) = rest.rsplit_once(':')?;
    Some((h.trim_start_matches('[').trim_end_matches(']').to_string(), p.parse().ok()?))
}

impl TierBackend {
    fn view(&self) -> Option<ClusterView> {
        let tier = self.cache.tier();
        let dir = tier.directory()?;
        let records = tier.nodes();
        let addr = |id: u64| -> Option<NodeAddr> {
            let (host, port) = records.get(&id).and_then(|r| r.redis_urls.first()).and_then(|u| host_port(u))?;
            Some(NodeAddr { id: node_id(id), host, port })
        };
        let nodes: Vec<NodeAddr> = records.keys().filter_map(|id| addr(*id)).collect();
        let myself = addr(tier.node_id())?;
        let mut shards = Vec::new();
        let mut epoch = 0;
        for d in dir.iter() {
            let Some((first, last)) = cairn_cluster::directory::slots_of(&d.start, &d.end) else { continue };
            epoch = epoch.max(d.epoch);
            let leader_id = tier.leader_of(d)?;
            let leader = addr(leader_id)?;
            let replicas = d.replicas.iter().filter(|r| **r != leader_id).filter_map(|r| addr(*r)).collect();
            shards.push(SlotShard { first, last, leader, replicas });
        }
        Some(ClusterView { myself, nodes, shards, epoch })
    }
}

impl Backend for TierBackend {
    fn auth_required(&self) -> bool {
        self.auth.as_ref().is_some_and(|a| a.enabled())
    }

    /// With auth enabled, a cairn user and its password (bcrypt-checked as etcd's
    /// Authenticate does); every authenticated user may run every Redis command, as with
    /// Redis's `requirepass` (etcd's key permissions cover etcd's keyspace, not Redis's). With
    /// auth off, Redis's default: the `default` user with any password.
    fn authenticate(&self, user: Vec<u8>, pass: Vec<u8>) -> impl Future<Output = bool> + Send {
        let auth = self.auth.clone().filter(|a| a.enabled());
        async move {
            let Some(auth) = auth else { return user == b"default" };
            let (Ok(name), Ok(password)) = (String::from_utf8(user), String::from_utf8(pass)) else {
                return false;
            };
            auth.authenticate(cairn_proto::etcdserverpb::AuthenticateRequest { name, password }).await.is_ok()
        }
    }

    fn cluster(&self) -> Option<ClusterView> {
        // A data tier still forming answers as a cluster with no slots yet.
        self.view().or_else(|| {
            let tier = self.cache.tier();
            let me = tier.nodes().get(&tier.node_id()).and_then(|r| r.redis_urls.first().cloned());
            let (host, port) = me.as_deref().and_then(host_port).unwrap_or_default();
            let myself = NodeAddr { id: node_id(tier.node_id()), host, port };
            Some(ClusterView { nodes: vec![myself.clone()], myself, shards: vec![], epoch: 0 })
        })
    }

    fn moved(&self, keys: &[&[u8]], replica_read: bool) -> Option<Reply> {
        let slot = cairn_range::keys::slot(keys.first()?);
        if keys.iter().any(|k| cairn_range::keys::slot(k) != slot) {
            return None;
        }
        let leader = self.cache.led_elsewhere(keys[0], replica_read)?;
        let tier = self.cache.tier();
        let (host, port) = tier.nodes().get(&leader).and_then(|r| r.redis_urls.first()).and_then(|u| host_port(u))?;
        Some(Reply::err(format!("MOVED {slot} {host}:{port}")))
    }

    fn ranges_of(&self, keys: &[&[u8]]) -> Vec<u64> {
        // Before the directory exists, nothing runs anyway: one range.
        self.cache.ranges_of(keys).unwrap_or_else(|| vec![0; keys.len()])
    }

    fn write(&self, req: WriteReq) -> impl Future<Output = Reply> + Send {
        let cache = self.cache.clone();
        async move { cache.write(req).await }
    }

    fn read(&self, cmd: ReadCmd) -> impl Future<Output = Reply> + Send {
        let cache = self.cache.clone();
        async move { cache.read(cmd).await }
    }

    fn write_many(&self, reqs: Vec<WriteReq>) -> impl Future<Output = Vec<Reply>> + Send {
        let cache = self.cache.clone();
        async move { cache.write_many(reqs).await }
    }

    fn read_many(&self, cmds: Vec<ReadCmd>) -> impl Future<Output = Vec<Reply>> + Send {
        let cache = self.cache.clone();
        async move { cache.read_many(cmds).await }
    }

    fn read_replica(&self, cmd: ReadCmd) -> impl Future<Output = Reply> + Send {
        let cache = self.cache.clone();
        async move { cache.read_replica(cmd).await }
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
