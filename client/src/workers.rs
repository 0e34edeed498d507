//! `/v1/workers`: list, show, history, admin state, groups, note,
//! quarantine, power cycle, deregister, hand-over.

use awc::http::Method;
use corral_core::WorkerId;
use corral_proto::requests::HistoryEntry;
use corral_proto::workers::{HandOver, NoteChange, QuarantineChange, StateChange, Worker};

use crate::{Call, Client, Error, Listing, Paging};

/// The filters of `GET /v1/workers`.
#[derive(Clone, Debug, Default)]
pub struct WorkerFilter {
    /// Only these states (comma-separated lists are allowed too).
    pub states: Vec<String>,
    /// Only workers in this group.
    pub group: Option<String>,
    /// Only workers with this hold (`quarantine`, `backoff`, ...).
    pub hold: Option<String>,
    /// Only workers offering these caps.
    pub caps: Vec<(String, String)>,
}

fn path(uuid: WorkerId, rest: &str) -> String {
    format!("/v1/workers/{uuid}{rest}")
}

impl Client {
    /// `GET /v1/workers`, paged.
    pub async fn workers(&self, filter: &WorkerFilter, paging: &Paging) -> Result<Listing<Worker>, Error> {
        let mut query: Vec<(&str, String)> = filter.states.iter().map(|s| ("state", s.clone())).collect();
        if let Some(group) = &filter.group {
            query.push(("group", group.clone()));
        }
        if let Some(hold) = &filter.hold {
            query.push(("hold", hold.clone()));
        }
        query.extend(filter.caps.iter().map(|(k, v)| ("cap", format!("{k}={v}"))));
        self.pages("/v1/workers", &query, paging).await
    }

    /// `GET /v1/workers/{uuid}`.
    pub async fn worker(&self, uuid: WorkerId) -> Result<Worker, Error> {
        self.answer(Call::new(Method::GET, &path(uuid, ""))).await
    }

    /// `GET /v1/workers/{uuid}/history`: its transitions, newest first,
    /// paged.
    pub async fn worker_history(&self, uuid: WorkerId, paging: &Paging) -> Result<Listing<HistoryEntry>, Error> {
        self.pages(&path(uuid, "/history"), &[], paging).await
    }

    /// `PUT /v1/workers/{uuid}/state`: idle or maintenance (202).
    pub async fn set_worker_state(&self, uuid: WorkerId, change: &StateChange) -> Result<Worker, Error> {
        self.answer(Call::new(Method::PUT, &path(uuid, "/state")).body(change)).await
    }

    /// `PUT /v1/workers/{uuid}/groups`: the groups, replacing the old ones.
    pub async fn set_worker_groups(&self, uuid: WorkerId, groups: &[String]) -> Result<Worker, Error> {
        self.answer(Call::new(Method::PUT, &path(uuid, "/groups")).body(&groups)).await
    }

    /// `PUT /v1/workers/{uuid}/agent`: hand a worker over to another agent
    /// user.
    pub async fn hand_over_worker(&self, uuid: WorkerId, hand_over: &HandOver) -> Result<Worker, Error> {
        self.answer(Call::new(Method::PUT, &path(uuid, "/agent")).body(hand_over)).await
    }

    /// `PUT /v1/workers/{uuid}/note`: an admin's note (`None` clears it).
    pub async fn set_worker_note(&self, uuid: WorkerId, note: Option<String>) -> Result<Worker, Error> {
        self.answer(Call::new(Method::PUT, &path(uuid, "/note")).body(&NoteChange { note })).await
    }

    /// `PUT /v1/workers/{uuid}/quarantine` with a reason.
    pub async fn quarantine_worker(&self, uuid: WorkerId, reason: &str) -> Result<Worker, Error> {
        let body = QuarantineChange { reason: reason.to_string() };
        self.answer(Call::new(Method::PUT, &path(uuid, "/quarantine")).body(&body)).await
    }

    /// `DELETE /v1/workers/{uuid}/quarantine`: lift the quarantine.
    pub async fn lift_quarantine(&self, uuid: WorkerId) -> Result<Worker, Error> {
        self.answer(Call::new(Method::DELETE, &path(uuid, "/quarantine"))).await
    }

    /// `POST /v1/workers/{uuid}/power-cycle` (202, the worker with its
    /// work).
    pub async fn power_cycle_worker(&self, uuid: WorkerId) -> Result<Worker, Error> {
        self.answer(Call::new(Method::POST, &path(uuid, "/power-cycle"))).await
    }

    /// `DELETE /v1/workers/{uuid}` (204).
    pub async fn deregister_worker(&self, uuid: WorkerId) -> Result<(), Error> {
        self.call::<(), serde_json::Value>(Call::new(Method::DELETE, &path(uuid, ""))).await.map(drop)
    }
}
