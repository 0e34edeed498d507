//! Supervision of request and worker actors: a handler that panics stops
//! its actor (the panic is caught at the handler boundary, so the arbiter
//! thread and its other actors go on; uncaught, actix drops the actor and
//! leaves its address in the directory, a zombie whose messages vanish).
//! Callers of the stopped actor get an error (503, retry); a new actor is
//! restored from its database row the way a server restart restores it
//! ([`crate::rebuild`]) and replaces the old one in the directory. An
//! entity that crashed [`MAX_RESTARTS`] times within [`RESTART_WINDOW`] is
//! left stopped, out of the directory, and logged as an error: its row
//! keeps its state and the next server restart restores it; meanwhile the
//! API answers 503 for the worker, and the request is read from its row.
//!
//! Only the synchronous part of a handler is guarded: a panic inside a
//! future the handler returned still stops the actor unsupervised.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use corral_core::{RequestId, WorkerId};

use crate::{ActorError, Shared, rebuild};

/// Most restarts of one entity within [`RESTART_WINDOW`].
pub const MAX_RESTARTS: usize = 3;
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// The entity an actor stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Entity {
    Request(RequestId),
    Worker(WorkerId),
}

impl std::fmt::Display for Entity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Entity::Request(id) => write!(f, "request {id}"),
            Entity::Worker(id) => write!(f, "worker {id}"),
        }
    }
}

/// Recent restarts per entity.
#[derive(Debug, Default)]
pub struct Restarts(Mutex<HashMap<Entity, Vec<Instant>>>);

impl Restarts {
    /// Records a restart; false when the entity used up its restarts.
    fn allow(&self, entity: Entity) -> bool {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let recent = map.entry(entity).or_default();
        recent.retain(|at| now.duration_since(*at) < RESTART_WINDOW);
        if recent.len() >= MAX_RESTARTS {
            return false;
        }
        recent.push(now);
        true
    }
}

/// Runs a handler's synchronous part; if it panics, the actor is stopped,
/// taken out of the directory and restored from its row, and `None` is
/// answered.
pub(crate) fn guarded<A, R>(
    shared: &Arc<Shared>,
    entity: Entity,
    ctx: &mut Context<A>,
    step: impl FnOnce() -> R,
) -> Option<R>
where
    A: Actor<Context = Context<A>>,
{
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(step)) {
        Ok(result) => Some(result),
        Err(_) => {
            ctx.stop();
            crashed(shared, entity);
            None
        }
    }
}

/// Restores a crashed actor. Until the new one replaces it in the
/// directory, the stopped one stays there, so that callers get an error
/// to retry on (503) rather than "not found"; an actor that is not
/// restored (too many crashes, or its row could not be read) is removed.
fn crashed(shared: &Arc<Shared>, entity: Entity) {
    if !shared.restarts.allow(entity) {
        tracing::error!(%entity, restarts = MAX_RESTARTS, "actor crashed too often; left stopped until the server restarts");
        remove(shared, entity);
        return;
    }
    tracing::warn!(%entity, "actor crashed; restoring it from its row");
    let shared = shared.clone();
    actix::spawn(async move {
        let restored = match entity {
            Entity::Request(id) => restore_request(&shared, id).await,
            Entity::Worker(id) => restore_worker(&shared, id).await,
        };
        if let Err(err) = restored {
            tracing::error!(%entity, cause = %err, "could not restore a crashed actor; left stopped");
            crate::reconciler::ask(&shared);
            remove(&shared, entity);
        }
    });
}

fn remove(shared: &Shared, entity: Entity) {
    match entity {
        Entity::Request(id) => shared.dir.remove_request(id),
        Entity::Worker(id) => {
            shared.dir.remove_worker_actor(id);
            // Nothing may be bound to a worker without an actor.
            let (reply, _) = tokio::sync::oneshot::channel();
            crate::tell(shared.matcher(), crate::matcher::MatcherMsg::WithdrawWorker { worker: id, reply });
        }
    }
}

/// A new actor for a live request, from its row and lease
/// ([`rebuild::restore_request`]).
async fn restore_request(shared: &Arc<Shared>, id: RequestId) -> Result<(), ActorError> {
    let record = shared.db.get_request(id).await?.filter(|r| !r.state.is_terminal());
    let Some(record) = record else {
        shared.dir.remove_request(id);
        return Ok(());
    };
    let lease = shared.db.load_live_leases().await?.into_iter().find(|l| l.request == id);
    let worker = match &lease {
        Some(lease) => shared.db.load_worker(lease.worker).await?,
        None => None,
    };
    rebuild::restore_request(shared, record, lease, worker.as_ref());
    Ok(())
}

/// A new actor for a worker, from its row, lease, agent session and
/// backoff ([`rebuild::restore_worker`]); an idle worker is offered to the
/// matcher again.
async fn restore_worker(shared: &Arc<Shared>, id: WorkerId) -> Result<(), ActorError> {
    let Some(record) = shared.db.load_worker(id).await? else {
        shared.dir.remove_worker(id);
        return Ok(());
    };
    let lease = shared.db.load_live_leases().await?.into_iter().find(|l| l.worker == id);
    let backoff = shared.db.load_backoffs(Some(id)).await?.remove(&id).unwrap_or_default();
    let agent = record.session.and_then(|s| shared.dir.session(s)).map(|s| s.addr);
    let idle = (record.state == corral_core::WorkerState::Idle && !record.held() && record.work.is_none())
        .then(|| record.last_used.unwrap_or(std::time::SystemTime::UNIX_EPOCH));
    rebuild::restore_worker(shared, record, agent, lease.as_ref(), backoff);
    if let Some(last_used) = idle {
        crate::tell(shared.matcher(), crate::matcher::MatcherMsg::WorkerIdle { worker: id, last_used });
    }
    Ok(())
}
