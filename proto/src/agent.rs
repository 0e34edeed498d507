//! The agent protocol (`/v1/agent/...`).
//!
//! Only the agent opens connections (it works from behind NAT):
//!
//! 1. `POST /v1/agent/sessions` with [`OpenSession`] registers its workers
//!    and opens a liveness session; the answer is [`SessionOpened`].
//! 2. `POST /v1/agent/sessions/{id}/heartbeat` with [`Heartbeat`] every
//!    `heartbeat_interval`, carrying each worker's observed facts. A 404
//!    means the session expired: open a new one.
//! 3. `GET /v1/agent/sessions/{id}/commands?after=SEQ&wait=DURATION`
//!    long-polls for [`CommandBatch`]es.
//! 4. `POST /v1/agent/sessions/{id}/results` with a list of
//!    [`CommandResult`]s after executing commands.
//! 5. `DELETE /v1/agent/sessions/{id}` on a clean shutdown.
//!
//! Every command carries the worker's fencing token; the agent refuses a
//! command whose token is older than one it has seen for that worker, and
//! the server ignores results that do not carry the worker's current token.

use std::time::{Duration, SystemTime};

use corral_core::schema::{HumanDuration, Rfc3339};
use corral_core::time::{duration, rfc3339};
use corral_core::{Caps, FencingToken, Groups, RequestId, SessionId, WorkerId, WorkerState};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One worker as its agent describes it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkerRegistration {
    pub uuid: WorkerId,
    pub caps: Caps,
    /// Used when the worker is registered for the first time; afterwards
    /// admins own its groups.
    #[serde(default)]
    pub groups: Groups,
    /// `HOST:PORT` of the SSH server that gives access to the device.
    pub ssh_addr: String,
    /// The lab user that leases log in as.
    pub user: String,
    /// SSH host key of `ssh_addr`, `TYPE BASE64` (as `ssh-keyscan` reads it).
    #[serde(default)]
    pub host_key: Option<String>,
    /// The hooks the agent has for this worker, by their names in
    /// `[worker.hooks]` (`power_cycle`, `prepare` ...): the server offers a
    /// power cycle on demand only when `power_cycle` is among them. Absent
    /// (an older agent): unknown. Not sent when unknown, so an older server
    /// (which refuses unknown fields) accepts an agent that does not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks: Option<Vec<String>>,
}

/// The name of the power cycle hook in [`WorkerRegistration::hooks`].
pub const POWER_CYCLE_HOOK: &str = "power_cycle";

/// Body of `POST /v1/agent/sessions`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenSession {
    /// Host name of the agent.
    pub agent: String,
    pub workers: Vec<WorkerRegistration>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct RegisteredWorker {
    pub uuid: WorkerId,
    pub state: WorkerState,
    pub fence: FencingToken,
}

/// Answer of `POST /v1/agent/sessions`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct SessionOpened {
    pub session: SessionId,
    #[serde(with = "duration")]
    #[schema(value_type = HumanDuration)]
    pub heartbeat_interval: Duration,
    #[serde(with = "duration")]
    #[schema(value_type = HumanDuration)]
    pub session_timeout: Duration,
    pub workers: Vec<RegisteredWorker>,
}

/// What the agent sees of one worker.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Observation {
    pub uuid: WorkerId,
    /// Output of the `interrogate` hook (battery, temperature,
    /// device_attached, healthy, error ...).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub facts: Map<String, Value>,
    /// The facts the agent marks as dimensions (the hook's `dimensions`
    /// object): merged into the caps requests match on, under the
    /// configured caps. Absent (an older agent): none. Not sent when empty,
    /// so an older server accepts a newer agent's heartbeats.
    #[serde(default, skip_serializing_if = "Caps::is_empty")]
    pub dimensions: Caps,
}

impl Observation {
    /// What an agent reports of a worker from its `interrogate` hook's
    /// JSON object: the object's `dimensions` member (an object; string,
    /// number and boolean values, as text) become the dimensions, the
    /// rest the facts. Output past the bounds the server enforces
    /// (`corral_core::facts`) is reported as unhealthy facts naming why,
    /// never sent as is (the server would refuse the heartbeat).
    pub fn from_hook_output(uuid: WorkerId, mut facts: Map<String, Value>) -> Observation {
        let mut dimensions = Caps::new();
        let mut problem = None;
        match facts.remove("dimensions") {
            None => {}
            Some(Value::Object(marked)) => {
                for (key, value) in marked {
                    match value {
                        Value::String(text) => dimensions.insert(key, text),
                        Value::Number(n) => dimensions.insert(key, n.to_string()),
                        Value::Bool(b) => dimensions.insert(key, b.to_string()),
                        _ => problem = Some(format!("dimension {key:?} is not a string, number or boolean")),
                    }
                }
            }
            Some(_) => problem = Some("dimensions is not a JSON object".to_string()),
        }
        if problem.is_none() {
            problem = corral_core::facts::check_facts(&facts)
                .and_then(|()| corral_core::facts::check_dimensions(&dimensions))
                .err()
                .map(|e| e.to_string());
        }
        match problem {
            None => Observation { uuid, facts, dimensions },
            Some(why) => {
                let mut unhealthy = Map::new();
                unhealthy.insert("healthy".to_string(), Value::Bool(false));
                unhealthy.insert("error".to_string(), Value::String(format!("interrogate: {why}")));
                Observation { uuid, facts: unhealthy, dimensions: Caps::new() }
            }
        }
    }
}

/// Body of `POST /v1/agent/sessions/{id}/heartbeat`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    #[serde(default)]
    pub workers: Vec<Observation>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct HeartbeatAck {
    /// The session's new deadline (database clock).
    #[serde(with = "rfc3339")]
    #[schema(value_type = Rfc3339)]
    pub deadline: SystemTime,
}

/// What the server asks an agent to do for one worker.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action {
    /// Make the worker fresh: remove every key line the agent owns for it,
    /// then run the `prepare` hook.
    Prepare,
    /// Install `public_key` for the lab user, for this lease only, valid
    /// until `expires_at` (the key line's `expiry-time`).
    StartLease {
        request: RequestId,
        public_key: String,
        #[serde(with = "rfc3339")]
        #[schema(value_type = Rfc3339)]
        expires_at: SystemTime,
    },
    /// The lease was prolonged: its key line now expires at `expires_at`.
    /// Changes nothing when the line is gone.
    ExtendLease {
        request: RequestId,
        #[serde(with = "rfc3339")]
        #[schema(value_type = Rfc3339)]
        expires_at: SystemTime,
    },
    /// Remove the key line of this lease.
    Revoke { request: RequestId },
    /// Put the worker into maintenance (run the `maintenance` hook).
    Maintenance,
    /// Run the `healthcheck` hook.
    HealthCheck,
    /// Run the `power_cycle` hook.
    PowerCycle,
}

impl Action {
    pub fn kind(&self) -> ActionKind {
        match self {
            Action::Prepare => ActionKind::Prepare,
            Action::StartLease { .. } => ActionKind::StartLease,
            Action::ExtendLease { .. } => ActionKind::ExtendLease,
            Action::Revoke { .. } => ActionKind::Revoke,
            Action::Maintenance => ActionKind::Maintenance,
            Action::HealthCheck => ActionKind::HealthCheck,
            Action::PowerCycle => ActionKind::PowerCycle,
        }
    }
}

/// The kinds of [`Action`], named as on the wire (`kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ActionKind {
    Prepare,
    StartLease,
    ExtendLease,
    Revoke,
    Maintenance,
    HealthCheck,
    PowerCycle,
}

impl ActionKind {
    pub const ALL: [ActionKind; 7] = [
        ActionKind::Prepare,
        ActionKind::StartLease,
        ActionKind::ExtendLease,
        ActionKind::Revoke,
        ActionKind::Maintenance,
        ActionKind::HealthCheck,
        ActionKind::PowerCycle,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Prepare => "prepare",
            ActionKind::StartLease => "start_lease",
            ActionKind::ExtendLease => "extend_lease",
            ActionKind::Revoke => "revoke",
            ActionKind::Maintenance => "maintenance",
            ActionKind::HealthCheck => "health_check",
            ActionKind::PowerCycle => "power_cycle",
        }
    }
}

impl std::fmt::Display for ActionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ActionKind {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        ActionKind::ALL.into_iter().find(|k| k.as_str() == text).ok_or_else(|| {
            let names: Vec<&str> = ActionKind::ALL.iter().map(|k| k.as_str()).collect();
            format!("unknown command kind {text:?}; one of {}", names.join(", "))
        })
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Command {
    /// Increases within a server incarnation.
    pub seq: u64,
    pub worker: WorkerId,
    pub fence: FencingToken,
    pub action: Action,
}

/// Answer of the long-poll.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct CommandBatch {
    /// Changes when the server restarts; then `seq` starts again and the
    /// agent must poll with `after=0`.
    pub incarnation: String,
    pub commands: Vec<Command>,
}

/// How a command went.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandResult {
    pub seq: u64,
    pub worker: WorkerId,
    pub fence: FencingToken,
    pub ok: bool,
    /// Error text when not ok, hook output otherwise (may be empty).
    #[serde(default)]
    pub message: String,
    /// For `start_lease`: the host key of the worker's SSH server as read
    /// now.
    #[serde(default)]
    pub host_key: Option<String>,
    /// The agent refused the command as older than one it has seen.
    #[serde(default)]
    pub stale: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_output_splits_into_facts_and_dimensions_within_bounds() {
        let uuid = WorkerId::random();
        let output = serde_json::json!({"battery": 80, "dimensions": {"android_version": 14, "device_model": "p7"}});
        let seen = Observation::from_hook_output(uuid, output.as_object().unwrap().clone());
        assert_eq!(Value::Object(seen.facts.clone()), serde_json::json!({"battery": 80}));
        assert_eq!(seen.dimensions.get("android_version"), Some("14"));
        assert_eq!(seen.dimensions.get("device_model"), Some("p7"));
        // On the wire, no dimensions means no field (an older server accepts it).
        let plain = Observation::from_hook_output(uuid, Map::new());
        assert!(!serde_json::to_string(&plain).unwrap().contains("dimensions"));
        for bad in [
            serde_json::json!({"dimensions": [1]}),
            serde_json::json!({"dimensions": {"UUID": "x"}}),
            serde_json::json!({"dimensions": {"k": {"nested": 1}}}),
            serde_json::json!({"note": "x".repeat(2000)}),
        ] {
            let seen = Observation::from_hook_output(uuid, bad.as_object().unwrap().clone());
            assert_eq!(seen.facts["healthy"], Value::Bool(false), "{bad}");
            assert!(seen.dimensions.is_empty(), "{bad}");
        }
    }

    #[test]
    fn action_kinds_are_named_as_on_the_wire() {
        let at = SystemTime::UNIX_EPOCH;
        let actions = [
            Action::Prepare,
            Action::StartLease { request: RequestId(1), public_key: String::new(), expires_at: at },
            Action::ExtendLease { request: RequestId(1), expires_at: at },
            Action::Revoke { request: RequestId(1) },
            Action::Maintenance,
            Action::HealthCheck,
            Action::PowerCycle,
        ];
        for action in actions {
            let wire = serde_json::to_value(&action).unwrap();
            assert_eq!(wire["kind"], action.kind().as_str());
            assert_eq!(action.kind().as_str().parse::<ActionKind>(), Ok(action.kind()));
        }
        assert!("reboot".parse::<ActionKind>().is_err());
    }
}
