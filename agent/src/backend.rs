//! What an agent does to its workers: a simulated host or a real one.

use std::future::Future;

use corral_core::WorkerId;
use corral_proto::agent::{Action, WorkerRegistration};
use serde_json::{Map, Value};

/// How a command went.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub ok: bool,
    pub message: String,
    /// For `start_lease`: the worker host's SSH host key, read now.
    pub host_key: Option<String>,
    /// The result is never sent (a simulated fault: lost results).
    pub lost: bool,
}

impl Outcome {
    pub fn ok() -> Outcome {
        Outcome { ok: true, ..Outcome::default() }
    }

    pub fn failed(message: impl Into<String>) -> Outcome {
        Outcome { ok: false, message: message.into(), host_key: None, lost: false }
    }
}

/// The host side of an agent. Futures need not be `Send`: the agent runs on
/// one thread.
pub trait Backend {
    /// Host name the agent registers as.
    fn name(&self) -> String;

    /// The workers to register (called at every session opening).
    fn workers(&self) -> impl Future<Output = Vec<WorkerRegistration>>;

    /// Executes one command for one worker. Commands of one worker run one
    /// at a time, in order.
    fn execute(&self, worker: WorkerId, action: &Action) -> impl Future<Output = Outcome>;

    /// What the agent sees of a worker now (the `interrogate` hook).
    fn observe(&self, worker: WorkerId) -> impl Future<Output = Map<String, Value>>;

    /// Whether heartbeats go out now (a simulated fault stops them).
    fn heartbeats(&self) -> bool {
        true
    }
}
