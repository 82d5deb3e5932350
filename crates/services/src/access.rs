//! Access control at the edge: who sends a request, and whether they may make it. Every front
//! end (etcd's gRPC API, its JSON gateway) runs the same checks through [`Access`] before it
//! calls a service, and runs the service inside [`crate::auth::guarded`] with the [`Guard`]
//! returned here, so a permission revoked between the check and apply still refuses the write
//! at apply (see `crate::auth`).
//!
//! The checks are etcd's (its v3 server's `checkKeyPermission`/`IsAdminPermitted` calls per
//! method): read or write on the key ranges a request touches, the root role for management.

use std::sync::Arc;

use cairn_proto::etcdserverpb as pb;
use cairn_proto::v3electionpb as el;
use cairn_state::auth::{Access as Perm, AuthState};
use cairn_types::Error;

use crate::auth::{self, AuthInfo, Guard};
use crate::lock::prefix_end;
use crate::router::Router;
use crate::watch::Permit;

/// The access checks of one member.
#[derive(Clone)]
pub struct Access {
    c: Arc<Router>,
}

impl Access {
    pub fn new(c: Arc<Router>) -> Access {
        Access { c }
    }

    /// Who sends a request carrying `token` (etcd clients send it in the `token` metadata, its
    /// HTTP gateway in `Authorization`): `None` while auth is disabled. Also the guard the
    /// request's work runs under: always, so that a request checked while auth was disabled is
    /// refused if auth is enabled before it applies, as etcd.
    pub fn caller(&self, token: Option<&str>) -> Result<(Option<Caller>, Guard), Error> {
        let st = self.c.store().auth();
        let info = auth::authorize(&st, token)?;
        let guard = Guard {
            revision: st.revision,
            user: info.as_ref().map(|i| i.user.clone()).unwrap_or_default(),
            token: info.as_ref().and(token).map(Arc::from),
        };
        Ok((info.map(|info| Caller { info, st }), guard))
    }

    /// LeaseTimeToLive with `keys`: listing a lease's keys needs read access to each (etcd).
    pub fn lease_time_to_live(&self, who: &Caller, r: &pb::LeaseTimeToLiveRequest) -> Result<(), Error> {
        match self.c.store().lease(r.id) {
            Some(l) if r.keys => l.keys.iter().try_for_each(|k| who.check(k, &[], Perm::Read)),
            _ => Ok(()),
        }
    }

    /// The check of each watch a stream creates: against the auth store as it is at the
    /// create, with the stream's token (etcd checks at create, too); nothing while auth is
    /// disabled.
    pub fn watch_permit(&self, token: Option<String>) -> Permit {
        let c = self.c.clone();
        Arc::new(move |key: &[u8], end: &[u8]| {
            let st = c.store().auth();
            match auth::authorize(&st, token.as_deref())? {
                None => Ok(()),
                Some(info) => st.check_range(&info.user, key, end, Perm::Read),
            }
        })
    }
}

/// An authenticated caller and the auth store its token was checked against.
pub struct Caller {
    info: AuthInfo,
    st: Arc<AuthState>,
}

impl Caller {
    pub fn user(&self) -> &str {
        &self.info.user
    }

    fn check(&self, key: &[u8], end: &[u8], access: Perm) -> Result<(), Error> {
        self.st.check_range(&self.info.user, key, end, access)
    }

    /// Management calls need the root role.
    pub fn admin(&self) -> Result<(), Error> {
        self.st.check_admin(&self.info.user)
    }

    pub fn range(&self, r: &pb::RangeRequest) -> Result<(), Error> {
        self.check(&r.key, &r.range_end, Perm::Read)
    }

    /// etcd: write on the key; read too when the previous value is returned.
    pub fn put(&self, r: &pb::PutRequest) -> Result<(), Error> {
        self.check(&r.key, &[], Perm::Write)?;
        if r.prev_kv {
            self.check(&r.key, &[], Perm::Read)?;
        }
        Ok(())
    }

    pub fn delete(&self, r: &pb::DeleteRangeRequest) -> Result<(), Error> {
        self.check(&r.key, &r.range_end, Perm::Write)?;
        if r.prev_kv {
            self.check(&r.key, &r.range_end, Perm::Read)?;
        }
        Ok(())
    }

    /// Every compare reads; every operation in both branches (nested too) is checked as if it
    /// ran alone, as etcd does.
    pub fn txn(&self, t: &pb::TxnRequest) -> Result<(), Error> {
        use pb::request_op::Request as Op;
        for c in &t.compare {
            self.check(&c.key, &c.range_end, Perm::Read)?;
        }
        for op in t.success.iter().chain(&t.failure) {
            match &op.request {
                Some(Op::RequestRange(r)) => self.range(r)?,
                Some(Op::RequestPut(r)) => self.put(r)?,
                Some(Op::RequestDeleteRange(r)) => self.delete(r)?,
                Some(Op::RequestTxn(n)) => self.txn(n)?,
                None => {}
            }
        }
        Ok(())
    }

    /// Read access to the keys of a lock or election (`name/...`).
    pub fn prefix_read(&self, name: &[u8]) -> Result<(), Error> {
        let mut prefix = name.to_vec();
        prefix.push(b'/');
        self.check(&prefix, &prefix_end(&prefix), Perm::Read)
    }

    /// Read and write access to the keys of a lock or election (`name/...`).
    pub fn prefix_rw(&self, name: &[u8]) -> Result<(), Error> {
        self.prefix_read(name)?;
        let mut prefix = name.to_vec();
        prefix.push(b'/');
        self.check(&prefix, &prefix_end(&prefix), Perm::Write)
    }

    /// Unlock: write access to the lock's key.
    pub fn unlock(&self, key: &[u8]) -> Result<(), Error> {
        self.check(key, &[], Perm::Write)
    }

    /// Proclaim and Resign: write access to the leader key.
    pub fn leader_key(&self, l: Option<&el::LeaderKey>) -> Result<(), Error> {
        match l {
            Some(l) => self.check(&l.key, &[], Perm::Write),
            None => Ok(()), // refused by the service itself ("leader" field must be provided)
        }
    }

    /// A user may read its own record; anyone else needs root.
    pub fn user_get(&self, name: &str) -> Result<(), Error> {
        if self.info.user == name {
            Ok(())
        } else {
            self.admin()
        }
    }

    /// A user may read the roles it holds; anyone else needs root.
    pub fn role_get(&self, role: &str) -> Result<(), Error> {
        if self.st.users.get(&self.info.user).is_some_and(|u| u.roles.iter().any(|r| r == role)) {
            Ok(())
        } else {
            self.admin()
        }
    }
}
