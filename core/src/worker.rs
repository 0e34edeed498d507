//! The worker state machine (SPEC §2), in Boruta's vocabulary.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Out of the pool; only an admin brings it back.
    Maintenance,
    /// The agent is making it fresh (new lab user, no stale keys).
    Prepare,
    /// Ready to be leased.
    Idle,
    /// Leased.
    Running,
    /// Broken until its agent registers again or reports it healthy.
    Failed,
    /// An admin asked for maintenance; waiting for the agent to confirm.
    Busy,
}

impl WorkerState {
    pub const ALL: [WorkerState; 6] = [
        WorkerState::Maintenance,
        WorkerState::Prepare,
        WorkerState::Idle,
        WorkerState::Running,
        WorkerState::Failed,
        WorkerState::Busy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Maintenance => "maintenance",
            WorkerState::Prepare => "prepare",
            WorkerState::Idle => "idle",
            WorkerState::Running => "running",
            WorkerState::Failed => "failed",
            WorkerState::Busy => "busy",
        }
    }

    /// Only workers out of service may be deregistered.
    pub fn can_deregister(self) -> bool {
        matches!(self, WorkerState::Maintenance | WorkerState::Failed)
    }

    /// The state reached by `event`, or an error naming the illegal move.
    pub const fn apply(self, event: WorkerEvent) -> Result<WorkerState, IllegalWorkerTransition> {
        use WorkerEvent as E;
        use WorkerState as S;
        let to = match (self, event) {
            (S::Maintenance, E::AdminIdle) => S::Prepare,
            (S::Prepare, E::Prepared) => S::Idle,
            (S::Prepare, E::PrepareFailed) => S::Failed,
            (S::Idle, E::Lease) => S::Running,
            (S::Running, E::LeaseEnded) => S::Prepare,
            (S::Prepare | S::Idle | S::Running, E::Fail) => S::Failed,
            (S::Prepare | S::Idle | S::Running | S::Failed, E::AdminMaintenance) => S::Busy,
            (S::Busy, E::MaintenanceConfirmed) => S::Maintenance,
            // The admin stops waiting for the agent's confirmation.
            (S::Busy, E::AdminMaintenance) => S::Maintenance,
            (S::Failed, E::Recover) => S::Prepare,
            _ => return Err(IllegalWorkerTransition { from: self, event }),
        };
        Ok(to)
    }
}

/// One move of the worker table, checked when compiled: `to` is what
/// [`WorkerState::apply`] gives for `event` in `from`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerMove {
    pub from: WorkerState,
    pub event: WorkerEvent,
    pub to: WorkerState,
}

impl WorkerMove {
    /// The binding (idle → running), committed by the database with the
    /// request's binding; the worker actor mirrors it after the commit.
    pub const LEASED: WorkerMove = WorkerMove::of(WorkerState::Idle, WorkerEvent::Lease);
    /// The end of a lease (running → prepare), committed with the
    /// request's end when the worker neither drains nor works.
    pub const LEASE_ENDED: WorkerMove = WorkerMove::of(WorkerState::Running, WorkerEvent::LeaseEnded);

    /// The move of `event` from `from`. Used in a `const`, a move the
    /// table does not have fails the build.
    const fn of(from: WorkerState, event: WorkerEvent) -> WorkerMove {
        match from.apply(event) {
            Ok(to) => WorkerMove { from, event, to },
            Err(_) => panic!("core's worker table has no such move"),
        }
    }
}

impl fmt::Display for WorkerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for WorkerState {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        WorkerState::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or_else(|| format!("unknown worker state {text:?}"))
    }
}

/// What can happen to a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerEvent {
    /// An admin set it idle.
    AdminIdle,
    /// The agent confirmed preparation.
    Prepared,
    /// Preparation failed or timed out.
    PrepareFailed,
    /// The matcher gave it a lease.
    Lease,
    /// Its lease ended (done, expired or cancelled before it started).
    LeaseEnded,
    /// The agent reported failure, a health check failed, or the agent's
    /// session expired.
    Fail,
    /// An admin asked for maintenance (of a busy worker: without waiting
    /// for the agent any longer).
    AdminMaintenance,
    /// The agent confirmed it is in maintenance.
    MaintenanceConfirmed,
    /// Its agent registered again or reported it healthy.
    Recover,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a worker that is {from} cannot take event {event:?}")]
pub struct IllegalWorkerTransition {
    pub from: WorkerState,
    pub event: WorkerEvent,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Input: a move the table does not have (leasing a worker in
    /// maintenance). Must: be refused; in a `const` (as `LEASED` and
    /// `LEASE_ENDED` are) that refusal fails the build.
    #[test]
    #[should_panic(expected = "core's worker table has no such move")]
    fn a_move_the_table_lacks_is_refused() {
        let _ = WorkerMove::of(WorkerState::Maintenance, WorkerEvent::Lease);
    }

    #[test]
    fn every_transition_of_the_spec_table_and_no_other() {
        use WorkerEvent as E;
        use WorkerState as S;
        let allowed = [
            (S::Maintenance, E::AdminIdle, S::Prepare),
            (S::Prepare, E::Prepared, S::Idle),
            (S::Prepare, E::PrepareFailed, S::Failed),
            (S::Idle, E::Lease, S::Running),
            (S::Running, E::LeaseEnded, S::Prepare),
            (S::Prepare, E::Fail, S::Failed),
            (S::Idle, E::Fail, S::Failed),
            (S::Running, E::Fail, S::Failed),
            (S::Prepare, E::AdminMaintenance, S::Busy),
            (S::Idle, E::AdminMaintenance, S::Busy),
            (S::Running, E::AdminMaintenance, S::Busy),
            (S::Failed, E::AdminMaintenance, S::Busy),
            (S::Busy, E::MaintenanceConfirmed, S::Maintenance),
            (S::Busy, E::AdminMaintenance, S::Maintenance),
            (S::Failed, E::Recover, S::Prepare),
        ];
        let events = [
            E::AdminIdle,
            E::Prepared,
            E::PrepareFailed,
            E::Lease,
            E::LeaseEnded,
            E::Fail,
            E::AdminMaintenance,
            E::MaintenanceConfirmed,
            E::Recover,
        ];
        for from in S::ALL {
            for event in events {
                let expected = allowed.iter().find(|(f, e, _)| *f == from && *e == event).map(|(_, _, to)| *to);
                assert_eq!(from.apply(event).ok(), expected, "{from} + {event:?}");
            }
        }
    }

    #[test]
    fn only_maintenance_and_failed_deregister() {
        for s in WorkerState::ALL {
            assert_eq!(s.can_deregister(), matches!(s, WorkerState::Maintenance | WorkerState::Failed));
        }
    }
}
