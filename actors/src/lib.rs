//! The live corral system, as actix actors:
//!
//! - one [`request::RequestActor`] per live (waiting or in-progress)
//!   request: owns its row while it is not bound, its lease key, its
//!   tunnel, its acquire waiters;
//! - one [`worker::WorkerActor`] per worker: owns the worker row and talks
//!   to the worker's agent through its session;
//! - one [`agent::AgentSession`] per live agent session: the outbox of
//!   commands the agent long-polls;
//! - the [`matcher::MatcherActor`]: the in-memory matcher of the core,
//!   committing each batch of decisions in one transaction;
//! - the [`timekeeper::Timekeeper`]: lease expiry, and the timeouts and
//!   retries of every command sent to an agent;
//! - the [`reaper::Reaper`]: expires agent sessions whose heartbeats
//!   stopped;
//! - the [`reconciler::Reconciler`]: compares the database with the live
//!   actors and repairs what a failed commit left behind.
//!
//! [`Corral`] is the handle the HTTP API uses; its methods are grouped by
//! use case in the module of the actor they drive.
//!
//! Architecture invariants: every state change is committed to the
//! database before anyone is told about it; actors never block their
//! arbiter (key generation runs on blocking threads); actor-to-actor
//! messages that could form a cycle are sent without waiting.

pub mod agent;
pub mod audit;
pub mod clock;
mod command;
pub mod directory;
pub mod error;
pub mod events;
pub mod explain;
pub mod keys;
pub mod matcher;
pub mod observe;
pub mod overview;
pub mod owners;
pub mod reaper;
mod rebuild;
pub mod reconciler;
pub mod request;
pub mod settings;
pub mod startup;
pub mod summary;
pub mod supervise;
pub mod timekeeper;
pub mod tunnel;
mod users;
pub mod worker;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use actix::dev::ToEnvelope;
use actix::{Actor, Addr, Arbiter, ArbiterHandle, Handler, Message};
use corral_core::{Groups, Role, UserId};
use corral_db::Db;

pub use clock::Clock;
pub use error::ActorError;
pub use settings::{KeyKind, Settings};

use crate::directory::Directory;
use crate::matcher::MatcherActor;
use crate::timekeeper::Timekeeper;
use crate::tunnel::Tunnels;

/// Answer channel carried by messages that need one.
pub type Reply<T> = tokio::sync::oneshot::Sender<T>;

/// Who is asking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The user's identity; ownership checks compare it, never the name.
    pub id: UserId,
    pub name: String,
    pub role: Role,
    pub groups: Groups,
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Whether this caller owns `record` (by identity, not by name).
    pub fn owns(&self, record: &corral_core::records::RequestRecord) -> bool {
        record.owner_id == self.id
    }

    /// The one rule of who may read and act on a request: its owner (by
    /// identity) and admins. Request reads, request actions and the event
    /// stream all ask this.
    pub fn may_read_request_of(&self, owner: UserId) -> bool {
        self.is_admin() || owner == self.id
    }

    /// The one rule of which workers a caller may see (`GET /v1/workers`,
    /// explanations, the event stream): admins all; others the public ones
    /// (no groups) and those sharing a group with them.
    pub fn may_see_worker(&self, worker_groups: &Groups) -> bool {
        self.is_admin() || self.groups.may_use(worker_groups)
    }

    /// How this caller is named in history rows.
    pub fn actor(&self) -> String {
        match self.role {
            Role::Agent => format!("agent:{}", self.name),
            _ => format!("user:{}", self.name),
        }
    }
}

/// What one [`Corral::tick`] set off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TickReport {
    /// Agent sessions expired (their workers fail).
    pub sessions_expired: usize,
    /// Timers fired: lease expiries, command timeouts and retries,
    /// backoffs.
    pub timers_fired: usize,
    /// Waiting requests whose deadline passed.
    pub timed_out: usize,
    /// Request-worker pairs the matcher decided.
    pub decisions: u64,
}

/// State shared by every actor.
pub struct Shared {
    pub db: Db,
    pub clock: Clock,
    pub settings: Settings,
    pub dir: Directory,
    /// Per-user waiting counts and deletions in progress.
    pub owners: owners::Owners,
    /// Recent restarts of crashed actors ([`supervise`]).
    pub restarts: supervise::Restarts,
    pub tunnels: Tunnels,
    /// Changes at every start; agents learn that command sequence numbers
    /// restarted.
    pub incarnation: String,
    /// This replica's server session, which holds scheduling leadership;
    /// every binding checks it.
    pub leader: corral_core::SessionId,
    /// The event stream's reader and broadcast ([`events`]).
    pub events: events::EventHub,
    /// Where the actors report what they time ([`observe`]).
    pub observer: Arc<dyn observe::Observer>,
    pub(crate) auth: users::AuthCache,
    matcher: OnceLock<Addr<MatcherActor>>,
    timekeeper: OnceLock<Addr<Timekeeper>>,
    reconciler: OnceLock<Addr<reconciler::Reconciler>>,
    reaper: OnceLock<Addr<reaper::Reaper>>,
    arbiters: Vec<ArbiterHandle>,
    next_arbiter: AtomicUsize,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("incarnation", &self.incarnation).finish()
    }
}

impl Shared {
    pub fn matcher(&self) -> &Addr<MatcherActor> {
        self.matcher.get().expect("the matcher starts before anything uses it")
    }

    pub fn timekeeper(&self) -> &Addr<Timekeeper> {
        self.timekeeper.get().expect("the timekeeper starts before anything uses it")
    }

    /// The arbiter for the next request or worker actor (round robin).
    pub(crate) fn arbiter(&self) -> &ArbiterHandle {
        let n = self.next_arbiter.fetch_add(1, Ordering::Relaxed);
        &self.arbiters[n % self.arbiters.len()]
    }
}

/// Sends without waiting and without blocking: a full mailbox is waited on
/// by a spawned task instead of the sender. Used between actors, where
/// waiting could form a cycle.
pub(crate) fn tell<A, M>(addr: &Addr<A>, msg: M)
where
    A: Actor + Handler<M>,
    A::Context: ToEnvelope<A, M>,
    M: Message + Send + 'static,
    M::Result: Send,
{
    match addr.try_send(msg) {
        Ok(()) => {}
        Err(actix::dev::SendError::Full(msg)) => {
            let addr = addr.clone();
            actix::spawn(async move {
                if addr.send(msg).await.is_err() {
                    tracing::debug!("message to a stopped actor dropped");
                }
            });
        }
        Err(actix::dev::SendError::Closed(_)) => tracing::debug!("message to a stopped actor dropped"),
    }
}

/// The running system.
#[derive(Clone, Debug)]
pub struct Corral {
    shared: Arc<Shared>,
}

impl Corral {
    /// Starts the actors and rebuilds them from the database. Must run
    /// inside an actix system, on a replica whose server session `leader`
    /// holds the scheduling leadership.
    pub async fn start(
        db: Db,
        settings: Settings,
        clock: Clock,
        leader: corral_core::SessionId,
    ) -> Result<Corral, ActorError> {
        Corral::start_observed(db, settings, clock, leader, Arc::new(observe::Unobserved)).await
    }

    /// [`Corral::start`], reporting what the actors time to `observer`.
    pub async fn start_observed(
        db: Db,
        settings: Settings,
        clock: Clock,
        leader: corral_core::SessionId,
        observer: Arc<dyn observe::Observer>,
    ) -> Result<Corral, ActorError> {
        let arbiters: Vec<ArbiterHandle> =
            (0..settings.actor_threads.max(1)).map(|_| Arbiter::new().handle()).collect();
        // The event stream starts after the rows committed so far; what the
        // rebuild below writes is its first news.
        let (request_head, worker_head) = db.history_heads().await?;
        let events = events::EventHub::new(
            corral_proto::events::EventId { request: request_head, worker: worker_head },
            settings.events_buffer,
        );
        let shared = Arc::new(Shared {
            tunnels: Tunnels::new(
                settings.tunnel_bind,
                settings.tunnel_ports.clone(),
                tunnel::TunnelLimits {
                    max_connections: settings.tunnel_max_connections,
                    idle_timeout: settings.tunnel_idle_timeout,
                },
            ),
            db,
            clock,
            settings,
            dir: Directory::default(),
            owners: owners::Owners::default(),
            restarts: supervise::Restarts::default(),
            incarnation: uuid::Uuid::new_v4().simple().to_string(),
            leader,
            events,
            observer,
            auth: users::AuthCache::default(),
            matcher: OnceLock::new(),
            timekeeper: OnceLock::new(),
            reconciler: OnceLock::new(),
            reaper: OnceLock::new(),
            arbiters,
            next_arbiter: AtomicUsize::new(0),
        });
        shared.arbiters[0].spawn(events::run_hub(shared.clone()));
        let matcher_shared = shared.clone();
        let matcher = MatcherActor::start_in_arbiter(&shared.arbiters[0], move |_| MatcherActor::new(matcher_shared));
        let _ = shared.matcher.set(matcher);
        let timer_shared = shared.clone();
        let timekeeper = Timekeeper::start_in_arbiter(&shared.arbiters[0], move |_| Timekeeper::new(timer_shared));
        let _ = shared.timekeeper.set(timekeeper);
        let reconciler_shared = shared.clone();
        let reconciler = reconciler::Reconciler::start_in_arbiter(&shared.arbiters[0], move |_| {
            reconciler::Reconciler::new(reconciler_shared)
        });
        let _ = shared.reconciler.set(reconciler);
        rebuild::rebuild(&shared).await?;
        let reaper_shared = shared.clone();
        let reaper = reaper::Reaper::start_in_arbiter(&shared.arbiters[0], move |_| reaper::Reaper::new(reaper_shared));
        let _ = shared.reaper.set(reaper);
        Ok(Corral { shared })
    }

    /// One pass of every clock-driven check at the clock's current time,
    /// answered once it was processed: agent sessions past their deadline,
    /// timers (lease expiry, command timeouts and retries, backoffs), then
    /// the matcher (valid_after, deadlines, decisions). The report says
    /// what the pass set off. Tests that move a manual clock assert on it
    /// instead of sleeping to show that nothing was due; the messages it
    /// sent are handled after it answers.
    pub async fn tick(&self) -> Result<TickReport, ActorError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if let Some(reaper) = self.shared.reaper.get() {
            reaper.send(reaper::Sweep(tx)).await?;
        }
        let sessions_expired = rx.await.unwrap_or(0);
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.shared.timekeeper().send(timekeeper::TimerMsg::Tick { reply: tx }).await?;
        let timers_fired = rx.await?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.shared.matcher().send(matcher::MatcherMsg::Tick { reply: tx }).await?;
        let matcher::MatcherTick { timed_out, decisions } = rx.await?;
        Ok(TickReport { sessions_expired, timers_fired, timed_out, decisions })
    }

    /// Whether the database answers now: the readiness probe. Its cause
    /// is an [`ActorError::Unavailable`] when it does not.
    pub async fn check_database(&self) -> Result<(), ActorError> {
        self.shared.db.ping().await.map_err(|e| ActorError::Unavailable(e.to_string()))
    }

    /// The actors' shared state. Public only with the test-only feature
    /// `fault-injection`, for white-box checks: everything else goes
    /// through the use cases of [`Corral`] (architecture invariant).
    #[cfg(feature = "fault-injection")]
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    #[cfg(not(feature = "fault-injection"))]
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The database handle; public only with `fault-injection` (see
    /// [`Corral::shared`]).
    #[cfg(feature = "fault-injection")]
    pub fn db(&self) -> &Db {
        &self.shared.db
    }

    #[cfg(not(feature = "fault-injection"))]
    pub(crate) fn db(&self) -> &Db {
        &self.shared.db
    }

    pub fn clock(&self) -> &Clock {
        &self.shared.clock
    }

    pub fn settings(&self) -> &Settings {
        &self.shared.settings
    }
}
