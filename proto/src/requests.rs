//! Requests: what a user asks for, and what the server answers.
//!
//! Times and durations are `SystemTime` and `Duration` in the code but
//! travel only through `corral_core::time`'s serde helpers: a time is read
//! as a `Timestamp` (1970 to 9999, never a panic) and a duration is at most
//! 100 years (`MAX_DURATION`), so nothing a client sends here can overflow
//! the arithmetic done on it later.

use std::time::{Duration, SystemTime};

use corral_core::schema::{HumanDuration, Rfc3339};
use corral_core::time::{duration, opt_duration, opt_rfc3339, rfc3339};
use corral_core::{Caps, FencingToken, Priority, RequestId, RequestState, WorkerId};
use serde::{Deserialize, Serialize};

/// The request object.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Request {
    pub id: RequestId,
    pub owner: String,
    pub state: RequestState,
    pub priority: Priority,
    pub caps: Caps,
    #[serde(with = "rfc3339")]
    #[schema(value_type = Rfc3339)]
    pub created_at: SystemTime,
    #[serde(with = "rfc3339")]
    #[schema(value_type = Rfc3339)]
    pub valid_after: SystemTime,
    #[serde(with = "rfc3339")]
    #[schema(value_type = Rfc3339)]
    pub deadline: SystemTime,
    /// Requested lease length.
    #[serde(with = "duration")]
    #[schema(value_type = HumanDuration)]
    pub lease: Duration,
    pub worker: Option<WorkerId>,
    #[serde(with = "opt_rfc3339")]
    #[schema(value_type = Option<Rfc3339>)]
    pub lease_expires_at: Option<SystemTime>,
    pub reason: Option<String>,
    #[serde(with = "rfc3339")]
    #[schema(value_type = Rfc3339)]
    pub updated_at: SystemTime,
}

/// Body of `POST /v1/requests`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRequest {
    pub caps: Caps,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    #[serde(default, with = "opt_rfc3339", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Rfc3339>)]
    pub valid_after: Option<SystemTime>,
    #[serde(default, with = "opt_rfc3339", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Rfc3339>)]
    pub deadline: Option<SystemTime>,
    #[serde(default, with = "opt_duration", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<HumanDuration>)]
    pub lease: Option<Duration>,
    /// OpenSSH public key to install instead of a generated key pair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_public_key: Option<String>,
    /// Accept the request even if no registered worker can serve it now.
    #[serde(default)]
    pub allow_unsatisfiable: bool,
}

/// Body of `PATCH /v1/requests/{id}`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    #[serde(default, with = "opt_rfc3339", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Rfc3339>)]
    pub valid_after: Option<SystemTime>,
    #[serde(default, with = "opt_rfc3339", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Rfc3339>)]
    pub deadline: Option<SystemTime>,
}

/// Body of `POST /v1/requests/{id}/prolong` (may be empty).
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Prolong {
    #[serde(default, with = "opt_duration", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<HumanDuration>)]
    pub by: Option<Duration>,
}

/// Answer of `prolong`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Prolonged {
    pub request_id: RequestId,
    #[serde(with = "rfc3339")]
    #[schema(value_type = Rfc3339)]
    pub lease_expires_at: SystemTime,
}

/// One transition in a request's history.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct HistoryEntry {
    #[serde(with = "rfc3339")]
    #[schema(value_type = Rfc3339)]
    pub at: SystemTime,
    pub from: Option<String>,
    pub to: String,
    /// Who or what caused it: `user:NAME`, `matcher`, `agent:HOST`, `reaper`, `server`.
    pub actor: String,
    pub reason: String,
}

/// Everything needed to log in to a leased worker. `Debug` never shows the
/// private key.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct AccessDetails {
    pub request_id: RequestId,
    pub worker: WorkerId,
    /// The server's public address (never a wildcard address).
    pub host: String,
    /// The lease's tunnel port on `host`.
    pub port: u16,
    pub username: String,
    /// OpenSSH private key of the lease; null when the request brought its
    /// own public key.
    pub private_key: Option<String>,
    /// SSH host key of the worker's host, `TYPE BASE64`, for pinning.
    pub host_key: Option<String>,
    #[serde(with = "rfc3339")]
    #[schema(value_type = Rfc3339)]
    pub expires_at: SystemTime,
    pub ssh_command: String,
    /// Fencing token of the lease.
    pub fence: FencingToken,
}

impl std::fmt::Debug for AccessDetails {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessDetails")
            .field("request_id", &self.request_id)
            .field("worker", &self.worker)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("private_key", &self.private_key.as_ref().map(|_| "<redacted>"))
            .field("host_key", &self.host_key)
            .field("expires_at", &self.expires_at)
            .field("ssh_command", &self.ssh_command)
            .field("fence", &self.fence)
            .finish()
    }
}

/// Why one matching worker is not free for a request.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct WorkerObstacle {
    pub uuid: WorkerId,
    pub state: corral_core::WorkerState,
    pub why: String,
}

/// Answer of `GET /v1/requests/{id}/explain`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Explanation {
    pub request_id: RequestId,
    pub state: RequestState,
    /// One sentence for people.
    pub summary: String,
    /// 1-based position among waiting requests that compete for the same
    /// workers; null when not waiting.
    pub position: Option<usize>,
    pub competing: Option<usize>,
    /// The first matching workers the caller may see (at most 100).
    pub workers: Vec<WorkerObstacle>,
    /// How many matching workers the caller may see; `workers` lists the
    /// first of them.
    #[serde(default)]
    pub workers_total: usize,
}

/// One waiting request of `GET /v1/queue`, with its place in the
/// matcher's order.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct QueuedRequest {
    /// 1-based position among all waiting requests, in the order the
    /// matcher considers them (priority, then submission).
    pub position: u64,
    #[serde(flatten)]
    #[schema(inline)]
    pub request: Request,
}

/// One running lease of `GET /v1/leases`: who holds which worker, until
/// when.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct LeaseSummary {
    pub request: RequestId,
    pub worker: WorkerId,
    /// The owner's name; null when it is another user's lease and the
    /// caller is not an admin.
    pub owner: Option<String>,
    #[serde(with = "opt_rfc3339")]
    #[schema(value_type = Option<Rfc3339>)]
    pub expires_at: Option<SystemTime>,
}
