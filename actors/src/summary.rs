//! `Corral::summary`: the lab's figures at one instant, read from memory
//! (the directory, the tunnels, the matcher's mailbox, the batch writers'
//! counters), for `/metrics`. Costs one matcher message and one pass over
//! the worker views; no query.

use corral_core::WorkerState;

use crate::matcher::MatcherStats;

/// What [`crate::Corral::summary`] reads.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Every state, registered workers in it (zero included).
    pub workers_by_state: Vec<(WorkerState, usize)>,
    /// Request actors alive: waiting and in progress.
    pub live_requests: usize,
    /// Live agent sessions.
    pub agent_sessions: usize,
    /// Tunnels open (one per live lease) and connections accepted so far.
    pub tunnels_open: usize,
    pub tunnel_connections: u64,
    pub matcher: MatcherStats,
    /// Calls and statements of the batch writers so far.
    pub batch_calls: u64,
    pub batch_statements: u64,
}

impl crate::Corral {
    pub async fn summary(&self) -> Result<Summary, crate::ActorError> {
        let matcher = self.matcher_stats().await?;
        let shared = self.shared();
        let mut workers_by_state: Vec<(WorkerState, usize)> = WorkerState::ALL.into_iter().map(|s| (s, 0)).collect();
        shared.dir.visit_workers(|view| {
            if let Some(entry) = workers_by_state.iter_mut().find(|(s, _)| *s == view.worker.state) {
                entry.1 += 1;
            }
        });
        let batch = shared.db.batch_stats();
        Ok(Summary {
            workers_by_state,
            live_requests: shared.dir.live_request_count(),
            agent_sessions: shared.dir.session_count(),
            tunnels_open: shared.tunnels.open_count(),
            tunnel_connections: shared.tunnels.connections(),
            matcher,
            batch_calls: batch.calls,
            batch_statements: batch.statements,
        })
    }
}
