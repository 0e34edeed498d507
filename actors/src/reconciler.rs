//! The reconciler (SPEC §13): a change that failed to commit, or whose
//! commit the actor never learnt of, is repaired by comparing the database
//! with the live system.
//!
//! A pass reads the rows it compares on one snapshot
//! ([`corral_db::Db::reconcile_snapshot`], which also checks that this
//! replica still leads: a replica that does not lead repairs nothing),
//! compares them with the directory's actors, and repairs each mismatch
//! through the code paths the actors use: leases are ended or unbound and
//! workers moved by the same guarded statements, named with the actor
//! `reconciler` and a reason saying what was found; an actor whose state is
//! wrong is restarted from its row ([`crate::rebuild`]) or re-reads it
//! (`WorkerMsg::Resync`), and a history row says so. A repair whose guard
//! fails (the row moved meanwhile) changes nothing and is looked at again
//! by the next pass.
//!
//! What a pass looks for ([`RepairKind`]):
//! - a live lease its worker does not run (the worker is idle, preparing,
//!   failed, or runs another fence): the request goes back to the queue
//!   (not started) or fails (started);
//! - a live lease of a request that is already over: it is ended;
//! - a lease bound longer than the prepare timeout whose key was never
//!   installed (its start failed to commit, or its tunnel did not open):
//!   the request goes back to the queue, the worker is prepared again;
//! - a worker `running` with no live lease: it is prepared again;
//! - a worker idle, preparing or running whose agent session ended: it
//!   fails; a work lock whose session ended is released; a session actor
//!   whose session row is gone is stopped;
//! - a request actor whose row is over (or gone): it is stopped; one that
//!   believes another state or lease than its row (a commit it took for
//!   failed went through): it is restarted from its row; a worker actor
//!   that shows another state than its row: it re-reads the row;
//! - a request waiting, unbound, well past its deadline (its timeout
//!   failed to commit): it times out.
//!
//! Rows and actors move all the time, and a pass can catch them between
//! two steps of a legitimate change. So a mismatch is repaired only when
//! it is seen again by a pass that starts at least the confirmation delay
//! (ten ticks, 0.1 s to 2 s) after the pass that first saw it; a pass that
//! leaves suspects behind schedules that second look.
//!
//! Passes run every `reconcile_interval` of the server's clock (a test
//! moves a manual clock), and at once when something asks ([`ask`]): every
//! actor whose commit failed does. One pass runs at a time; what asks
//! meanwhile is served by one more pass, the confirmation delay after it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use corral_core::request::RequestEvent;
use corral_core::worker::WorkerEvent;
use corral_core::{FencingToken, RequestId, RequestState, SessionId, WorkerId, WorkerState};
use corral_db::{ReconcileSnapshot, RequestRecord, WorkerTransition};

use crate::matcher::MatcherMsg;
use crate::request::{RequestActor, RequestMsg, RequestView};
use crate::timekeeper::{TimerKey, TimerMsg};
use crate::worker::WorkerMsg;
use crate::{ActorError, Corral, Reply, Shared, tell};

/// How repairs are named in history.
pub const RECONCILER: &str = "reconciler";

/// How long past its deadline a waiting request must be before the
/// reconciler times it out (the matcher does it within a tick; this is for
/// a timeout that failed to commit).
pub const OVERDUE: Duration = Duration::from_secs(5);

/// How long a pass waits for a request actor to say what it believes.
const INSPECT_WAIT: Duration = Duration::from_secs(2);

/// The kinds of mismatch a pass repairs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RepairKind {
    LeaseNotRunByItsWorker,
    LeaseOfEndedRequest,
    LeaseNeverStarted,
    RunningWithoutLease,
    WorkerOfEndedSession,
    LockOfEndedSession,
    SessionActorWithoutRow,
    RequestActorBehindRow,
    WorkerActorBehindRow,
    WaitingPastDeadline,
}

impl RepairKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RepairKind::LeaseNotRunByItsWorker => "lease_not_run_by_its_worker",
            RepairKind::LeaseOfEndedRequest => "lease_of_ended_request",
            RepairKind::LeaseNeverStarted => "lease_never_started",
            RepairKind::RunningWithoutLease => "running_without_lease",
            RepairKind::WorkerOfEndedSession => "worker_of_ended_session",
            RepairKind::LockOfEndedSession => "lock_of_ended_session",
            RepairKind::SessionActorWithoutRow => "session_actor_without_row",
            RepairKind::RequestActorBehindRow => "request_actor_behind_row",
            RepairKind::WorkerActorBehindRow => "worker_actor_behind_row",
            RepairKind::WaitingPastDeadline => "waiting_past_deadline",
        }
    }
}

impl std::fmt::Display for RepairKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one pass repaired, by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Repairs {
    pub by_kind: BTreeMap<RepairKind, u64>,
}

impl Repairs {
    fn add(&mut self, kind: RepairKind, n: u64) {
        if n > 0 {
            *self.by_kind.entry(kind).or_default() += n;
        }
    }

    pub fn total(&self) -> u64 {
        self.by_kind.values().sum()
    }

    pub fn of(&self, kind: RepairKind) -> u64 {
        self.by_kind.get(&kind).copied().unwrap_or(0)
    }
}

impl std::fmt::Display for Repairs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.by_kind.iter().map(|(kind, n)| format!("{kind}={n}")).collect();
        f.write_str(&parts.join(" "))
    }
}

type PassReply = Reply<Result<Repairs, ActorError>>;

#[derive(Message)]
#[rtype(result = "()")]
pub enum ReconcilerMsg {
    /// Run a pass now, or after the one running; `reply` gets what it
    /// repaired.
    Reconcile { reply: Option<PassReply> },
}

/// Asks for a pass soon (a commit failed): one line at every site that
/// logs a failed commit.
pub(crate) fn ask(shared: &Shared) {
    match shared.reconciler.get() {
        Some(reconciler) => tell(reconciler, ReconcilerMsg::Reconcile { reply: None }),
        None => tracing::debug!("no reconciler yet; the failed commit waits for its first pass"),
    }
}

impl Corral {
    /// Runs a reconciler pass (after the one running, if any) and answers
    /// what it repaired.
    pub async fn reconcile(&self) -> Result<Repairs, ActorError> {
        let reconciler = self
            .shared()
            .reconciler
            .get()
            .ok_or_else(|| ActorError::Unavailable("the reconciler is not running".to_string()))?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        reconciler.send(ReconcilerMsg::Reconcile { reply: Some(tx) }).await?;
        rx.await?
    }
}

/// One mismatch, named by what identifies it across passes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Finding {
    LeaseNotRunByItsWorker {
        request: RequestId,
        worker: WorkerId,
        fence: FencingToken,
        started: bool,
        worker_state: Option<WorkerState>,
    },
    LeaseOfEndedRequest {
        request: RequestId,
        worker: WorkerId,
        fence: FencingToken,
        state: RequestState,
    },
    LeaseNeverStarted {
        request: RequestId,
        worker: WorkerId,
        fence: FencingToken,
    },
    RunningWithoutLease {
        worker: WorkerId,
        fence: FencingToken,
    },
    WorkerOfEndedSession {
        worker: WorkerId,
        state: WorkerState,
    },
    SessionActorWithoutRow {
        session: SessionId,
    },
    RequestActorBehindRow {
        request: RequestId,
        state: Option<RequestState>,
    },
    WorkerActorBehindRow {
        worker: WorkerId,
        actor: WorkerState,
        row: WorkerState,
    },
    WaitingPastDeadline {
        request: RequestId,
        deadline: SystemTime,
    },
    RequestActorOutOfStep {
        request: RequestId,
        actor: RequestView,
        row: RequestView,
    },
}

impl Finding {
    fn kind(&self) -> RepairKind {
        match self {
            Finding::LeaseNotRunByItsWorker { .. } => RepairKind::LeaseNotRunByItsWorker,
            Finding::LeaseOfEndedRequest { .. } => RepairKind::LeaseOfEndedRequest,
            Finding::LeaseNeverStarted { .. } => RepairKind::LeaseNeverStarted,
            Finding::RunningWithoutLease { .. } => RepairKind::RunningWithoutLease,
            Finding::WorkerOfEndedSession { .. } => RepairKind::WorkerOfEndedSession,
            Finding::SessionActorWithoutRow { .. } => RepairKind::SessionActorWithoutRow,
            Finding::RequestActorBehindRow { .. } => RepairKind::RequestActorBehindRow,
            Finding::WorkerActorBehindRow { .. } => RepairKind::WorkerActorBehindRow,
            Finding::WaitingPastDeadline { .. } => RepairKind::WaitingPastDeadline,
            Finding::RequestActorOutOfStep { .. } => RepairKind::RequestActorBehindRow,
        }
    }
}

/// History rows of repairs that changed no row.
#[derive(Default)]
struct Notes {
    requests: Vec<(RequestId, String)>,
    workers: Vec<(WorkerId, String)>,
}

pub struct Reconciler {
    shared: Arc<Shared>,
    running: bool,
    /// Asked for while a pass ran: one more pass, answering these.
    queued: Option<Vec<PassReply>>,
    /// Mismatches seen and not repaired yet, with when first seen.
    suspects: HashMap<Finding, Instant>,
    /// A second look at the suspects is scheduled.
    follow_up: bool,
    /// When the next periodic pass is due (server clock).
    next_due: SystemTime,
    /// Repairs since the start, by kind.
    totals: BTreeMap<RepairKind, u64>,
}

impl Reconciler {
    pub(crate) fn new(shared: Arc<Shared>) -> Reconciler {
        let next_due = shared.clock.now() + shared.settings.reconcile_interval;
        Reconciler {
            shared,
            running: false,
            queued: None,
            suspects: HashMap::new(),
            follow_up: false,
            next_due,
            totals: BTreeMap::new(),
        }
    }

    /// How long a mismatch must last before it is repaired.
    fn confirm(&self) -> Duration {
        (self.shared.settings.tick * 10).clamp(Duration::from_millis(100), Duration::from_secs(2))
    }

    fn ask(&mut self, reply: Option<PassReply>, ctx: &mut Context<Self>) {
        if self.running {
            self.queued.get_or_insert_with(Vec::new).extend(reply);
        } else {
            self.start(reply.into_iter().collect(), ctx);
        }
    }

    fn start(&mut self, replies: Vec<PassReply>, ctx: &mut Context<Self>) {
        self.running = true;
        let (shared, suspects, confirm) = (self.shared.clone(), std::mem::take(&mut self.suspects), self.confirm());
        ctx.spawn(pass(shared, suspects, confirm).into_actor(self).map(move |(result, suspects), act, ctx| {
            act.running = false;
            act.suspects = suspects;
            if let Ok(repairs) = &result {
                for (kind, n) in &repairs.by_kind {
                    *act.totals.entry(*kind).or_default() += n;
                }
                if repairs.total() > 0 {
                    let totals: u64 = act.totals.values().sum();
                    tracing::debug!(totals, "repairs since start");
                }
            }
            for reply in replies {
                let copy = match &result {
                    Ok(repairs) => Ok(repairs.clone()),
                    Err(err) => Err(ActorError::Unavailable(err.to_string())),
                };
                let _ = reply.send(copy);
            }
            if act.queued.is_some() {
                // Back-to-back passes (commits failing one after another)
                // leave the database a breath: the next one starts after a
                // gap, serving every ask that came meanwhile.
                act.running = true;
                ctx.run_later(act.confirm(), |act, ctx| {
                    let queued = act.queued.take().unwrap_or_default();
                    act.start(queued, ctx);
                });
            } else if !act.suspects.is_empty() && !act.follow_up {
                act.follow_up = true;
                ctx.run_later(act.confirm(), |act, ctx| {
                    act.follow_up = false;
                    act.ask(None, ctx);
                });
            }
        }));
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        let now = self.shared.clock.now();
        if now >= self.next_due {
            self.next_due = now + self.shared.settings.reconcile_interval;
            self.ask(None, ctx);
        }
    }
}

impl Actor for Reconciler {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(1024);
        let every = self.shared.settings.tick.clamp(Duration::from_millis(20), Duration::from_secs(1));
        ctx.run_interval(every, |act, ctx| act.tick(ctx));
    }
}

impl Handler<ReconcilerMsg> for Reconciler {
    type Result = ();

    fn handle(&mut self, msg: ReconcilerMsg, ctx: &mut Self::Context) {
        match msg {
            ReconcilerMsg::Reconcile { reply } => self.ask(reply, ctx),
        }
    }
}

/// One pass: read, compare, repair what was seen long enough. Answers the
/// repairs and the suspects left.
async fn pass(
    shared: Arc<Shared>,
    suspects: HashMap<Finding, Instant>,
    confirm: Duration,
) -> (Result<Repairs, ActorError>, HashMap<Finding, Instant>) {
    let actors = shared.dir.request_ids();
    let views = inspect(&shared, &actors).await;
    let snapshot = match shared.db.reconcile_snapshot(shared.leader, &actors).await {
        Ok(Some(snapshot)) => snapshot,
        Ok(None) => {
            tracing::warn!("this replica does not lead scheduling; the reconciler repairs nothing");
            return (Ok(Repairs::default()), HashMap::new());
        }
        Err(err) => {
            tracing::warn!(cause = %err, "reconciler could not read the database");
            return (Err(err.into()), suspects);
        }
    };
    let now = shared.clock.now();
    let seen = Instant::now();
    let mut left = HashMap::new();
    let mut repairs = Repairs::default();
    let mut notes = Notes::default();
    for finding in find(&shared, &snapshot, &actors, &views, now) {
        let first = suspects.get(&finding).copied().unwrap_or(seen);
        if seen.duration_since(first) < confirm {
            left.insert(finding, first);
            continue;
        }
        match repair(&shared, &finding, now, &mut notes).await {
            Ok(()) => repairs.add(finding.kind(), 1),
            Err(err) => {
                tracing::warn!(?finding, cause = %err, "reconciler repair not committed; looking again next pass");
                left.insert(finding, first);
            }
        }
    }
    if !snapshot.orphan_locks.is_empty() {
        match shared.db.release_orphan_work_locks(now, RECONCILER).await {
            Ok(released) => repairs.add(RepairKind::LockOfEndedSession, released.len() as u64),
            Err(err) => tracing::warn!(cause = %err, "reconciler could not release orphan work locks"),
        }
    }
    if let Err(err) = shared.db.record_repairs(now, RECONCILER, &notes.requests, &notes.workers).await {
        tracing::warn!(cause = %err, "reconciler could not record its repairs in history");
    }
    if repairs.total() > 0 {
        tracing::warn!(repairs = repairs.total(), kinds = %repairs, suspects = left.len(), "reconciler repaired mismatches");
    } else {
        tracing::debug!(suspects = left.len(), "reconciler pass found nothing to repair");
    }
    (Ok(repairs), left)
}

/// Every mismatch between `snapshot` and the live actors.
fn find(
    shared: &Shared,
    snapshot: &ReconcileSnapshot,
    actors: &[RequestId],
    views: &HashMap<RequestId, RequestView>,
    now: SystemTime,
) -> Vec<Finding> {
    let workers: HashMap<WorkerId, _> = snapshot.workers.iter().map(|w| (w.uuid, w)).collect();
    let requests: HashMap<RequestId, _> = snapshot.requests.iter().map(|r| (r.id, r)).collect();
    let prepare_timeout = shared.settings.prepare_timeout;
    let mut found = Vec::new();
    let mut leased = HashSet::new();
    let mut touched_requests = HashSet::new();
    let mut touched_workers = HashSet::new();

    for lease in &snapshot.leases {
        leased.insert(lease.worker);
        let Some(request) = requests.get(&lease.request) else { continue };
        let worker = workers.get(&lease.worker);
        let runs_it = worker.is_some_and(|w| w.state == WorkerState::Running && w.fence == lease.fence);
        let (id, fence, on) = (lease.request, lease.fence, lease.worker);
        let finding = if request.state.is_terminal() {
            Some(Finding::LeaseOfEndedRequest { request: id, worker: on, fence, state: request.state })
        } else if !runs_it {
            Some(Finding::LeaseNotRunByItsWorker {
                request: id,
                worker: on,
                fence,
                started: lease.started,
                worker_state: worker.map(|w| w.state),
            })
        } else if !lease.started
            && request.state == RequestState::Waiting
            && lease.bound_at.checked_add(prepare_timeout).is_some_and(|t| t < now)
        {
            Some(Finding::LeaseNeverStarted { request: id, worker: on, fence })
        } else {
            None
        };
        if let Some(finding) = finding {
            touched_requests.insert(id);
            touched_workers.insert(on);
            found.push(finding);
        }
    }

    for worker in &snapshot.workers {
        let serving = matches!(worker.state, WorkerState::Idle | WorkerState::Prepare | WorkerState::Running);
        if serving && worker.session.is_none() {
            found.push(Finding::WorkerOfEndedSession { worker: worker.uuid, state: worker.state });
            touched_workers.insert(worker.uuid);
        } else if worker.state == WorkerState::Running && !leased.contains(&worker.uuid) {
            found.push(Finding::RunningWithoutLease { worker: worker.uuid, fence: worker.fence });
            touched_workers.insert(worker.uuid);
        }
    }

    let live_sessions: HashSet<SessionId> = snapshot.agent_sessions.iter().copied().collect();
    for session in shared.dir.session_ids() {
        if !live_sessions.contains(&session) {
            found.push(Finding::SessionActorWithoutRow { session });
        }
    }

    for id in actors {
        if touched_requests.contains(id) {
            continue;
        }
        match requests.get(id) {
            None => found.push(Finding::RequestActorBehindRow { request: *id, state: None }),
            Some(row) if row.state.is_terminal() => {
                found.push(Finding::RequestActorBehindRow { request: *id, state: Some(row.state) })
            }
            Some(row) => {
                let lease = snapshot.leases.iter().find(|l| l.request == *id).map(|l| (l.fence, l.started));
                let row = RequestView { state: row.state, lease };
                if let Some(actor) = views.get(id).filter(|actor| **actor != row) {
                    found.push(Finding::RequestActorOutOfStep { request: *id, actor: *actor, row });
                }
            }
        }
    }

    for request in &snapshot.requests {
        let overdue = request.deadline.checked_add(OVERDUE).is_some_and(|t| t < now);
        if request.state == RequestState::Waiting && request.worker.is_none() && overdue {
            found.push(Finding::WaitingPastDeadline { request: request.id, deadline: request.deadline });
        }
    }

    for view in shared.dir.views(|v| !touched_workers.contains(&v.worker.uuid)) {
        let id = view.worker.uuid;
        if let Some(row) = workers.get(&id)
            && row.state != view.worker.state
            && shared.dir.worker(id).is_some()
        {
            found.push(Finding::WorkerActorBehindRow { worker: id, actor: view.worker.state, row: row.state });
        }
    }
    found
}

/// Repairs one mismatch.
async fn repair(shared: &Arc<Shared>, finding: &Finding, now: SystemTime, notes: &mut Notes) -> Result<(), ActorError> {
    let db = &shared.db;
    match finding.clone() {
        Finding::LeaseNotRunByItsWorker { request, worker, fence, started, worker_state } => {
            let state = worker_state.map_or_else(|| "deregistered".to_string(), |s| s.to_string());
            let found = format!("worker {worker} is {state} and does not run lease {fence}");
            if started {
                let reason = format!("lease lost: {found}");
                let from = RequestState::InProgress;
                let to = from.apply(RequestEvent::Fail).map_err(|e| ActorError::Conflict(e.to_string()))?;
                db.end_lease(request, fence, from, to, now, RECONCILER, &reason).await?;
                retire_request(shared, request);
            } else {
                let record = db.unbind(request, fence, now, RECONCILER, &found).await?;
                requeue_request(shared, record);
            }
            resync_worker(shared, worker);
        }
        Finding::LeaseOfEndedRequest { request, worker, fence, state } => {
            let reason = format!("ended live lease {fence} on worker {worker}: the request was already {state}");
            let (_, prepared) = db.end_lease(request, fence, state, state, now, RECONCILER, &reason).await?;
            retire_request(shared, request);
            if prepared {
                resync_worker(shared, worker);
            }
        }
        Finding::LeaseNeverStarted { request, worker, fence } => {
            let after = corral_core::time::format_duration(shared.settings.prepare_timeout);
            let found = format!("lease {fence} on worker {worker} did not start within {after}");
            let record = db.unbind(request, fence, now, RECONCILER, &found).await?;
            requeue_request(shared, record);
            let moved = move_worker(
                shared,
                worker,
                WorkerState::Running,
                WorkerEvent::LeaseEnded,
                now,
                format!("{found}; revoking the key"),
            )
            .await;
            resync_worker(shared, worker);
            moved?;
        }
        Finding::RunningWithoutLease { worker, .. } => {
            let reason = "running with no live lease; preparing it again".to_string();
            move_worker(shared, worker, WorkerState::Running, WorkerEvent::LeaseEnded, now, reason).await?;
            resync_worker(shared, worker);
        }
        Finding::WorkerOfEndedSession { worker, state } => {
            let reason = format!("its agent session ended while it was {state}");
            if state == WorkerState::Idle {
                let (reply, _) = tokio::sync::oneshot::channel();
                tell(shared.matcher(), MatcherMsg::WithdrawWorker { worker, reply });
            }
            let moved = move_worker(shared, worker, state, WorkerEvent::Fail, now, reason).await;
            resync_worker(shared, worker);
            moved?;
        }
        Finding::SessionActorWithoutRow { session } => {
            crate::agent::session_gone(shared, session, &[], "its session row is gone (reconciler)");
        }
        Finding::RequestActorBehindRow { request, state } => {
            retire_request(shared, request);
            if let Some(state) = state {
                notes.requests.push((request, format!("stopped its actor, which still ran while the row was {state}")));
            }
        }
        Finding::RequestActorOutOfStep { request, actor, row } => {
            restart_request(shared, request).await?;
            let lease = |view: RequestView| match view.lease {
                Some((fence, true)) => format!("{} with lease {fence} started", view.state),
                Some((fence, false)) => format!("{} with lease {fence} not started", view.state),
                None => format!("{} without a lease", view.state),
            };
            let why = format!(
                "restarted its actor from its row: the actor had it {} while the row is {}",
                lease(actor),
                lease(row)
            );
            notes.requests.push((request, why));
        }
        Finding::WorkerActorBehindRow { worker, actor, row } => {
            resync_worker(shared, worker);
            notes
                .workers
                .push((worker, format!("its actor showed {actor} while the row was {row}; it re-read its row")));
        }
        Finding::WaitingPastDeadline { request, deadline } => {
            let reason = format!(
                "deadline {} passed before a lease started (its timeout had not been committed)",
                corral_core::time::format_rfc3339(deadline)
            );
            let from = RequestState::Waiting;
            let to = from.apply(RequestEvent::Timeout).map_err(|e| ActorError::Conflict(e.to_string()))?;
            db.request_transition(request, from, to, now, RECONCILER, &reason).await?;
            retire_request(shared, request);
        }
    }
    Ok(())
}

/// Commits a worker's move from `from` to `to` by the reconciler.
async fn move_worker(
    shared: &Shared,
    worker: WorkerId,
    from: WorkerState,
    event: WorkerEvent,
    at: SystemTime,
    reason: String,
) -> Result<(), ActorError> {
    let to = from.apply(event).map_err(|e| ActorError::Conflict(e.to_string()))?;
    let transition =
        WorkerTransition { uuid: worker, from, to, at, actor: RECONCILER.to_string(), reason, clear_drain: false };
    shared.db.worker_transition(&transition).await?;
    Ok(())
}

/// A request whose row is over: its actor leaves the directory (and stops
/// once nothing holds its address), its tunnel closes, its timers and its
/// place in the matcher's queue go.
fn retire_request(shared: &Shared, id: RequestId) {
    shared.tunnels.close(id);
    tell(shared.timekeeper(), TimerMsg::Unwatch { key: TimerKey::LeaseExpiry(id) });
    let (reply, _) = tokio::sync::oneshot::channel();
    tell(shared.matcher(), MatcherMsg::Withdraw { request: id, reply });
    shared.dir.remove_request(id);
}

/// A request back in the queue: a new actor from its row replaces the one
/// that still believed it bound, and the matcher gets it again.
fn requeue_request(shared: &Arc<Shared>, record: RequestRecord) {
    shared.tunnels.close(record.id);
    let spec = RequestActor::spec(&record);
    let waiting = record.state == RequestState::Waiting && record.worker.is_none();
    crate::rebuild::restore_request(shared, record, None, None);
    if waiting {
        tell(shared.matcher(), MatcherMsg::AddRequest(spec));
    }
}

/// A live request's actor, replaced by one restored from its row, its
/// lease and its worker (as after a restart); a request waiting unbound is
/// queued again.
async fn restart_request(shared: &Arc<Shared>, id: RequestId) -> Result<(), ActorError> {
    let Some(record) = shared.db.get_request(id).await?.filter(|r| !r.state.is_terminal()) else {
        retire_request(shared, id);
        return Ok(());
    };
    let lease = shared.db.load_live_leases().await?.into_iter().find(|l| l.request == id);
    let worker = match &lease {
        Some(lease) => shared.db.load_worker(lease.worker).await?,
        None => None,
    };
    let queue = (lease.is_none() && record.state == RequestState::Waiting).then(|| RequestActor::spec(&record));
    crate::rebuild::restore_request(shared, record, lease, worker.as_ref());
    if let Some(spec) = queue {
        tell(shared.matcher(), MatcherMsg::AddRequest(spec));
    }
    Ok(())
}

/// What each request actor believes, asked without waiting on any of them
/// for long: an actor busy past [`INSPECT_WAIT`] is left out of this pass.
async fn inspect(shared: &Shared, ids: &[RequestId]) -> HashMap<RequestId, RequestView> {
    let mut asked = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(addr) = shared.dir.request(*id) {
            let (reply, answer) = tokio::sync::oneshot::channel();
            tell(&addr, RequestMsg::Inspect { reply });
            asked.push(async move { (*id, tokio::time::timeout(INSPECT_WAIT, answer).await) });
        }
    }
    futures_util::future::join_all(asked)
        .await
        .into_iter()
        .filter_map(|(id, answer)| Some((id, answer.ok()?.ok()?)))
        .collect()
}

/// The worker's actor re-reads its row (and acts on the state it finds).
fn resync_worker(shared: &Shared, worker: WorkerId) {
    if let Some(addr) = shared.dir.worker(worker) {
        tell(&addr, WorkerMsg::Resync);
    }
}
