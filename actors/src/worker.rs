//! The worker actor: one per registered worker. It is the only writer of
//! its worker's row after registration; it turns agent reports, admin
//! requests, matcher bindings and lease ends into state transitions (SPEC
//! §2), and sends its agent the commands each state needs. Every command
//! is watched ([`crate::command`]): unanswered past its timeout, or
//! failed, it is retried after a backoff, then given up: the worker fails
//! (a busy one is assumed in maintenance) with a reason naming the command.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use corral_core::health::{self, Verdict};
use corral_core::matcher::WorkerSpec;
use corral_core::worker::{WorkerEvent, WorkerMove};
use corral_core::{Caps, FencingToken, Groups, RequestId, SessionId, WorkerId, WorkerState};
use corral_db::{BackoffRecord, Hold, WorkerRecord, WorkerTransition};
use corral_proto::agent::{Action, ActionKind, CommandResult, POWER_CYCLE_HOOK};
use corral_proto::workers::{AdminState, Backoff, StateChange, Worker};
use serde_json::{Map, Value};

use crate::agent::{AgentMsg, AgentSession};
use crate::command::{self, Commands};
use crate::directory::WorkerView;
use crate::matcher::MatcherMsg;
use crate::request::{RequestMsg, WorkerAccess};
use crate::timekeeper::{TimerKey, TimerMsg};
use crate::{ActorError, Caller, Corral, Reply, Shared, tell};

type Answer = Reply<Result<WorkerRecord, ActorError>>;

#[derive(Message)]
#[rtype(result = "()")]
pub enum WorkerMsg {
    /// Test-only fault injection: the handler panics.
    #[cfg(feature = "fault-injection")]
    Panic,
    SetState {
        caller: Caller,
        change: StateChange,
        reply: Answer,
    },
    SetGroups {
        caller: Caller,
        groups: Groups,
        reply: Answer,
    },
    Deregister {
        caller: Caller,
        reply: Reply<Result<(), ActorError>>,
    },
    /// Its agent (re)registered it; `record` is the refreshed row.
    Attach {
        record: Box<WorkerRecord>,
        agent: Addr<AgentSession>,
        agent_name: String,
    },
    /// The agent's result of a command sent to this worker (`tag`: which
    /// send it answers).
    Result {
        action: Action,
        result: CommandResult,
        tag: u64,
        agent_name: String,
    },
    /// Facts from a heartbeat (already checked against their bounds), and
    /// the ones the agent marks as dimensions.
    Observed {
        facts: Map<String, Value>,
        dimensions: Caps,
    },
    /// An admin quarantines the worker (Some(reason)) or lifts its
    /// quarantine (None).
    SetQuarantine {
        caller: Caller,
        reason: Option<String>,
        reply: Answer,
    },
    /// An admin, or the holder of the worker's lease, asks for a power
    /// cycle (the agent's `power_cycle` hook).
    PowerCycle {
        caller: Caller,
        reply: Answer,
    },
    /// An admin sets (Some) or clears (None) the worker's note.
    SetNote {
        caller: Caller,
        note: Option<String>,
        reply: Answer,
    },
    /// The agent session holding the worker expired or was closed.
    AgentLost {
        session: SessionId,
        reason: String,
    },
    /// The matcher committed a lease on this worker.
    Leased {
        request: RequestId,
        fence: FencingToken,
    },
    /// The request made its key: have the agent install it, valid until
    /// `expires_at`.
    StartLease {
        request: RequestId,
        fence: FencingToken,
        public_key: String,
        expires_at: SystemTime,
    },
    /// The lease now ends at `expires_at` (it started, or was prolonged):
    /// have the agent renew the key's expiry.
    ExtendLease {
        request: RequestId,
        fence: FencingToken,
        expires_at: SystemTime,
    },
    /// The request ended its lease (close, expiry, cancel before start).
    LeaseEnded {
        request: RequestId,
        fence: FencingToken,
        ended: LeaseEnd,
    },
    /// The command of this kind is unanswered for too long.
    CommandTimedOut {
        kind: ActionKind,
    },
    /// The backoff after a failed attempt of this command is over.
    RetryCommand {
        kind: ActionKind,
    },
    /// A failed worker's backoff is over: try to heal it.
    BackoffOver,
    /// The matcher's binding was refused: re-read the row.
    Resync,
}

/// How a lease ended, as the request committed it.
#[derive(Debug)]
pub struct LeaseEnd {
    pub reason: String,
    pub at: SystemTime,
    /// The same commit moved the worker from running to prepare.
    pub worker_prepared: bool,
}

#[derive(Clone, Debug)]
struct Lease {
    request: RequestId,
    fence: FencingToken,
    /// The key and its expiry, as last sent to the agent.
    public_key: Option<(String, SystemTime)>,
    started: bool,
}

pub struct WorkerActor {
    shared: Arc<Shared>,
    record: WorkerRecord,
    agent: Option<Addr<AgentSession>>,
    lease: Option<Lease>,
    /// The worker failed because of observed facts (a healthy report heals it).
    failed_by_facts: bool,
    /// Its processes in failure backoff (the rows of `work_backoff`): a
    /// command of such a kind is not sent before its `retry_after`.
    backoff: Vec<BackoffRecord>,
    /// Who asked for the on-demand power cycle that runs (`work`), for its
    /// outcome's history row.
    power_cycle_by: Option<String>,
    /// A lease that ended while an on-demand power cycle ran: the worker
    /// leaves `running` when the power cycle is over (its reason).
    pending_lease_end: Option<String>,
    /// Commands sent to the agent and not settled yet.
    commands: Commands,
    /// A key to install that arrived before the lease it belongs to (only
    /// when a full mailbox reordered the two messages).
    early_key: Option<(RequestId, FencingToken, String, SystemTime)>,
    /// When the facts were last written to the row (they are written when
    /// they change, at most every [`FACTS_WRITE_INTERVAL`], or at once when
    /// the dimensions change).
    facts_written_at: Option<SystemTime>,
}

/// Facts that change at every heartbeat (uptime, battery) are written to
/// the worker's row at most this often; the worker object shows the latest
/// ones at once (from memory).
pub const FACTS_WRITE_INTERVAL: Duration = Duration::from_secs(60);

type Step = ResponseActFuture<WorkerActor, ()>;

fn done() -> Step {
    Box::pin(actix::fut::ready(()))
}

impl WorkerActor {
    pub(crate) fn new(
        shared: Arc<Shared>,
        record: WorkerRecord,
        agent: Option<Addr<AgentSession>>,
        lease: Option<(RequestId, FencingToken, bool)>,
        backoff: Vec<BackoffRecord>,
    ) -> WorkerActor {
        WorkerActor {
            facts_written_at: record.facts_at,
            shared,
            record,
            agent,
            lease: lease.map(|(request, fence, started)| Lease { request, fence, public_key: None, started }),
            failed_by_facts: false,
            commands: Commands::new(backoff.iter().filter_map(|b| b.process.parse().ok())),
            backoff,
            power_cycle_by: None,
            pending_lease_end: None,
            early_key: None,
        }
    }

    pub(crate) fn spec(record: &WorkerRecord) -> WorkerSpec {
        WorkerSpec { id: record.uuid, caps: Self::caps(record), groups: record.groups.clone() }
    }

    /// The caps requests match on: the configured ones over the dimensions.
    pub(crate) fn caps(record: &WorkerRecord) -> Caps {
        corral_core::facts::merged_caps(&record.caps, &record.dimensions)
    }

    fn id(&self) -> WorkerId {
        self.record.uuid
    }

    pub(crate) fn view(record: &WorkerRecord, request: Option<RequestId>, backoff: &[BackoffRecord]) -> WorkerView {
        WorkerView {
            worker: Worker {
                uuid: record.uuid,
                state: record.state,
                caps: Self::caps(record),
                groups: record.groups.clone(),
                agent: record.agent.clone(),
                ssh_addr: record.ssh_addr.clone(),
                reason: record.reason.clone(),
                state_since: record.state_since,
                last_seen: record.last_seen,
                request,
                facts: record.facts.clone(),
                facts_at: record.facts_at,
                dimensions: record.dimensions.clone(),
                note: record.note.clone(),
                note_by: record.note_by.clone(),
                note_at: record.note_at,
                quarantine: record.quarantine.clone(),
                quarantine_by: record.quarantine_by.clone(),
                quarantine_at: record.quarantine_at,
                recovery: record.recovery.clone(),
                recovery_at: record.recovery_at,
                can_power_cycle: record.hooks.as_ref().map(|hooks| hooks.iter().any(|h| h == POWER_CYCLE_HOOK)),
                work: record.work.clone(),
                backoff: backoff
                    .iter()
                    .map(|b| Backoff {
                        process: b.process.clone(),
                        failures: b.failures,
                        retry_after: b.retry_after,
                        last_error: b.last_error.clone(),
                    })
                    .collect(),
            },
            session: record.session,
            drain: record.drain.clone(),
        }
    }

    fn publish(&self) {
        self.shared.dir.publish(Self::view(&self.record, self.lease.as_ref().map(|l| l.request), &self.backoff));
    }

    /// Sends `action` to the agent as a first attempt and watches it.
    fn send(&mut self, action: Action) {
        self.attempt(action, 1);
    }

    /// Sends attempt `attempt` of `action` and watches it: unanswered
    /// within its timeout, it is a failed attempt ([`Self::command_failed`]).
    /// Without an agent session nothing is sent, and the timeout settles it.
    fn attempt(&mut self, action: Action, attempt: u32) {
        let (id, kind, now) = (self.id(), action.kind(), self.shared.clock.now());
        let tag = self.commands.sent(action.clone(), attempt, now);
        match &self.agent {
            Some(agent) => tell(agent, AgentMsg::Send { worker: id, fence: self.record.fence, action, tag }),
            None => tracing::debug!(worker = %id, ?action, "no agent session; command not sent"),
        }
        let at = now + self.timeout(kind);
        tell(self.shared.timekeeper(), TimerMsg::Watch { key: TimerKey::CommandTimeout(id, kind), at });
    }

    fn timeout(&self, kind: ActionKind) -> Duration {
        match kind {
            ActionKind::Prepare => self.shared.settings.prepare_timeout,
            ActionKind::PowerCycle => self.shared.settings.power_cycle_timeout,
            _ => self.shared.settings.command_timeout,
        }
    }

    /// Whether a command of `kind` still matters: the state's own commands
    /// ([`command::wanted`]), and an on-demand power cycle in any state.
    fn wants(&self, kind: ActionKind) -> bool {
        command::wanted(kind, self.record.state) || (kind == ActionKind::PowerCycle && self.record.work.is_some())
    }

    /// Forgets every unsettled command (but an on-demand power cycle) and
    /// cancels its timer: the worker's state moved on, their answers no
    /// longer matter.
    fn forget_commands(&mut self) {
        if self.commands.is_empty() {
            return;
        }
        let id = self.id();
        let keep = self.record.work.is_some().then_some(ActionKind::PowerCycle);
        for (kind, awaited) in self.commands.forget_all(keep) {
            let key = if awaited { TimerKey::CommandTimeout(id, kind) } else { TimerKey::CommandRetry(id, kind) };
            tell(self.shared.timekeeper(), TimerMsg::Unwatch { key });
        }
    }

    /// The command of `kind` was answered with success: it is settled, and
    /// its backoff row (if any) goes.
    fn command_succeeded(&mut self, kind: ActionKind) {
        let id = self.id();
        self.commands.settled(kind);
        tell(self.shared.timekeeper(), TimerMsg::Unwatch { key: TimerKey::CommandTimeout(id, kind) });
        if self.commands.take_backoff_row(kind) {
            self.clear_backoff_rows(vec![kind]);
        }
        let before = self.backoff.len();
        self.backoff.retain(|b| b.process != kind.as_str());
        if self.backoff.len() != before {
            self.publish();
        }
    }

    /// When the command of `kind` may be tried again, if it is in backoff.
    fn retry_after(&self, kind: ActionKind) -> Option<SystemTime> {
        let now = self.shared.clock.now();
        self.backoff.iter().find(|b| b.process == kind.as_str()).map(|b| b.retry_after).filter(|until| *until > now)
    }

    fn clear_backoff_rows(&self, kinds: Vec<ActionKind>) {
        if kinds.is_empty() {
            return;
        }
        let (db, id) = (self.shared.db.clone(), self.id());
        actix::spawn(async move {
            for kind in kinds {
                if let Err(err) = db.clear_backoff(id, kind.as_str()).await {
                    tracing::warn!(worker = %id, command = %kind, cause = %err, "could not clear backoff");
                }
            }
        });
    }

    fn tell_request(&self, request: RequestId, msg: RequestMsg) {
        match self.shared.dir.request(request) {
            Some(addr) => tell(&addr, msg),
            None => tracing::warn!(worker = %self.id(), request = %request, "request actor gone"),
        }
    }

    /// Commits `event`; on success runs the new state's side effects and
    /// passes the new record to `then`.
    fn go(&mut self, event: WorkerEvent, actor: String, reason: String, then: Option<Answer>) -> Step {
        let from = self.record.state;
        let to = match from.apply(event) {
            Ok(to) => to,
            Err(err) => {
                if let Some(reply) = then {
                    let _ = reply.send(Err(ActorError::Conflict(format!("worker {} is {from}: {err}", self.id()))));
                }
                return done();
            }
        };
        let clear_drain = to == WorkerState::Busy;
        let transition = WorkerTransition {
            uuid: self.id(),
            from,
            to,
            at: self.shared.clock.now(),
            actor,
            reason: reason.clone(),
            clear_drain,
        };
        let leaving_idle = from == WorkerState::Idle;
        let (db, matcher, id) = (self.shared.db.clone(), self.shared.matcher().clone(), self.id());
        let work = async move {
            if leaving_idle {
                // Keep the matcher from choosing it while we commit; if a
                // binding wins the race, our conditional update fails.
                let (tx, rx) = tokio::sync::oneshot::channel();
                if matcher.send(MatcherMsg::WithdrawWorker { worker: id, reply: tx }).await.is_ok() {
                    let _ = rx.await;
                }
            }
            db.worker_transition(&transition).await
        };
        Box::pin(work.into_actor(self).map(move |result, act, ctx| match result {
            Ok(record) => {
                tracing::info!(worker = %record.uuid, from = %from, to = %to, reason = %reason, "worker state");
                act.record = record;
                act.enter(to, &reason, ctx);
                act.publish();
                if let Some(reply) = then {
                    let _ = reply.send(Ok(act.record.clone()));
                }
            }
            Err(err) => {
                tracing::warn!(worker = %id, cause = %err, from = %from, to = %to, "worker transition not committed");
                if !matches!(err, corral_db::DbError::Conflict { .. }) {
                    crate::reconciler::ask(&act.shared);
                }
                // Another writer moved the row (a binding, or the end of a
                // lease that also prepared the worker): re-read it; an idle
                // worker goes back to the matcher.
                tell(&ctx.address(), WorkerMsg::Resync);
                if let Some(reply) = then {
                    let _ = reply.send(Err(err.into()));
                }
            }
        }))
    }

    /// Side effects of entering `state`, after the commit.
    fn enter(&mut self, state: WorkerState, reason: &str, ctx: &mut Context<Self>) {
        let id = self.id();
        self.forget_commands();
        // The worker left `running` another way (it failed, went to
        // maintenance): the deferred end of its lease no longer applies.
        self.pending_lease_end = None;
        match state {
            WorkerState::Prepare => {
                self.lease = None;
                self.send_prepare();
            }
            WorkerState::Idle => {
                self.failed_by_facts = false;
                // A healthy worker starts every command's count afresh.
                self.backoff.clear();
                let rows = self.commands.take_backoff_rows();
                self.clear_backoff_rows(rows);
                self.offer_if_idle();
            }
            WorkerState::Failed | WorkerState::Busy => {
                if let Some(lease) = self.lease.take() {
                    let why = match state {
                        WorkerState::Busy => format!("worker {id} went to maintenance: {reason}"),
                        _ => format!("worker {id} failed: {reason}"),
                    };
                    self.tell_request(lease.request, RequestMsg::LeaseLost { fence: lease.fence, reason: why });
                }
                if state == WorkerState::Busy {
                    if self.agent.is_some() {
                        self.send_when_due(Action::Maintenance);
                    } else {
                        // Nobody can confirm: the worker is out of service anyway.
                        let step = self.go(
                            WorkerEvent::MaintenanceConfirmed,
                            "server".to_string(),
                            format!("{reason} (agent offline, maintenance assumed)"),
                            None,
                        );
                        ctx.wait(step);
                    }
                }
            }
            WorkerState::Maintenance | WorkerState::Running => {}
        }
    }

    fn send_prepare(&mut self) {
        self.send_when_due(Action::Prepare);
    }

    /// Sends `action` now, or, while its kind is in failure backoff (a
    /// restart keeps it: the rows are reloaded), when the backoff is over.
    fn send_when_due(&mut self, action: Action) {
        let kind = action.kind();
        if let Some(until) = self.retry_after(kind) {
            tracing::debug!(worker = %self.id(), command = %kind, "command waits out its backoff");
            self.commands.waiting(action);
            let key = TimerKey::CommandRetry(self.id(), kind);
            tell(self.shared.timekeeper(), TimerMsg::Watch { key, at: until });
            return;
        }
        self.send(action);
    }

    /// An attempt of the command of `kind` failed (`what`: it timed out, or
    /// the agent's error). The failure goes into the worker's backoff row
    /// for that command (in the database: a restart keeps the count); the
    /// command is sent again when the backoff is over, or given up after
    /// `command_retries` retries.
    fn command_failed(&mut self, kind: ActionKind, what: String) -> Step {
        let id = self.id();
        if !self.wants(kind) {
            self.commands.settled(kind);
            return done();
        }
        let Some(attempts) = self.commands.failed(kind) else { return done() };
        tell(self.shared.timekeeper(), TimerMsg::Unwatch { key: TimerKey::CommandTimeout(id, kind) });
        let (db, now) = (self.shared.db.clone(), self.shared.clock.now());
        let (base, cap) = (self.shared.settings.backoff_base, self.shared.settings.backoff_cap);
        let error = format!("{}: {what}", command::describe(kind));
        let last_error = error.clone();
        let backoff = async move { db.record_backoff(id, kind.as_str(), &error, now, base, cap).await };
        Box::pin(backoff.into_actor(self).then(move |result, act, _| {
            let (until, failures) = match result {
                Ok(recorded) => recorded,
                Err(err) => {
                    tracing::warn!(worker = %id, command = %kind, cause = %err, "could not record backoff");
                    (now + base, attempts)
                }
            };
            act.backoff.retain(|b| b.process != kind.as_str());
            act.backoff.push(BackoffRecord {
                process: kind.as_str().to_string(),
                failures,
                retry_after: until,
                last_error,
            });
            act.backoff.sort_by(|a, b| a.process.cmp(&b.process));
            act.publish();
            let after = act.shared.settings.quarantine_after;
            let quarantine = kind == ActionKind::Prepare
                && after > 0
                && failures >= after
                && act.record.quarantine.is_none();
            let next = if failures > act.shared.settings.command_retries {
                act.give_up(kind, what, failures, until)
            } else {
                tracing::info!(worker = %id, command = %kind, failures, what = %what, "command failed; retrying after backoff");
                tell(act.shared.timekeeper(), TimerMsg::Watch { key: TimerKey::CommandRetry(id, kind), at: until });
                done()
            };
            if quarantine {
                let reason = match failures {
                    1 => "a failed preparation".to_string(),
                    n => format!("{n} failed preparations in a row"),
                };
                let hold = act.set_hold(Hold::Quarantine, Some(reason), "server".to_string(), None);
                let chained: Step = Box::pin(hold.then(move |(), _, _| next));
                return chained;
            }
            next
        }))
    }

    /// Offers the worker to the matcher if it is idle, not held, and not
    /// being power-cycled.
    fn offer_if_idle(&self) {
        if self.record.state == WorkerState::Idle && !self.record.held() && self.record.work.is_none() {
            let last_used = self.record.last_used.unwrap_or(SystemTime::UNIX_EPOCH);
            tell(self.shared.matcher(), MatcherMsg::WorkerIdle { worker: self.id(), last_used });
        }
    }

    /// Sets (Some) or lifts (None) a hold: committed with a history row,
    /// then the matcher stops (held) or starts again (idle, no hold left)
    /// offering the worker.
    fn set_hold(&mut self, hold: Hold, reason: Option<String>, actor: String, reply: Option<Answer>) -> Step {
        let (db, id, now) = (self.shared.db.clone(), self.id(), self.shared.clock.now());
        let work = async move { db.set_worker_hold(id, hold, reason.as_deref(), &actor, now).await };
        Box::pin(work.into_actor(self).map(move |result, act, _| match result {
            Ok(record) => {
                tracing::info!(worker = %id, ?hold, quarantine = ?record.quarantine, recovery = ?record.recovery, "worker hold");
                (act.record.quarantine, act.record.quarantine_by, act.record.quarantine_at) =
                    (record.quarantine, record.quarantine_by, record.quarantine_at);
                (act.record.recovery, act.record.recovery_at) = (record.recovery, record.recovery_at);
                if act.record.held() {
                    let (tx, _) = tokio::sync::oneshot::channel();
                    tell(act.shared.matcher(), MatcherMsg::WithdrawWorker { worker: id, reply: tx });
                } else {
                    act.offer_if_idle();
                }
                act.publish();
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(act.record.clone()));
                }
            }
            Err(err) => {
                tracing::warn!(worker = %id, cause = %err, ?hold, "could not change a hold");
                if let Some(reply) = reply {
                    let _ = reply.send(Err(err.into()));
                }
            }
        }))
    }

    /// The command of `kind` failed `failures` times in a row: the worker
    /// fails with a reason naming it (and tries to heal once `until` is
    /// past); a busy worker is assumed in maintenance instead (SPEC §2 has
    /// no busy → failed); a failed one stays failed.
    fn give_up(&mut self, kind: ActionKind, what: String, failures: u32, until: SystemTime) -> Step {
        self.commands.settled(kind);
        let reason = format!("{} {what} (command {kind}, gave up after {failures} attempts)", command::describe(kind));
        tracing::warn!(worker = %self.id(), command = %kind, reason = %reason, "command given up");
        if kind == ActionKind::PowerCycle && self.record.work.is_some() {
            // On demand: the outcome goes to the history; the worker's state
            // is not the power cycle's to change.
            return self.end_power_cycle("server".to_string(), format!("failed: {reason}"));
        }
        let heal = TimerMsg::Watch { key: TimerKey::BackoffOver(self.id()), at: until };
        match self.record.state {
            WorkerState::Busy => {
                let asked = self.record.reason.clone().unwrap_or_else(|| "maintenance".to_string());
                let reason = format!("{asked} (the agent did not confirm: {reason}; maintenance assumed)");
                self.go(WorkerEvent::MaintenanceConfirmed, "server".to_string(), reason, None)
            }
            WorkerState::Prepare if kind == ActionKind::Prepare => {
                tell(self.shared.timekeeper(), heal);
                self.go(WorkerEvent::PrepareFailed, "server".to_string(), reason, None)
            }
            WorkerState::Prepare | WorkerState::Idle | WorkerState::Running => {
                tell(self.shared.timekeeper(), heal);
                self.go(WorkerEvent::Fail, "server".to_string(), reason, None)
            }
            WorkerState::Failed | WorkerState::Maintenance => done(),
        }
    }

    fn command_result(&mut self, action: Action, result: CommandResult, tag: u64, agent_name: String) -> Step {
        let kind = action.kind();
        if !self.commands.awaits(kind, tag) {
            tracing::debug!(worker = %self.id(), command = %kind, "result of a command no longer awaited ignored");
            return done();
        }
        if result.fence != self.record.fence {
            tracing::debug!(worker = %self.id(), fence = %result.fence, current = %self.record.fence, "stale result ignored");
            return done();
        }
        if !result.ok {
            tracing::warn!(worker = %self.id(), command = %kind, message = %result.message, "command failed");
            return self.command_failed(kind, format!("failed: {}", result.message));
        }
        self.command_succeeded(kind);
        let actor = format!("agent:{agent_name}");
        let state = self.record.state;
        if kind == ActionKind::PowerCycle && self.record.work.is_some() {
            return self.end_power_cycle(actor, "done".to_string());
        }
        match action {
            Action::Prepare if state == WorkerState::Prepare => {
                self.go(WorkerEvent::Prepared, actor, "preparation confirmed by the agent".to_string(), None)
            }
            Action::StartLease { request, .. } => {
                let Some(lease) = self.lease.as_mut().filter(|l| l.request == request && state == WorkerState::Running)
                else {
                    return done();
                };
                lease.started = true;
                let (fence, request) = (lease.fence, lease.request);
                if let Some(key) = result.host_key.clone() {
                    self.record.host_key = Some(key);
                }
                let access = WorkerAccess {
                    ssh_addr: self.record.ssh_addr.clone(),
                    ssh_user: self.record.ssh_user.clone(),
                    host_key: self.record.host_key.clone(),
                };
                self.tell_request(request, RequestMsg::KeyInstalled { fence, access, actor });
                done()
            }
            Action::Maintenance if state == WorkerState::Busy => {
                let reason = self.record.reason.clone().unwrap_or_else(|| "maintenance".to_string());
                self.go(WorkerEvent::MaintenanceConfirmed, actor, reason, None)
            }
            Action::HealthCheck if state == WorkerState::Failed => {
                self.go(WorkerEvent::Recover, actor, "health check passed".to_string(), None)
            }
            _ => done(),
        }
    }

    fn set_state(&mut self, caller: Caller, change: StateChange, reply: Answer) -> Step {
        let reason = change.reason.clone().filter(|r| !r.trim().is_empty());
        let actor = caller.actor();
        let drains = change.drain && self.record.state == WorkerState::Running;
        if self.record.work.is_some() && !drains {
            // Work locks exclude: maintenance or preparation would cut the
            // power cycle short.
            return self.refuse_held(reply, "its state cannot change now".to_string());
        }
        match change.state {
            AdminState::Idle => {
                let reason = reason.unwrap_or_else(|| format!("set idle by {actor}"));
                self.go(WorkerEvent::AdminIdle, actor, reason, Some(reply))
            }
            AdminState::Maintenance => {
                let reason = reason.unwrap_or_else(|| format!("maintenance asked by {actor}"));
                if change.drain && self.record.state == WorkerState::Running {
                    let (db, id) = (self.shared.db.clone(), self.id());
                    let drain = reason.clone();
                    let work = async move { db.set_worker_drain(id, Some(&drain)).await };
                    return Box::pin(work.into_actor(self).map(move |result, act, _| match result {
                        Ok(()) => {
                            act.record.drain = Some(reason);
                            act.publish();
                            let _ = reply.send(Ok(act.record.clone()));
                        }
                        Err(err) => {
                            let _ = reply.send(Err(err.into()));
                        }
                    }));
                }
                // Out of busy: the admin stops waiting for the agent.
                let reason = match self.record.state {
                    WorkerState::Busy => format!("{reason} (set by an admin; the agent did not confirm maintenance)"),
                    _ => reason,
                };
                self.go(WorkerEvent::AdminMaintenance, actor, reason, Some(reply))
            }
        }
    }

    fn set_groups(&mut self, caller: Caller, groups: Groups, reply: Answer) -> Step {
        let (db, id, now, actor) = (self.shared.db.clone(), self.id(), self.shared.clock.now(), caller.actor());
        let work = async move { db.set_worker_groups(id, &groups, &actor, now).await };
        Box::pin(work.into_actor(self).map(move |result, act, _| match result {
            Ok(record) => {
                act.record = record;
                tell(act.shared.matcher(), MatcherMsg::RegisterWorker(Self::spec(&act.record)));
                act.publish();
                let _ = reply.send(Ok(act.record.clone()));
            }
            Err(err) => {
                let _ = reply.send(Err(err.into()));
            }
        }))
    }

    fn set_note(&mut self, caller: Caller, note: Option<String>, reply: Answer) -> Step {
        let (db, id, now, actor) = (self.shared.db.clone(), self.id(), self.shared.clock.now(), caller.actor());
        let work = async move { db.set_worker_note(id, note.as_deref(), &actor, now).await };
        Box::pin(work.into_actor(self).map(move |result, act, _| match result {
            Ok(record) => {
                (act.record.note, act.record.note_by, act.record.note_at) =
                    (record.note, record.note_by, record.note_at);
                act.publish();
                let _ = reply.send(Ok(act.record.clone()));
            }
            Err(err) => {
                let _ = reply.send(Err(err.into()));
            }
        }))
    }

    /// An on-demand power cycle (SPEC §4, issue 16): refused (422) when
    /// the agent says it has no `power_cycle` hook; refused (409, naming
    /// what holds the worker) without an agent session, while the power
    /// cycle is in failure backoff, or while a conflicting process holds
    /// the worker (preparation, maintenance, another power cycle, the
    /// lease of another user: [`corral_db::Db::start_power_cycle`] decides
    /// on the row). Else it is committed (work lock, `work`, history row),
    /// then sent through the command path (timeout, retries, backoff); its
    /// outcome becomes a history row ([`Self::end_power_cycle`]).
    fn power_cycle(&mut self, caller: Caller, reply: Answer) -> Step {
        let (id, now) = (self.id(), self.shared.clock.now());
        if self.record.hooks.as_ref().is_some_and(|hooks| !hooks.iter().any(|h| h == POWER_CYCLE_HOOK)) {
            let why = format!("worker {id} cannot be power-cycled: its agent has no power_cycle hook for it");
            let _ = reply.send(Err(ActorError::Unprocessable(why)));
            return done();
        }
        if self.agent.is_none() {
            let why = format!("worker {id} has no live agent session: nobody can power-cycle it now");
            let _ = reply.send(Err(ActorError::Conflict(why)));
            return done();
        }
        if let Some(until) = self.retry_after(ActionKind::PowerCycle) {
            let last = self.backoff.iter().find(|b| b.process == ActionKind::PowerCycle.as_str());
            let why = format!(
                "the power cycle of worker {id} failed {} time(s) in a row ({}); it may be tried again after {}",
                last.map_or(0, |b| b.failures),
                last.map_or("", |b| b.last_error.as_str()),
                corral_core::time::format_rfc3339(until),
            );
            let _ = reply.send(Err(ActorError::Conflict(why)));
            return done();
        }
        let refusal = match self.record.state {
            _ if self.record.work.is_some() => Some("it is already being power-cycled".to_string()),
            WorkerState::Idle | WorkerState::Maintenance | WorkerState::Running => None,
            WorkerState::Prepare => Some("it is being prepared".to_string()),
            WorkerState::Busy => Some("it is going to maintenance".to_string()),
            WorkerState::Failed => Some(
                "it failed: the server heals it itself (a power cycle and a health check after its backoff); \
                 put it in maintenance to power-cycle it by hand"
                    .to_string(),
            ),
        };
        if let Some(why) = refusal {
            return self.refuse_held(reply, why);
        }
        let leaving_idle = self.record.state == WorkerState::Idle;
        let (db, matcher, actor, holder_id) =
            (self.shared.db.clone(), self.shared.matcher().clone(), caller.actor(), caller.id);
        let holder = actor.clone();
        let work = async move {
            if leaving_idle {
                // Keep the matcher from choosing it while we commit; a
                // binding that wins the race makes the statement refuse.
                let (tx, rx) = tokio::sync::oneshot::channel();
                if matcher.send(MatcherMsg::WithdrawWorker { worker: id, reply: tx }).await.is_ok() {
                    let _ = rx.await;
                }
            }
            db.start_power_cycle(id, holder_id, &holder, now).await
        };
        Box::pin(work.into_actor(self).then(move |result, act, _| match result {
            Ok(record) => {
                tracing::info!(worker = %id, by = %actor, "power cycle started");
                act.record.work = record.work;
                act.power_cycle_by = Some(actor);
                act.send(Action::PowerCycle);
                act.publish();
                let _ = reply.send(Ok(act.record.clone()));
                done()
            }
            Err(corral_db::DbError::Conflict { .. }) => {
                act.offer_if_idle();
                let why = match (&act.record.state, &act.lease) {
                    (WorkerState::Running, Some(lease)) => {
                        format!("it runs the lease of request {} of another user", lease.request)
                    }
                    _ => "another process holds it".to_string(),
                };
                act.refuse_held(reply, why)
            }
            Err(err) => {
                act.offer_if_idle();
                let _ = reply.send(Err(err.into()));
                done()
            }
        }))
    }

    /// Answers a conflict: the worker is held (`why`), naming its work
    /// locks as the database has them (process, holder, since when).
    fn refuse_held(&mut self, reply: Answer, why: String) -> Step {
        let (db, id) = (self.shared.db.clone(), self.id());
        let work = async move { db.work_locks(id).await };
        Box::pin(work.into_actor(self).map(move |locks, _, _| {
            let held: Vec<String> = locks
                .unwrap_or_default()
                .into_iter()
                .map(|l| {
                    format!(
                        "{} by {} since {}",
                        l.process,
                        l.holder.as_deref().unwrap_or("its agent"),
                        corral_core::time::format_rfc3339(l.acquired_at)
                    )
                })
                .collect();
            let locks = if held.is_empty() { String::new() } else { format!(" (work locks: {})", held.join("; ")) };
            let _ = reply.send(Err(ActorError::Conflict(format!("worker {id} is busy: {why}{locks}"))));
        }))
    }

    /// The on-demand power cycle is over (`outcome`: "done", "failed: ..."):
    /// its lock goes and a history row by `actor` says how it ended; the
    /// worker goes back to the matcher if idle, and leaves `running` if its
    /// lease ended meanwhile.
    fn end_power_cycle(&mut self, actor: String, outcome: String) -> Step {
        let (db, id, now) = (self.shared.db.clone(), self.id(), self.shared.clock.now());
        let asked = match self.power_cycle_by.take() {
            Some(by) => format!("power cycle asked by {by}"),
            None => "power cycle".to_string(),
        };
        let reason = format!("{asked}: {outcome}");
        tracing::info!(worker = %id, outcome = %reason, "power cycle over");
        let work = async move { db.end_power_cycle(id, &actor, &reason, now).await };
        Box::pin(work.into_actor(self).then(move |result, act, _| {
            match result {
                Ok(_) | Err(corral_db::DbError::NotFound { .. }) => {}
                Err(err) => {
                    // The lock stays in the row; the reconciler or the
                    // session's end releases it.
                    tracing::warn!(worker = %id, cause = %err, "could not record the end of a power cycle");
                    crate::reconciler::ask(&act.shared);
                }
            }
            act.record.work = None;
            act.commands.settled(ActionKind::PowerCycle);
            act.offer_if_idle();
            act.publish();
            match act.pending_lease_end.take() {
                Some(reason) if act.record.state == WorkerState::Running => act.leave_running(reason),
                _ => done(),
            }
        }))
    }

    fn deregister(&mut self, caller: Caller, reply: Reply<Result<(), ActorError>>) -> Step {
        if self.record.work.is_some() {
            let _ = reply.send(Err(ActorError::Conflict(format!(
                "worker {} is being power-cycled; deregister it when that is over",
                self.id()
            ))));
            return done();
        }
        if !self.record.state.can_deregister() {
            let _ = reply.send(Err(ActorError::Conflict(format!(
                "worker {} is {}; only workers in maintenance or failed can be deregistered",
                self.id(),
                self.record.state
            ))));
            return done();
        }
        let (db, id, now, actor) = (self.shared.db.clone(), self.id(), self.shared.clock.now(), caller.actor());
        let work = async move { db.delete_worker(id, &actor, now).await };
        Box::pin(work.into_actor(self).map(move |result, act, ctx| match result {
            Ok(()) => {
                tracing::info!(worker = %id, "worker deregistered");
                tell(act.shared.matcher(), MatcherMsg::DeregisterWorker(id));
                act.shared.dir.remove_worker(id);
                let _ = reply.send(Ok(()));
                ctx.stop();
            }
            Err(err) => {
                let _ = reply.send(Err(err.into()));
            }
        }))
    }

    fn attach(&mut self, record: WorkerRecord, agent: Addr<AgentSession>, agent_name: String) -> Step {
        let caps_changed = Self::caps(&record) != Self::caps(&self.record) || record.groups != self.record.groups;
        // The row's facts are at most a minute old; memory has the latest.
        let (facts, facts_at) = (std::mem::take(&mut self.record.facts), self.record.facts_at);
        self.record = record;
        if facts_at > self.record.facts_at {
            (self.record.facts, self.record.facts_at) = (facts, facts_at);
        }
        self.agent = Some(agent);
        if caps_changed {
            tell(self.shared.matcher(), MatcherMsg::RegisterWorker(Self::spec(&self.record)));
        }
        self.publish();
        let actor = format!("agent:{agent_name}");
        match self.record.state {
            WorkerState::Failed => self.go(WorkerEvent::Recover, actor, "its agent registered again".to_string(), None),
            WorkerState::Prepare => {
                self.send_prepare();
                done()
            }
            WorkerState::Busy => {
                self.send(Action::Maintenance);
                done()
            }
            WorkerState::Running => {
                if let Some(lease) = &self.lease
                    && let Some((public_key, expires_at)) = &lease.public_key
                {
                    let action = Action::StartLease {
                        request: lease.request,
                        public_key: public_key.clone(),
                        expires_at: *expires_at,
                    };
                    self.send(action);
                }
                done()
            }
            WorkerState::Idle | WorkerState::Maintenance => done(),
        }
    }

    /// A heartbeat's facts: kept (in memory at once, in the row when they
    /// changed and [`FACTS_WRITE_INTERVAL`] passed, or the dimensions
    /// changed), then judged by the health rules. Changed dimensions are
    /// committed with a history row and handed to the matcher, which serves
    /// waiting requests that match the new caps at once.
    fn observed(&mut self, facts: Map<String, Value>, dimensions: Caps) -> Step {
        let now = self.shared.clock.now();
        self.record.last_seen = Some(now);
        let dimensions_changed = dimensions != self.record.dimensions;
        let facts_changed = facts != self.record.facts;
        let due =
            self.facts_written_at.is_none_or(|at| now.duration_since(at).unwrap_or_default() >= FACTS_WRITE_INTERVAL);
        if facts_changed || dimensions_changed {
            self.record.facts = facts.clone();
            self.record.facts_at = Some(now);
        }
        let write = dimensions_changed || (facts_changed && due);
        if !write {
            return self.judge(facts);
        }
        let before = std::mem::replace(&mut self.record.dimensions, dimensions.clone());
        if dimensions_changed {
            let change = corral_core::facts::describe_change(&before, &dimensions);
            tracing::info!(worker = %self.id(), change = %change, "worker dimensions changed");
            tell(self.shared.matcher(), MatcherMsg::UpdateWorkerCaps(Self::spec(&self.record)));
        }
        self.facts_written_at = Some(now);
        let history = dimensions_changed.then(|| {
            let agent = self.record.agent.clone();
            (
                format!("agent:{agent}"),
                format!("dimensions: {}", corral_core::facts::describe_change(&before, &dimensions)),
            )
        });
        let (db, id, stored) = (self.shared.db.clone(), self.id(), facts.clone());
        let work = async move {
            let history = history.as_ref().map(|(a, r)| (a.as_str(), r.as_str()));
            db.set_worker_facts(id, &stored, &dimensions, now, history).await
        };
        Box::pin(work.into_actor(self).then(move |result, act, _| {
            if let Err(err) = result {
                // Memory has them; the next change or interval writes them again.
                tracing::warn!(worker = %id, cause = %err, "could not store facts");
                act.facts_written_at = None;
            }
            act.judge(facts)
        }))
    }

    /// Applies the recovery rule (a hold set and lifted by the facts) and
    /// the health rules to a heartbeat's facts.
    fn judge(&mut self, facts: Map<String, Value>) -> Step {
        let recovery = corral_core::facts::recovery_reason(&facts, &self.shared.settings.health);
        if recovery.is_some() != self.record.recovery.is_some() {
            let actor = format!("agent:{}", self.record.agent);
            let hold = self.set_hold(Hold::Recovery, recovery, actor, None);
            let chained: Step = Box::pin(hold.then(move |(), act: &mut WorkerActor, _| act.health(facts)));
            return chained;
        }
        self.health(facts)
    }

    /// Applies the health rules to a heartbeat's facts.
    fn health(&mut self, facts: Map<String, Value>) -> Step {
        let verdict = health::evaluate(&facts, &self.shared.settings.health);
        let state = self.record.state;
        match verdict {
            Verdict::Failed(reason)
                if matches!(state, WorkerState::Idle | WorkerState::Prepare | WorkerState::Running) =>
            {
                self.failed_by_facts = true;
                self.go(WorkerEvent::Fail, "agent".to_string(), reason, None)
            }
            Verdict::Healthy if state == WorkerState::Failed && self.failed_by_facts && !facts.is_empty() => {
                self.failed_by_facts = false;
                self.go(WorkerEvent::Recover, "agent".to_string(), "agent reports it healthy".to_string(), None)
            }
            _ => {
                self.publish();
                done()
            }
        }
    }

    fn agent_lost(&mut self, session: SessionId, reason: String) -> Step {
        if self.record.session != Some(session) {
            return done();
        }
        self.agent = None;
        self.record.session = None;
        if self.record.work.take().is_some() {
            // Its lock went with the session (and `work` with it).
            tracing::info!(worker = %self.id(), "power cycle abandoned: the agent session ended");
            self.power_cycle_by = None;
            self.commands.settled(ActionKind::PowerCycle);
            let key = TimerKey::CommandTimeout(self.id(), ActionKind::PowerCycle);
            tell(self.shared.timekeeper(), TimerMsg::Unwatch { key });
        }
        let reason = format!("agent lost: {reason}");
        match self.record.state {
            WorkerState::Prepare | WorkerState::Idle | WorkerState::Running => {
                self.go(WorkerEvent::Fail, "reaper".to_string(), reason, None)
            }
            WorkerState::Busy => self.go(
                WorkerEvent::MaintenanceConfirmed,
                "reaper".to_string(),
                format!("{} ({reason}; maintenance assumed)", self.record.reason.clone().unwrap_or_default()),
                None,
            ),
            WorkerState::Failed | WorkerState::Maintenance => {
                self.forget_commands();
                self.publish();
                done()
            }
        }
    }

    fn leased(&mut self, request: RequestId, fence: FencingToken) -> Step {
        // The row already made core's binding move (the matcher committed
        // it); memory follows.
        let from = self.record.state;
        self.forget_commands();
        self.pending_lease_end = None;
        self.record.state = WorkerMove::LEASED.to;
        self.record.fence = fence;
        self.record.reason = None;
        self.record.state_since = self.shared.clock.now();
        self.record.last_used = Some(self.record.state_since);
        self.lease = Some(Lease { request, fence, public_key: None, started: false });
        self.publish();
        if let Some((early_request, early_fence, public_key, expires_at)) = self.early_key.take()
            && early_request == request
            && early_fence == fence
        {
            if let Some(lease) = self.lease.as_mut() {
                lease.public_key = Some((public_key.clone(), expires_at));
            }
            self.send(Action::StartLease { request, public_key, expires_at });
        }
        if from != WorkerMove::LEASED.from && from != WorkerMove::LEASED.to {
            tracing::warn!(worker = %self.id(), from = %from, "lease bound while not idle in memory");
        }
        if self.agent.is_none() {
            return self.go(
                WorkerEvent::Fail,
                "server".to_string(),
                "no agent session to install the lease key".to_string(),
                None,
            );
        }
        done()
    }

    fn lease_ended(&mut self, request: RequestId, fence: FencingToken, ended: LeaseEnd) -> Step {
        if !self.lease.as_ref().is_some_and(|l| l.request == request && l.fence == fence) {
            return done();
        }
        if self.record.state != WorkerMove::LEASE_ENDED.from {
            self.lease = None;
            return done();
        }
        self.lease = None;
        let LeaseEnd { reason, at, worker_prepared } = ended;
        if !worker_prepared && self.record.work.is_some() {
            // The end of the lease left the worker running (`work` is
            // set): it moves on when the power cycle is over.
            let why = format!("lease of request {request} ended ({reason}); revoking the key");
            self.pending_lease_end = Some(why);
            self.publish();
            return done();
        }
        if worker_prepared {
            // The row already made core's end-of-lease move (committed with
            // the lease's end); memory follows.
            let WorkerMove { from, to, .. } = WorkerMove::LEASE_ENDED;
            self.record.state = to;
            self.record.state_since = at;
            self.record.reason = None;
            tracing::info!(worker = %self.id(), from = %from, to = %to, reason = %reason, "worker state");
            return Box::pin(actix::fut::ready(()).map(move |_, act: &mut WorkerActor, ctx| {
                act.enter(to, &reason, ctx);
                act.publish();
            }));
        }
        self.leave_running(format!("lease of request {request} ended ({reason}); revoking the key"))
    }

    /// After its lease ended and the worker is still running: maintenance
    /// if it drains, else preparation.
    fn leave_running(&mut self, reason: String) -> Step {
        match self.record.drain.clone() {
            Some(drain) => self.go(WorkerEvent::AdminMaintenance, "server".to_string(), drain, None),
            None => self.go(WorkerEvent::LeaseEnded, "server".to_string(), reason, None),
        }
    }

    /// Re-reads the worker's row after memory and database disagreed (a
    /// binding was refused), repairing first what a crashed actor may have
    /// left: a live lease row on an idle worker is ended (its request is
    /// over) or handed to its request as lost.
    fn resync(&mut self) -> Step {
        let (db, id, now) = (self.shared.db.clone(), self.id(), self.shared.clock.now());
        let work = async move {
            let reason = "the worker was idle: a lease left by a crashed actor";
            let stale = db.end_stale_leases(id, now, "reconciler", reason).await?;
            Ok::<_, corral_db::DbError>((stale, db.load_worker(id).await?))
        };
        Box::pin(work.into_actor(self).map(move |result, act, ctx| match result {
            Ok((stale, record)) => {
                for (request, fence, ended) in stale {
                    tracing::warn!(worker = %id, request = %request, fence = %fence, ended, "repaired a stale live lease");
                    if !ended && let Some(addr) = act.shared.dir.request(request) {
                        let reason = format!("worker {id} was idle while the lease was live");
                        tell(&addr, RequestMsg::LeaseLost { fence, reason });
                    }
                }
                act.resynced(record, ctx);
            }
            Err(err) => {
                tracing::error!(worker = %id, cause = %err, "could not re-read worker");
                crate::reconciler::ask(&act.shared);
            }
        }))
    }

    fn resynced(&mut self, record: Option<WorkerRecord>, ctx: &mut Context<Self>) {
        let id = self.id();
        let act = self;
        match record {
            Some(record) => {
                let was = act.record.state;
                act.record = record;
                if act.record.state != was {
                    act.forget_commands();
                }
                if act.record.state != WorkerState::Running {
                    act.pending_lease_end = None;
                }
                if act.record.work.is_some() && !act.commands.has(ActionKind::PowerCycle) {
                    // A power cycle whose end did not commit (or that no
                    // command of ours runs): end it now, or it would hold
                    // the worker until its agent session ends.
                    let step = act
                        .end_power_cycle("server".to_string(), "outcome unknown: its end was not recorded".to_string());
                    ctx.wait(step);
                }
                match act.record.state {
                    WorkerState::Idle => act.offer_if_idle(),
                    // The end of its lease moved it (our own transition lost
                    // the race): prepare it, as entering the state would.
                    WorkerState::Prepare if was != WorkerState::Prepare => {
                        act.enter(WorkerState::Prepare, "its lease ended", ctx);
                    }
                    _ => {}
                }
                act.publish();
            }
            None => tracing::warn!(worker = %id, "worker row gone"),
        }
    }

    fn step(&mut self, msg: WorkerMsg) -> Step {
        match msg {
            #[cfg(feature = "fault-injection")]
            WorkerMsg::Panic => panic!("fault injection: worker {} panics", self.id()),
            WorkerMsg::SetState { caller, change, reply } => self.set_state(caller, change, reply),
            WorkerMsg::SetGroups { caller, groups, reply } => self.set_groups(caller, groups, reply),
            WorkerMsg::Deregister { caller, reply } => self.deregister(caller, reply),
            WorkerMsg::Attach { record, agent, agent_name } => self.attach(*record, agent, agent_name),
            WorkerMsg::Result { action, result, tag, agent_name } => {
                self.command_result(action, result, tag, agent_name)
            }
            WorkerMsg::Observed { facts, dimensions } => self.observed(facts, dimensions),
            WorkerMsg::SetNote { caller, note, reply } => self.set_note(caller, note, reply),
            WorkerMsg::PowerCycle { caller, reply } => self.power_cycle(caller, reply),
            WorkerMsg::SetQuarantine { caller, reason, reply } => {
                self.set_hold(Hold::Quarantine, reason, caller.actor(), Some(reply))
            }
            WorkerMsg::AgentLost { session, reason } => self.agent_lost(session, reason),
            WorkerMsg::Leased { request, fence } => self.leased(request, fence),
            WorkerMsg::StartLease { request, fence, public_key, expires_at } => {
                match self.lease.as_mut() {
                    Some(lease) if lease.request == request && lease.fence == fence => {
                        lease.public_key = Some((public_key.clone(), expires_at));
                        self.send(Action::StartLease { request, public_key, expires_at });
                    }
                    // Newer than what we know: the lease is on its way.
                    _ if fence > self.record.fence => self.early_key = Some((request, fence, public_key, expires_at)),
                    _ => {
                        tracing::warn!(worker = %self.id(), request = %request, "key for a lease this worker does not hold")
                    }
                }
                done()
            }
            WorkerMsg::ExtendLease { request, fence, expires_at } => {
                match self.lease.as_mut() {
                    Some(lease) if lease.request == request && lease.fence == fence => {
                        if let Some((_, key_expiry)) = lease.public_key.as_mut() {
                            *key_expiry = expires_at;
                        }
                        self.send(Action::ExtendLease { request, expires_at });
                    }
                    _ => tracing::debug!(worker = %self.id(), request = %request, "no such lease to extend"),
                }
                done()
            }
            WorkerMsg::LeaseEnded { request, fence, ended } => self.lease_ended(request, fence, ended),
            WorkerMsg::CommandTimedOut { kind } => {
                let timeout = self.timeout(kind);
                if self.commands.timed_out(kind, self.shared.clock.now(), timeout) {
                    let after = corral_core::time::format_duration(timeout);
                    self.command_failed(kind, format!("got no answer within {after}"))
                } else {
                    done()
                }
            }
            WorkerMsg::RetryCommand { kind } => {
                if !self.wants(kind) {
                    self.commands.settled(kind);
                } else if let Some((action, attempt)) = self.commands.due(kind) {
                    tracing::info!(worker = %self.id(), command = %kind, attempt, "sending a command again");
                    self.attempt(action, attempt);
                }
                done()
            }
            WorkerMsg::BackoffOver => {
                // Try to heal: power cycle, then a health check whose
                // success brings the worker back through preparation.
                if self.record.state == WorkerState::Failed && self.agent.is_some() {
                    self.send(Action::PowerCycle);
                    self.send(Action::HealthCheck);
                }
                done()
            }
            WorkerMsg::Resync => self.resync(),
        }
    }
}

impl Actor for WorkerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(64);
        self.publish();
        if self.record.work.is_some() {
            // Its answer went to the previous incarnation: say so, and let
            // the worker go on.
            let step = self.end_power_cycle(
                "server".to_string(),
                "outcome unknown: the server restarted while it ran".to_string(),
            );
            ctx.wait(step);
        }
        // After a restart: resume what the state was waiting for.
        match self.record.state {
            WorkerState::Running if self.lease.is_none() => {
                let step = self.go(
                    WorkerEvent::LeaseEnded,
                    "server".to_string(),
                    "no live lease after a server restart".to_string(),
                    None,
                );
                ctx.wait(step);
            }
            WorkerState::Prepare => self.send_prepare(),
            // Without an agent the maintenance command times out, and the
            // worker is assumed in maintenance after its retries.
            WorkerState::Busy => self.send_when_due(Action::Maintenance),
            // Resume healing once the backoff of what failed is over.
            WorkerState::Failed => {
                if let Some(at) = self.backoff.iter().map(|b| b.retry_after).max() {
                    tell(self.shared.timekeeper(), TimerMsg::Watch { key: TimerKey::BackoffOver(self.id()), at });
                }
            }
            _ => {}
        }
    }
}

impl Handler<WorkerMsg> for WorkerActor {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, msg: WorkerMsg, ctx: &mut Self::Context) -> Self::Result {
        let span = tracing::debug_span!("worker_actor", worker = %self.id());
        let _guard = span.enter();
        let (shared, entity) = (self.shared.clone(), crate::supervise::Entity::Worker(self.id()));
        AtomicResponse::new(crate::supervise::guarded(&shared, entity, ctx, || self.step(msg)).unwrap_or_else(done))
    }
}

// ----- use cases driven through the worker actors --------------------------

impl Corral {
    /// One page of a worker's history, newest first, for a caller who may
    /// see the worker (the rule of `GET /v1/workers`); any other caller is
    /// told it does not exist.
    pub async fn worker_history(
        &self,
        caller: &Caller,
        id: WorkerId,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<(i64, corral_core::records::HistoryRecord)>, ActorError> {
        self.worker(caller, id)?;
        Ok(self.shared().db.worker_history_page(id, before, limit).await?)
    }

    /// The workers `caller` may see that `keep` selects, ordered by UUID,
    /// from memory (no database read).
    pub fn workers(&self, caller: &Caller, mut keep: impl FnMut(&Worker) -> bool) -> Vec<Worker> {
        self.shared()
            .dir
            .views(|v| caller.may_see_worker(&v.worker.groups) && keep(&v.worker))
            .into_iter()
            .map(|v| v.worker)
            .collect()
    }

    /// The worker `id` if `caller` may see it; 404 otherwise, as for a
    /// worker that does not exist.
    pub fn worker(&self, caller: &Caller, id: WorkerId) -> Result<Worker, ActorError> {
        match self.worker_view(id) {
            Ok(worker) if caller.may_see_worker(&worker.groups) => Ok(worker),
            _ => Err(ActorError::NotFound(format!("worker {id} not found"))),
        }
    }

    /// The worker as callers see it, from the directory.
    fn worker_view(&self, id: WorkerId) -> Result<corral_proto::workers::Worker, ActorError> {
        self.shared()
            .dir
            .view(id)
            .map(|v| v.worker)
            .ok_or_else(|| ActorError::NotFound(format!("worker {id} not found")))
    }

    fn worker_addr(&self, id: WorkerId) -> Result<Addr<WorkerActor>, ActorError> {
        let shared = self.shared();
        shared.dir.worker(id).ok_or_else(|| match shared.dir.view(id) {
            // Its actor crashed too often (see `supervise`).
            Some(_) => ActorError::Unavailable(format!("worker {id} is stopped after repeated crashes")),
            None => ActorError::NotFound(format!("worker {id} not found")),
        })
    }

    pub async fn set_worker_state(
        &self,
        caller: &Caller,
        id: WorkerId,
        change: StateChange,
    ) -> Result<WorkerRecord, ActorError> {
        let addr = self.worker_addr(id)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        addr.send(WorkerMsg::SetState { caller: caller.clone(), change, reply: tx }).await?;
        rx.await?
    }

    pub async fn set_worker_groups(
        &self,
        caller: &Caller,
        id: WorkerId,
        groups: Groups,
    ) -> Result<WorkerRecord, ActorError> {
        let addr = self.worker_addr(id)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        addr.send(WorkerMsg::SetGroups { caller: caller.clone(), groups, reply: tx }).await?;
        rx.await?
    }

    /// An admin sets (a non-empty note) or clears (None or blank) the
    /// worker's note; a note past the bounds of `corral_core::facts` is a
    /// bad request.
    pub async fn set_worker_note(
        &self,
        caller: &Caller,
        id: WorkerId,
        note: Option<&str>,
    ) -> Result<corral_proto::workers::Worker, ActorError> {
        if !caller.is_admin() {
            return Err(ActorError::Forbidden("this needs an admin token".to_string()));
        }
        let note = corral_core::facts::checked_note(note).map_err(|e| ActorError::BadRequest(e.to_string()))?;
        let addr = self.worker_addr(id)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        addr.send(WorkerMsg::SetNote { caller: caller.clone(), note, reply: tx }).await?;
        rx.await??;
        self.worker_view(id)
    }

    /// An admin quarantines a worker (`Some(reason)`, 1 to 1024 bytes
    /// without control characters) or lifts its quarantine (`None`).
    pub async fn set_worker_quarantine(
        &self,
        caller: &Caller,
        id: WorkerId,
        reason: Option<&str>,
    ) -> Result<corral_proto::workers::Worker, ActorError> {
        if !caller.is_admin() {
            return Err(ActorError::Forbidden("this needs an admin token".to_string()));
        }
        let reason = match reason {
            None => None,
            Some(text) => {
                let checked = corral_core::facts::checked_note(Some(text))
                    .map_err(|e| ActorError::BadRequest(format!("quarantine reason: {e}")))?;
                Some(checked.ok_or_else(|| ActorError::BadRequest("a quarantine needs a reason".to_string()))?)
            }
        };
        let addr = self.worker_addr(id)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        addr.send(WorkerMsg::SetQuarantine { caller: caller.clone(), reason, reply: tx }).await?;
        rx.await??;
        self.worker_view(id)
    }

    /// `POST /v1/workers/{uuid}/power-cycle`: an admin, or the holder of
    /// the worker's running lease, has its agent run the `power_cycle`
    /// hook. A caller who may not see the worker is told it does not exist
    /// (the rule of `GET /v1/workers`); one who may see it but neither is
    /// an admin nor holds its lease is forbidden. The answer is the worker
    /// with `work: power_cycle`; the outcome goes to its history.
    pub async fn power_cycle_worker(
        &self,
        caller: &Caller,
        id: WorkerId,
    ) -> Result<corral_proto::workers::Worker, ActorError> {
        let view = match self.shared().dir.view(id) {
            Some(view) if caller.may_see_worker(&view.worker.groups) => view.worker,
            _ => return Err(ActorError::NotFound(format!("worker {id} not found"))),
        };
        if !caller.is_admin() {
            let holds = match view.request {
                Some(request) => self.shared().db.get_request(request).await?.is_some_and(|r| caller.owns(&r)),
                None => false,
            };
            if !holds {
                return Err(ActorError::Forbidden(format!(
                    "only an admin or the holder of its lease may power-cycle worker {id}"
                )));
            }
        }
        let addr = self.worker_addr(id)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        addr.send(WorkerMsg::PowerCycle { caller: caller.clone(), reply: tx }).await?;
        rx.await??;
        self.worker_view(id)
    }

    pub async fn deregister_worker(&self, caller: &Caller, id: WorkerId) -> Result<(), ActorError> {
        let addr = self.worker_addr(id)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        addr.send(WorkerMsg::Deregister { caller: caller.clone(), reply: tx }).await?;
        rx.await?
    }
}
