//! `/v1/requests`: submit, list, show, history, update, close, acquire,
//! prolong, explain.

use std::time::Duration;

use awc::http::Method;
use corral_core::RequestId;
use corral_proto::requests::{
    AccessDetails, Explanation, HistoryEntry, NewRequest, Prolong, Prolonged, Request, RequestPatch,
};

use crate::{Call, Client, Error, Listing, Paging};

/// The filters of `GET /v1/requests`.
#[derive(Clone, Debug, Default)]
pub struct RequestFilter {
    /// Only these states (`waiting`, `in_progress`, ...; comma-separated
    /// lists are allowed too).
    pub states: Vec<String>,
    /// Only this owner's requests (admins).
    pub owner: Option<String>,
    /// Only this priority.
    pub priority: Option<corral_core::Priority>,
}

fn path(id: RequestId, rest: &str) -> String {
    format!("/v1/requests/{id}{rest}")
}

impl Client {
    /// `POST /v1/requests` with a fresh `Idempotency-Key`, kept across the
    /// server URLs the call tries: the new request (201).
    pub async fn submit(&self, request: &NewRequest) -> Result<Request, Error> {
        let key = uuid::Uuid::new_v4().to_string();
        self.submit_with_key(request, &key).await
    }

    /// `POST /v1/requests` with `Idempotency-Key: key`: a retry with the
    /// same key and body answers the request the first call created.
    pub async fn submit_with_key(&self, request: &NewRequest, key: &str) -> Result<Request, Error> {
        let headers = [("Idempotency-Key", key.to_string())];
        self.answer(Call::new(Method::POST, "/v1/requests").body(request).headers(&headers)).await
    }

    /// `GET /v1/requests`: the requests the caller may see, paged.
    pub async fn requests(&self, filter: &RequestFilter, paging: &Paging) -> Result<Listing<Request>, Error> {
        let mut query: Vec<(&str, String)> = filter.states.iter().map(|s| ("state", s.clone())).collect();
        if let Some(owner) = &filter.owner {
            query.push(("owner", owner.clone()));
        }
        if let Some(priority) = filter.priority {
            query.push(("priority", priority.to_string()));
        }
        self.pages("/v1/requests", &query, paging).await
    }

    /// `GET /v1/requests/{id}`.
    pub async fn request(&self, id: RequestId) -> Result<Request, Error> {
        self.answer(Call::new(Method::GET, &path(id, ""))).await
    }

    /// `GET /v1/requests/{id}/history`: its transitions, oldest first.
    pub async fn request_history(&self, id: RequestId) -> Result<Vec<HistoryEntry>, Error> {
        self.answer(Call::new(Method::GET, &path(id, "/history"))).await
    }

    /// `PATCH /v1/requests/{id}`: a waiting request's priority and times.
    pub async fn update_request(&self, id: RequestId, patch: &RequestPatch) -> Result<Request, Error> {
        self.answer(Call::new(Method::PATCH, &path(id, "")).body(patch)).await
    }

    /// `POST /v1/requests/{id}/close`: cancel a waiting request, end a
    /// lease.
    pub async fn close_request(&self, id: RequestId) -> Result<Request, Error> {
        self.answer(Call::new(Method::POST, &path(id, "/close"))).await
    }

    /// `POST /v1/requests/{id}/acquire?wait=...`: the lease's access
    /// details, waiting up to `wait` (whole seconds, at least 1 when not
    /// zero) on the server for the lease to start; 409 while it waits.
    /// The call's timeout is `wait` plus the client's.
    pub async fn acquire(&self, id: RequestId, wait: Duration) -> Result<AccessDetails, Error> {
        let query = if wait.is_zero() { Vec::new() } else { vec![("wait", format!("{}s", wait.as_secs().max(1)))] };
        let path = path(id, "/acquire");
        self.answer(Call::new(Method::POST, &path).query(&query).timeout(wait + self.timeout())).await
    }

    /// `POST /v1/requests/{id}/prolong`: extend the running lease by `by`
    /// (default: the request's lease length).
    pub async fn prolong(&self, id: RequestId, by: Option<Duration>) -> Result<Prolonged, Error> {
        self.answer(Call::new(Method::POST, &path(id, "/prolong")).body(&Prolong { by })).await
    }

    /// `GET /v1/requests/{id}/explain`: why it still waits.
    pub async fn explain(&self, id: RequestId) -> Result<Explanation, Error> {
        self.answer(Call::new(Method::GET, &path(id, "/explain"))).await
    }
}
