//! The worker actor: one per registered worker. It is the only writer of
//! its worker's row after registration; it turns agent reports, admin
//! requests, matcher bindings and lease ends into state transitions (SPEC
//! §2), and sends its agent the commands each state needs.

use std::sync::Arc;
use std::time::SystemTime;

use actix::prelude::*;
use corral_core::health::{self, Verdict};
use corral_core::matcher::WorkerSpec;
use corral_core::worker::WorkerEvent;
use corral_core::{FencingToken, Groups, RequestId, SessionId, WorkerId, WorkerState};
use corral_db::{WorkerRecord, WorkerTransition};
use corral_proto::agent::{Action, CommandResult};
use corral_proto::workers::{AdminState, StateChange, Worker};
use serde_json::{Map, Value};

use crate::agent::{AgentMsg, AgentSession};
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
    /// The agent's result of a command sent to this worker.
    Result {
        action: Action,
        result: CommandResult,
        agent_name: String,
    },
    /// Facts from a heartbeat.
    Observed {
        facts: Map<String, Value>,
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
    PrepareTimedOut,
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
    /// Preparation must not be tried before this (failure backoff).
    prepare_retry_after: Option<SystemTime>,
    /// A key to install that arrived before the lease it belongs to (only
    /// when a full mailbox reordered the two messages).
    early_key: Option<(RequestId, FencingToken, String, SystemTime)>,
}

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
        prepare_retry_after: Option<SystemTime>,
    ) -> WorkerActor {
        WorkerActor {
            shared,
            record,
            agent,
            lease: lease.map(|(request, fence, started)| Lease { request, fence, public_key: None, started }),
            failed_by_facts: false,
            prepare_retry_after,
            early_key: None,
        }
    }

    pub(crate) fn spec(record: &WorkerRecord) -> WorkerSpec {
        WorkerSpec { id: record.uuid, caps: record.caps.clone(), groups: record.groups.clone() }
    }

    fn id(&self) -> WorkerId {
        self.record.uuid
    }

    pub(crate) fn view(record: &WorkerRecord, request: Option<RequestId>) -> WorkerView {
        WorkerView {
            worker: Worker {
                uuid: record.uuid,
                state: record.state,
                caps: record.caps.clone(),
                groups: record.groups.clone(),
                agent: record.agent.clone(),
                ssh_addr: record.ssh_addr.clone(),
                reason: record.reason.clone(),
                state_since: record.state_since,
                last_seen: record.last_seen,
                request,
            },
            session: record.session,
            drain: record.drain.clone(),
        }
    }

    fn publish(&self) {
        self.shared.dir.publish(Self::view(&self.record, self.lease.as_ref().map(|l| l.request)));
    }

    fn send(&self, action: Action) {
        match &self.agent {
            Some(agent) => {
                tell(agent, AgentMsg::Send { worker: self.id(), fence: self.record.fence, action });
            }
            None => tracing::debug!(worker = %self.id(), ?action, "no agent session; command not sent"),
        }
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
        if state != WorkerState::Prepare {
            tell(self.shared.timekeeper(), TimerMsg::Unwatch { key: TimerKey::PrepareTimeout(id) });
        }
        match state {
            WorkerState::Prepare => {
                self.lease = None;
                self.send_prepare();
            }
            WorkerState::Idle => {
                self.failed_by_facts = false;
                // A successful preparation ends the backoff of failed ones.
                if self.prepare_retry_after.take().is_some() {
                    let db = self.shared.db.clone();
                    actix::spawn(async move {
                        if let Err(err) = db.clear_backoff(id, "prepare").await {
                            tracing::warn!(worker = %id, cause = %err, "could not clear backoff");
                        }
                    });
                }
                let last_used = self.record.last_used.unwrap_or(SystemTime::UNIX_EPOCH);
                tell(self.shared.matcher(), MatcherMsg::WorkerIdle { worker: id, last_used });
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
                        self.send(Action::Maintenance);
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
        let now = self.shared.clock.now();
        if let Some(until) = self.prepare_retry_after.filter(|until| *until > now) {
            tell(self.shared.timekeeper(), TimerMsg::Watch { key: TimerKey::BackoffOver(self.id()), at: until });
            return;
        }
        self.send(Action::Prepare);
        let at = now + self.shared.settings.prepare_timeout;
        tell(self.shared.timekeeper(), TimerMsg::Watch { key: TimerKey::PrepareTimeout(self.id()), at });
    }

    fn prepare_failed(&mut self, reason: String) -> Step {
        let (db, id, now) = (self.shared.db.clone(), self.id(), self.shared.clock.now());
        let (base, cap) = (self.shared.settings.backoff_base, self.shared.settings.backoff_cap);
        let error = reason.clone();
        let step = self.go(WorkerEvent::PrepareFailed, "server".to_string(), reason, None);
        let backoff = async move { db.record_backoff(id, "prepare", &error, now, base, cap).await };
        Box::pin(step.then(move |_, act, _| {
            backoff.into_actor(act).map(move |result, act, _| match result {
                Ok(until) => {
                    act.prepare_retry_after = Some(until);
                    tell(act.shared.timekeeper(), TimerMsg::Watch { key: TimerKey::BackoffOver(id), at: until });
                }
                Err(err) => tracing::warn!(worker = %id, cause = %err, "could not record backoff"),
            })
        }))
    }

    fn command_result(&mut self, action: Action, result: CommandResult, agent_name: String) -> Step {
        if result.fence != self.record.fence {
            tracing::debug!(worker = %self.id(), fence = %result.fence, current = %self.record.fence, "stale result ignored");
            return done();
        }
        let actor = format!("agent:{agent_name}");
        let state = self.record.state;
        match action {
            Action::Prepare if state == WorkerState::Prepare => {
                if result.ok {
                    self.go(WorkerEvent::Prepared, actor, "preparation confirmed by the agent".to_string(), None)
                } else {
                    self.prepare_failed(format!("preparation failed: {}", result.message))
                }
            }
            Action::StartLease { request, .. } => {
                let Some(lease) = self.lease.as_mut().filter(|l| l.request == request && state == WorkerState::Running)
                else {
                    return done();
                };
                if result.ok {
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
                } else {
                    self.go(
                        WorkerEvent::Fail,
                        actor,
                        format!("could not install the lease key: {}", result.message),
                        None,
                    )
                }
            }
            Action::Maintenance if state == WorkerState::Busy => {
                if result.ok {
                    let reason = self.record.reason.clone().unwrap_or_else(|| "maintenance".to_string());
                    self.go(WorkerEvent::MaintenanceConfirmed, actor, reason, None)
                } else {
                    tracing::warn!(worker = %self.id(), message = %result.message, "maintenance hook failed");
                    done()
                }
            }
            Action::HealthCheck => match (result.ok, state) {
                (true, WorkerState::Failed) => {
                    self.go(WorkerEvent::Recover, actor, "health check passed".to_string(), None)
                }
                (false, WorkerState::Idle | WorkerState::Prepare | WorkerState::Running) => {
                    self.go(WorkerEvent::Fail, actor, format!("health check failed: {}", result.message), None)
                }
                _ => done(),
            },
            Action::PowerCycle => {
                if !result.ok {
                    tracing::warn!(worker = %self.id(), message = %result.message, "power cycle failed");
                }
                done()
            }
            Action::ExtendLease { request, .. } => {
                if !result.ok {
                    // The key's expiry-time may end the lease holder's
                    // access before the lease itself.
                    tracing::warn!(worker = %self.id(), request = %request, message = %result.message, "could not renew the lease key's expiry");
                }
                done()
            }
            _ => done(),
        }
    }

    fn set_state(&mut self, caller: Caller, change: StateChange, reply: Answer) -> Step {
        let reason = change.reason.clone().filter(|r| !r.trim().is_empty());
        let actor = caller.actor();
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

    fn deregister(&mut self, caller: Caller, reply: Reply<Result<(), ActorError>>) -> Step {
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
        let caps_changed = record.caps != self.record.caps;
        self.record = record;
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
                    let (public_key, expires_at) = (public_key.clone(), *expires_at);
                    self.send(Action::StartLease { request: lease.request, public_key, expires_at });
                }
                done()
            }
            WorkerState::Idle | WorkerState::Maintenance => done(),
        }
    }

    fn observed(&mut self, facts: Map<String, Value>) -> Step {
        self.record.last_seen = Some(self.shared.clock.now());
        let verdict = health::evaluate(&facts);
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
                self.publish();
                done()
            }
        }
    }

    fn leased(&mut self, request: RequestId, fence: FencingToken) -> Step {
        // The row already says running (the matcher committed it).
        let from = self.record.state;
        self.record.state = WorkerState::Running;
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
        if from != WorkerState::Idle && from != WorkerState::Running {
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
        if self.record.state != WorkerState::Running {
            self.lease = None;
            return done();
        }
        self.lease = None;
        let LeaseEnd { reason, at, worker_prepared } = ended;
        if worker_prepared {
            // The row already says prepare (committed with the lease's end).
            self.record.state = WorkerState::Prepare;
            self.record.state_since = at;
            self.record.reason = None;
            tracing::info!(worker = %self.id(), from = %WorkerState::Running, to = %WorkerState::Prepare, reason = %reason, "worker state");
            return Box::pin(actix::fut::ready(()).map(move |_, act: &mut WorkerActor, ctx| {
                act.enter(WorkerState::Prepare, &reason, ctx);
                act.publish();
            }));
        }
        match self.record.drain.clone() {
            Some(drain) => self.go(WorkerEvent::AdminMaintenance, "server".to_string(), drain, None),
            None => self.go(
                WorkerEvent::LeaseEnded,
                "server".to_string(),
                format!("lease of request {request} ended ({reason}); revoking the key"),
                None,
            ),
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
                match act.record.state {
                    WorkerState::Idle => {
                        let last_used = act.record.last_used.unwrap_or(SystemTime::UNIX_EPOCH);
                        tell(act.shared.matcher(), MatcherMsg::WorkerIdle { worker: id, last_used });
                    }
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
            WorkerMsg::Result { action, result, agent_name } => self.command_result(action, result, agent_name),
            WorkerMsg::Observed { facts } => self.observed(facts),
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
            WorkerMsg::PrepareTimedOut => {
                if self.record.state == WorkerState::Prepare {
                    let after = corral_core::time::format_duration(self.shared.settings.prepare_timeout);
                    self.prepare_failed(format!("preparation timed out after {after}"))
                } else {
                    done()
                }
            }
            WorkerMsg::BackoffOver => {
                match self.record.state {
                    WorkerState::Prepare => self.send_prepare(),
                    // Try to heal: power cycle, then a health check whose
                    // success brings the worker back through preparation.
                    WorkerState::Failed if self.agent.is_some() => {
                        self.send(Action::PowerCycle);
                        self.send(Action::HealthCheck);
                    }
                    _ => {}
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
            WorkerState::Busy if self.agent.is_some() => self.send(Action::Maintenance),
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

    pub async fn deregister_worker(&self, caller: &Caller, id: WorkerId) -> Result<(), ActorError> {
        let addr = self.worker_addr(id)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        addr.send(WorkerMsg::Deregister { caller: caller.clone(), reply: tx }).await?;
        rx.await?
    }
}
