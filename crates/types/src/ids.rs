//! Member and cluster ids.
//!
//! etcd derives a member's id from its peer URLs and the cluster token, so every member of a
//! new cluster computes the same ids for everyone from the same `--initial-cluster`, without
//! talking first. cairn does the same (SHA-1 of the sorted URLs and the token, first 8 bytes),
//! which also means an operator can predict ids. Members added later mix in a timestamp, as
//! etcd does, so re-adding the same URLs yields a fresh id.

/// A member id (etcd's 64-bit member ID). Also the Raft node id.
pub type NodeId = u64;

/// The id of a member with these peer URLs in the cluster named by `token`.
/// `salt` is 0 for members of the initial cluster and a timestamp for members added later.
pub fn member_id(peer_urls: &[String], token: &str, salt: u64) -> NodeId {
    let mut urls: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    urls.sort_unstable();
    let mut h = sha1_smol::Sha1::new();
    for u in urls {
        h.update(u.as_bytes());
    }
    h.update(token.as_bytes());
    if salt != 0 {
        h.update(&salt.to_be_bytes());
    }
    first_u64(&h.digest().bytes())
}

/// The cluster id: a hash of the initial members' ids and the token.
pub fn cluster_id(member_ids: &[NodeId], token: &str) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let mut h = sha1_smol::Sha1::new();
    for id in ids {
        h.update(&id.to_be_bytes());
    }
    h.update(token.as_bytes());
    first_u64(&h.digest().bytes())
}

fn first_u64(b: &[u8; 20]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    // Zero means "no member" in etcd's API; a zero hash is remapped.
    u64::from_be_bytes(a).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_id_ignores_url_order_and_depends_on_token() {
        let a = vec!["http://a:2380".to_string(), "http://b:2380".to_string()];
        let b = vec!["http://b:2380".to_string(), "http://a:2380".to_string()];
        assert_eq!(member_id(&a, "t", 0), member_id(&b, "t", 0));
        assert_ne!(member_id(&a, "t", 0), member_id(&a, "u", 0));
        assert_ne!(member_id(&a, "t", 0), member_id(&a, "t", 7));
    }

    #[test]
    fn cluster_id_ignores_member_order() {
        assert_eq!(cluster_id(&[1, 2, 3], "t"), cluster_id(&[3, 1, 2], "t"));
        assert_ne!(cluster_id(&[1, 2, 3], "t"), cluster_id(&[1, 2], "t"));
    }
}
