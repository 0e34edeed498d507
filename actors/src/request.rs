//! The request actor: one per live (waiting or in-progress) request.
//!
//! While the request is unbound it owns its row (update, cancel, timeout,
//! invalid). Once the matcher has bound it to a worker it makes the lease
//! key, asks the worker actor to have it installed, opens the tunnel when
//! the agent confirms, and ends the lease (close, expiry, loss of the
//! worker). It stops itself when the request reaches a terminal state.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix::prelude::*;
use corral_core::lease::{ProlongError, TotalLeaseLimit};
use corral_core::matcher::RequestSpec;
use corral_core::records::{HistoryRecord, RequestFilter, RequestRecord};
use corral_core::request::{RequestEvent, Schedule};
use corral_core::ssh::shell_quote;
use corral_core::{FencingToken, Priority, RequestId, RequestState, WorkerId};
use corral_db::{LeaseRecord, StartLease};
use corral_proto::requests::AccessDetails;
use tracing::Instrument;

use crate::keys::{self, LeaseKey};
use crate::matcher::{MatcherMsg, announce_binding};
use crate::owners::Refusal;
use crate::settings::KeyKind;
use crate::timekeeper::{TimerKey, TimerMsg};
use crate::worker::{LeaseEnd, WorkerMsg};
use crate::{ActorError, Caller, Corral, Reply, Shared, tell};

/// How to reach the leased worker's SSH server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerAccess {
    pub ssh_addr: String,
    pub ssh_user: String,
    pub host_key: Option<String>,
}

/// Answer to an acquire: the details now, or a channel that gets them
/// when the lease starts.
#[derive(Debug)]
pub enum Acquired {
    Now(AccessDetails),
    Later(tokio::sync::oneshot::Receiver<Result<AccessDetails, ActorError>>),
}

/// Changes asked for by `PATCH`.
#[derive(Clone, Debug, Default)]
pub struct RequestChanges {
    pub priority: Option<Priority>,
    pub valid_after: Option<SystemTime>,
    pub deadline: Option<SystemTime>,
}

#[derive(Message)]
#[rtype(result = "()")]
pub enum RequestMsg {
    /// Test-only fault injection: the handler panics.
    #[cfg(feature = "fault-injection")]
    Panic,
    Patch {
        caller: Caller,
        changes: RequestChanges,
        reply: Reply<Result<RequestRecord, ActorError>>,
    },
    Close {
        caller: Caller,
        reply: Reply<Result<RequestRecord, ActorError>>,
    },
    /// The owner is being deleted: cancel (waiting) or end (in progress)
    /// the request, whoever asks, with this actor and reason in history.
    OwnerDeleted {
        actor: String,
        reason: String,
        reply: Reply<Result<RequestRecord, ActorError>>,
    },
    Acquire {
        caller: Caller,
        reply: Reply<Result<Acquired, ActorError>>,
    },
    Prolong {
        caller: Caller,
        by: Option<Duration>,
        reply: Reply<Result<RequestRecord, ActorError>>,
    },
    /// The matcher committed a binding to `worker`.
    Bound {
        worker: WorkerId,
        fence: FencingToken,
    },
    /// The agent installed the lease key.
    KeyInstalled {
        fence: FencingToken,
        access: WorkerAccess,
        actor: String,
    },
    /// The worker failed, went to maintenance, lost its agent or could
    /// not install the key.
    LeaseLost {
        fence: FencingToken,
        reason: String,
    },
    LeaseExpired,
    /// The deadline passed while waiting (the matcher already dropped it).
    TimedOut,
    /// No registered worker can serve it any more.
    Invalidated {
        reason: String,
    },
    /// The matcher's binding was refused: re-read the row and queue again.
    Requeue,
    /// The reconciler compares what the actor believes with the row.
    Inspect {
        reply: Reply<RequestView>,
    },
}

/// What a request actor believes of its request ([`RequestMsg::Inspect`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestView {
    pub state: RequestState,
    /// Its lease's fencing token and whether the lease started.
    pub lease: Option<(FencingToken, bool)>,
}

/// A close waiting for the binding in progress: who closed the request,
/// why, and whom to answer.
struct ParkedClose {
    actor: String,
    reason: String,
    reply: Reply<Result<RequestRecord, ActorError>>,
}

#[derive(Debug)]
struct Binding {
    worker: WorkerId,
    fence: FencingToken,
    key: Option<LeaseKey>,
    /// The expiry the key was sent with (its `expiry-time` on the worker).
    key_expires_at: Option<SystemTime>,
    /// When the lease started (the agent installed the key); `None` while
    /// the key is being installed.
    started_at: Option<SystemTime>,
    tunnel_port: Option<u16>,
    access: Option<WorkerAccess>,
}

pub struct RequestActor {
    shared: Arc<Shared>,
    record: RequestRecord,
    binding: Option<Binding>,
    waiters: Vec<Reply<Result<AccessDetails, ActorError>>>,
    /// Closes that arrived while the matcher was binding the request.
    parked_closes: Vec<ParkedClose>,
    /// It holds one of its owner's waiting slots ([`crate::owners`]).
    counts_waiting: bool,
}

type Step = ResponseActFuture<RequestActor, ()>;

fn done() -> Step {
    Box::pin(actix::fut::ready(()))
}

fn not_found(id: RequestId) -> ActorError {
    ActorError::NotFound(format!("request {id} not found"))
}

impl RequestActor {
    /// A submitted request; it takes over the waiting slot its submission
    /// reserved.
    pub(crate) fn new(shared: Arc<Shared>, record: RequestRecord) -> RequestActor {
        RequestActor {
            shared,
            record,
            binding: None,
            waiters: Vec::new(),
            parked_closes: Vec::new(),
            counts_waiting: true,
        }
    }

    /// Rebuilt after a restart with its lease, if it has one.
    pub(crate) fn restore(
        shared: Arc<Shared>,
        record: RequestRecord,
        lease: Option<LeaseRecord>,
        access: Option<WorkerAccess>,
    ) -> RequestActor {
        let binding = lease.map(|lease| Binding {
            worker: lease.worker,
            fence: lease.fence,
            key: lease.public_key.map(|public| LeaseKey {
                key_type: lease.key_type.unwrap_or_default(),
                public_openssh: public,
                private_openssh: lease.private_key,
            }),
            key_expires_at: None,
            started_at: lease.started_at,
            tunnel_port: lease.tunnel_port,
            access,
        });
        let counts_waiting = record.state == RequestState::Waiting;
        if counts_waiting {
            shared.owners.count_waiting(record.owner_id);
        }
        RequestActor { shared, record, binding, waiters: Vec::new(), parked_closes: Vec::new(), counts_waiting }
    }

    /// The request no longer waits: its owner's slot is free.
    fn leave_waiting(&mut self) {
        if std::mem::take(&mut self.counts_waiting) {
            self.shared.owners.release_waiting(self.record.owner_id);
        }
    }

    pub(crate) fn spec(record: &RequestRecord) -> RequestSpec {
        RequestSpec {
            id: record.id,
            priority: record.priority,
            caps: record.caps.clone(),
            groups: record.owner_groups.clone(),
            valid_after: record.valid_after,
            deadline: record.deadline,
        }
    }

    fn id(&self) -> RequestId {
        self.record.id
    }

    fn may_act(&self, caller: &Caller) -> bool {
        caller.may_read_request_of(self.record.owner_id)
    }

    fn access_details(&self) -> Option<AccessDetails> {
        let binding = self.binding.as_ref()?;
        binding.started_at?;
        let access = binding.access.as_ref()?;
        let port = binding.tunnel_port?;
        let host = self.shared.settings.public_host.clone();
        Some(AccessDetails {
            request_id: self.id(),
            worker: binding.worker,
            ssh_command: format!(
                "ssh -p {port} -i {key} -o IdentitiesOnly=yes {destination}",
                port = shell_quote(&port.to_string()),
                key = shell_quote(&format!("corral-lease-{}.key", self.id())),
                destination = shell_quote(&format!("{}@{host}", access.ssh_user)),
            ),
            host,
            port,
            username: access.ssh_user.clone(),
            private_key: binding.key.as_ref().and_then(|k| k.private_openssh.clone()),
            host_key: access.host_key.clone(),
            expires_at: self.record.lease_expires_at?,
            fence: binding.fence,
        })
    }

    /// The request reached a terminal state: answer everyone and stop.
    fn finish(&mut self, record: RequestRecord, ctx: &mut Context<Self>) {
        tracing::info!(request = %record.id, state = %record.state, reason = record.reason.as_deref().unwrap_or(""), "request ended");
        self.record = record;
        self.leave_waiting();
        self.shared.observer.request_ended(self.record.state);
        if let Some(binding) = &self.binding {
            self.shared.tunnels.close(self.record.id);
            if let Some(started_at) = binding.started_at {
                self.shared.observer.lease_length(crate::observe::between(started_at, self.shared.clock.now()));
                tell(self.shared.timekeeper(), TimerMsg::Unwatch { key: TimerKey::LeaseExpiry(self.record.id) });
            }
        }
        for waiter in self.waiters.drain(..) {
            let _ =
                waiter.send(Err(ActorError::Conflict(format!("request {} is {}", self.record.id, self.record.state))));
        }
        for ParkedClose { reply, .. } in self.parked_closes.drain(..) {
            let _ = reply.send(Ok(self.record.clone()));
        }
        self.shared.dir.remove_request(self.record.id);
        ctx.stop();
    }

    fn tell_worker(&self, worker: WorkerId, msg: WorkerMsg) {
        match self.shared.dir.worker(worker) {
            Some(addr) => tell(&addr, msg),
            None => tracing::warn!(request = %self.id(), worker = %worker, "worker actor gone"),
        }
    }

    // ----- waiting, unbound ----------------------------------------------

    fn close_unbound(
        &mut self,
        actor: String,
        reason: String,
        reply: Reply<Result<RequestRecord, ActorError>>,
    ) -> Step {
        let to = match self.record.state.apply(RequestEvent::Cancel) {
            Ok(to) => to,
            Err(illegal) => {
                let _ = reply.send(Err(ActorError::Conflict(illegal.to_string())));
                return done();
            }
        };
        let (db, matcher, now, id) =
            (self.shared.db.clone(), self.shared.matcher().clone(), self.shared.clock.now(), self.id());
        let spec = Self::spec(&self.record);
        let (actor_later, reason_later) = (actor.clone(), reason.clone());
        let work = async move {
            let (tx, rx) = tokio::sync::oneshot::channel();
            matcher.send(MatcherMsg::Withdraw { request: id, reply: tx }).await?;
            if !rx.await? {
                return Ok(None);
            }
            match db.request_transition(id, RequestState::Waiting, to, now, &actor, &reason).await {
                Ok(record) => Ok(Some(record)),
                Err(err) => {
                    tell(&matcher, MatcherMsg::AddRequest(spec));
                    Err(ActorError::from(err))
                }
            }
        };
        Box::pin(work.into_actor(self).map(move |result, act, ctx| match result {
            Ok(Some(record)) => {
                let _ = reply.send(Ok(record.clone()));
                act.finish(record, ctx);
            }
            // Being bound right now: close when the binding arrives.
            Ok(None) => act.parked_closes.push(ParkedClose { actor: actor_later, reason: reason_later, reply }),
            Err(err) => {
                crate::reconciler::ask(&act.shared);
                let _ = reply.send(Err(err));
            }
        }))
    }

    fn patch(
        &mut self,
        caller: Caller,
        changes: RequestChanges,
        reply: Reply<Result<RequestRecord, ActorError>>,
    ) -> Step {
        if self.record.state != RequestState::Waiting {
            let _ = reply.send(Err(ActorError::Conflict(format!(
                "only waiting requests can be updated; request {} is {}",
                self.id(),
                self.record.state
            ))));
            return done();
        }
        if self.binding.is_some() {
            let _ = reply.send(Err(ActorError::Conflict(format!(
                "request {} is being leased and can no longer be updated",
                self.id()
            ))));
            return done();
        }
        let now = self.shared.clock.now();
        let current =
            Schedule { valid_after: self.record.valid_after, deadline: self.record.deadline, lease: self.record.lease };
        let schedule = match current.updated(now, changes.valid_after, changes.deadline) {
            Ok(schedule) => schedule,
            Err(err) => {
                let _ = reply.send(Err(ActorError::BadRequest(err.to_string())));
                return done();
            }
        };
        let priority = changes.priority.unwrap_or(self.record.priority);
        let (db, matcher, id) = (self.shared.db.clone(), self.shared.matcher().clone(), self.id());
        let old_spec = Self::spec(&self.record);
        let actor = caller.actor();
        let work = async move {
            let (tx, rx) = tokio::sync::oneshot::channel();
            matcher.send(MatcherMsg::Withdraw { request: id, reply: tx }).await?;
            if !rx.await? {
                return Err(ActorError::Conflict(format!("request {id} is being matched to a worker right now")));
            }
            match db.update_request(id, priority, schedule.valid_after, schedule.deadline, now, &actor).await {
                Ok(record) => {
                    tell(&matcher, MatcherMsg::AddRequest(RequestActor::spec(&record)));
                    Ok(record)
                }
                Err(err) => {
                    tell(&matcher, MatcherMsg::AddRequest(old_spec));
                    Err(err.into())
                }
            }
        };
        Box::pin(work.into_actor(self).map(move |result, act, _| {
            if let Ok(record) = &result {
                act.record = record.clone();
            }
            let _ = reply.send(result);
        }))
    }

    /// Timeout or invalid while waiting unbound.
    fn end_unbound(&mut self, event: RequestEvent, actor: &str, reason: String) -> Step {
        if self.binding.is_some() {
            return done();
        }
        let Ok(to) = self.record.state.apply(event) else { return done() };
        let (db, now, id, actor) = (self.shared.db.clone(), self.shared.clock.now(), self.id(), actor.to_string());
        let work = async move { db.request_transition(id, RequestState::Waiting, to, now, &actor, &reason).await };
        Box::pin(work.into_actor(self).map(move |result, act, ctx| match result {
            Ok(record) => act.finish(record, ctx),
            Err(err) => {
                tracing::error!(request = %act.id(), cause = %err, to = %to, "could not end request");
                crate::reconciler::ask(&act.shared);
            }
        }))
    }

    // ----- bound ---------------------------------------------------------

    fn bound(&mut self, worker: WorkerId, fence: FencingToken) -> Step {
        if self.record.state != RequestState::Waiting || self.binding.is_some() {
            tracing::error!(request = %self.id(), worker = %worker, "binding for a request that is not waiting unbound");
            return done();
        }
        self.record.worker = Some(worker);
        let queued_at = self.record.created_at.max(self.record.valid_after);
        self.shared.observer.queue_wait(crate::observe::between(queued_at, self.shared.clock.now()));
        self.binding = Some(Binding {
            worker,
            fence,
            key: None,
            key_expires_at: None,
            started_at: None,
            tunnel_port: None,
            access: None,
        });
        if let Some(ParkedClose { actor, reason, reply }) = self.parked_closes.pop() {
            return self.end_bound(RequestEvent::Cancel, actor, reason, Some(reply));
        }
        self.make_key_and_install()
    }

    /// Makes the lease key (or takes the request's own public key) and
    /// asks the worker to install it.
    fn make_key_and_install(&mut self) -> Step {
        let Some(binding) = &self.binding else { return done() };
        let (worker, fence, id) = (binding.worker, binding.fence, self.id());
        let own_key = self.record.ssh_public_key.clone();
        let kind = self.record.key_kind;
        let work = async move {
            let comment = format!("corral-lease-{id}");
            match own_key {
                Some(public) => Ok(LeaseKey {
                    key_type: public.split_whitespace().next().unwrap_or_default().to_string(),
                    public_openssh: public,
                    private_openssh: None,
                }),
                None => match kind {
                    KeyKind::Ed25519 => keys::generate(kind, &comment),
                    KeyKind::Rsa => tokio::task::spawn_blocking(move || keys::generate(kind, &comment))
                        .await
                        .map_err(|e| keys::KeyError::Generate(e.to_string()))?,
                },
            }
        };
        Box::pin(work.into_actor(self).map(move |result, act, _| match result {
            Ok(key) => {
                let public_key = key.public_openssh.clone();
                let expires_at = act.lease_expiry(act.shared.clock.now());
                if let Some(binding) = act.binding.as_mut().filter(|b| b.fence == fence) {
                    binding.key = Some(key);
                    binding.key_expires_at = Some(expires_at);
                    act.tell_worker(worker, WorkerMsg::StartLease { request: id, fence, public_key, expires_at });
                }
            }
            Err(err) => {
                tracing::error!(request = %id, cause = %err, "no lease key; giving the worker back");
                crate::reconciler::ask(&act.shared);
                tell(&act.shared.matcher().clone(), MatcherMsg::AddRequest(Self::spec(&act.record)));
            }
        }))
    }

    /// When a lease of this request starting at `now` ends. The lease length was checked at submission (at
    /// most max_lease); a lease that would end past 9999 ends at the last valid instant.
    fn lease_expiry(&self, now: SystemTime) -> SystemTime {
        corral_core::lease::expiry(now, self.record.lease).unwrap_or_else(|err| {
            tracing::warn!(request = %self.id(), cause = %err, "lease expiry out of range; ending it at the last valid instant");
            corral_core::time::Timestamp::max().get()
        })
    }

    fn key_installed(&mut self, fence: FencingToken, access: WorkerAccess, actor: String) -> Step {
        let Some(binding) = self.binding.as_ref().filter(|b| b.fence == fence && b.started_at.is_none()) else {
            return done();
        };
        if self.record.state.apply(RequestEvent::Start).is_err() {
            return done();
        }
        let Some(key) = binding.key.clone() else {
            tracing::error!(request = %self.id(), "key installed but no key known");
            return done();
        };
        let shared = self.shared.clone();
        let (id, now) = (self.id(), self.shared.clock.now());
        let expires_at = self.lease_expiry(now);
        let preferred = binding.tunnel_port;
        let target = access.ssh_addr.clone();
        let work = async move {
            let port =
                shared.tunnels.open(id, preferred, target).await.map_err(|e| ActorError::Unavailable(e.to_string()))?;
            let start = StartLease {
                request: id,
                fence,
                at: now,
                expires_at,
                key_type: key.key_type.clone(),
                public_key: key.public_openssh.clone(),
                private_key: key.private_openssh.clone(),
                tunnel_port: Some(port),
                actor,
            };
            match shared.db.start_lease(&start).await {
                Ok(record) => Ok((record, port)),
                Err(err) => {
                    shared.tunnels.close(id);
                    Err(ActorError::from(err))
                }
            }
        };
        Box::pin(work.into_actor(self).map(move |result, act, _| match result {
            Ok((record, port)) => {
                tracing::info!(request = %record.id, port, "lease started");
                let queued_at = record.created_at.max(record.valid_after);
                act.shared.observer.time_to_lease(crate::observe::between(queued_at, now));
                act.record = record;
                act.leave_waiting();
                if let Some(binding) = act.binding.as_mut() {
                    binding.started_at = Some(now);
                    binding.tunnel_port = Some(port);
                    binding.access = Some(access);
                    // The key was sent before the lease started: give it the
                    // lease's own expiry when that is a later second.
                    let seconds = |t: SystemTime| {
                        t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64().ceil() as u64).ok()
                    };
                    if binding.key_expires_at.map(seconds) != Some(seconds(expires_at)) {
                        binding.key_expires_at = Some(expires_at);
                        let (worker, fence) = (binding.worker, binding.fence);
                        act.tell_worker(worker, WorkerMsg::ExtendLease { request: act.id(), fence, expires_at });
                    }
                }
                tell(act.shared.timekeeper(), TimerMsg::Watch { key: TimerKey::LeaseExpiry(act.id()), at: expires_at });
                if let Some(details) = act.access_details() {
                    for waiter in act.waiters.drain(..) {
                        let _ = waiter.send(Ok(details.clone()));
                    }
                }
            }
            Err(err) => {
                // The worker stays running with the key installed; a later
                // KeyInstalled (the agent resends) or the close retries.
                tracing::error!(request = %act.id(), cause = %err, "could not start the lease");
                crate::reconciler::ask(&act.shared);
            }
        }))
    }

    /// Ends a bound lease (close, expiry): the request moves where `event`
    /// takes it, the tunnel closes and the worker is told to prepare again.
    fn end_bound(
        &mut self,
        event: RequestEvent,
        actor: String,
        reason: String,
        reply: Option<Reply<Result<RequestRecord, ActorError>>>,
    ) -> Step {
        let Some(binding) = &self.binding else { return done() };
        let (worker, fence, id, from) = (binding.worker, binding.fence, self.id(), self.record.state);
        let to = match from.apply(event) {
            Ok(to) => to,
            Err(illegal) => {
                if let Some(reply) = reply {
                    let _ = reply.send(Err(ActorError::Conflict(illegal.to_string())));
                }
                return done();
            }
        };
        let (db, now) = (self.shared.db.clone(), self.shared.clock.now());
        let ending_reason = reason.clone();
        let work = async move { db.end_lease(id, fence, from, to, now, &actor, &reason).await };
        Box::pin(work.into_actor(self).map(move |result, act, ctx| match result {
            Ok((record, prepared)) => {
                let ended = LeaseEnd { reason: ending_reason, at: now, worker_prepared: prepared };
                act.tell_worker(worker, WorkerMsg::LeaseEnded { request: id, fence, ended });
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(record.clone()));
                }
                act.finish(record, ctx);
            }
            Err(err) => {
                tracing::error!(request = %id, cause = %err, "could not end the lease");
                crate::reconciler::ask(&act.shared);
                if event == RequestEvent::Finish && reply.is_none() {
                    // Expiry: try again shortly.
                    let at = act.shared.clock.now() + Duration::from_secs(1);
                    tell(act.shared.timekeeper(), TimerMsg::Watch { key: TimerKey::LeaseExpiry(id), at });
                }
                if let Some(reply) = reply {
                    let _ = reply.send(Err(err.into()));
                }
            }
        }))
    }

    /// Waiting → cancelled, in progress → done (the lease ends), on behalf
    /// of `actor` for `reason`.
    fn close(&mut self, actor: String, reason: String, reply: Reply<Result<RequestRecord, ActorError>>) -> Step {
        // Core says what closing means in this state (cancel or finish).
        let Some(event) = self.record.state.close_event() else {
            let state = self.record.state;
            let _ = reply.send(Err(ActorError::Conflict(format!("request {} is already {state}", self.id()))));
            return done();
        };
        if self.binding.is_none() && event == RequestEvent::Cancel {
            self.close_unbound(actor, reason, reply)
        } else {
            self.end_bound(event, actor, reason, Some(reply))
        }
    }

    fn lease_lost(&mut self, fence: FencingToken, reason: String) -> Step {
        let Some(binding) = self.binding.as_ref().filter(|b| b.fence == fence) else { return done() };
        let (db, now, id) = (self.shared.db.clone(), self.shared.clock.now(), self.id());
        if binding.started_at.is_some() {
            let from = self.record.state;
            let Ok(to) = from.apply(RequestEvent::Fail) else { return done() };
            let work = async move { db.end_lease(id, fence, from, to, now, "server", &reason).await };
            // The worker failed or went busy: the statement leaves it alone.
            return Box::pin(work.into_actor(self).map(move |result, act, ctx| match result {
                Ok((record, _)) => act.finish(record, ctx),
                Err(err) => {
                    tracing::error!(request = %id, cause = %err, "could not fail the lease");
                    crate::reconciler::ask(&act.shared);
                }
            }));
        }
        // Not started yet: the request never had its lease; back in line.
        let work = async move { db.unbind(id, fence, now, "server", &reason).await };
        Box::pin(work.into_actor(self).map(move |result, act, _| match result {
            Ok(record) => {
                act.shared.tunnels.close(id);
                act.record = record;
                act.binding = None;
                tell(act.shared.matcher(), MatcherMsg::AddRequest(Self::spec(&act.record)));
            }
            Err(err) => {
                tracing::error!(request = %id, cause = %err, "could not put the request back in the queue");
                crate::reconciler::ask(&act.shared);
            }
        }))
    }

    fn prolong(
        &mut self,
        caller: Caller,
        by: Option<Duration>,
        reply: Reply<Result<RequestRecord, ActorError>>,
    ) -> Step {
        let (Some(expires), RequestState::InProgress) = (self.record.lease_expires_at, self.record.state) else {
            let _ = reply.send(Err(ActorError::Conflict(format!(
                "only a request in progress can be prolonged; request {} is {}",
                self.id(),
                self.record.state
            ))));
            return done();
        };
        let now = self.shared.clock.now();
        let by = by.unwrap_or(self.record.lease);
        let limits = &self.shared.settings;
        let total = self.binding.as_ref().and_then(|b| {
            let groups = self.shared.dir.view(b.worker).map(|v| v.worker.groups).unwrap_or_default();
            b.started_at.map(|started| (started, limits.total_lease.for_worker(&groups)))
        });
        let new_expiry =
            corral_core::lease::prolonged(now, expires, by, limits.limits.max_lease).and_then(|at| match total {
                Some((started, limit)) => TotalLeaseLimit::check(limit, started, at).map(|()| at),
                None => Ok(at),
            });
        let new_expiry = match new_expiry {
            Ok(at) => at,
            Err(err @ (ProlongError::PastCap { .. } | ProlongError::PastTotal { .. })) => {
                let _ = reply.send(Err(ActorError::Conflict(err.to_string())));
                return done();
            }
            Err(err @ ProlongError::OutOfRange(_)) => {
                let _ = reply.send(Err(ActorError::BadRequest(err.to_string())));
                return done();
            }
        };
        let (db, id, actor) = (self.shared.db.clone(), self.id(), caller.actor());
        let work = async move { db.prolong(id, new_expiry, now, &actor).await };
        Box::pin(work.into_actor(self).map(move |result, act, _| match result {
            Ok(record) => {
                act.record = record.clone();
                tell(act.shared.timekeeper(), TimerMsg::Watch { key: TimerKey::LeaseExpiry(id), at: new_expiry });
                // The key on the worker expires with the lease: renew it.
                if let Some((worker, fence)) = act.binding.as_ref().map(|b| (b.worker, b.fence)) {
                    act.tell_worker(worker, WorkerMsg::ExtendLease { request: id, fence, expires_at: new_expiry });
                }
                let _ = reply.send(Ok(record));
            }
            Err(err) => {
                let _ = reply.send(Err(err.into()));
            }
        }))
    }

    fn requeue(&mut self) -> Step {
        let (db, id) = (self.shared.db.clone(), self.id());
        let work = async move { db.get_request(id).await };
        Box::pin(work.into_actor(self).map(move |result, act, ctx| match result {
            Ok(Some(record)) if record.state == RequestState::Waiting && record.worker.is_none() => {
                act.record = record;
                act.binding = None;
                tell(act.shared.matcher(), MatcherMsg::AddRequest(Self::spec(&act.record)));
            }
            Ok(Some(record)) if record.state.is_terminal() => act.finish(record, ctx),
            Ok(other) => {
                tracing::error!(request = %id, row = ?other.map(|r| r.state), "cannot requeue");
                crate::reconciler::ask(&act.shared);
            }
            Err(err) => {
                tracing::error!(request = %id, cause = %err, "cannot re-read request");
                crate::reconciler::ask(&act.shared);
            }
        }))
    }
}

impl Actor for RequestActor {
    type Context = Context<Self>;

    fn stopped(&mut self, _: &mut Self::Context) {
        self.leave_waiting();
    }

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(64);
        let Some(binding) = &self.binding else { return };
        if binding.started_at.is_some() {
            // Restored after a restart: the tunnel comes back on its port.
            let (shared, id, port) = (self.shared.clone(), self.id(), binding.tunnel_port);
            let target = binding.access.as_ref().map(|a| a.ssh_addr.clone());
            if let Some(expires) = self.record.lease_expires_at {
                tell(self.shared.timekeeper(), TimerMsg::Watch { key: TimerKey::LeaseExpiry(id), at: expires });
            }
            if let Some(target) = target {
                ctx.wait(async move { shared.tunnels.open(id, port, target).await }.into_actor(self).map(
                    move |result, act, _| match result {
                        Ok(opened) if Some(opened) != port => {
                            tracing::warn!(request = %id, port = opened, "tunnel moved to another port");
                            if let Some(b) = act.binding.as_mut() {
                                b.tunnel_port = Some(opened);
                            }
                        }
                        Ok(_) => {}
                        Err(err) => tracing::error!(request = %id, cause = %err, "could not re-open tunnel"),
                    },
                ));
            }
        } else if binding.key.is_none() {
            // Bound before the restart, key not installed: make a new key.
            let step = self.make_key_and_install();
            ctx.wait(step);
        }
    }
}

impl Handler<RequestMsg> for RequestActor {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, msg: RequestMsg, ctx: &mut Self::Context) -> Self::Result {
        let (shared, entity) = (self.shared.clone(), crate::supervise::Entity::Request(self.id()));
        AtomicResponse::new(crate::supervise::guarded(&shared, entity, ctx, || self.step(msg)).unwrap_or_else(done))
    }
}

impl RequestActor {
    /// Every message becomes one step; steps run one at a time.
    fn step(&mut self, msg: RequestMsg) -> Step {
        let span = tracing::debug_span!("request_actor", request = %self.id());
        let _guard = span.enter();
        match msg {
            #[cfg(feature = "fault-injection")]
            RequestMsg::Panic => panic!("fault injection: request {} panics", self.id()),
            RequestMsg::Patch { caller, changes, reply } => {
                if !self.may_act(&caller) {
                    let _ = reply.send(Err(not_found(self.id())));
                    return done();
                }
                self.patch(caller, changes, reply)
            }
            RequestMsg::Close { caller, reply } => {
                if !self.may_act(&caller) {
                    let _ = reply.send(Err(not_found(self.id())));
                    return done();
                }
                let actor = caller.actor();
                let reason = format!("closed by {actor}");
                self.close(actor, reason, reply)
            }
            RequestMsg::OwnerDeleted { actor, reason, reply } => self.close(actor, reason, reply),
            RequestMsg::Acquire { caller, reply } => {
                if !self.may_act(&caller) {
                    let _ = reply.send(Err(not_found(self.id())));
                } else if let Some(details) = self.access_details() {
                    let _ = reply.send(Ok(Acquired::Now(details)));
                } else {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    self.waiters.retain(|w| !w.is_closed());
                    self.waiters.push(tx);
                    let _ = reply.send(Ok(Acquired::Later(rx)));
                }
                done()
            }
            RequestMsg::Prolong { caller, by, reply } => {
                if !self.may_act(&caller) {
                    let _ = reply.send(Err(not_found(self.id())));
                    return done();
                }
                self.prolong(caller, by, reply)
            }
            RequestMsg::Bound { worker, fence } => self.bound(worker, fence),
            RequestMsg::KeyInstalled { fence, access, actor } => self.key_installed(fence, access, actor),
            RequestMsg::LeaseLost { fence, reason } => self.lease_lost(fence, reason),
            RequestMsg::LeaseExpired => {
                let now = self.shared.clock.now();
                match self.record.lease_expires_at {
                    Some(at) if self.record.state == RequestState::InProgress && at <= now => {
                        self.end_bound(RequestEvent::Finish, "server".to_string(), "lease expired".to_string(), None)
                    }
                    Some(at) if self.record.state == RequestState::InProgress => {
                        tell(self.shared.timekeeper(), TimerMsg::Watch { key: TimerKey::LeaseExpiry(self.id()), at });
                        done()
                    }
                    _ => done(),
                }
            }
            RequestMsg::TimedOut => self.end_unbound(
                RequestEvent::Timeout,
                "server",
                format!(
                    "deadline {} passed before a lease started",
                    corral_core::time::format_rfc3339(self.record.deadline)
                ),
            ),
            RequestMsg::Invalidated { reason } => self.end_unbound(RequestEvent::Invalidate, "server", reason),
            RequestMsg::Requeue => self.requeue(),
            RequestMsg::Inspect { reply } => {
                let lease = self.binding.as_ref().map(|b| (b.fence, b.started_at.is_some()));
                let _ = reply.send(RequestView { state: self.record.state, lease });
                done()
            }
        }
    }
}

// ----- use cases driven through the request actors -------------------------

/// A validated submission.
#[derive(Clone, Debug)]
pub struct Submission {
    pub caps: corral_core::Caps,
    pub priority: Priority,
    pub schedule: Schedule,
    pub ssh_public_key: Option<String>,
    pub allow_unsatisfiable: bool,
    /// Kind of key pair to make; None: the server's setting.
    pub key_kind: Option<KeyKind>,
    /// The client's `Idempotency-Key`: a retry gets the first request.
    pub idempotency: Option<corral_db::Idempotency>,
}

async fn ask<T>(
    send: impl std::future::Future<Output = Result<(), MailboxError>>,
    rx: tokio::sync::oneshot::Receiver<T>,
) -> Result<T, ActorError> {
    send.await?;
    Ok(rx.await?)
}

impl Corral {
    /// Accepts a request: checks that some registered worker could serve
    /// it (unless told not to), commits it, starts its actor and queues it.
    ///
    /// When an idle worker can take it at once, the matcher decides while
    /// it is being submitted and the request is committed already bound
    /// (one commit instead of two, and no wait for the next batch). If the
    /// database refuses the binding, or the commit fails, the worker
    /// re-reads its row and the request queues as usual.
    pub async fn submit(&self, caller: &Caller, submission: Submission) -> Result<RequestRecord, ActorError> {
        let shared = self.shared();
        let limit = (!caller.is_admin()).then_some(shared.settings.max_waiting_requests_per_user);
        let slot = match shared.owners.reserve_waiting(caller.id, limit) {
            Ok(slot) => slot,
            Err(Refusal::Limit(limit)) => {
                // A retry of a submission that was stored counts towards
                // the limit itself: it gets the first answer, not a 429.
                if let Some(key) = submission.idempotency.as_ref()
                    && let Some(stored) = shared.db.stored_submission(caller.id, key).await?
                {
                    return Ok(stored.record);
                }
                return Err(ActorError::TooManyRequests(format!(
                    "{} already has {limit} waiting requests, the most allowed; close some or wait until they are leased",
                    caller.name
                )));
            }
            Err(Refusal::Deleted) => {
                return Err(ActorError::Forbidden(format!("user {} is being deleted", caller.name)));
            }
        };
        let matcher = shared.matcher();
        let now = shared.clock.now();
        let spec = RequestSpec {
            id: RequestId(0),
            priority: submission.priority,
            caps: submission.caps.clone(),
            groups: caller.groups.clone(),
            valid_after: submission.schedule.valid_after,
            deadline: submission.schedule.deadline,
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let admission = ask(matcher.send(MatcherMsg::Admit { spec, reply: tx }), rx).await?;
        if !admission.servable && !submission.allow_unsatisfiable {
            return Err(ActorError::Unprocessable(format!(
                "no registered worker offers caps {{{}}} to a member of groups [{}]; pass allow_unsatisfiable to queue it anyway",
                submission.caps,
                caller.groups.iter().collect::<Vec<_>>().join(", ")
            )));
        }
        let new = corral_db::NewRequestRecord {
            owner: caller.name.clone(),
            owner_id: caller.id,
            owner_groups: caller.groups.clone(),
            priority: submission.priority,
            caps: submission.caps,
            at: now,
            valid_after: submission.schedule.valid_after,
            deadline: submission.schedule.deadline,
            lease: submission.schedule.lease,
            ssh_public_key: submission.ssh_public_key,
            key_kind: submission.key_kind.unwrap_or(shared.settings.lease_key),
        };
        let bind = admission.worker.map(|worker| (worker, shared.leader));
        let inserted = shared
            .db
            .submit_request(&new, &caller.actor(), bind, submission.idempotency.as_ref())
            .instrument(tracing::debug_span!("insert_request"))
            .await;
        let give_back = |worker: WorkerId| {
            if let Some(addr) = shared.dir.worker(worker) {
                tell(&addr, WorkerMsg::Resync);
            }
        };
        let (record, fence) = match inserted {
            Ok(submitted) if submitted.replayed => {
                // A retry: the first call stored the request and started
                // its actor; nothing was inserted now.
                if let Some(worker) = admission.worker {
                    give_back(worker);
                }
                return Ok(submitted.record);
            }
            Ok(submitted) => (submitted.record, submitted.fence),
            Err(err) => {
                if let Some(worker) = admission.worker {
                    give_back(worker);
                }
                return Err(err.into());
            }
        };
        tracing::info!(request = %record.id, owner = %record.owner, caps = %record.caps, priority = %record.priority, "request submitted");
        slot.keep();
        self.spawn_request(record.clone());
        match (admission.worker, fence) {
            (Some(worker), Some(fence)) => announce_binding(shared, record.id, worker, fence),
            (worker, _) => {
                if let Some(worker) = worker {
                    tracing::warn!(request = %record.id, worker = %worker, "binding at submission refused");
                    give_back(worker);
                }
                tell(matcher, MatcherMsg::AddRequest(RequestActor::spec(&record)));
            }
        }
        if shared.owners.is_deleted(caller.id) {
            // The owner's deletion started while this was being inserted
            // and may have missed it: end it here.
            if let Some(addr) = self.live(record.id) {
                let (tx, _) = tokio::sync::oneshot::channel();
                let reason = format!("owner {} was deleted", caller.name);
                tell(&addr, RequestMsg::OwnerDeleted { actor: "server".to_string(), reason, reply: tx });
            }
            return Err(ActorError::Forbidden(format!("user {} is being deleted", caller.name)));
        }
        Ok(record)
    }

    pub(crate) fn spawn_request(&self, record: RequestRecord) {
        let shared = self.shared().clone();
        let id = record.id;
        let arbiter = shared.arbiter().clone();
        let addr = RequestActor::start_in_arbiter(&arbiter, move |_| RequestActor::new(shared, record));
        self.shared().dir.add_request(id, addr);
    }

    fn live(&self, id: RequestId) -> Option<Addr<RequestActor>> {
        self.shared().dir.request(id)
    }

    /// The request as the caller may see it (404 for others' requests).
    pub async fn request(&self, caller: &Caller, id: RequestId) -> Result<RequestRecord, ActorError> {
        let record = self.shared().db.get_request(id).await?.ok_or_else(|| not_found(id))?;
        if caller.may_read_request_of(record.owner_id) { Ok(record) } else { Err(not_found(id)) }
    }

    /// The requests `filter` selects, newest first, among those `caller`
    /// may read: an admin's listing is all users' (filtered by `owner` if
    /// given); anyone else's is their own, by identity (a deleted user's
    /// requests are not a later namesake's), and naming another owner is
    /// refused.
    pub async fn requests(&self, caller: &Caller, mut filter: RequestFilter) -> Result<Vec<RequestRecord>, ActorError> {
        if !caller.is_admin() {
            if filter.owner.as_ref().is_some_and(|owner| *owner != caller.name) {
                return Err(ActorError::Forbidden("only admins may list other users' requests".to_string()));
            }
            filter.owner = None;
            filter.owner_id = Some(caller.id);
        }
        Ok(self.shared().db.list_requests(&filter).await?)
    }

    /// Every transition of the request `id`, oldest first, for a caller
    /// who may read it (404 for others).
    pub async fn request_history(&self, caller: &Caller, id: RequestId) -> Result<Vec<HistoryRecord>, ActorError> {
        self.request(caller, id).await?;
        Ok(self.shared().db.request_history(id).await?)
    }

    /// Answer for a request that has no live actor: it is terminal (409)
    /// or unknown / not the caller's (404).
    async fn ended(&self, caller: &Caller, id: RequestId) -> ActorError {
        match self.request(caller, id).await {
            Ok(record) => ActorError::Conflict(format!("request {id} is {}", record.state)),
            Err(err) => err,
        }
    }

    pub async fn close(&self, caller: &Caller, id: RequestId) -> Result<RequestRecord, ActorError> {
        let Some(addr) = self.live(id) else { return Err(self.ended(caller, id).await) };
        let (tx, rx) = tokio::sync::oneshot::channel();
        ask(addr.send(RequestMsg::Close { caller: caller.clone(), reply: tx }), rx).await?
    }

    pub async fn update(
        &self,
        caller: &Caller,
        id: RequestId,
        changes: RequestChanges,
    ) -> Result<RequestRecord, ActorError> {
        let Some(addr) = self.live(id) else { return Err(self.ended(caller, id).await) };
        let (tx, rx) = tokio::sync::oneshot::channel();
        ask(addr.send(RequestMsg::Patch { caller: caller.clone(), changes, reply: tx }), rx).await?
    }

    pub async fn prolong(
        &self,
        caller: &Caller,
        id: RequestId,
        by: Option<Duration>,
    ) -> Result<RequestRecord, ActorError> {
        let Some(addr) = self.live(id) else { return Err(self.ended(caller, id).await) };
        let (tx, rx) = tokio::sync::oneshot::channel();
        ask(addr.send(RequestMsg::Prolong { caller: caller.clone(), by, reply: tx }), rx).await?
    }

    /// Access details of the lease; waits up to `wait` for it to start.
    /// A request still waiting after that is a conflict.
    pub async fn acquire(&self, caller: &Caller, id: RequestId, wait: Duration) -> Result<AccessDetails, ActorError> {
        let Some(addr) = self.live(id) else { return Err(self.ended(caller, id).await) };
        let (tx, rx) = tokio::sync::oneshot::channel();
        match ask(addr.send(RequestMsg::Acquire { caller: caller.clone(), reply: tx }), rx).await?? {
            Acquired::Now(details) => Ok(details),
            Acquired::Later(rx) => match tokio::time::timeout(wait, rx).await {
                Ok(result) => result?,
                Err(_) => Err(ActorError::Conflict(format!("request {id} is still waiting"))),
            },
        }
    }
}

impl Corral {
    /// What the matcher knows of a waiting request (None while it is being
    /// bound).
    pub async fn explain(&self, id: RequestId) -> Result<Option<corral_core::matcher::Explanation>, ActorError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        ask(self.shared().matcher().send(MatcherMsg::Explain { request: id, reply: tx }), rx).await
    }
}
