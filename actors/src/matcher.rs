//! The matcher actor: wraps the core's [`corral_core::matcher::Matcher`],
//! decides as soon as something changes, and commits decisions in batches
//! (one transaction for all decisions made while the previous batch was
//! being committed). Only after the commit are the request and the worker
//! told. A request that an idle worker can take at once is decided on
//! while it is submitted ([`MatcherMsg::Admit`]) and committed with its
//! binding by the submission.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use corral_core::matcher::{Assignment, Explanation, Matcher, RequestSpec, WorkerSpec};
use corral_core::{FencingToken, RequestId, WorkerId};
use corral_db::BindOutcome;

use crate::request::RequestMsg;
use crate::worker::WorkerMsg;
use crate::{Reply, Shared, tell};

/// Most decisions committed in one transaction.
const MAX_BATCH: usize = 512;
/// Batches being committed at once. Their bindings never share a request
/// or a worker (the matcher took both out of its index), so they do not
/// conflict; several in flight keep one slow commit from holding up the
/// next decisions.
const MAX_IN_FLIGHT: usize = 4;

#[derive(Message)]
#[rtype(result = "()")]
pub enum MatcherMsg {
    /// A waiting, unbound request (new, updated or back in the queue).
    AddRequest(RequestSpec),
    /// Take a request out of the queue; answers false if it was not there
    /// (already matched and being bound, or unknown).
    Withdraw {
        request: RequestId,
        reply: Reply<bool>,
    },
    /// A worker appeared or its caps or groups changed.
    RegisterWorker(WorkerSpec),
    /// A worker's caps changed because its agent reported other
    /// dimensions. Unlike [`MatcherMsg::RegisterWorker`], waiting requests
    /// no worker can serve any more are not invalidated: dimensions come
    /// and go with the device (an upgrade, a re-attached phone), so they
    /// keep waiting, as unsatisfiable requests queued on purpose do.
    UpdateWorkerCaps(WorkerSpec),
    DeregisterWorker(WorkerId),
    /// The worker may be leased.
    WorkerIdle {
        worker: WorkerId,
        last_used: SystemTime,
    },
    /// Take a worker out of the idle pool; answers false if it was not
    /// idle there (it may be being bound).
    WithdrawWorker {
        worker: WorkerId,
        reply: Reply<bool>,
    },
    /// A request is being submitted: can any registered worker ever serve
    /// it, and which idle worker does it get now, if any (see
    /// [`Matcher::match_new`]; the submission commits the binding with
    /// the request and then calls [`announce_binding`]).
    Admit {
        spec: RequestSpec,
        reply: Reply<Admission>,
    },
    Explain {
        request: RequestId,
        reply: Reply<Option<Explanation>>,
    },
    /// Everything at once, after a restart.
    Rebuild {
        workers: Vec<WorkerSpec>,
        idle: Vec<(WorkerId, SystemTime)>,
        requests: Vec<RequestSpec>,
    },
    /// Statistics for metrics and readiness.
    Stats {
        reply: Reply<MatcherStats>,
    },
    /// Run one tick now and answer what it did ([`crate::Corral::tick`]).
    Tick {
        reply: Reply<MatcherTick>,
    },
}

/// What one matcher tick did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MatcherTick {
    /// Waiting requests whose deadline passed.
    pub timed_out: usize,
    /// Request-worker pairs decided (their bindings are being committed).
    pub decisions: u64,
}

/// The matcher's answer to [`MatcherMsg::Admit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admission {
    pub servable: bool,
    /// Taken out of the idle pool for this request.
    pub worker: Option<WorkerId>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MatcherStats {
    pub waiting: usize,
    pub workers: usize,
    pub decisions: u64,
    pub pending_commits: usize,
    /// What the core matcher holds (interned caps, classes, signatures).
    pub sizes: corral_core::matcher::MatcherSizes,
}

impl crate::Corral {
    /// The matcher's statistics, read through its mailbox.
    pub async fn matcher_stats(&self) -> Result<MatcherStats, crate::ActorError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.shared().matcher().send(MatcherMsg::Stats { reply: tx }).await?;
        Ok(rx.await?)
    }
}

pub struct MatcherActor {
    shared: Arc<Shared>,
    core: Matcher,
    pending: VecDeque<Assignment>,
    committing: usize,
    decisions: u64,
    retry_delay: Duration,
}

impl MatcherActor {
    pub(crate) fn new(shared: Arc<Shared>) -> MatcherActor {
        MatcherActor {
            shared,
            core: Matcher::new(),
            pending: VecDeque::new(),
            committing: 0,
            decisions: 0,
            retry_delay: Duration::from_millis(50),
        }
    }

    fn invalidate(&self, lost: Vec<RequestId>, reason: &str) {
        for request in lost {
            if let Some(addr) = self.shared.dir.request(request) {
                tell(&addr, RequestMsg::Invalidated { reason: reason.to_string() });
            }
        }
    }

    /// Makes every decision possible now and starts committing them;
    /// answers how many it made.
    fn schedule(&mut self, ctx: &mut Context<Self>) -> u64 {
        let started = Instant::now();
        let mut made = 0u64;
        while let Some(assignment) = self.core.next_match() {
            self.pending.push_back(assignment);
            made += 1;
        }
        if made > 0 {
            self.decisions += made;
            self.shared.observer.matcher_pass(started.elapsed(), made);
            tracing::trace!(decisions = made, elapsed_us = started.elapsed().as_micros() as u64, "matched");
        }
        self.commit_next(ctx);
        made
    }

    fn commit_next(&mut self, ctx: &mut Context<Self>) {
        while self.committing < MAX_IN_FLIGHT && !self.pending.is_empty() {
            self.commit_batch(ctx);
        }
    }

    fn commit_batch(&mut self, ctx: &mut Context<Self>) {
        self.committing += 1;
        let take = self.pending.len().min(MAX_BATCH);
        let batch: Vec<Assignment> = self.pending.drain(..take).collect();
        self.shared.observer.matcher_batch(batch.len());
        let pairs: Vec<(RequestId, WorkerId)> = batch.iter().map(|a| (a.request, a.worker)).collect();
        let db = self.shared.db.clone();
        let now = self.shared.clock.now();
        let leader = self.shared.leader;
        let commit = async move { bind_each(&db, &pairs, now, leader).await };
        ctx.spawn(commit.into_actor(self).map(move |outcomes, act, ctx| {
            act.committing -= 1;
            let mut unavailable = false;
            for (assignment, outcome) in batch.into_iter().zip(outcomes).rev() {
                match outcome {
                    Some(outcome) => act.announce(assignment, outcome),
                    // Nothing of this pair was committed: keep it and retry.
                    None => {
                        unavailable = true;
                        act.pending.push_front(assignment);
                    }
                }
            }
            if unavailable {
                let delay = act.retry_delay;
                act.retry_delay = (act.retry_delay * 2).min(Duration::from_secs(5));
                ctx.run_later(delay, |act, ctx| act.commit_next(ctx));
            } else {
                act.retry_delay = Duration::from_millis(50);
                act.commit_next(ctx);
            }
        }));
    }

    fn announce(&self, assignment: Assignment, outcome: BindOutcome) {
        let Assignment { request, worker } = assignment;
        match outcome {
            BindOutcome::Bound(fence) => announce_binding(&self.shared, request, worker, fence),
            BindOutcome::Refused(why) => {
                // Memory and database disagreed; both sides re-read their
                // row and come back if they still qualify.
                tracing::warn!(request = %request, worker = %worker, why = %why, "binding refused");
                if let Some(addr) = self.shared.dir.request(request) {
                    tell(&addr, RequestMsg::Requeue);
                }
                if let Some(addr) = self.shared.dir.worker(worker) {
                    tell(&addr, WorkerMsg::Resync);
                }
            }
        }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) -> MatcherTick {
        let now = self.shared.clock.now();
        let expired = self.core.tick(now);
        let timed_out = expired.len();
        for request in expired {
            if let Some(addr) = self.shared.dir.request(request) {
                tell(&addr, RequestMsg::TimedOut);
            }
        }
        MatcherTick { timed_out, decisions: self.schedule(ctx) }
    }
}

/// Commits `pairs` and gives each its own outcome: bound, refused, or
/// `None` when the database could not be reached (nothing of the pair was
/// committed: retry it). A statement that fails for another reason (a row
/// breaking a rule the guards missed) is run again one pair at a time, and
/// a pair that fails alone is refused: it is set aside and repaired, never
/// retried as is, so one bad row cannot block the others.
async fn bind_each(
    db: &corral_db::Db,
    pairs: &[(RequestId, WorkerId)],
    at: SystemTime,
    leader: corral_core::SessionId,
) -> Vec<Option<BindOutcome>> {
    let failed = match db.bind_leases(pairs, at, leader).await {
        Ok(outcomes) => return outcomes.into_iter().map(Some).collect(),
        Err(err) if err.is_unavailable() => {
            tracing::error!(cause = %err, decisions = pairs.len(), "committing matches failed; retrying");
            return pairs.iter().map(|_| None).collect();
        }
        Err(err) => err,
    };
    if pairs.len() > 1 {
        tracing::warn!(cause = %failed, size = pairs.len(), "binding batch failed; binding its pairs one by one");
    }
    let mut outcomes = Vec::with_capacity(pairs.len());
    for pair in pairs {
        let alone = if pairs.len() == 1 { Err(failed.to_string()) } else { bind_one(db, *pair, at, leader).await };
        outcomes.push(match alone {
            Ok(outcome) => outcome,
            Err(cause) => {
                let (request, worker) = pair;
                tracing::warn!(request = %request, worker = %worker, cause = %cause, "binding failed; set aside");
                Some(BindOutcome::Refused(format!("binding failed: {cause}")))
            }
        });
    }
    outcomes
}

/// One pair bound alone: its outcome (`None`: retry), or why it failed.
async fn bind_one(
    db: &corral_db::Db,
    pair: (RequestId, WorkerId),
    at: SystemTime,
    leader: corral_core::SessionId,
) -> Result<Option<BindOutcome>, String> {
    match db.bind_leases(&[pair], at, leader).await {
        Ok(mut outcomes) => Ok(outcomes.pop()),
        Err(err) if err.is_unavailable() => Ok(None),
        Err(err) => Err(err.to_string()),
    }
}

/// Tells the worker and the request of a committed binding.
pub(crate) fn announce_binding(shared: &Shared, request: RequestId, worker: WorkerId, fence: FencingToken) {
    tracing::debug!(request = %request, worker = %worker, fence = %fence, "lease bound");
    // The worker first: the request answers with the key to install, which
    // must find the worker knowing its lease.
    match shared.dir.worker(worker) {
        Some(addr) => tell(&addr, WorkerMsg::Leased { request, fence }),
        None => tracing::error!(worker = %worker, "bound worker has no actor"),
    }
    match shared.dir.request(request) {
        Some(addr) => tell(&addr, RequestMsg::Bound { worker, fence }),
        None => tracing::error!(request = %request, "bound request has no actor"),
    }
}

impl Actor for MatcherActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(4096);
        ctx.run_interval(self.shared.settings.tick, |act, ctx| {
            act.tick(ctx);
        });
    }
}

impl Handler<MatcherMsg> for MatcherActor {
    type Result = ();

    fn handle(&mut self, msg: MatcherMsg, ctx: &mut Self::Context) {
        match msg {
            MatcherMsg::AddRequest(spec) => {
                let now = self.shared.clock.now();
                if !self.core.add_request(&spec, now) {
                    tracing::debug!(request = %spec.id, "no registered worker can serve this request now");
                }
                self.schedule(ctx);
            }
            MatcherMsg::Withdraw { request, reply } => {
                let _ = reply.send(self.core.remove_request(request));
            }
            MatcherMsg::RegisterWorker(spec) => {
                let lost = self.core.register_worker(&spec);
                self.invalidate(lost, "no registered worker can serve its caps and groups any more");
                self.schedule(ctx);
            }
            MatcherMsg::UpdateWorkerCaps(spec) => {
                for request in self.core.register_worker(&spec) {
                    // Taken out of the queue: it comes back as one no
                    // registered worker serves now, and keeps waiting.
                    if let Some(addr) = self.shared.dir.request(request) {
                        tell(&addr, RequestMsg::Requeue);
                    }
                }
                self.schedule(ctx);
            }
            MatcherMsg::DeregisterWorker(worker) => {
                let lost = self.core.deregister_worker(worker);
                self.invalidate(lost, &format!("the last worker that could serve it ({worker}) was deregistered"));
            }
            MatcherMsg::WorkerIdle { worker, last_used } => {
                self.core.worker_idle(worker, last_used);
                self.schedule(ctx);
            }
            MatcherMsg::WithdrawWorker { worker, reply } => {
                let was_idle = self.core.is_idle(worker);
                self.core.worker_unavailable(worker);
                let _ = reply.send(was_idle);
            }
            MatcherMsg::Admit { spec, reply } => {
                // `match_new` wants no decision left to take: take them.
                self.schedule(ctx);
                let servable = self.core.can_ever_serve(&spec.caps, &spec.groups);
                let started = Instant::now();
                let worker = if servable { self.core.match_new(&spec, self.shared.clock.now()) } else { None };
                if worker.is_some() {
                    self.decisions += 1;
                    self.shared.observer.matcher_pass(started.elapsed(), 1);
                }
                let _ = reply.send(Admission { servable, worker });
                // Decisions `match_new` met and held, if any.
                self.schedule(ctx);
            }
            MatcherMsg::Explain { request, reply } => {
                let _ = reply.send(self.core.explain(request));
            }
            MatcherMsg::Rebuild { workers, idle, requests } => {
                for spec in &workers {
                    self.core.register_worker(spec);
                }
                for (worker, last_used) in idle {
                    self.core.worker_idle(worker, last_used);
                }
                let now = self.shared.clock.now();
                let mut unsatisfiable = 0usize;
                for spec in &requests {
                    if !self.core.add_request(spec, now) {
                        unsatisfiable += 1;
                    }
                }
                tracing::info!(workers = workers.len(), requests = requests.len(), unsatisfiable, "matcher rebuilt");
                self.schedule(ctx);
            }
            MatcherMsg::Stats { reply } => {
                let _ = reply.send(MatcherStats {
                    waiting: self.core.waiting_count(),
                    workers: self.core.worker_count(),
                    decisions: self.decisions,
                    pending_commits: self.pending.len() + self.committing,
                    sizes: self.core.sizes(),
                });
            }
            MatcherMsg::Tick { reply } => {
                let _ = reply.send(self.tick(ctx));
            }
        }
    }
}
