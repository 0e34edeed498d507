//! Start-up: the live system is rebuilt from the database. Every agent
//! session, worker and live request gets its actor back, live leases get
//! their tunnels back on the same ports, and the crash windows between two
//! commits are closed:
//!
//! - a worker `running` with no live lease goes back through `prepare`;
//! - a live lease whose worker is no longer `running` is lost (the request
//!   fails if the lease had started, else goes back to the queue);
//! - a lease bound but not started gets a new key, sent again;
//! - a work lock whose session is gone is released (ending a session
//!   releases its locks, so this only repairs what older code or a hand
//!   edit left).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use actix::prelude::*;
use corral_core::{RequestState, WorkerState};
use corral_db::{BackoffRecord, LeaseRecord, RequestRecord, WorkerRecord};

use crate::agent::AgentSession;
use crate::directory::SessionEntry;
use crate::matcher::MatcherMsg;
use crate::request::{RequestActor, RequestMsg, WorkerAccess};
use crate::worker::WorkerActor;
use crate::{ActorError, Shared, tell};

pub(crate) async fn rebuild(shared: &Arc<Shared>) -> Result<(), ActorError> {
    let db = &shared.db;
    let graced = db.grace_sessions(shared.clock.db_now()).await?;
    let orphans = db.release_orphan_work_locks(shared.clock.now(), "server").await?;
    if !orphans.is_empty() {
        tracing::warn!(orphans = orphans.len(), "released work locks whose session no longer exists");
    }
    let sessions = db.live_sessions().await?;
    let workers = db.load_workers().await?;
    let requests = db.load_live_requests().await?;
    let leases = db.load_live_leases().await?;
    let mut backoffs = db.load_backoffs(None).await?;
    tracing::info!(
        sessions = sessions.len(),
        graced,
        workers = workers.len(),
        requests = requests.len(),
        leases = leases.len(),
        "rebuilding from the database"
    );

    let mut agents = HashMap::new();
    for session in sessions.into_iter().filter(|s| s.component == "agent") {
        let (session_shared, id, name) = (shared.clone(), session.id, session.name.clone());
        let addr =
            AgentSession::start_in_arbiter(shared.arbiter(), move |_| AgentSession::new(session_shared, id, name));
        shared.dir.add_session(
            session.id,
            SessionEntry {
                addr: addr.clone(),
                agent: session.name.clone(),
                principal: session.principal_id,
                last_beat: Default::default(),
            },
        );
        agents.insert(session.id, addr);
    }

    let lease_by_worker: HashMap<_, _> = leases.iter().map(|l| (l.worker, l.clone())).collect();
    let lease_by_request: HashMap<_, _> = leases.iter().map(|l| (l.request, l.clone())).collect();
    let worker_by_id: HashMap<_, _> = workers.iter().map(|w| (w.uuid, w.clone())).collect();

    let mut specs = Vec::with_capacity(workers.len());
    let mut idle = Vec::new();
    for record in workers {
        specs.push(WorkerActor::spec(&record));
        if record.state == WorkerState::Idle && !record.held() && record.work.is_none() {
            idle.push((record.uuid, record.last_used.unwrap_or(SystemTime::UNIX_EPOCH)));
        }
        let agent = record.session.and_then(|s| agents.get(&s).cloned());
        let lease = lease_by_worker.get(&record.uuid);
        let backoff = backoffs.remove(&record.uuid).unwrap_or_default();
        restore_worker(shared, record, agent, lease, backoff);
    }

    let mut waiting = Vec::new();
    let mut lost = Vec::new();
    for record in requests {
        let lease = lease_by_request.get(&record.id).cloned();
        if lease.is_none() && record.state == RequestState::Waiting {
            waiting.push(RequestActor::spec(&record));
        }
        if let Some(lease) = &lease {
            let worker = worker_by_id.get(&lease.worker);
            if worker.is_none_or(|w| w.state != WorkerState::Running) {
                let state = worker.map_or("deregistered".to_string(), |w| w.state.to_string());
                lost.push((
                    record.id,
                    lease.fence,
                    format!("worker {} is {state} after a server restart", lease.worker),
                ));
            }
        }
        let worker = lease.as_ref().and_then(|l| worker_by_id.get(&l.worker));
        restore_request(shared, record, lease, worker);
    }

    shared.matcher().send(MatcherMsg::Rebuild { workers: specs, idle, requests: waiting }).await?;
    for (request, fence, reason) in lost {
        if let Some(addr) = shared.dir.request(request) {
            tell(&addr, RequestMsg::LeaseLost { fence, reason });
        }
    }
    Ok(())
}

/// Starts the actor of one worker from its row, its live lease (kept only
/// while the worker runs it), agent session and backoff rows, and puts
/// it in the directory (replacing a crashed one). Used at every start and
/// by [`crate::supervise`].
pub(crate) fn restore_worker(
    shared: &Arc<Shared>,
    record: WorkerRecord,
    agent: Option<Addr<AgentSession>>,
    lease: Option<&LeaseRecord>,
    backoff: Vec<BackoffRecord>,
) {
    let lease =
        lease.filter(|_| record.state == WorkerState::Running).map(|l| (l.request, l.fence, l.started_at.is_some()));
    let (worker_shared, id) = (shared.clone(), record.uuid);
    let addr = WorkerActor::start_in_arbiter(shared.arbiter(), move |_| {
        WorkerActor::new(worker_shared, record, agent, lease, backoff)
    });
    shared.dir.add_worker(id, addr);
}

/// Starts the actor of one live request from its row, its lease and the
/// leased worker's row, and puts it in the directory (replacing a crashed
/// one). Used at every start and by [`crate::supervise`].
pub(crate) fn restore_request(
    shared: &Arc<Shared>,
    record: RequestRecord,
    lease: Option<LeaseRecord>,
    worker: Option<&WorkerRecord>,
) {
    let access = worker.map(|w| WorkerAccess {
        ssh_addr: w.ssh_addr.clone(),
        ssh_user: w.ssh_user.clone(),
        host_key: w.host_key.clone(),
    });
    let (request_shared, id) = (shared.clone(), record.id);
    let addr = RequestActor::start_in_arbiter(shared.arbiter(), move |_| {
        RequestActor::restore(request_shared, record, lease, access)
    });
    shared.dir.add_request(id, addr);
}
