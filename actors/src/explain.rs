//! Why a request still waits (`GET /v1/requests/{id}/explain`), as a use
//! case: what the matcher knows of it, the public views of the workers it
//! could use (held by the directory, no query per worker), and one query
//! for the leases that hold them.
//!
//! Bounded and scoped: at most [`MAX_EXPLAINED_WORKERS`] workers are
//! listed (with the total count), only workers the caller may see (the
//! group rule of `GET /v1/workers`), and another user's request is never
//! named to anyone but an admin.

use std::time::SystemTime;

use corral_core::{RequestId, RequestState, WorkerState};
use corral_proto::requests::{Explanation, WorkerObstacle};

use crate::{ActorError, Caller, Corral};

/// Most workers listed in one explanation.
pub const MAX_EXPLAINED_WORKERS: usize = 100;

fn reason_or_none(reason: &Option<String>) -> &str {
    reason.as_deref().unwrap_or("no reason given")
}

impl Corral {
    /// Explains the request `id` to `caller` (its owner or an admin; 404
    /// for anyone else).
    pub async fn explain_request(&self, caller: &Caller, id: RequestId) -> Result<Explanation, ActorError> {
        let record = self.request(caller, id).await?;
        let answer = |summary: String, position: Option<usize>| Explanation {
            request_id: id,
            state: record.state,
            summary,
            position,
            competing: None,
            workers: Vec::new(),
            workers_total: 0,
        };
        if record.state != RequestState::Waiting {
            let summary = match (record.state, record.worker) {
                (RequestState::InProgress, Some(w)) => format!("not waiting: it holds worker {w}"),
                (state, _) => format!("not waiting: it is {state}"),
            };
            return Ok(answer(summary, None));
        }
        if let Some(worker) = record.worker {
            return Ok(answer(
                format!("matched to worker {worker}; waiting for its agent to install the lease key"),
                Some(0),
            ));
        }
        let Some(found) = self.explain(id).await? else {
            return Ok(answer("being matched right now".to_string(), Some(0)));
        };
        // One pass over the matching workers' public views: count what the
        // caller may see, keep only the first few.
        let dir = &self.shared().dir;
        let seen = |ids: &[corral_core::WorkerId], room: usize| {
            let (mut count, mut kept) = (0, Vec::new());
            for view in ids.iter().filter_map(|uuid| dir.view(*uuid)) {
                if caller.may_see_worker(&view.worker.groups) {
                    count += 1;
                    if kept.len() < room {
                        kept.push(view.worker);
                    }
                }
            }
            (count, kept)
        };
        let (visible_candidates, candidates) = seen(&found.candidates, MAX_EXPLAINED_WORKERS);
        let (visible_mismatched, mismatched) =
            seen(&found.group_mismatch, MAX_EXPLAINED_WORKERS.saturating_sub(candidates.len()));
        let workers_total = visible_candidates + visible_mismatched;

        // One query for the leases that hold the listed running workers.
        let holders: Vec<RequestId> =
            candidates.iter().filter(|w| w.state == WorkerState::Running).filter_map(|w| w.request).collect();
        let leases = if holders.is_empty() { Default::default() } else { self.db().lease_holders(&holders).await? };
        let until = |t: Option<SystemTime>| {
            t.map(|t| format!(" until {}", corral_core::time::format_rfc3339(t))).unwrap_or_default()
        };
        let mut workers = Vec::with_capacity(candidates.len() + mismatched.len());
        for w in &candidates {
            // A hold or a power cycle keeps an idle worker out of matching:
            // that is why it is not taken (the state alone says idle).
            let held = match (&w.quarantine, &w.recovery, &w.work) {
                (Some(why), _, _) => Some(format!(
                    "quarantined by {}: {why}; an admin must lift it",
                    w.quarantine_by.as_deref().unwrap_or("an admin")
                )),
                (None, Some(why), _) => Some(format!("in recovery: {why}; it returns when its facts recover")),
                (None, None, Some(work)) => Some(format!("held by an on-demand {}", work.replace('_', " "))),
                _ => None,
            };
            let why = match w.state {
                WorkerState::Idle if held.is_some() => held.unwrap_or_default(),
                WorkerState::Running => match w.request.and_then(|r| leases.get(&r).map(|l| (r, l))) {
                    Some((holder, (owner, expires))) if caller.is_admin() || *owner == caller.id => {
                        format!("running request {holder}{}", until(*expires))
                    }
                    Some((_, (_, expires))) => format!("running another user's lease{}", until(*expires)),
                    None => "running a lease".to_string(),
                },
                WorkerState::Maintenance => format!("in maintenance: {}", reason_or_none(&w.reason)),
                WorkerState::Busy => format!("going to maintenance: {}", reason_or_none(&w.reason)),
                WorkerState::Failed => format!("failed: {}", reason_or_none(&w.reason)),
                WorkerState::Prepare => "being prepared for the next lease".to_string(),
                WorkerState::Idle => "idle; requests ahead of this one take it first".to_string(),
            };
            workers.push(WorkerObstacle { uuid: w.uuid, state: w.state, why });
        }
        for w in &mismatched {
            let groups: Vec<&str> = w.groups.iter().collect();
            workers.push(WorkerObstacle {
                uuid: w.uuid,
                state: w.state,
                why: format!("group mismatch: the worker serves groups [{}] only", groups.join(", ")),
            });
        }
        let now = self.clock().now();
        // Counts only of what the caller may see: a user learns nothing of
        // workers outside its groups.
        let summary = if !found.visible {
            format!("not eligible before valid_after {}", corral_core::time::format_rfc3339(record.valid_after))
        } else if visible_candidates == 0 && !caller.is_admin() {
            "no registered worker that the owner may use has these caps".to_string()
        } else if found.candidates.is_empty() && found.group_mismatch.is_empty() {
            "no registered worker has these caps".to_string()
        } else if found.candidates.is_empty() {
            "every worker with these caps belongs to groups the owner is not in".to_string()
        } else if record.valid_after > now {
            "waiting for valid_after".to_string()
        } else {
            format!(
                "position {} of {} waiting for the same workers; none of its {} matching workers is idle",
                found.position, found.competing, visible_candidates
            )
        };
        Ok(Explanation {
            request_id: id,
            state: record.state,
            summary,
            position: Some(found.position),
            competing: Some(found.competing),
            workers,
            workers_total,
        })
    }
}
