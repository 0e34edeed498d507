//! Boruta's matching algorithm, kept as the reference the real matcher is
//! checked against (property tests) and measured against (`corral bench
//! matcher`): walk the waiting requests by priority then submission order;
//! for each, filter all idle workers by caps and groups, sort them, take the
//! one with the fewest caps plus groups; start the walk again after every
//! match. Each decision costs O(requests × workers).

use std::time::SystemTime;

use crate::ids::{RequestId, WorkerId};
use crate::matcher::{Assignment, RequestSpec, WorkerSpec};

#[derive(Debug, Default)]
pub struct BorutaMatcher {
    workers: Vec<(WorkerSpec, Option<SystemTime>)>,
    requests: Vec<RequestSpec>,
}

impl BorutaMatcher {
    pub fn new() -> BorutaMatcher {
        BorutaMatcher::default()
    }

    pub fn add_worker(&mut self, spec: WorkerSpec) {
        self.workers.push((spec, None));
    }

    /// New caps and groups for a registered worker; whether it is idle,
    /// and since when, stays.
    pub fn replace_worker(&mut self, spec: WorkerSpec) {
        if let Some((worker, _)) = self.workers.iter_mut().find(|(w, _)| w.id == spec.id) {
            *worker = spec;
        }
    }

    pub fn is_idle(&self, id: WorkerId) -> bool {
        self.workers.iter().any(|(w, idle)| w.id == id && idle.is_some())
    }

    pub fn remove_worker(&mut self, id: WorkerId) {
        self.workers.retain(|(w, _)| w.id != id);
    }

    pub fn worker_idle(&mut self, id: WorkerId, last_used: SystemTime) {
        if let Some((_, idle)) = self.workers.iter_mut().find(|(w, _)| w.id == id) {
            *idle = Some(last_used);
        }
    }

    pub fn worker_unavailable(&mut self, id: WorkerId) {
        if let Some((_, idle)) = self.workers.iter_mut().find(|(w, _)| w.id == id) {
            *idle = None;
        }
    }

    pub fn add_request(&mut self, spec: RequestSpec) {
        self.requests.push(spec);
    }

    pub fn remove_request(&mut self, id: RequestId) {
        self.requests.retain(|r| r.id != id);
    }

    pub fn waiting(&self) -> impl Iterator<Item = RequestId> + '_ {
        self.requests.iter().map(|r| r.id)
    }

    pub fn next_match(&mut self, now: SystemTime) -> Option<Assignment> {
        self.requests.sort_by_key(|r| (r.priority, r.id));
        for (index, request) in self.requests.iter().enumerate() {
            if request.valid_after > now || request.deadline <= now {
                continue;
            }
            let mut candidates: Vec<&(WorkerSpec, Option<SystemTime>)> = self
                .workers
                .iter()
                .filter(|(w, idle)| {
                    idle.is_some() && request.caps.satisfied_by(w.id, &w.caps) && request.groups.may_use(&w.groups)
                })
                .collect();
            candidates.sort_by_key(|(w, idle)| (w.caps.len() + w.groups.len(), *idle, w.id));
            if let Some((worker, _)) = candidates.first() {
                let assignment = Assignment { request: request.id, worker: worker.id };
                self.requests.remove(index);
                self.worker_unavailable(assignment.worker);
                return Some(assignment);
            }
        }
        None
    }
}
