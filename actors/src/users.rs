//! Use cases about users as owners: deleting a user ends everything it
//! holds, so that a later user of the same name inherits nothing.

use corral_core::{Role, UserId};
use corral_db::UserRecord;

use crate::request::RequestMsg;
use crate::{ActorError, Caller, Corral};

impl Corral {
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
        if !caller.is_admin() {
            return Err(ActorError::Forbidden("this needs an admin token".to_string()));
        }
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
