//! The commands a worker actor sent to its agent and waits for (SPEC §13:
//! every command to an agent has a timeout). At most one command of each
//! [`ActionKind`] is in flight per worker; a newer send of the same kind
//! replaces the older one, whose late answer is then ignored (each send has
//! a tag, and the answer carries it back).
//!
//! A command that is not answered within its timeout, or is answered with
//! a failure, is a failed attempt: the worker records it in its backoff row
//! (`work_backoff`, per worker and command kind, so a restart keeps the
//! count), waits out the backoff and sends the command again, up to the
//! configured retries; then it gives up ([`crate::worker`] says how).
//!
//! This module is the bookkeeping only; it does no IO.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use corral_core::WorkerState;
use corral_proto::agent::{Action, ActionKind};

/// One command of a worker that is awaited or waits for its next attempt.
#[derive(Clone, Debug)]
struct Pending {
    action: Action,
    /// The send whose answer is awaited, and when it was sent; `None` while
    /// the command waits out its backoff before the next attempt.
    sent: Option<(u64, SystemTime)>,
    /// Attempts sent so far (since this actor started).
    attempts: u32,
}

/// The commands of one worker.
#[derive(Debug, Default)]
pub(crate) struct Commands {
    pending: HashMap<ActionKind, Pending>,
    last_tag: u64,
    /// Kinds whose backoff row this actor wrote (or found at start) and
    /// has not cleared yet.
    backoff_rows: HashSet<ActionKind>,
}

impl Commands {
    /// `backoff_rows`: the kinds that have a backoff row (found at start).
    pub(crate) fn new(backoff_rows: impl IntoIterator<Item = ActionKind>) -> Commands {
        Commands { backoff_rows: backoff_rows.into_iter().collect(), ..Commands::default() }
    }

    /// Records attempt `attempt` of `action`, sent at `now`; returns the
    /// tag of the send.
    pub(crate) fn sent(&mut self, action: Action, attempt: u32, now: SystemTime) -> u64 {
        self.last_tag += 1;
        let tag = self.last_tag;
        self.pending.insert(action.kind(), Pending { action, sent: Some((tag, now)), attempts: attempt });
        tag
    }

    /// Records `action` as waiting for its first attempt (a backoff left
    /// by an earlier run is not over yet).
    pub(crate) fn waiting(&mut self, action: Action) {
        self.pending.insert(action.kind(), Pending { action, sent: None, attempts: 0 });
    }

    /// Whether the send `tag` is the one awaited for `kind`.
    pub(crate) fn awaits(&self, kind: ActionKind, tag: u64) -> bool {
        self.pending.get(&kind).and_then(|p| p.sent).is_some_and(|(awaited, _)| awaited == tag)
    }

    /// Whether the awaited send of `kind` is older than `timeout` at `now`.
    pub(crate) fn timed_out(&self, kind: ActionKind, now: SystemTime, timeout: Duration) -> bool {
        self.pending.get(&kind).and_then(|p| p.sent).is_some_and(|(_, at)| at + timeout <= now)
    }

    /// The awaited send of `kind` failed: the command now waits for its
    /// next attempt. Returns the attempts made so far, or `None` when
    /// nothing of that kind was awaited.
    pub(crate) fn failed(&mut self, kind: ActionKind) -> Option<u32> {
        let pending = self.pending.get_mut(&kind).filter(|p| p.sent.is_some())?;
        pending.sent = None;
        self.backoff_rows.insert(kind);
        Some(pending.attempts)
    }

    /// The command of `kind` that waits for its next attempt, and that
    /// attempt's number.
    pub(crate) fn due(&self, kind: ActionKind) -> Option<(Action, u32)> {
        self.pending.get(&kind).filter(|p| p.sent.is_none()).map(|p| (p.action.clone(), p.attempts + 1))
    }

    /// The command of `kind` is settled (answered, or given up).
    pub(crate) fn settled(&mut self, kind: ActionKind) {
        self.pending.remove(&kind);
    }

    /// Takes the note that `kind` has a backoff row (to clear it).
    pub(crate) fn take_backoff_row(&mut self, kind: ActionKind) -> bool {
        self.backoff_rows.remove(&kind)
    }

    /// Takes every backoff row note.
    pub(crate) fn take_backoff_rows(&mut self) -> Vec<ActionKind> {
        self.backoff_rows.drain().collect()
    }

    /// Forgets every command (the worker's state moved on) but the one of
    /// `keep` (an on-demand power cycle goes on across states); returns
    /// their kinds, each with whether it was awaited (else it waited for a
    /// retry), so that their timers can be cancelled.
    pub(crate) fn forget_all(&mut self, keep: Option<ActionKind>) -> Vec<(ActionKind, bool)> {
        let forgotten: Vec<ActionKind> = self.pending.keys().copied().filter(|k| Some(*k) != keep).collect();
        forgotten.into_iter().filter_map(|kind| self.pending.remove(&kind).map(|p| (kind, p.sent.is_some()))).collect()
    }

    /// Whether a command of `kind` is awaited or waits for its next attempt.
    pub(crate) fn has(&self, kind: ActionKind) -> bool {
        self.pending.contains_key(&kind)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

/// Whether a command of `kind` still matters to a worker in `state`.
pub(crate) fn wanted(kind: ActionKind, state: WorkerState) -> bool {
    match kind {
        ActionKind::Prepare => state == WorkerState::Prepare,
        ActionKind::StartLease | ActionKind::ExtendLease | ActionKind::Revoke => state == WorkerState::Running,
        ActionKind::Maintenance => state == WorkerState::Busy,
        ActionKind::HealthCheck | ActionKind::PowerCycle => state == WorkerState::Failed,
    }
}

/// What the command of `kind` does, for reasons shown to people.
pub(crate) fn describe(kind: ActionKind) -> &'static str {
    match kind {
        ActionKind::Prepare => "preparation",
        ActionKind::StartLease => "installing the lease key",
        ActionKind::ExtendLease => "renewing the lease key",
        ActionKind::Revoke => "revoking the lease key",
        ActionKind::Maintenance => "the maintenance hook",
        ActionKind::HealthCheck => "the health check",
        ActionKind::PowerCycle => "the power cycle",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_latest_send_of_a_kind_is_awaited() {
        let now = SystemTime::UNIX_EPOCH;
        let mut commands = Commands::new([]);
        let first = commands.sent(Action::HealthCheck, 1, now);
        let second = commands.sent(Action::HealthCheck, 1, now);
        assert!(!commands.awaits(ActionKind::HealthCheck, first), "a replaced send's answer is ignored");
        assert!(commands.awaits(ActionKind::HealthCheck, second));
        assert!(!commands.awaits(ActionKind::PowerCycle, second), "tags are per kind");
    }

    #[test]
    fn a_failed_attempt_waits_then_is_due_with_the_next_number() {
        let now = SystemTime::UNIX_EPOCH;
        let timeout = Duration::from_secs(60);
        let mut commands = Commands::new([]);
        let tag = commands.sent(Action::Maintenance, 1, now);
        assert!(!commands.timed_out(ActionKind::Maintenance, now + timeout - Duration::from_secs(1), timeout));
        assert!(commands.timed_out(ActionKind::Maintenance, now + timeout, timeout));
        assert_eq!(commands.due(ActionKind::Maintenance), None, "awaited, not due");
        assert_eq!(commands.failed(ActionKind::Maintenance), Some(1));
        assert!(!commands.awaits(ActionKind::Maintenance, tag), "a late answer of the failed attempt is ignored");
        assert!(!commands.timed_out(ActionKind::Maintenance, now + timeout, timeout), "nothing awaited");
        assert_eq!(commands.failed(ActionKind::Maintenance), None, "one failure per attempt");
        assert_eq!(commands.due(ActionKind::Maintenance), Some((Action::Maintenance, 2)));
        assert_eq!(commands.take_backoff_rows(), vec![ActionKind::Maintenance]);
        assert!(commands.take_backoff_rows().is_empty());
    }

    #[test]
    fn forgetting_reports_what_each_command_waited_for() {
        let now = SystemTime::UNIX_EPOCH;
        let mut commands = Commands::new([ActionKind::Prepare]);
        commands.sent(Action::PowerCycle, 1, now);
        commands.waiting(Action::Prepare);
        commands.sent(Action::HealthCheck, 1, now);
        let mut forgotten = commands.forget_all(Some(ActionKind::HealthCheck));
        forgotten.sort();
        assert_eq!(forgotten, vec![(ActionKind::Prepare, false), (ActionKind::PowerCycle, true)]);
        assert!(!commands.is_empty(), "the kept command stays");
        assert_eq!(commands.forget_all(None), vec![(ActionKind::HealthCheck, true)]);
        assert!(commands.is_empty());
        assert!(commands.take_backoff_row(ActionKind::Prepare), "a backoff row found at start is noted");
    }

    #[test]
    fn commands_matter_only_in_the_state_that_sent_them() {
        for state in WorkerState::ALL {
            assert_eq!(wanted(ActionKind::Prepare, state), state == WorkerState::Prepare);
            assert_eq!(wanted(ActionKind::StartLease, state), state == WorkerState::Running);
            assert_eq!(wanted(ActionKind::Maintenance, state), state == WorkerState::Busy);
            assert_eq!(wanted(ActionKind::HealthCheck, state), state == WorkerState::Failed);
        }
    }
}
