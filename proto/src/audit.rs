//! The audit log of admin actions (`GET /v1/audit`).

use std::time::SystemTime;

use corral_core::schema::Rfc3339;
use corral_core::time::rfc3339;
use serde::{Deserialize, Serialize};

/// One admin action.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    #[serde(with = "rfc3339")]
    #[schema(value_type = Rfc3339)]
    pub at: SystemTime,
    /// The admin's user name.
    pub actor: String,
    /// What was done: `user.create`, `user.delete`, `worker.state`,
    /// `worker.groups`, `worker.deregister`, `worker.hand_over`,
    /// `worker.note` (the Boruta API's admin calls are named the same).
    pub action: String,
    /// What it was done to: a worker's UUID or a user's name.
    pub target: String,
    /// The peer address of the HTTP request (null when unknown).
    pub address: Option<String>,
    /// What was asked.
    pub detail: String,
    /// `done`; `refused` (a 4xx answer, nothing changed); `failed` (a 5xx
    /// answer); `pending` (the server stopped before it saw the outcome).
    pub outcome: String,
    /// The error message of a refused or failed action.
    pub message: Option<String>,
}
