//! etcd's Cluster service: membership through Raft's joint consensus.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use cairn_proto::etcdserverpb as pb;
use cairn_proto::peer::{forward_reply::Response as Fr, forward_request::Request as Fq};
use cairn_raft::{MembershipChange, PeerNode};
use cairn_state::{MemberAttrs, Op};
use cairn_types::Error;

use crate::router::Router;

#[derive(Clone)]
pub struct Members {
    c: Arc<Router>,
}

/// A peer URL etcd would accept: http(s)://host:port.
fn url_ok(u: &str) -> bool {
    let rest = match u.strip_prefix("http://").or_else(|| u.strip_prefix("https://")) {
        Some(r) => r,
        None => return false,
    };
    let hostport = rest.trim_end_matches('/');
    match hostport.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && !hostport.contains('/') && port.parse::<u16>().is_ok(),
        None => false,
    }
}

impl Members {
    pub fn new(c: Arc<Router>) -> Self {
        Members { c }
    }

    /// Every member, as etcd lists them: voters and learners, with the name and client URLs
    /// each published after starting (empty until then).
    pub fn list_local(&self) -> Vec<pb::Member> {
        let (voters, nodes) = self.membership();
        let attrs = self.c.store().members();
        nodes
            .into_iter()
            .map(|(id, node)| {
                let a = attrs.get(&id).cloned().unwrap_or_default();
                pb::Member {
                    id,
                    name: a.name,
                    peer_ur_ls: node.peer_urls,
                    client_ur_ls: a.client_urls,
                    is_learner: !voters.contains(&id),
                }
            })
            .collect()
    }

    pub async fn list(&self, r: pb::MemberListRequest) -> Result<pb::MemberListResponse, Error> {
        if r.linearizable {
            self.c.read_barrier().await?;
        }
        Ok(pb::MemberListResponse { header: Some(self.c.header(0)), members: self.list_local() })
    }

    /// Voters the leader heard from within two election timeouts (etcd's "started" members).
    fn started_voters(&self) -> BTreeSet<u64> {
        let st = self.c.node.status();
        let window = self.c.cfg.election_timeout * 2;
        let mut started = BTreeSet::from([self.c.id()]);
        started.extend(st.last_ack.iter().filter(|(_, age)| **age <= window).map(|(id, _)| *id));
        started.intersection(&st.membership.voters).copied().collect()
    }

    /// Voter ids and every member's peer URLs.
    fn membership(&self) -> (BTreeSet<u64>, BTreeMap<u64, PeerNode>) {
        let m = self.c.node.membership();
        (m.voters, m.nodes)
    }

    pub async fn add(&self, r: pb::MemberAddRequest) -> Result<pb::MemberAddResponse, Error> {
        let mut resp = self
            .c
            .on_leader(
                || Fq::MemberAdd(r.clone()),
                |_| self.add_on_leader(r.clone()),
                |x| match x {
                    Fr::MemberAdd(p) => Some(p),
                    _ => None,
                },
            )
            .await?;
        resp.header = Some(self.c.header(0));
        Ok(resp)
    }

    pub async fn add_on_leader(&self, r: pb::MemberAddRequest) -> Result<pb::MemberAddResponse, Error> {
        if r.peer_ur_ls.is_empty() || !r.peer_ur_ls.iter().all(|u| url_ok(u)) {
            return Err(Error::MemberBadUrls);
        }
        let (voters, nodes) = self.membership();
        if nodes.values().any(|n| n.peer_urls.iter().any(|u| r.peer_ur_ls.contains(u))) {
            return Err(Error::PeerUrlExist);
        }
        let salt =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
        let id = cairn_types::member_id(&r.peer_ur_ls, &self.c.cfg.token, salt);
        if nodes.contains_key(&id) {
            return Err(Error::MemberExist);
        }
        let node = PeerNode { peer_urls: r.peer_ur_ls.clone() };
        if r.is_learner {
            // etcd's limit: one learner at a time (data nodes, learners for good, aside).
            let records = self.c.store().nodes();
            if nodes.keys().any(|n| !voters.contains(n) && !records.get(n).is_some_and(|r| r.data_only)) {
                return Err(Error::TooManyLearners);
            }
            self.c.node.add_learner(id, node).await?;
        } else {
            // etcd's strict reconfiguration check: the started members must still form a
            // quorum of the grown cluster, or it could not commit anything.
            let quorum = voters.len().div_ceil(2) + 1;
            if self.started_voters().len() < quorum {
                return Err(Error::NotEnoughStarted);
            }
            self.c.node.change_membership(MembershipChange::AddVoter(id, node)).await?;
        }
        tracing::info!(member = format!("{id:x}"), urls = ?r.peer_ur_ls, learner = r.is_learner, "added member");
        Ok(pb::MemberAddResponse {
            header: None,
            member: Some(pb::Member {
                id,
                name: String::new(),
                peer_ur_ls: r.peer_ur_ls,
                client_ur_ls: vec![],
                is_learner: r.is_learner,
            }),
            members: self.list_local(),
        })
    }

    pub async fn remove(&self, r: pb::MemberRemoveRequest) -> Result<pb::MemberRemoveResponse, Error> {
        let mut resp = self
            .c
            .on_leader(
                || Fq::MemberRemove(r),
                |_| self.remove_on_leader(r),
                |x| match x {
                    Fr::MemberRemove(p) => Some(p),
                    _ => None,
                },
            )
            .await?;
        resp.header = Some(self.c.header(0));
        Ok(resp)
    }

    pub async fn remove_on_leader(&self, r: pb::MemberRemoveRequest) -> Result<pb::MemberRemoveResponse, Error> {
        let (voters, nodes) = self.membership();
        if !nodes.contains_key(&r.id) {
            return Err(Error::MemberNotFound);
        }
        let change = if voters.contains(&r.id) {
            let started = self.started_voters();
            let remaining = voters.len() - 1;
            let started_after = started.len() - usize::from(started.contains(&r.id));
            if remaining > 0 && started_after < remaining / 2 + 1 {
                return Err(Error::NotEnoughStarted);
            }
            MembershipChange::RemoveVoter(r.id)
        } else {
            MembershipChange::RemoveLearner(r.id)
        };
        self.c.node.change_membership(change).await?;
        tracing::info!(member = format!("{:x}", r.id), "removed member");
        Ok(pb::MemberRemoveResponse { header: None, members: self.list_local() })
    }

    pub async fn update(&self, r: pb::MemberUpdateRequest) -> Result<pb::MemberUpdateResponse, Error> {
        let mut resp = self
            .c
            .on_leader(
                || Fq::MemberUpdate(r.clone()),
                |_| self.update_on_leader(r.clone()),
                |x| match x {
                    Fr::MemberUpdate(p) => Some(p),
                    _ => None,
                },
            )
            .await?;
        resp.header = Some(self.c.header(0));
        Ok(resp)
    }

    pub async fn update_on_leader(&self, r: pb::MemberUpdateRequest) -> Result<pb::MemberUpdateResponse, Error> {
        if r.peer_ur_ls.is_empty() || !r.peer_ur_ls.iter().all(|u| url_ok(u)) {
            return Err(Error::MemberBadUrls);
        }
        let (_, nodes) = self.membership();
        if !nodes.contains_key(&r.id) {
            return Err(Error::MemberNotFound);
        }
        if nodes.iter().any(|(id, n)| *id != r.id && n.peer_urls.iter().any(|u| r.peer_ur_ls.contains(u))) {
            return Err(Error::PeerUrlExist);
        }
        let node = PeerNode { peer_urls: r.peer_ur_ls.clone() };
        self.c.node.change_membership(MembershipChange::SetNode(r.id, node)).await?;
        Ok(pb::MemberUpdateResponse { header: None, members: self.list_local() })
    }

    pub async fn promote(&self, r: pb::MemberPromoteRequest) -> Result<pb::MemberPromoteResponse, Error> {
        let mut resp = self
            .c
            .on_leader(
                || Fq::MemberPromote(r),
                |_| self.promote_on_leader(r),
                |x| match x {
                    Fr::MemberPromote(p) => Some(p),
                    _ => None,
                },
            )
            .await?;
        resp.header = Some(self.c.header(0));
        Ok(resp)
    }

    pub async fn promote_on_leader(&self, r: pb::MemberPromoteRequest) -> Result<pb::MemberPromoteResponse, Error> {
        let (voters, nodes) = self.membership();
        if !nodes.contains_key(&r.id) {
            return Err(Error::MemberNotFound);
        }
        if voters.contains(&r.id) {
            return Err(Error::MemberNotLearner);
        }
        // etcd: a learner is ready once it has 90% of the leader's log.
        let st = self.c.node.status();
        let (matched, last) = (st.matched.get(&r.id).copied(), st.last_log_index);
        match matched {
            Some(i) if i >= last * 9 / 10 => {}
            _ => return Err(Error::LearnerNotReady),
        }
        self.c.node.change_membership(MembershipChange::Promote(r.id)).await?;
        tracing::info!(member = format!("{:x}", r.id), "promoted learner");
        Ok(pb::MemberPromoteResponse { header: None, members: self.list_local() })
    }

    /// Publishes this member's name and client URLs through the log until they are there.
    pub async fn publish_self(&self) {
        let want = MemberAttrs { name: self.c.cfg.name.clone(), client_urls: self.c.cfg.client_urls.clone() };
        loop {
            if self.c.store().members().get(&self.c.id()) == Some(&want) {
                return;
            }
            let op = Op::SetMemberAttrs { id: self.c.id(), attrs: want.clone() };
            let fwd = cairn_proto::peer::SetMemberAttrs {
                id: self.c.id(),
                name: want.name.clone(),
                client_urls: want.client_urls.clone(),
            };
            let r = self
                .c
                .on_leader(
                    || Fq::SetMemberAttrs(fwd.clone()),
                    |d| {
                        let op = op.clone();
                        async move { self.c.propose(op, d).await.map(|_| ()) }
                    },
                    |x| matches!(x, Fr::SetMemberAttrs(_)).then_some(()),
                )
                .await;
            match r {
                Ok(()) => {
                    tracing::info!(name = %want.name, "published member attributes");
                    return;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "publishing member attributes; will retry");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn peer_urls_are_checked_like_etcd() {
        assert!(super::url_ok("http://127.0.0.1:2380"));
        assert!(super::url_ok("https://node-1.example:12380"));
        assert!(!super::url_ok("127.0.0.1:2380"));
        assert!(!super::url_ok("http://host"));
        assert!(!super::url_ok("http://:2380"));
        assert!(!super::url_ok("http://host:99999"));
        assert!(!super::url_ok("unix://sock"));
    }
}
