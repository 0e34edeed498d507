//! Workers as users and admins see them.

use std::time::SystemTime;

use corral_core::schema::Rfc3339;
use corral_core::time::{opt_rfc3339, rfc3339};
use corral_core::{Caps, Groups, RequestId, WorkerId, WorkerState};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The worker object.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Worker {
    pub uuid: WorkerId,
    pub state: WorkerState,
    pub caps: Caps,
    pub groups: Groups,
    /// Host name of its agent.
    pub agent: String,
    pub ssh_addr: String,
    pub reason: Option<String>,
    #[serde(with = "rfc3339")]
    #[schema(value_type = Rfc3339)]
    pub state_since: SystemTime,
    #[serde(with = "opt_rfc3339")]
    #[schema(value_type = Option<Rfc3339>)]
    pub last_seen: Option<SystemTime>,
    /// The request holding it, if any.
    pub request: Option<RequestId>,
    /// The latest facts its agent observed (the `interrogate` hook's
    /// output), and when. Empty and null until its agent reports some.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub facts: Map<String, Value>,
    #[serde(default, with = "opt_rfc3339")]
    #[schema(value_type = Option<Rfc3339>)]
    pub facts_at: Option<SystemTime>,
    /// The facts its agent marks as dimensions; merged under the
    /// configured caps into `caps` (the configured value wins).
    #[serde(default)]
    pub dimensions: Caps,
    /// An admin's note, who wrote it and when (null: none).
    #[serde(default)]
    pub note: Option<String>,
    #[serde(default)]
    pub note_by: Option<String>,
    #[serde(default, with = "opt_rfc3339")]
    #[schema(value_type = Option<Rfc3339>)]
    pub note_at: Option<SystemTime>,
    /// A hold by an admin (or after failed preparations in a row): why,
    /// by whom, since when. Keeps the worker out of matching until an
    /// admin lifts it.
    #[serde(default)]
    pub quarantine: Option<String>,
    #[serde(default)]
    pub quarantine_by: Option<String>,
    #[serde(default, with = "opt_rfc3339")]
    #[schema(value_type = Option<Rfc3339>)]
    pub quarantine_at: Option<SystemTime>,
    /// A hold from the facts (e.g. a battery charging): why, since when.
    /// Keeps the worker out of matching until the facts change.
    #[serde(default)]
    pub recovery: Option<String>,
    #[serde(default, with = "opt_rfc3339")]
    #[schema(value_type = Option<Rfc3339>)]
    pub recovery_at: Option<SystemTime>,
    /// Whether `POST /v1/workers/{uuid}/power-cycle` can work: true when
    /// its agent has a `power_cycle` hook for it, false when it has none,
    /// null when the agent does not say (an older agent; the call is tried).
    #[serde(default)]
    pub can_power_cycle: Option<bool>,
    /// The on-demand process running on it besides its state's own
    /// (`power_cycle`; its history says who asked for it).
    #[serde(default)]
    pub work: Option<String>,
    /// The processes in failure backoff on it (prepare, power cycle,
    /// health check, maintenance ...): each is not tried again before its
    /// `retry_after`. Kept in the database, so a restart keeps them.
    #[serde(default)]
    pub backoff: Vec<Backoff>,
}

/// One process in failure backoff on a worker.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Backoff {
    /// The process (`prepare`, `power_cycle`, `health_check`, ...).
    pub process: String,
    /// Failures in a row.
    pub failures: u32,
    #[serde(with = "rfc3339")]
    #[schema(value_type = Rfc3339)]
    pub retry_after: SystemTime,
    pub last_error: String,
}

/// Body of `PUT /v1/workers/{uuid}/quarantine`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuarantineChange {
    /// Why (shown on the worker); required.
    pub reason: String,
}

/// Body of `PUT /v1/workers/{uuid}/note`: the note, or null or empty to
/// clear it.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NoteChange {
    #[serde(default)]
    pub note: Option<String>,
}

/// The states an admin may ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AdminState {
    Idle,
    Maintenance,
}

/// Body of `PUT /v1/workers/{uuid}/state`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StateChange {
    pub state: AdminState,
    #[serde(default)]
    pub reason: Option<String>,
    /// For maintenance: let the running lease finish first.
    #[serde(default)]
    pub drain: bool,
}

/// Body of `PUT /v1/workers/{uuid}/agent` (hand-over).
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HandOver {
    /// The agent user (its name) whose agents may claim the worker.
    pub principal: String,
    /// The agent host name to register it under; unset: unchanged.
    #[serde(default)]
    pub agent: Option<String>,
}
