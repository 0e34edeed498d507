//! Where the live actors are, and the latest public view of every worker
//! (read by API handlers without bothering the actors).

use std::collections::HashMap;
use std::sync::RwLock;

use actix::Addr;
use corral_core::{RequestId, SessionId, UserId, WorkerId};
use corral_proto::workers::Worker;

use crate::agent::AgentSession;
use crate::request::RequestActor;
use crate::worker::WorkerActor;

/// What the rest of the system may read about a worker at any time.
#[derive(Clone, Debug)]
pub struct WorkerView {
    pub worker: Worker,
    pub session: Option<SessionId>,
    /// Maintenance requested after the running lease.
    pub drain: Option<String>,
}

/// A live agent session and who opened it.
#[derive(Clone, Debug)]
pub struct SessionEntry {
    pub addr: Addr<AgentSession>,
    pub agent: String,
    /// The agent user whose token opened it; only that user may use it.
    pub principal: UserId,
    /// When its last heartbeat came (for the heartbeat lag metric).
    pub last_beat: std::sync::Arc<std::sync::Mutex<Option<std::time::SystemTime>>>,
}

#[derive(Debug, Default)]
pub struct Directory {
    requests: RwLock<HashMap<RequestId, Addr<RequestActor>>>,
    workers: RwLock<HashMap<WorkerId, Addr<WorkerActor>>>,
    sessions: RwLock<HashMap<SessionId, SessionEntry>>,
    board: RwLock<HashMap<WorkerId, WorkerView>>,
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

impl Directory {
    pub fn request(&self, id: RequestId) -> Option<Addr<RequestActor>> {
        read(&self.requests).get(&id).cloned()
    }

    pub fn add_request(&self, id: RequestId, addr: Addr<RequestActor>) {
        write(&self.requests).insert(id, addr);
    }

    pub fn remove_request(&self, id: RequestId) {
        write(&self.requests).remove(&id);
    }

    /// The requests that have an actor.
    pub fn request_ids(&self) -> Vec<RequestId> {
        read(&self.requests).keys().copied().collect()
    }

    pub fn live_request_count(&self) -> usize {
        read(&self.requests).len()
    }

    pub fn session_count(&self) -> usize {
        read(&self.sessions).len()
    }

    pub fn worker(&self, id: WorkerId) -> Option<Addr<WorkerActor>> {
        read(&self.workers).get(&id).cloned()
    }

    pub fn add_worker(&self, id: WorkerId, addr: Addr<WorkerActor>) {
        write(&self.workers).insert(id, addr);
    }

    /// Takes a stopped worker actor out, keeping the worker's last view
    /// (its row still exists; see [`crate::supervise`]).
    pub fn remove_worker_actor(&self, id: WorkerId) {
        write(&self.workers).remove(&id);
    }

    pub fn remove_worker(&self, id: WorkerId) {
        write(&self.workers).remove(&id);
        write(&self.board).remove(&id);
    }

    pub fn session(&self, id: SessionId) -> Option<SessionEntry> {
        read(&self.sessions).get(&id).cloned()
    }

    pub fn add_session(&self, id: SessionId, entry: SessionEntry) {
        write(&self.sessions).insert(id, entry);
    }

    /// The agent sessions that have an actor.
    pub fn session_ids(&self) -> Vec<SessionId> {
        read(&self.sessions).keys().copied().collect()
    }

    pub fn remove_session(&self, id: SessionId) -> Option<SessionEntry> {
        write(&self.sessions).remove(&id)
    }

    pub fn publish(&self, view: WorkerView) {
        write(&self.board).insert(view.worker.uuid, view);
    }

    pub fn view(&self, id: WorkerId) -> Option<WorkerView> {
        read(&self.board).get(&id).cloned()
    }

    /// Calls `visit` with every worker view, under the read lock, cloning
    /// nothing (counts for metrics).
    pub fn visit_workers(&self, visit: impl FnMut(&WorkerView)) {
        read(&self.board).values().for_each(visit);
    }

    /// All worker views matching `keep`, ordered by UUID.
    pub fn views(&self, mut keep: impl FnMut(&WorkerView) -> bool) -> Vec<WorkerView> {
        let mut views: Vec<WorkerView> = read(&self.board).values().filter(|v| keep(v)).cloned().collect();
        views.sort_by_key(|v| v.worker.uuid);
        views
    }
}
