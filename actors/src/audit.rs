//! The audit log of admin actions, as use cases of [`Corral`]: an action's
//! row is written before the action runs ([`Corral::audit_begin`]; if it
//! cannot be written the action does not run) and given its outcome after
//! it ([`Corral::audit_end`]). So every admin action that changed anything
//! has its row, and a row left `pending` names one whose outcome the
//! server never saw.
//!
//! Not in the action's own transaction: admin actions commit inside the
//! worker actors and the request actors, several of them in statements
//! shared with other callers (`corral_db::batch`), and one action may
//! commit more than once (deleting a user ends each of their requests).
//! The row before and the outcome after give the same guarantee (no
//! unrecorded change) without threading the audit into each of them.

use corral_db::{AuditIntent, AuditOutcome, AuditRecord};

use crate::{ActorError, Caller, Corral};

/// An admin action about to run, as the API describes it.
#[derive(Clone, Debug)]
pub struct AdminAction {
    /// `worker.state`, `user.create`, ...
    pub action: &'static str,
    /// A worker's UUID or a user's name.
    pub target: String,
    /// The peer address of the HTTP request.
    pub address: Option<String>,
    /// What was asked.
    pub detail: String,
}

/// What an admin sent, as a text column can keep it: at most `max`
/// characters, a NUL (which PostgreSQL's text refuses; the action itself
/// refuses it later with a 400) shown as `␀`. Found by schemathesis: a
/// note with a NUL made the audit row, and so the call, fail with a 500.
fn storable(text: &str, max: usize) -> String {
    text.chars().take(max).map(|c| if c == '\0' { '\u{2400}' } else { c }).collect()
}

impl Corral {
    /// Writes the row of an admin action about to run; its id is passed
    /// to [`Corral::audit_end`]. Only admins act as admins.
    pub async fn audit_begin(&self, caller: &Caller, action: AdminAction) -> Result<i64, ActorError> {
        if !caller.is_admin() {
            return Err(ActorError::Forbidden("this needs an admin token".to_string()));
        }
        let intent = AuditIntent {
            at: self.clock().now(),
            actor: caller.name.clone(),
            actor_id: caller.id,
            action: action.action.to_string(),
            target: storable(&action.target, 256),
            address: action.address,
            detail: storable(&action.detail, 1024),
        };
        Ok(self.db().audit_begin(&intent).await?)
    }

    /// Gives an admin action's row its outcome. A failure to write it is
    /// logged: the action already happened (or not), and its row says
    /// `pending`.
    pub async fn audit_end(&self, id: i64, outcome: AuditOutcome, message: Option<&str>) {
        let message = message.map(|m| storable(m, 4096));
        if let Err(err) = self.db().audit_end(id, outcome, message.as_deref()).await {
            tracing::error!(audit = id, outcome = outcome.as_str(), cause = %err, "could not record the outcome of an admin action");
        }
    }

    /// One page of the audit log, newest first, for admins.
    pub async fn audit_page(
        &self,
        caller: &Caller,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, ActorError> {
        if !caller.is_admin() {
            return Err(ActorError::Forbidden("the audit log is for admins".to_string()));
        }
        Ok(self.db().audit_page(before, limit).await?)
    }
}
