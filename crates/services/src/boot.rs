//! Who am I, and which cluster? Worked out once, before Raft starts, the way etcd does it.
//!
//! - A new cluster (`--initial-cluster-state new`): every member derives every member's id from
//!   `--initial-cluster` and the token, so they agree without talking. Each member initializes
//!   Raft with that same membership (openraft allows identical initialization on every member).
//! - Joining (`existing`): the member must have been added (`etcdctl member add`); it asks the
//!   members listed in `--initial-cluster` for the member list and finds itself by peer URLs.
//! - Restart: the identity saved in the data directory wins; the initial flags are ignored.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_proto::peer::peer_client::PeerClient;
use cairn_proto::peer::ClusterInfoRequest;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    New,
    Existing,
}

#[derive(Debug, Clone)]
pub struct BootOptions {
    pub name: String,
    pub data_dir: PathBuf,
    /// `--initial-cluster`: member name and its peer URLs.
    pub initial_cluster: Vec<(String, Vec<String>)>,
    pub state: ClusterState,
    pub token: String,
    pub advertise_peer_urls: Vec<String>,
}

/// What a member keeps about itself across restarts (`member/identity.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub name: String,
    pub member_id: u64,
    pub cluster_id: u64,
    /// For a member of a new cluster: the initial membership (id -> peer URLs), used to
    /// initialize Raft if it has not been yet.
    pub initial: Option<BTreeMap<u64, Vec<String>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("--initial-cluster must include {name}={urls} (this member's --name and --initial-advertise-peer-urls)")]
    NotInInitialCluster { name: String, urls: String },
    #[error("--initial-cluster has {name}={theirs}, but --initial-advertise-peer-urls is {ours}")]
    UrlMismatch { name: String, theirs: String, ours: String },
    #[error("--initial-cluster names member {0} twice")]
    DuplicateName(String),
    #[error("two members of --initial-cluster share peer URLs")]
    DuplicateUrls,
    #[error("cannot join: {0}")]
    Join(String),
    #[error("cannot read or write {path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

fn identity_path(data_dir: &Path) -> PathBuf {
    data_dir.join("member").join("identity.json")
}

fn same(a: &[String], b: &[String]) -> bool {
    a.iter().collect::<BTreeSet<_>>() == b.iter().collect::<BTreeSet<_>>()
}

/// Reads the saved identity, if this data directory has been used before.
pub fn load_identity(data_dir: &Path) -> Result<Option<Identity>, BootError> {
    let path = identity_path(data_dir);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| BootError::Corrupt { path, reason: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(BootError::Io { path, error }),
    }
}

/// Saves the identity atomically (write, fsync, rename, fsync the directory).
pub fn save_identity(data_dir: &Path, id: &Identity) -> Result<(), BootError> {
    let path = identity_path(data_dir);
    let dir = path.parent().expect("has a parent").to_path_buf();
    let io = |error| BootError::Io { path: path.clone(), error };
    std::fs::create_dir_all(&dir).map_err(io)?;
    let tmp = dir.join("identity.json.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(&serde_json::to_vec_pretty(id).expect("serializable")).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    std::fs::File::open(&dir).and_then(|d| d.sync_all()).map_err(io)?;
    Ok(())
}

/// Works out this member's identity for a data directory that has none yet.
pub async fn identify(o: &BootOptions) -> Result<Identity, BootError> {
    let mut names = BTreeSet::new();
    for (n, _) in &o.initial_cluster {
        if !names.insert(n) {
            return Err(BootError::DuplicateName(n.clone()));
        }
    }
    let mine = o.initial_cluster.iter().find(|(n, _)| *n == o.name);
    match o.state {
        ClusterState::New => {
            let Some((_, urls)) = mine else {
                return Err(BootError::NotInInitialCluster {
                    name: o.name.clone(),
                    urls: o.advertise_peer_urls.join(","),
                });
            };
            if !same(urls, &o.advertise_peer_urls) {
                return Err(BootError::UrlMismatch {
                    name: o.name.clone(),
                    theirs: urls.join(","),
                    ours: o.advertise_peer_urls.join(","),
                });
            }
            let initial: BTreeMap<u64, Vec<String>> = o
                .initial_cluster
                .iter()
                .map(|(_, urls)| (cairn_types::member_id(urls, &o.token, 0), urls.clone()))
                .collect();
            if initial.len() != o.initial_cluster.len() {
                return Err(BootError::DuplicateUrls);
            }
            let ids: Vec<u64> = initial.keys().copied().collect();
            Ok(Identity {
                name: o.name.clone(),
                member_id: cairn_types::member_id(urls, &o.token, 0),
                cluster_id: cairn_types::cluster_id(&ids, &o.token),
                initial: Some(initial),
            })
        }
        ClusterState::Existing => {
            let others: Vec<&String> =
                o.initial_cluster.iter().filter(|(n, _)| *n != o.name).flat_map(|(_, urls)| urls.iter()).collect();
            if others.is_empty() {
                return Err(BootError::Join("--initial-cluster lists no other member to ask".into()));
            }
            let mut last_err = String::new();
            let mut not_listed = false;
            // The cluster may be busy (a leader election, the member add itself): keep asking.
            // A member that does not list this one yet may itself be new and behind (two nodes
            // joining at once each ask the other): only if none lists it is that the answer.
            for _attempt in 0..20 {
                for url in &others {
                    match ask(url).await {
                        Ok(reply) => {
                            let me = reply.members.iter().find(|m| same(&m.peer_ur_ls, &o.advertise_peer_urls));
                            if let Some(m) = me {
                                return Ok(Identity {
                                    name: o.name.clone(),
                                    member_id: m.id,
                                    cluster_id: reply.cluster_id,
                                    initial: None,
                                });
                            }
                            not_listed = true;
                        }
                        Err(e) => last_err = format!("{url}: {e}"),
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            if not_listed {
                return Err(BootError::Join(format!(
                    "no member with peer URLs {} in the cluster; add it first (etcdctl member add {} --peer-urls={})",
                    o.advertise_peer_urls.join(","),
                    o.name,
                    o.advertise_peer_urls.join(",")
                )));
            }
            Err(BootError::Join(format!("no member of --initial-cluster answered ({last_err})")))
        }
    }
}

async fn ask(url: &str) -> Result<cairn_proto::peer::ClusterInfoReply, String> {
    let ep = cairn_raft::network::peer_endpoint(url)?;
    let ch = ep
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(3))
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let r = PeerClient::new(ch).cluster_info(ClusterInfoRequest {}).await.map_err(|s| s.message().to_string())?;
    Ok(r.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(name: &str, urls: &str) -> BootOptions {
        BootOptions {
            name: name.into(),
            data_dir: PathBuf::from("/nonexistent"),
            initial_cluster: vec![
                ("a".into(), vec!["http://127.0.0.1:1".into()]),
                ("b".into(), vec!["http://127.0.0.1:2".into()]),
            ],
            state: ClusterState::New,
            token: "t".into(),
            advertise_peer_urls: vec![urls.into()],
        }
    }

    #[tokio::test]
    async fn new_cluster_members_agree_on_ids() {
        let a = identify(&opts("a", "http://127.0.0.1:1")).await.unwrap();
        let b = identify(&opts("b", "http://127.0.0.1:2")).await.unwrap();
        assert_ne!(a.member_id, b.member_id);
        assert_eq!(a.cluster_id, b.cluster_id);
        assert_eq!(a.initial, b.initial);
        assert!(a.initial.as_ref().unwrap().contains_key(&b.member_id));
    }

    #[tokio::test]
    async fn new_cluster_flags_are_checked() {
        assert!(matches!(identify(&opts("c", "http://127.0.0.1:3")).await, Err(BootError::NotInInitialCluster { .. })));
        assert!(matches!(identify(&opts("a", "http://127.0.0.1:9")).await, Err(BootError::UrlMismatch { .. })));
    }

    #[test]
    fn identity_roundtrips() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_identity(dir.path()).unwrap(), None);
        let id = Identity { name: "n".into(), member_id: 7, cluster_id: 9, initial: None };
        save_identity(dir.path(), &id).unwrap();
        assert_eq!(load_identity(dir.path()).unwrap(), Some(id));
        std::fs::write(identity_path(dir.path()), b"{garbage").unwrap();
        assert!(matches!(load_identity(dir.path()), Err(BootError::Corrupt { .. })));
    }
}
