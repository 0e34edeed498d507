//! Agent sessions: one actor per live session holds the outbox of commands
//! its agent long-polls, and routes the agent's results back to the worker
//! actors. The use cases of the agent protocol (open, heartbeat, poll,
//! results, close) are methods of [`Corral`] here.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use corral_core::caps::CapsError;
use corral_core::{Caps, FencingToken, Groups, Role, SessionId, WorkerId};
use corral_db::{AgentRegistration, ClaimRefusal, WorkerUpsert};
use corral_proto::agent::{
    Action, Command, CommandBatch, CommandResult, Heartbeat, HeartbeatAck, OpenSession, RegisteredWorker, SessionOpened,
};

use crate::directory::SessionEntry;
use crate::matcher::MatcherMsg;
use crate::worker::{WorkerActor, WorkerMsg};
use crate::{ActorError, Caller, Corral, Reply, Shared, tell};

/// Results are routed by sequence number; remember this many.
const MAX_REMEMBERED: usize = 100_000;
/// Most commands in one long-poll answer.
const MAX_BATCH: usize = 256;

#[derive(Message)]
#[rtype(result = "()")]
pub enum AgentMsg {
    /// Queue a command for the agent. `tag` names this send for the
    /// worker actor, which ignores results of sends it no longer waits for.
    Send {
        worker: WorkerId,
        fence: FencingToken,
        action: Action,
        tag: u64,
    },
    /// Long-poll: commands after `after`, waiting up to `wait` for one.
    Poll {
        after: u64,
        incarnation: Option<String>,
        wait: Duration,
        reply: Reply<CommandBatch>,
    },
    /// The agent's results, routed to the workers.
    Results {
        results: Vec<CommandResult>,
    },
    /// A parked poll's wait is over.
    PollTimeout {
        poll: u64,
    },
    Stop,
}

pub struct AgentSession {
    shared: Arc<Shared>,
    id: SessionId,
    agent: String,
    outbox: VecDeque<Command>,
    sent: HashMap<u64, (WorkerId, Action, u64)>,
    next_seq: u64,
    parked: Option<Parked>,
    polls: u64,
}

/// A long-poll waiting for a command, and the timer that ends its wait.
struct Parked {
    poll: u64,
    reply: Reply<CommandBatch>,
    timer: SpawnHandle,
}

impl AgentSession {
    pub(crate) fn new(shared: Arc<Shared>, id: SessionId, agent: String) -> AgentSession {
        AgentSession {
            shared,
            id,
            agent,
            outbox: VecDeque::new(),
            sent: HashMap::new(),
            next_seq: 1,
            parked: None,
            polls: 0,
        }
    }

    fn batch(&self) -> CommandBatch {
        CommandBatch {
            incarnation: self.shared.incarnation.clone(),
            commands: self.outbox.iter().take(MAX_BATCH).cloned().collect(),
        }
    }

    /// Answers the parked poll, if any, and cancels its timer: a timer left
    /// to run out would stay in the context, which polls all of them at every
    /// message (one per poll, thousands within a poll's wait).
    fn answer_parked(&mut self, ctx: &mut Context<Self>) {
        if let Some(parked) = self.parked.take() {
            ctx.cancel_future(parked.timer);
            let _ = parked.reply.send(self.batch());
        }
    }
}

impl Actor for AgentSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(1024);
    }
}

impl Handler<AgentMsg> for AgentSession {
    type Result = ();

    fn handle(&mut self, msg: AgentMsg, ctx: &mut Self::Context) {
        match msg {
            AgentMsg::Send { worker, fence, action, tag } => {
                let seq = self.next_seq;
                self.next_seq += 1;
                tracing::debug!(session = %self.id, worker = %worker, seq, ?action, "command queued");
                self.sent.insert(seq, (worker, action.clone(), tag));
                if self.sent.len() > MAX_REMEMBERED
                    && let Some(oldest) = self.sent.keys().min().copied()
                {
                    self.sent.remove(&oldest);
                }
                self.outbox.push_back(Command { seq, worker, fence, action });
                self.answer_parked(ctx);
            }
            AgentMsg::Poll { after, incarnation, wait, reply } => {
                let after = if incarnation.as_deref() == Some(self.shared.incarnation.as_str()) { after } else { 0 };
                while self.outbox.front().is_some_and(|c| c.seq <= after) {
                    self.outbox.pop_front();
                }
                // A newer poll supersedes a parked one.
                self.answer_parked(ctx);
                if !self.outbox.is_empty() || wait.is_zero() {
                    let _ = reply.send(self.batch());
                    return;
                }
                self.polls += 1;
                let poll = self.polls;
                let timer = ctx.run_later(wait, move |_, ctx| {
                    ctx.address().do_send(AgentMsg::PollTimeout { poll });
                });
                self.parked = Some(Parked { poll, reply, timer });
            }
            AgentMsg::PollTimeout { poll } => {
                if self.parked.as_ref().is_some_and(|parked| parked.poll == poll) {
                    self.answer_parked(ctx);
                }
            }
            AgentMsg::Results { results } => {
                for result in results {
                    let Some((worker, action, tag)) = self.sent.remove(&result.seq) else {
                        tracing::debug!(session = %self.id, seq = result.seq, "result for an unknown command ignored");
                        continue;
                    };
                    if worker != result.worker {
                        tracing::warn!(session = %self.id, seq = result.seq, "result names another worker; ignored");
                        continue;
                    }
                    if result.stale {
                        tracing::info!(worker = %worker, seq = result.seq, "agent refused a stale command");
                        continue;
                    }
                    if let Some(addr) = self.shared.dir.worker(worker) {
                        tell(&addr, WorkerMsg::Result { action, result, tag, agent_name: self.agent.clone() });
                    }
                }
            }
            AgentMsg::Stop => {
                self.answer_parked(ctx);
                ctx.stop();
            }
        }
    }
}

fn validate(open: &OpenSession) -> Result<(), ActorError> {
    if !corral_core::user::valid_user_name(&open.agent) {
        return Err(ActorError::BadRequest(format!(
            "agent name {:?} must be 1-64 characters of letters, digits, '.', '_' or '-'",
            open.agent
        )));
    }
    if open.workers.len() > 10_000 {
        return Err(ActorError::BadRequest("at most 10000 workers per agent".to_string()));
    }
    let mut seen = HashSet::new();
    for worker in &open.workers {
        if !seen.insert(worker.uuid) {
            return Err(ActorError::BadRequest(format!("worker {} is listed twice", worker.uuid)));
        }
        Caps::validated(worker.caps.to_map()).map_err(|e: CapsError| ActorError::BadRequest(e.to_string()))?;
        Groups::validated(worker.groups.iter().map(str::to_string).collect())
            .map_err(|e: CapsError| ActorError::BadRequest(e.to_string()))?;
        if worker.ssh_addr.trim().is_empty() || worker.ssh_addr.len() > 256 {
            return Err(ActorError::BadRequest(format!("worker {}: ssh_addr must be HOST:PORT", worker.uuid)));
        }
        if !corral_core::ssh::valid_user_name(&worker.user) {
            return Err(ActorError::BadRequest(format!(
                "worker {}: user must be a user name (letters, digits, '.', '_', '-'; at most 32)",
                worker.uuid
            )));
        }
        let hooks = worker.hooks.as_deref().unwrap_or_default();
        let hook_name =
            |h: &String| (1..=32).contains(&h.len()) && h.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
        if hooks.len() > 16 || !hooks.iter().all(hook_name) {
            return Err(ActorError::BadRequest(format!(
                "worker {}: hooks must be at most 16 names of lowercase letters and '_' (at most 32 each)",
                worker.uuid
            )));
        }
    }
    Ok(())
}

impl Corral {
    fn agent_session(&self, caller: &Caller, session: SessionId) -> Result<SessionEntry, ActorError> {
        let entry = self
            .shared()
            .dir
            .session(session)
            .ok_or_else(|| ActorError::NotFound(format!("session {session} is not alive; open a new one")))?;
        if entry.principal != caller.id {
            return Err(ActorError::NotFound(format!("session {session} is not alive; open a new one")));
        }
        Ok(entry)
    }

    /// Registers an agent's workers and opens its session.
    pub async fn open_session(&self, caller: &Caller, open: OpenSession) -> Result<SessionOpened, ActorError> {
        if caller.role != Role::Agent {
            return Err(ActorError::Forbidden("only agent tokens may open agent sessions".to_string()));
        }
        validate(&open)?;
        let shared = self.shared();
        // Workers and agent names are bound to the agent user that
        // registered them: another agent token changes nothing. The claim
        // checks, the session and every worker commit in one transaction:
        // a failure midway leaves no session and no worker changed.
        let id = SessionId::random();
        let timeout = shared.settings.session_timeout;
        let workers = open
            .workers
            .into_iter()
            .map(|worker| WorkerUpsert {
                uuid: worker.uuid,
                agent: open.agent.clone(),
                principal: caller.id,
                session: id,
                caps: worker.caps,
                groups: worker.groups,
                ssh_addr: worker.ssh_addr,
                ssh_user: worker.user,
                host_key: worker.host_key,
                hooks: worker.hooks,
            })
            .collect();
        let registration = AgentRegistration {
            session: id,
            agent: open.agent.clone(),
            principal: caller.name.clone(),
            principal_id: caller.id,
            timeout,
            now: shared.clock.db_now(),
            workers,
            initial: shared.settings.new_worker_state,
            at: shared.clock.now(),
        };
        let upserted = match shared.db.register_agent(&registration).await? {
            Ok((_, upserted)) => upserted,
            Err(ClaimRefusal::OtherPrincipal(what)) => {
                tracing::warn!(agent = %open.agent, principal = %caller.name, refused = %what, "agent session refused");
                return Err(ActorError::Forbidden(format!(
                    "{what}; an admin can hand a worker over (PUT /v1/workers/UUID/agent)"
                )));
            }
            Err(ClaimRefusal::OtherAgent(what)) => return Err(ActorError::Conflict(what)),
        };
        let session_shared = shared.clone();
        let agent_name = open.agent.clone();
        let addr = AgentSession::start_in_arbiter(shared.arbiter(), move |_| {
            AgentSession::new(session_shared, id, agent_name)
        });
        shared.dir.add_session(
            id,
            SessionEntry {
                addr: addr.clone(),
                agent: open.agent.clone(),
                principal: caller.id,
                last_beat: Default::default(),
            },
        );
        tracing::info!(session = %id, agent = %open.agent, workers = upserted.len(), "agent session opened");

        let mut registered = Vec::with_capacity(upserted.len());
        for (record, created) in upserted {
            registered.push(RegisteredWorker { uuid: record.uuid, state: record.state, fence: record.fence });
            let actor = match shared.dir.worker(record.uuid).filter(|_| !created) {
                Some(actor) => actor,
                None => {
                    let (worker_shared, initial_record) = (shared.clone(), record.clone());
                    let actor = WorkerActor::start_in_arbiter(shared.arbiter(), move |_| {
                        WorkerActor::new(worker_shared, initial_record, None, None, Vec::new())
                    });
                    shared.dir.add_worker(record.uuid, actor.clone());
                    tell(shared.matcher(), MatcherMsg::RegisterWorker(WorkerActor::spec(&record)));
                    actor
                }
            };
            tell(
                &actor,
                WorkerMsg::Attach { record: Box::new(record), agent: addr.clone(), agent_name: open.agent.clone() },
            );
        }
        Ok(SessionOpened {
            session: id,
            heartbeat_interval: shared.settings.heartbeat_interval,
            session_timeout: timeout,
            workers: registered,
        })
    }

    /// An admin hands a worker (in maintenance or failed) over to the agent
    /// user `principal`, and to the agent host name `agent` if given: only
    /// that user's agents may claim it from now on. The session that held
    /// it lets it go.
    pub async fn hand_over_worker(
        &self,
        caller: &Caller,
        worker: WorkerId,
        principal: &str,
        agent: Option<&str>,
    ) -> Result<corral_proto::workers::Worker, ActorError> {
        if !caller.is_admin() {
            return Err(ActorError::Forbidden("this needs an admin token".to_string()));
        }
        if let Some(agent) = agent
            && !corral_core::user::valid_user_name(agent)
        {
            return Err(ActorError::BadRequest(format!(
                "agent name {agent:?} must be 1-64 characters of letters, digits, '.', '_' or '-'"
            )));
        }
        let shared = self.shared();
        let user = shared.db.user_by_name(principal).await?.filter(|u| u.role == Role::Agent).ok_or_else(|| {
            ActorError::Unprocessable(format!("there is no agent user named {principal:?} to hand the worker to"))
        })?;
        let reason = match agent {
            Some(agent) => format!("handed over to agent user {} (agent {agent})", user.name),
            None => format!("handed over to agent user {}", user.name),
        };
        let at = shared.clock.now();
        let (record, previous) =
            shared.db.hand_over_worker(worker, user.id, agent, &caller.actor(), &reason, at).await.map_err(
                |e| match e {
                    corral_db::DbError::NotFound { .. } => ActorError::NotFound(format!("worker {worker} not found")),
                    other => other.into(),
                },
            )?;
        tracing::info!(worker = %worker, principal = %user.name, agent = %record.agent, "worker handed over");
        if let Some(addr) = shared.dir.worker(worker) {
            if let Some(session) = previous {
                tell(&addr, WorkerMsg::AgentLost { session, reason: reason.clone() });
            }
            tell(&addr, WorkerMsg::Resync);
        }
        Ok(crate::worker::WorkerActor::view(&record, None, &[]).worker)
    }

    /// Keeps a session alive and passes on what the agent observed.
    pub async fn heartbeat(
        &self,
        caller: &Caller,
        session: SessionId,
        beat: Heartbeat,
    ) -> Result<HeartbeatAck, ActorError> {
        let entry = self.agent_session(caller, session)?;
        // Facts past their bounds refuse the whole heartbeat before
        // anything changes (the session's deadline included).
        for observation in &beat.workers {
            corral_core::facts::check_facts(&observation.facts)
                .and_then(|()| corral_core::facts::check_dimensions(&observation.dimensions))
                .map_err(|e| ActorError::BadRequest(format!("worker {}: {e}", observation.uuid)))?;
        }
        if beat.workers.len() > 10_000 {
            return Err(ActorError::BadRequest("at most 10000 workers per heartbeat".to_string()));
        }
        let shared = self.shared();
        let deadline = shared
            .db
            .heartbeat(session, shared.clock.db_now())
            .await?
            .ok_or_else(|| ActorError::NotFound(format!("session {session} expired; open a new one")))?;
        let now = shared.clock.now();
        let previous = entry.last_beat.lock().map(|mut last| last.replace(now)).unwrap_or(None);
        if let Some(previous) = previous {
            let gap = crate::observe::between(previous, now);
            shared.observer.heartbeat_lag(gap.saturating_sub(shared.settings.heartbeat_interval));
        }
        for observation in beat.workers {
            let Some(view) = shared.dir.view(observation.uuid) else { continue };
            if view.worker.agent != entry.agent || view.session != Some(session) {
                continue;
            }
            if let Some(addr) = shared.dir.worker(observation.uuid) {
                tell(&addr, WorkerMsg::Observed { facts: observation.facts, dimensions: observation.dimensions });
            }
        }
        Ok(HeartbeatAck { deadline })
    }

    pub async fn poll_commands(
        &self,
        caller: &Caller,
        session: SessionId,
        after: u64,
        incarnation: Option<String>,
        wait: Duration,
    ) -> Result<CommandBatch, ActorError> {
        let entry = self.agent_session(caller, session)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        entry.addr.send(AgentMsg::Poll { after, incarnation, wait, reply: tx }).await?;
        Ok(rx.await?)
    }

    pub async fn post_results(
        &self,
        caller: &Caller,
        session: SessionId,
        results: Vec<CommandResult>,
    ) -> Result<(), ActorError> {
        let entry = self.agent_session(caller, session)?;
        entry.addr.send(AgentMsg::Results { results }).await?;
        Ok(())
    }

    /// A clean agent shutdown: its workers are failed now rather than when
    /// the session would have expired.
    pub async fn close_session(&self, caller: &Caller, session: SessionId) -> Result<(), ActorError> {
        let entry = self.agent_session(caller, session)?;
        let shared = self.shared();
        let reason = format!("agent {} closed its session", entry.agent);
        let workers = shared.db.close_session(session, &reason, shared.clock.db_now()).await?;
        self.session_gone(session, &workers, &reason);
        Ok(())
    }

    /// Stops a session's actor and tells its workers.
    pub(crate) fn session_gone(&self, session: SessionId, workers: &[WorkerId], reason: &str) {
        session_gone(self.shared(), session, workers, reason);
    }
}

pub(crate) fn session_gone(shared: &Shared, session: SessionId, workers: &[WorkerId], reason: &str) {
    if let Some(entry) = shared.dir.remove_session(session) {
        tell(&entry.addr, AgentMsg::Stop);
    }
    for worker in workers {
        if let Some(addr) = shared.dir.worker(*worker) {
            tell(&addr, WorkerMsg::AgentLost { session, reason: reason.to_string() });
        }
    }
    tracing::info!(session = %session, workers = workers.len(), reason = %reason, "agent session ended");
}
