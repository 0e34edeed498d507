//! Use cases about users: who a bearer token stands for, creating and
//! listing users, and deleting a user, which ends everything it holds, so
//! that a later user of the same name inherits nothing.
//!
//! Tokens are looked up by their SHA-256 in the database; answers are
//! cached for a few seconds ([`AuthCache`]) so the hot path does not touch
//! the database. Deleting a user drops it from this server's cache at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use corral_core::records::UserRecord;
use corral_core::{Groups, Role, UserId};

use crate::request::RequestMsg;
use crate::{ActorError, Caller, Corral};

const AUTH_CACHE_TTL: Duration = Duration::from_secs(10);
const AUTH_CACHE_MAX: usize = 10_000;

/// Callers by the SHA-256 of their token, each for [`AUTH_CACHE_TTL`].
#[derive(Debug, Default)]
pub(crate) struct AuthCache {
    entries: Mutex<HashMap<Vec<u8>, (Caller, Instant)>>,
}

impl AuthCache {
    fn get(&self, hash: &[u8]) -> Option<Caller> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(hash).filter(|(_, at)| at.elapsed() < AUTH_CACHE_TTL).map(|(c, _)| c.clone())
    }

    fn put(&self, hash: Vec<u8>, caller: Caller) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= AUTH_CACHE_MAX {
            entries.retain(|_, (_, at)| at.elapsed() < AUTH_CACHE_TTL);
            if entries.len() >= AUTH_CACHE_MAX {
                entries.clear();
            }
        }
        entries.insert(hash, (caller, Instant::now()));
    }

    fn forget_user(&self, id: UserId) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|_, (c, _)| c.id != id);
    }
}

impl From<UserRecord> for Caller {
    fn from(user: UserRecord) -> Caller {
        Caller { id: user.id, name: user.name, role: user.role, groups: user.groups }
    }
}

impl Corral {
    /// The caller `token` stands for; `None` for a token no user has.
    pub async fn authenticate(&self, token: &str) -> Result<Option<Caller>, ActorError> {
        let shared = self.shared();
        let hash = corral_db::hash_token(token);
        if let Some(caller) = shared.auth.get(&hash) {
            return Ok(Some(caller));
        }
        let Some(user) = shared.db.user_by_token(token).await? else { return Ok(None) };
        let caller = Caller::from(user);
        shared.auth.put(hash, caller.clone());
        Ok(Some(caller))
    }

    /// Creates the user `name` (admins only) and returns it with its
    /// token, which is shown this once and stored only as a hash.
    pub async fn create_user(
        &self,
        caller: &Caller,
        name: &str,
        role: Role,
        groups: &Groups,
    ) -> Result<(UserRecord, String), ActorError> {
        require_admin(caller)?;
        if !corral_core::user::valid_user_name(name) {
            return Err(ActorError::BadRequest(
                "name must be 1-64 characters of letters, digits, '.', '_' or '-'".to_string(),
            ));
        }
        let token = corral_db::new_token();
        let user = self.shared().db.create_user(name, role, groups, &token).await?;
        tracing::info!(user = %user.name, role = %user.role, "user created");
        Ok((user, token))
    }

    /// Every user (admins only).
    pub async fn users(&self, caller: &Caller) -> Result<Vec<UserRecord>, ActorError> {
        require_admin(caller)?;
        Ok(self.shared().db.list_users().await?)
    }

    /// The user called `name`, if there is one: the identity a server-wide
    /// setting (such as `boruta_user`) names.
    pub async fn user_named(&self, name: &str) -> Result<Option<UserRecord>, ActorError> {
        Ok(self.shared().db.user_by_name(name).await?)
    }

    /// Deletes the user `name` on behalf of the admin `caller`: first its
    /// waiting requests are cancelled and its leases ended (key erased,
    /// tunnel closed, worker prepared), each with history naming the admin
    /// and "owner NAME was deleted"; then the user row goes. Submissions of
    /// that user racing with this are refused or ended too.
    ///
    /// An agent user is not deleted while it has a live session or a
    /// worker bound to it (409): its workers would be left without anyone
    /// allowed to claim them. Hand them over or deregister them first.
    pub async fn delete_user(&self, caller: &Caller, name: &str) -> Result<UserRecord, ActorError> {
        require_admin(caller)?;
        // No user can have such a name (and PostgreSQL's text refuses a
        // NUL, which schemathesis sent): nothing to look up.
        if !corral_core::user::valid_user_name(name) {
            return Err(ActorError::NotFound(format!("no user {name:?}")));
        }
        let shared = self.shared();
        let user = shared
            .db
            .user_by_name(name)
            .await?
            .ok_or_else(|| ActorError::NotFound(format!("user {name:?} not found")))?;
        if user.id == caller.id {
            return Err(ActorError::Conflict("admins cannot delete themselves".to_string()));
        }
        if user.role == Role::Agent {
            let (sessions, workers) = shared.db.agent_holdings(user.id).await?;
            if sessions > 0 || workers > 0 {
                return Err(ActorError::Conflict(format!(
                    "agent user {name:?} still has {sessions} live sessions and {workers} workers bound to it; \
                     stop its agents and hand its workers over (PUT /v1/workers/UUID/agent) or deregister them first"
                )));
            }
        }
        shared.owners.mark_deleted(user.id);
        match self.end_requests_of(caller, &user).await {
            Ok(ended) => {
                if !shared.db.delete_user(user.id).await? {
                    return Err(ActorError::NotFound(format!("user {name:?} not found")));
                }
                shared.auth.forget_user(user.id);
                tracing::info!(user = %user.name, id = %user.id, ended, "user deleted");
                Ok(user)
            }
            Err(err) => {
                shared.owners.unmark_deleted(user.id);
                Err(err)
            }
        }
    }

    /// Ends every live request of `user`; returns how many it ended.
    async fn end_requests_of(&self, caller: &Caller, user: &UserRecord) -> Result<usize, ActorError> {
        let shared = self.shared();
        let reason = format!("owner {} was deleted", user.name);
        let mut ended = 0;
        for id in shared.db.live_requests_of(user.id).await? {
            let Some(addr) = shared.dir.request(id) else {
                tracing::warn!(request = %id, owner = %user.name, "live request without an actor; not ended");
                continue;
            };
            let (tx, rx) = tokio::sync::oneshot::channel();
            addr.send(RequestMsg::OwnerDeleted { actor: caller.actor(), reason: reason.clone(), reply: tx }).await?;
            match rx.await {
                Ok(Ok(_)) => ended += 1,
                // It ended by itself meanwhile.
                Ok(Err(ActorError::Conflict(_))) | Err(_) => {}
                Ok(Err(err)) => return Err(err),
            }
        }
        Ok(ended)
    }

    /// How many waiting requests `owner` has now.
    pub fn waiting_requests_of(&self, owner: UserId) -> usize {
        self.shared().owners.waiting(owner)
    }
}

fn require_admin(caller: &Caller) -> Result<(), ActorError> {
    if caller.is_admin() { Ok(()) } else { Err(ActorError::Forbidden("this needs an admin token".to_string())) }
}
