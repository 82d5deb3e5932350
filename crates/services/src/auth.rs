//! etcd's Auth service: users, roles, permissions, tokens.
//!
//! The auth store itself is replicated state (`cairn_state::auth`): every change is an `Op::Auth`
//! through the log. Here live the parts that must not be in apply: password hashing (bcrypt,
//! etcd's algorithm and default cost, done before proposing so apply stays cheap and
//! deterministic), password checks, tokens, and the admin checks on management calls.
//!
//! **Tokens.** etcd's simple tokens are random strings that every member learns through the log.
//! cairn's tokens are signed instead, so any member verifies any token without a log write per
//! login: `base64(payload).base64(hmac)`, where the payload names the user, the auth revision at
//! which its password was set, and an expiry (`--auth-token-ttl`, default 300 s, as etcd), and
//! the HMAC-SHA256 key is a random secret chosen when auth is first enabled and replicated with
//! the auth store. A token stops working when it expires, or when its user is deleted or its
//! password changes (as etcd invalidates a user's simple tokens). Clients treat tokens as opaque; etcd clients re-authenticate on
//! "invalid auth token".
//!
//! **Guards.** A request's permissions are checked on the member that received it, against that
//! member's applied auth store; the request then runs inside [`guarded`], which makes every
//! proposal an `Op::Guarded` by that auth revision and user (apply refuses it if the auth store
//! moved on: "revision of auth store is old", after which etcd clients re-authenticate and
//! retry), and makes a linearizable read re-check the auth revision after its read barrier.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use cairn_proto::authpb;
use cairn_proto::etcdserverpb as pb;
use cairn_proto::peer::{forward_reply::Response as Fr, forward_request::Request as Fq};
use cairn_state::auth::{AuthOp, AuthState, Perm, ROOT_ROLE};
use cairn_state::{Op, Response};
use cairn_types::Error;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::router::Router;

/// Who a client request was checked for, and at which auth revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    pub revision: u64,
    /// Empty while auth was disabled.
    pub user: String,
    /// The token that proved `user`, sent along when the request is forwarded so the leader can
    /// verify the caller itself (see `crate::peer`); `None` while auth was disabled.
    pub token: Option<Arc<str>>,
}

tokio::task_local! {
    static GUARD: Option<Guard>;
}

/// Runs `f` (a client request's work) so that whatever it proposes is guarded by `g`, and its
/// linearizable reads re-check the auth store after their read barrier; `None` runs it
/// unguarded (also inside a guarded request).
pub async fn guarded<F: Future>(g: Option<Guard>, f: F) -> F::Output {
    GUARD.scope(g, f).await
}

/// The current request's guard, inside [`guarded`].
pub fn guard() -> Option<Guard> {
    GUARD.try_with(Option::clone).ok().flatten()
}

/// After a read barrier: etcd's check that the auth store the request was checked against is
/// still current (a revoke, a deleted user or a new password acknowledged before the read
/// started is in the store now).
pub fn recheck_after_barrier(st: &AuthState) -> Result<(), Error> {
    match guard() {
        Some(g) if st.enabled => {
            if g.user.is_empty() {
                Err(Error::UserEmpty)
            } else if st.revision != g.revision {
                Err(Error::AuthOldRevision)
            } else {
                Ok(())
            }
        }
        _ => Ok(()),
    }
}

/// Who is calling, once their token checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthInfo {
    pub user: String,
}

/// Longest token accepted (a valid one is well under 200 bytes).
const TOKEN_BYTES_MAX: usize = 1024;
/// Longest password accepted (bcrypt uses at most 72 bytes; etcd hashes whatever it gets).
pub const PASSWORD_BYTES_MAX: usize = 1024;

#[derive(Serialize, Deserialize)]
struct Claims {
    user: String,
    since: u64,
    expires_ms: u64,
}

/// Token expiry runs on cairn's clock (skewed by the test-only fault layer).
fn now_ms() -> u64 {
    cairn_types::clock::wall_ms()
}

fn mac(secret: &[u8], payload: &[u8]) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(payload);
    m
}

/// Signs a token for `user` (who must exist in `st`).
fn issue(st: &AuthState, user: &str, ttl: Duration) -> String {
    let since = st.users.get(user).map_or(0, |u| u.since);
    let claims = Claims { user: user.to_string(), since, expires_ms: now_ms() + ttl.as_millis() as u64 };
    let payload = postcard::to_allocvec(&claims).expect("serializable");
    let sig = mac(&st.secret, &payload).finalize().into_bytes();
    format!("{}.{}", URL_SAFE_NO_PAD.encode(&payload), URL_SAFE_NO_PAD.encode(sig))
}

/// The caller behind `token`, if auth is enabled; `Ok(None)` when it is not (tokens are then
/// ignored, as etcd ignores them). etcd's errors: no token → "user name is empty"; a token that
/// is malformed, forged, expired, or whose user is gone or has a new password → "invalid auth
/// token".
pub fn authorize(st: &AuthState, token: Option<&str>) -> Result<Option<AuthInfo>, Error> {
    if !st.enabled {
        return Ok(None);
    }
    let token = token.ok_or(Error::UserEmpty)?;
    let user = verify(st, token).ok_or(Error::InvalidAuthToken)?;
    Ok(Some(AuthInfo { user }))
}

fn verify(st: &AuthState, token: &str) -> Option<String> {
    if token.len() > TOKEN_BYTES_MAX || st.secret.is_empty() {
        return None;
    }
    let (p, s) = token.split_once('.')?;
    let payload = URL_SAFE_NO_PAD.decode(p).ok()?;
    let sig = URL_SAFE_NO_PAD.decode(s).ok()?;
    mac(&st.secret, &payload).verify_slice(&sig).ok()?;
    let claims: Claims = postcard::from_bytes(&payload).ok()?;
    if claims.expires_ms <= now_ms() {
        return None;
    }
    let u = st.users.get(&claims.user)?;
    (u.since == claims.since).then_some(claims.user)
}

/// The Auth service of one member.
#[derive(Clone)]
pub struct Auth {
    c: Arc<Router>,
}

/// Password checks (bcrypt) running at once, over every Authenticate on this member.
const AUTHENTICATE_CONCURRENCY: usize = 4;
/// How long an Authenticate waits for a turn before it is refused.
const AUTHENTICATE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
static AUTHENTICATE_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(AUTHENTICATE_CONCURRENCY);

impl Auth {
    pub fn new(c: Arc<Router>) -> Self {
        Auth { c }
    }

    fn header(&self) -> Option<pb::ResponseHeader> {
        Some(self.c.header(self.c.store().current_revision()))
    }

    /// The auth store after a read barrier: every change committed before the call is in it.
    async fn state(&self) -> Result<Arc<AuthState>, Error> {
        self.c.read_barrier().await?;
        Ok(self.c.store().auth())
    }

    /// Proposes one auth change through the leader; returns once this member has applied it,
    /// so the caller's next request here sees it.
    async fn change(&self, op: AuthOp) -> Result<(), Error> {
        let op = Op::Auth(op);
        let bytes: prost::bytes::Bytes = postcard::to_allocvec(&op).expect("serializable").into();
        let r = self
            .c
            .on_leader(
                || Fq::Propose(bytes.clone()),
                |d| self.c.propose(op.clone(), d),
                |x| match x {
                    Fr::Proposed(b) => postcard::from_bytes::<Response>(&b).ok(),
                    _ => None,
                },
            )
            .await?;
        match r {
            Response::Done { .. } => {
                if !self.c.is_leader() {
                    // Not a read for the caller: the change itself may have moved the auth
                    // revision (or enabled auth) since the caller was checked.
                    guarded(None, self.c.read_barrier()).await?;
                }
                Ok(())
            }
            Response::Error(e) => Err(e),
            other => Err(crate::kv::unexpected(other)),
        }
    }

    async fn hash(&self, password: String) -> Result<String, Error> {
        if password.len() > PASSWORD_BYTES_MAX {
            return Err(Error::RequestTooLarge { limit: PASSWORD_BYTES_MAX });
        }
        let cost = self.c.cfg.bcrypt_cost;
        tokio::task::spawn_blocking(move || bcrypt::hash(password, cost))
            .await
            .map_err(|e| Error::Internal(e.to_string()))?
            .map_err(|e| Error::Internal(format!("bcrypt: {e}")))
    }

    /// etcd's admin check for a caller with `token`: with auth enabled, the token must be
    /// valid and its user must hold the root role. Against this member's applied auth state.
    pub fn check_admin_token(&self, token: Option<&str>) -> Result<(), Error> {
        let st = self.c.store().auth();
        match authorize(&st, token)? {
            Some(info) => st.check_admin(&info.user),
            None => Ok(()),
        }
    }

    /// Whether auth is on, as this member has applied it (no read barrier).
    pub fn enabled(&self) -> bool {
        self.c.store().auth().enabled
    }

    pub async fn enable(&self) -> Result<pb::AuthEnableResponse, Error> {
        self.change(AuthOp::Enable { secret: rand::random::<[u8; 32]>().to_vec() }).await?;
        Ok(pb::AuthEnableResponse { header: self.header() })
    }

    pub async fn disable(&self) -> Result<pb::AuthDisableResponse, Error> {
        self.change(AuthOp::Disable).await?;
        Ok(pb::AuthDisableResponse { header: self.header() })
    }

    pub async fn status(&self) -> Result<pb::AuthStatusResponse, Error> {
        let st = self.state().await?;
        Ok(pb::AuthStatusResponse { header: self.header(), enabled: st.enabled, auth_revision: st.revision })
    }

    /// etcd's Authenticate: a token for a user whose password matches.
    pub async fn authenticate(&self, r: pb::AuthenticateRequest) -> Result<pb::AuthenticateResponse, Error> {
        let st = self.state().await?;
        if !st.enabled {
            return Err(Error::AuthNotEnabled);
        }
        let Some(u) = st.users.get(&r.name) else {
            return Err(Error::AuthFailed);
        };
        if u.no_password || r.password.len() > PASSWORD_BYTES_MAX {
            return Err(Error::AuthFailed);
        }
        let hash = u.hash.clone();
        // bcrypt costs tens of milliseconds of CPU by design: at most a few run at once, and a
        // caller that cannot get a turn soon is told to come back (etcd's "too many requests")
        // rather than queueing without bound on the blocking pool.
        let Ok(Ok(_turn)) = tokio::time::timeout(AUTHENTICATE_WAIT, AUTHENTICATE_SLOTS.acquire()).await else {
            return Err(Error::TooManyRequests);
        };
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(r.password, &hash).unwrap_or(false))
            .await
            .map_err(|e| Error::Internal(e.to_string()))?;
        if !ok {
            return Err(Error::AuthFailed);
        }
        Ok(pb::AuthenticateResponse { header: self.header(), token: issue(&st, &r.name, self.c.cfg.auth_token_ttl) })
    }

    pub async fn user_add(&self, r: pb::AuthUserAddRequest) -> Result<pb::AuthUserAddResponse, Error> {
        if r.name.is_empty() {
            return Err(Error::UserEmpty);
        }
        let no_password = r.options.as_ref().is_some_and(|o| o.no_password);
        let hash = if no_password { String::new() } else { self.hash(r.password).await? };
        self.change(AuthOp::UserAdd { name: r.name, hash, no_password }).await?;
        Ok(pb::AuthUserAddResponse { header: self.header() })
    }

    /// etcd lets a user read its own record without admin rights.
    pub async fn user_get(&self, r: pb::AuthUserGetRequest) -> Result<pb::AuthUserGetResponse, Error> {
        let st = self.state().await?;
        let u = st.users.get(&r.name).ok_or(Error::UserNotFound)?;
        Ok(pb::AuthUserGetResponse { header: self.header(), roles: u.roles.iter().cloned().collect() })
    }

    pub async fn user_list(&self) -> Result<pb::AuthUserListResponse, Error> {
        let st = self.state().await?;
        Ok(pb::AuthUserListResponse { header: self.header(), users: st.users.keys().cloned().collect() })
    }

    pub async fn user_delete(&self, r: pb::AuthUserDeleteRequest) -> Result<pb::AuthUserDeleteResponse, Error> {
        self.change(AuthOp::UserDelete { name: r.name }).await?;
        Ok(pb::AuthUserDeleteResponse { header: self.header() })
    }

    pub async fn user_change_password(
        &self,
        r: pb::AuthUserChangePasswordRequest,
    ) -> Result<pb::AuthUserChangePasswordResponse, Error> {
        if !self.c.store().auth().users.contains_key(&r.name) {
            return Err(Error::UserNotFound);
        }
        let hash = self.hash(r.password).await?;
        self.change(AuthOp::UserChangePassword { name: r.name, hash }).await?;
        Ok(pb::AuthUserChangePasswordResponse { header: self.header() })
    }

    pub async fn user_grant_role(
        &self,
        r: pb::AuthUserGrantRoleRequest,
    ) -> Result<pb::AuthUserGrantRoleResponse, Error> {
        self.change(AuthOp::UserGrantRole { user: r.user, role: r.role }).await?;
        Ok(pb::AuthUserGrantRoleResponse { header: self.header() })
    }

    pub async fn user_revoke_role(
        &self,
        r: pb::AuthUserRevokeRoleRequest,
    ) -> Result<pb::AuthUserRevokeRoleResponse, Error> {
        self.change(AuthOp::UserRevokeRole { user: r.name, role: r.role }).await?;
        Ok(pb::AuthUserRevokeRoleResponse { header: self.header() })
    }

    pub async fn role_add(&self, r: pb::AuthRoleAddRequest) -> Result<pb::AuthRoleAddResponse, Error> {
        if r.name.is_empty() {
            return Err(Error::RoleEmpty);
        }
        self.change(AuthOp::RoleAdd { name: r.name }).await?;
        Ok(pb::AuthRoleAddResponse { header: self.header() })
    }

    /// The root role reads as etcd shows it: read-write on every key.
    pub async fn role_get(&self, r: pb::AuthRoleGetRequest) -> Result<pb::AuthRoleGetResponse, Error> {
        let st = self.state().await?;
        let perms = st.roles.get(&r.role).ok_or(Error::RoleNotFound)?;
        let perm = if r.role == ROOT_ROLE {
            vec![authpb::Permission {
                perm_type: authpb::permission::Type::Readwrite as i32,
                key: vec![],
                range_end: vec![0],
            }]
        } else {
            perms
                .iter()
                .map(|p| authpb::Permission {
                    perm_type: p.perm_type,
                    key: p.key.clone(),
                    range_end: p.range_end.clone(),
                })
                .collect()
        };
        Ok(pb::AuthRoleGetResponse { header: self.header(), perm })
    }

    pub async fn role_list(&self) -> Result<pb::AuthRoleListResponse, Error> {
        let st = self.state().await?;
        Ok(pb::AuthRoleListResponse { header: self.header(), roles: st.roles.keys().cloned().collect() })
    }

    pub async fn role_delete(&self, r: pb::AuthRoleDeleteRequest) -> Result<pb::AuthRoleDeleteResponse, Error> {
        self.change(AuthOp::RoleDelete { name: r.role }).await?;
        Ok(pb::AuthRoleDeleteResponse { header: self.header() })
    }

    pub async fn role_grant_permission(
        &self,
        r: pb::AuthRoleGrantPermissionRequest,
    ) -> Result<pb::AuthRoleGrantPermissionResponse, Error> {
        let p = r.perm.ok_or(Error::PermissionNotGiven)?;
        if authpb::permission::Type::try_from(p.perm_type).is_err() {
            return Err(Error::PermissionNotGiven);
        }
        let limits = self.c.limits();
        if p.key.len() > limits.key_bytes_max || p.range_end.len() > limits.key_bytes_max {
            return Err(Error::KeyTooLarge { limit: limits.key_bytes_max });
        }
        let perm = Perm { key: p.key, range_end: p.range_end, perm_type: p.perm_type };
        self.change(AuthOp::RoleGrantPermission { role: r.name, perm }).await?;
        Ok(pb::AuthRoleGrantPermissionResponse { header: self.header() })
    }

    pub async fn role_revoke_permission(
        &self,
        r: pb::AuthRoleRevokePermissionRequest,
    ) -> Result<pb::AuthRoleRevokePermissionResponse, Error> {
        self.change(AuthOp::RoleRevokePermission { role: r.role, key: r.key, range_end: r.range_end }).await?;
        Ok(pb::AuthRoleRevokePermissionResponse { header: self.header() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_state::auth::User;

    fn state() -> AuthState {
        let mut st = AuthState { enabled: true, revision: 9, secret: vec![3; 32], ..Default::default() };
        st.users.insert(
            "alice".into(),
            User { hash: String::new(), no_password: false, roles: Default::default(), since: 4 },
        );
        st
    }

    #[test]
    fn tokens_verify_until_expiry_user_change_or_forgery() {
        let st = state();
        let t = issue(&st, "alice", Duration::from_secs(60));
        assert_eq!(authorize(&st, Some(&t)), Ok(Some(AuthInfo { user: "alice".into() })));
        assert_eq!(authorize(&st, None), Err(Error::UserEmpty));
        assert_eq!(authorize(&st, Some("garbage")), Err(Error::InvalidAuthToken));
        // Expired.
        let old = issue(&st, "alice", Duration::ZERO);
        assert_eq!(authorize(&st, Some(&old)), Err(Error::InvalidAuthToken));
        // Another secret (another cluster) or a tampered payload.
        let other = AuthState { secret: vec![4; 32], ..st.clone() };
        assert_eq!(authorize(&other, Some(&t)), Err(Error::InvalidAuthToken));
        let (p, s) = t.split_once('.').unwrap();
        let mut raw = URL_SAFE_NO_PAD.decode(p).unwrap();
        raw[1] ^= 1;
        let forged = format!("{}.{s}", URL_SAFE_NO_PAD.encode(raw));
        assert_eq!(authorize(&st, Some(&forged)), Err(Error::InvalidAuthToken));
        // A new password, or a deleted user.
        let mut moved = st.clone();
        moved.users.get_mut("alice").unwrap().since = 10;
        assert_eq!(authorize(&moved, Some(&t)), Err(Error::InvalidAuthToken));
        let mut gone = st.clone();
        gone.users.clear();
        assert_eq!(authorize(&gone, Some(&t)), Err(Error::InvalidAuthToken));
        // Auth disabled: tokens are ignored.
        let off = AuthState { enabled: false, ..st };
        assert_eq!(authorize(&off, Some("garbage")), Ok(None));
    }
}
