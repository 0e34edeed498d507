//! `/v1/workers`: list, read and history (what the caller may use), and the
//! admin actions: state, groups, deregister, hand-over to another agent user.

use actix_web::{HttpRequest, HttpResponse, web};
use corral_core::{Groups, WorkerId, WorkerState};
use corral_proto::Page;
use corral_proto::requests::HistoryEntry;
use corral_proto::workers::{StateChange, Worker};

use crate::auth::Auth;
use crate::error::ApiError;
use crate::query::{Query, parse_limit};
use crate::{AppState, endpoint};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/v1/workers")
            .service(endpoint("").route(web::get().to(list)))
            .service(endpoint("/{uuid}").route(web::get().to(get)).route(web::delete().to(deregister)))
            .service(endpoint("/{uuid}/history").route(web::get().to(history)))
            .service(endpoint("/{uuid}/state").route(web::put().to(set_state)))
            .service(endpoint("/{uuid}/groups").route(web::put().to(set_groups)))
            .service(endpoint("/{uuid}/agent").route(web::put().to(hand_over))),
    );
}

fn worker_id(path: &str) -> Result<WorkerId, ApiError> {
    path.parse().map_err(|_| ApiError::bad_request(format!("worker id must be a UUID, got {path:?}")))
}

fn visible(caller: &corral_actors::Caller, worker: &Worker) -> bool {
    corral_actors::explain::may_see(caller, worker)
}

async fn list(state: web::Data<AppState>, auth: Auth, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let caller = auth.require_person()?;
    let query = Query::parse(&req)?;
    query.only(&["state", "group", "cap", "limit", "cursor"])?;
    let limit = parse_limit(&query)? as usize;
    let mut states = Vec::new();
    for text in query.all("state") {
        for one in text.split(',').filter(|s| !s.is_empty()) {
            states.push(one.parse::<WorkerState>().map_err(ApiError::bad_request)?);
        }
    }
    let group = query.one("group")?.map(str::to_string);
    let caps = query.caps()?;
    let after = match query.one("cursor")? {
        Some(c) => Some(c.parse::<WorkerId>().map_err(|_| ApiError::bad_request("invalid cursor"))?),
        None => None,
    };
    let views = state.corral.shared().dir.views(|v| {
        let w = &v.worker;
        visible(caller, w)
            && (states.is_empty() || states.contains(&w.state))
            && group.as_deref().is_none_or(|g| w.groups.contains(g))
            && caps.iter().all(|(k, val)| w.caps.get(k) == Some(val.as_str()))
            && after.is_none_or(|a| w.uuid > a)
    });
    let next_cursor = (views.len() > limit).then(|| views[limit - 1].worker.uuid.to_string());
    let items: Vec<Worker> = views.into_iter().take(limit).map(|v| v.worker).collect();
    Ok(HttpResponse::Ok().json(Page { items, next_cursor }))
}

async fn get(state: web::Data<AppState>, auth: Auth, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let caller = auth.require_person()?;
    let id = worker_id(&path)?;
    match state.corral.shared().dir.view(id) {
        Some(view) if visible(caller, &view.worker) => Ok(HttpResponse::Ok().json(view.worker)),
        _ => Err(ApiError::not_found(format!("worker {id} not found"))),
    }
}

/// `GET /v1/workers/{uuid}/history?limit=N&cursor=C`: every transition,
/// newest first, paged like the lists (`next_cursor`).
async fn history(
    state: web::Data<AppState>,
    auth: Auth,
    path: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let caller = auth.require_person()?;
    let id = worker_id(&path)?;
    let query = Query::parse(&req)?;
    query.only(&["limit", "cursor"])?;
    let limit = parse_limit(&query)?;
    let before = match query.one("cursor")? {
        None => None,
        Some(cursor) => Some(
            cursor
                .strip_prefix('h')
                .and_then(|hex| i64::from_str_radix(hex, 16).ok())
                .filter(|id| *id > 0)
                .ok_or_else(|| ApiError::bad_request("invalid cursor; pass back the next_cursor of a previous page"))?,
        ),
    };
    let mut rows = state.corral.worker_history(caller, id, before, limit + 1).await?;
    let next_cursor = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|(id, _)| format!("h{id:x}"))
    } else {
        None
    };
    let items: Vec<HistoryEntry> = rows
        .into_iter()
        .map(|(_, h)| HistoryEntry { at: h.at, from: h.from, to: h.to, actor: h.actor, reason: h.reason })
        .collect();
    Ok(HttpResponse::Ok().json(Page { items, next_cursor }))
}

fn current(state: &AppState, id: WorkerId) -> Result<Worker, ApiError> {
    state.corral.shared().dir.view(id).map(|v| v.worker).ok_or_else(|| ApiError::internal(&"worker view missing"))
}

#[tracing::instrument(skip_all, fields(worker = %path.as_str()))]
async fn set_state(
    state: web::Data<AppState>,
    auth: Auth,
    path: web::Path<String>,
    body: web::Json<StateChange>,
) -> Result<HttpResponse, ApiError> {
    let caller = auth.require_admin()?;
    let id = worker_id(&path)?;
    let change = body.into_inner();
    if change.reason.as_ref().is_some_and(|r| r.len() > 1024) {
        return Err(ApiError::bad_request("reason may be at most 1024 bytes"));
    }
    state.corral.set_worker_state(caller, id, change).await?;
    Ok(HttpResponse::Accepted().json(current(&state, id)?))
}

#[tracing::instrument(skip_all, fields(worker = %path.as_str()))]
async fn set_groups(
    state: web::Data<AppState>,
    auth: Auth,
    path: web::Path<String>,
    body: web::Json<Vec<String>>,
) -> Result<HttpResponse, ApiError> {
    let caller = auth.require_admin()?;
    let id = worker_id(&path)?;
    let groups =
        Groups::validated(body.into_inner().into_iter().collect()).map_err(|e| ApiError::bad_request(e.to_string()))?;
    state.corral.set_worker_groups(caller, id, groups).await?;
    Ok(HttpResponse::Ok().json(current(&state, id)?))
}

#[tracing::instrument(skip_all, fields(worker = %path.as_str()))]
async fn deregister(state: web::Data<AppState>, auth: Auth, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let caller = auth.require_admin()?;
    let id = worker_id(&path)?;
    state.corral.deregister_worker(caller, id).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Body of `PUT /v1/workers/{uuid}/agent`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HandOver {
    /// The agent user (its name) whose agents may claim the worker.
    principal: String,
    /// The agent host name to register it under; unset: unchanged.
    #[serde(default)]
    agent: Option<String>,
}

/// An admin hands a worker in maintenance or failed over to another agent
/// user: 200 with the worker; 409 in another state; 422 if `principal` is
/// not an agent user.
#[tracing::instrument(skip_all, fields(worker = %path.as_str()))]
async fn hand_over(
    state: web::Data<AppState>,
    auth: Auth,
    path: web::Path<String>,
    body: web::Json<HandOver>,
) -> Result<HttpResponse, ApiError> {
    let caller = auth.require_admin()?;
    let id = worker_id(&path)?;
    let body = body.into_inner();
    let worker = state.corral.hand_over_worker(caller, id, &body.principal, body.agent.as_deref()).await?;
    Ok(HttpResponse::Ok().json(worker))
}
