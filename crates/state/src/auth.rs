//! etcd's auth store as replicated state: users (with bcrypt password hashes), roles with their
//! key-range permissions, whether auth is enabled, and the auth revision, which every change
//! raises (as etcd's `authRevision`).
//!
//! Changes arrive through the log as [`AuthOp`]s and are applied deterministically here; the
//! password hashing and the admin checks happen before proposing (`services::auth`), as in etcd.
//! Writes checked against an auth revision travel as `Op::Guarded`: if the auth store changed
//! between the check and the apply, the write is refused with etcd's "revision of auth store is
//! old" and the client re-authenticates and retries.
//!
//! The whole state is one record in the store's `meta` table (`auth`), rewritten on each change:
//! its size is bounded ([`USERS_MAX`], [`ROLES_MAX`], [`PERMS_PER_ROLE_MAX`]).

use std::collections::{BTreeMap, BTreeSet};

use cairn_types::Error;
use serde::{Deserialize, Serialize};

/// The user that must exist, with the root role, before auth can be enabled; it may do
/// anything.
pub const ROOT_USER: &str = "root";
/// The role that grants everything, including user and role management.
pub const ROOT_ROLE: &str = "root";

/// cairn's limits on the auth store (etcd has none; the whole store is one record here).
pub const USERS_MAX: usize = 10_000;
pub const ROLES_MAX: usize = 10_000;
pub const PERMS_PER_ROLE_MAX: usize = 1_000;

/// etcd's permission types (`authpb.Permission.Type`).
pub const PERM_READ: i32 = 0;
pub const PERM_WRITE: i32 = 1;
pub const PERM_READWRITE: i32 = 2;

/// One change to the auth store, as proposed through the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthOp {
    /// `secret` signs tokens from now on (each enable starts a new one).
    Enable {
        secret: Vec<u8>,
    },
    Disable,
    /// `hash` is the bcrypt hash of the password (empty with `no_password`).
    UserAdd {
        name: String,
        hash: String,
        no_password: bool,
    },
    UserDelete {
        name: String,
    },
    UserChangePassword {
        name: String,
        hash: String,
    },
    UserGrantRole {
        user: String,
        role: String,
    },
    UserRevokeRole {
        user: String,
        role: String,
    },
    RoleAdd {
        name: String,
    },
    RoleDelete {
        name: String,
    },
    RoleGrantPermission {
        role: String,
        perm: Perm,
    },
    RoleRevokePermission {
        role: String,
        key: Vec<u8>,
        range_end: Vec<u8>,
    },
}

/// A permission on a key (`range_end` empty), a range `[key, range_end)`, or every key from
/// `key` on (`range_end` = `[0]`), as etcd's.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Perm {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    pub perm_type: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// bcrypt hash; empty for a user added with `no_password` (who cannot authenticate).
    pub hash: String,
    pub no_password: bool,
    pub roles: BTreeSet<String>,
    /// The auth revision at which the user was created or its password last changed. Tokens
    /// carry it, so deleting a user or changing its password ends its tokens (as etcd's
    /// simple tokens are invalidated).
    pub since: u64,
}

/// What a request needs on its key range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthState {
    pub enabled: bool,
    pub revision: u64,
    /// HMAC key for tokens (see `services::auth`), chosen at each enable; empty until the first.
    pub secret: Vec<u8>,
    pub users: BTreeMap<String, User>,
    /// Role name -> its permissions, sorted.
    pub roles: BTreeMap<String, Vec<Perm>>,
}

impl AuthState {
    pub fn decode(b: &[u8]) -> Result<AuthState, String> {
        postcard::from_bytes(b).map_err(|e| format!("auth record: {e}"))
    }

    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("serializable")
    }

    fn has_root_role(&self, user: &str) -> bool {
        self.users.get(user).is_some_and(|u| u.roles.contains(ROOT_ROLE))
    }

    /// etcd's IsAdminPermitted: with auth enabled, only a user holding the root role.
    pub fn check_admin(&self, user: &str) -> Result<(), Error> {
        if !self.enabled {
            return Ok(());
        }
        if !self.users.contains_key(user) {
            return Err(Error::UserNotFound);
        }
        if !self.has_root_role(user) {
            return Err(Error::PermissionDenied);
        }
        Ok(())
    }

    /// Whether `user` may read (or write) every key in `[key, range_end)` (etcd's range
    /// conventions: an empty `range_end` is the key alone, `[0]` is every key from `key`).
    pub fn check_range(&self, user: &str, key: &[u8], range_end: &[u8], access: Access) -> Result<(), Error> {
        if !self.enabled {
            return Ok(());
        }
        let Some(u) = self.users.get(user) else {
            return Err(Error::PermissionDenied);
        };
        if u.roles.contains(ROOT_ROLE) {
            return Ok(());
        }
        let wanted = Interval::of(key, range_end);
        let mut granted: Vec<Interval> = u
            .roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .flatten()
            .filter(|p| match access {
                Access::Read => p.perm_type == PERM_READ || p.perm_type == PERM_READWRITE,
                Access::Write => p.perm_type == PERM_WRITE || p.perm_type == PERM_READWRITE,
            })
            .map(|p| Interval::of(&p.key, &p.range_end))
            .collect();
        granted.sort();
        // Merge overlapping or touching grants, then look for one that covers the request.
        let mut merged: Vec<Interval> = Vec::new();
        for g in granted {
            match merged.last_mut() {
                Some(last) if last.reaches(&g.start) => {
                    if last.end.is_some() && (g.end.is_none() || g.end > last.end) {
                        last.end = g.end;
                    }
                }
                _ => merged.push(g),
            }
        }
        if merged.iter().any(|g| g.covers(&wanted)) {
            Ok(())
        } else {
            Err(Error::PermissionDenied)
        }
    }

    /// Applies one change; an error leaves the state as it was.
    pub fn apply(&mut self, op: &AuthOp) -> Result<(), Error> {
        let next = self.revision + 1;
        match op {
            AuthOp::Enable { secret } => {
                if self.enabled {
                    return Ok(());
                }
                if !self.users.contains_key(ROOT_USER) {
                    return Err(Error::RootUserNotExist);
                }
                if !self.has_root_role(ROOT_USER) {
                    return Err(Error::RootRoleNotExist);
                }
                // A new secret each time: tokens from before a disable do not come back.
                self.secret = secret.clone();
                self.enabled = true;
            }
            AuthOp::Disable => {
                if !self.enabled {
                    return Ok(());
                }
                self.enabled = false;
            }
            AuthOp::UserAdd { name, hash, no_password } => {
                if name.is_empty() {
                    return Err(Error::UserEmpty);
                }
                if self.users.contains_key(name) {
                    return Err(Error::UserAlreadyExist);
                }
                if self.users.len() >= USERS_MAX {
                    return Err(Error::AuthStoreFull);
                }
                let user = User { hash: hash.clone(), no_password: *no_password, roles: BTreeSet::new(), since: next };
                self.users.insert(name.clone(), user);
            }
            AuthOp::UserDelete { name } => {
                if self.enabled && name == ROOT_USER {
                    return Err(Error::InvalidAuthMgmt);
                }
                if self.users.remove(name).is_none() {
                    return Err(Error::UserNotFound);
                }
            }
            AuthOp::UserChangePassword { name, hash } => {
                let u = self.users.get_mut(name).ok_or(Error::UserNotFound)?;
                u.hash = hash.clone();
                u.since = next;
            }
            AuthOp::UserGrantRole { user, role } => {
                if !self.users.contains_key(user) {
                    return Err(Error::UserNotFound);
                }
                if role != ROOT_ROLE && !self.roles.contains_key(role) {
                    return Err(Error::RoleNotFound);
                }
                let u = self.users.get_mut(user).expect("checked");
                if !u.roles.insert(role.clone()) {
                    return Ok(()); // already granted: etcd ignores the request
                }
            }
            AuthOp::UserRevokeRole { user, role } => {
                if self.enabled && user == ROOT_USER && role == ROOT_ROLE {
                    return Err(Error::InvalidAuthMgmt);
                }
                let u = self.users.get_mut(user).ok_or(Error::UserNotFound)?;
                if !u.roles.remove(role) {
                    return Err(Error::RoleNotGranted);
                }
            }
            AuthOp::RoleAdd { name } => {
                if name.is_empty() {
                    return Err(Error::RoleEmpty);
                }
                if self.roles.contains_key(name) {
                    return Err(Error::RoleAlreadyExist);
                }
                if self.roles.len() >= ROLES_MAX {
                    return Err(Error::AuthStoreFull);
                }
                self.roles.insert(name.clone(), Vec::new());
            }
            AuthOp::RoleDelete { name } => {
                if self.enabled && name == ROOT_ROLE {
                    return Err(Error::InvalidAuthMgmt);
                }
                if self.roles.remove(name).is_none() {
                    return Err(Error::RoleNotFound);
                }
                for u in self.users.values_mut() {
                    u.roles.remove(name);
                }
            }
            AuthOp::RoleGrantPermission { role, perm } => {
                let perms = self.roles.get_mut(role).ok_or(Error::RoleNotFound)?;
                match perms.iter_mut().find(|p| p.key == perm.key && p.range_end == perm.range_end) {
                    Some(p) => p.perm_type = perm.perm_type,
                    None => {
                        if perms.len() >= PERMS_PER_ROLE_MAX {
                            return Err(Error::AuthStoreFull);
                        }
                        perms.push(perm.clone());
                        perms.sort();
                    }
                }
            }
            AuthOp::RoleRevokePermission { role, key, range_end } => {
                let perms = self.roles.get_mut(role).ok_or(Error::RoleNotFound)?;
                let before = perms.len();
                perms.retain(|p| !(p.key == *key && p.range_end == *range_end));
                if perms.len() == before {
                    return Err(Error::PermissionNotGranted);
                }
            }
        }
        self.revision = next;
        Ok(())
    }
}

/// A key interval `[start, end)`; `end: None` is unbounded.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Interval {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl Interval {
    fn of(key: &[u8], range_end: &[u8]) -> Interval {
        match range_end {
            [] => {
                let mut end = key.to_vec();
                end.push(0);
                Interval { start: key.to_vec(), end: Some(end) }
            }
            [0] => Interval { start: key.to_vec(), end: None },
            end => Interval { start: key.to_vec(), end: Some(end.to_vec()) },
        }
    }

    /// Whether this interval reaches `key` (so an interval starting there joins it).
    fn reaches(&self, key: &[u8]) -> bool {
        self.end.as_deref().is_none_or(|e| key <= e)
    }

    fn covers(&self, o: &Interval) -> bool {
        if self.start > o.start {
            return false;
        }
        match (&self.end, &o.end) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) => b <= a || o.start >= *b, // an empty request interval is covered
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> AuthState {
        let mut s = AuthState::default();
        for op in [
            AuthOp::UserAdd { name: "root".into(), hash: "h".into(), no_password: false },
            AuthOp::UserGrantRole { user: "root".into(), role: "root".into() },
            AuthOp::UserAdd { name: "alice".into(), hash: "h".into(), no_password: false },
            AuthOp::RoleAdd { name: "app".into() },
            AuthOp::RoleAdd { name: "logs".into() },
            AuthOp::UserGrantRole { user: "alice".into(), role: "app".into() },
            AuthOp::UserGrantRole { user: "alice".into(), role: "logs".into() },
            AuthOp::RoleGrantPermission {
                role: "app".into(),
                perm: Perm { key: b"app/".to_vec(), range_end: b"app0".to_vec(), perm_type: PERM_READWRITE },
            },
            AuthOp::RoleGrantPermission {
                role: "app".into(),
                perm: Perm { key: b"cfg".to_vec(), range_end: vec![], perm_type: PERM_READ },
            },
            AuthOp::RoleGrantPermission {
                role: "logs".into(),
                perm: Perm { key: b"app0".to_vec(), range_end: b"app5".to_vec(), perm_type: PERM_READ },
            },
            AuthOp::Enable { secret: vec![7; 32] },
        ] {
            s.apply(&op).unwrap();
        }
        s
    }

    #[test]
    fn permissions_cover_keys_ranges_and_merged_grants() {
        let s = state();
        let read = |k: &[u8], e: &[u8]| s.check_range("alice", k, e, Access::Read);
        let write = |k: &[u8], e: &[u8]| s.check_range("alice", k, e, Access::Write);
        assert_eq!(read(b"app/x", b""), Ok(()));
        assert_eq!(write(b"app/x", b""), Ok(()));
        assert_eq!(read(b"app/", b"app0"), Ok(()));
        // Two grants that touch (app/..app0 from one role, app0..app5 from another) cover the
        // union for reading, not for writing.
        assert_eq!(read(b"app/", b"app3"), Ok(()));
        assert_eq!(write(b"app/", b"app3"), Err(Error::PermissionDenied));
        assert_eq!(read(b"app/", b"app6"), Err(Error::PermissionDenied));
        assert_eq!(read(b"app/", &[0]), Err(Error::PermissionDenied));
        assert_eq!(read(b"cfg", b""), Ok(()));
        assert_eq!(write(b"cfg", b""), Err(Error::PermissionDenied));
        assert_eq!(read(b"cfg", b"cfh"), Err(Error::PermissionDenied), "a range beyond the single key");
        assert_eq!(read(b"other", b""), Err(Error::PermissionDenied));
        assert_eq!(s.check_range("root", b"", &[0], Access::Write), Ok(()));
        assert_eq!(s.check_range("nobody", b"app/x", b"", Access::Read), Err(Error::PermissionDenied));
        assert_eq!(s.check_admin("alice"), Err(Error::PermissionDenied));
        assert_eq!(s.check_admin("root"), Ok(()));
        assert_eq!(s.check_admin("nobody"), Err(Error::UserNotFound));
    }

    #[test]
    fn etcds_rules_for_changes() {
        let mut s = AuthState::default();
        assert_eq!(s.apply(&AuthOp::Enable { secret: vec![1] }), Err(Error::RootUserNotExist));
        s.apply(&AuthOp::UserAdd { name: "root".into(), hash: "h".into(), no_password: false }).unwrap();
        assert_eq!(s.apply(&AuthOp::Enable { secret: vec![1] }), Err(Error::RootRoleNotExist));
        s.apply(&AuthOp::UserGrantRole { user: "root".into(), role: "root".into() }).unwrap();
        let rev = s.revision;
        s.apply(&AuthOp::Enable { secret: vec![1] }).unwrap();
        assert!(s.enabled && s.revision == rev + 1 && s.secret == vec![1]);
        assert_eq!(s.apply(&AuthOp::UserDelete { name: "root".into() }), Err(Error::InvalidAuthMgmt));
        assert_eq!(
            s.apply(&AuthOp::UserRevokeRole { user: "root".into(), role: "root".into() }),
            Err(Error::InvalidAuthMgmt)
        );
        assert_eq!(
            s.apply(&AuthOp::UserAdd { name: "root".into(), hash: "h".into(), no_password: false }),
            Err(Error::UserAlreadyExist)
        );
        assert_eq!(
            s.apply(&AuthOp::UserAdd { name: "".into(), hash: "h".into(), no_password: false }),
            Err(Error::UserEmpty)
        );
        assert_eq!(s.apply(&AuthOp::RoleAdd { name: "".into() }), Err(Error::RoleEmpty));
        assert_eq!(s.apply(&AuthOp::UserGrantRole { user: "root".into(), role: "x".into() }), Err(Error::RoleNotFound));
        assert_eq!(s.apply(&AuthOp::UserGrantRole { user: "x".into(), role: "root".into() }), Err(Error::UserNotFound));
        s.apply(&AuthOp::RoleAdd { name: "r".into() }).unwrap();
        assert_eq!(s.apply(&AuthOp::RoleAdd { name: "r".into() }), Err(Error::RoleAlreadyExist));
        assert_eq!(
            s.apply(&AuthOp::RoleRevokePermission { role: "r".into(), key: b"k".to_vec(), range_end: vec![] }),
            Err(Error::PermissionNotGranted)
        );
        assert_eq!(
            s.apply(&AuthOp::UserRevokeRole { user: "root".into(), role: "r".into() }),
            Err(Error::RoleNotGranted)
        );
        // Deleting a role takes it from its users; a failed change leaves the revision alone.
        s.apply(&AuthOp::UserGrantRole { user: "root".into(), role: "r".into() }).unwrap();
        s.apply(&AuthOp::RoleDelete { name: "r".into() }).unwrap();
        assert!(!s.users["root"].roles.contains("r"));
        let rev = s.revision;
        assert_eq!(s.apply(&AuthOp::RoleDelete { name: "r".into() }), Err(Error::RoleNotFound));
        assert_eq!(s.revision, rev);
        // A password change moves the user's `since`, which ends its tokens.
        let since = s.users["root"].since;
        s.apply(&AuthOp::UserChangePassword { name: "root".into(), hash: "h2".into() }).unwrap();
        assert!(s.users["root"].since > since);
        s.apply(&AuthOp::Disable).unwrap();
        s.apply(&AuthOp::UserDelete { name: "root".into() }).unwrap();
        assert_eq!(AuthState::decode(&s.encode()).unwrap(), s);
    }
}
