//! `/v1/workers`: list, read and history (what the caller may use), and the
//! admin actions: state, groups, deregister, hand-over to another agent user,
//! note, quarantine; and a power cycle, by an admin or the holder of the
//! worker's lease. Every admin action is audited ([`crate::audit::audited`]).

use actix_web::{HttpRequest, HttpResponse, web};
use corral_core::{Groups, WorkerId, WorkerState};
use corral_proto::Page;
use corral_proto::requests::HistoryEntry;
use corral_proto::workers::{NoteChange, QuarantineChange, StateChange, Worker};

use crate::audit::audited;
use crate::auth::Auth;
use crate::error::ApiError;
use crate::query::{Query, id_cursor, parse_id_cursor, parse_limit};
use crate::{AppState, endpoint};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/v1/workers")
            .service(endpoint("").route(web::get().to(list)))
            .service(endpoint("/{uuid}").route(web::get().to(get)).route(web::delete().to(deregister)))
            .service(endpoint("/{uuid}/history").route(web::get().to(history)))
            .service(endpoint("/{uuid}/state").route(web::put().to(set_state)))
            .service(endpoint("/{uuid}/groups").route(web::put().to(set_groups)))
            .service(endpoint("/{uuid}/agent").route(web::put().to(hand_over)))
            .service(endpoint("/{uuid}/note").route(web::put().to(set_note)))
            .service(endpoint("/{uuid}/power-cycle").route(web::post().to(power_cycle)))
            .service(
                endpoint("/{uuid}/quarantine")
                    .route(web::put().to(quarantine))
                    .route(web::delete().to(lift_quarantine)),
            ),
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
    query.only(&["state", "group", "cap", "hold", "limit", "cursor"])?;
    let hold = query.one("hold")?;
    if hold.is_some_and(|h| !["quarantine", "recovery", "any", "none"].contains(&h)) {
        return Err(ApiError::bad_request("hold must be quarantine, recovery, any or none"));
    }
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
            && match hold {
                Some("quarantine") => w.quarantine.is_some(),
                Some("recovery") => w.recovery.is_some(),
                Some("any") => w.quarantine.is_some() || w.recovery.is_some(),
                Some("none") => w.quarantine.is_none() && w.recovery.is_none(),
                _ => true,
            }
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
    let before = parse_id_cursor(&query, 'h')?;
    let mut rows = state.corral.worker_history(caller, id, before, limit + 1).await?;
    let next_cursor = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|(id, _)| id_cursor('h', *id))
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
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let caller = auth.require_admin()?;
    let change = body.into_inner();
    let detail = serde_json::to_string(&change).unwrap_or_default();
    audited(&state, &req, caller, "worker.state", path.as_str(), detail, async {
        let id = worker_id(&path)?;
        if change.reason.as_ref().is_some_and(|r| r.len() > 1024) {
            return Err(ApiError::bad_request("reason may be at most 1024 bytes"));
        }
        state.corral.set_worker_state(caller, id, change).await?;
        Ok(HttpResponse::Accepted().json(current(&state, id)?))
    })
    .await
}

#[tracing::instrument(skip_all, fields(worker = %path.as_str()))]
async fn set_groups(
    state: web::Data<AppState>,
    auth: Auth,
    path: web::Path<String>,
    body: web::Json<Vec<String>>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let caller = auth.require_admin()?;
    let body = body.into_inner();
    let detail = serde_json::to_string(&body).unwrap_or_default();
    audited(&state, &req, caller, "worker.groups", path.as_str(), detail, async {
        let id = worker_id(&path)?;
        let groups = Groups::validated(body.into_iter().collect()).map_err(|e| ApiError::bad_request(e.to_string()))?;
        state.corral.set_worker_groups(caller, id, groups).await?;
        Ok(HttpResponse::Ok().json(current(&state, id)?))
    })
    .await
}

#[tracing::instrument(skip_all, fields(worker = %path.as_str()))]
async fn deregister(
    state: web::Data<AppState>,
    auth: Auth,
    path: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let caller = auth.require_admin()?;
    audited(&state, &req, caller, "worker.deregister", path.as_str(), "", async {
        let id = worker_id(&path)?;
        state.corral.deregister_worker(caller, id).await?;
        Ok(HttpResponse::NoContent().finish())
    })
    .await
}

/// Body of `PUT /v1/workers/{uuid}/agent`.
#[derive(Debug, serde::Deserialize, serde::Serialize)]
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
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let caller = auth.require_admin()?;
    let body = body.into_inner();
    let detail = serde_json::to_string(&body).unwrap_or_default();
    audited(&state, &req, caller, "worker.hand_over", path.as_str(), detail, async {
        let id = worker_id(&path)?;
        let worker = state.corral.hand_over_worker(caller, id, &body.principal, body.agent.as_deref()).await?;
        Ok(HttpResponse::Ok().json(worker))
    })
    .await
}

/// `PUT /v1/workers/{uuid}/note` with `{"note": TEXT}`: an admin's note on
/// the worker, kept with its author and time (null or blank clears it);
/// 200 with the worker; 400 for a note past its bounds
/// (`corral_core::facts`).
#[tracing::instrument(skip_all, fields(worker = %path.as_str()))]
async fn set_note(
    state: web::Data<AppState>,
    auth: Auth,
    path: web::Path<String>,
    body: web::Json<NoteChange>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let caller = auth.require_admin()?;
    let body = body.into_inner();
    let detail = match &body.note {
        Some(note) => format!("note: {note}"),
        None => "note cleared".to_string(),
    };
    audited(&state, &req, caller, "worker.note", path.as_str(), detail, async {
        let id = worker_id(&path)?;
        let worker = state.corral.set_worker_note(caller, id, body.note.as_deref()).await?;
        Ok(HttpResponse::Ok().json(worker))
    })
    .await
}

/// `PUT /v1/workers/{uuid}/quarantine` with `{"reason": TEXT}`: an admin
/// holds the worker out of matching until an admin lifts it (a running
/// lease goes on); 200 with the worker.
#[tracing::instrument(skip_all, fields(worker = %path.as_str()))]
async fn quarantine(
    state: web::Data<AppState>,
    auth: Auth,
    path: web::Path<String>,
    body: web::Json<QuarantineChange>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let caller = auth.require_admin()?;
    let body = body.into_inner();
    audited(&state, &req, caller, "worker.quarantine", path.as_str(), body.reason.clone(), async {
        let id = worker_id(&path)?;
        let worker = state.corral.set_worker_quarantine(caller, id, Some(&body.reason)).await?;
        Ok(HttpResponse::Ok().json(worker))
    })
    .await
}

/// `DELETE /v1/workers/{uuid}/quarantine`: an admin lifts the quarantine;
/// 200 with the worker (offered to the matcher again if idle and not in
/// recovery).
#[tracing::instrument(skip_all, fields(worker = %path.as_str()))]
async fn lift_quarantine(
    state: web::Data<AppState>,
    auth: Auth,
    path: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let caller = auth.require_admin()?;
    audited(&state, &req, caller, "worker.unquarantine", path.as_str(), "", async {
        let id = worker_id(&path)?;
        let worker = state.corral.set_worker_quarantine(caller, id, None).await?;
        Ok(HttpResponse::Ok().json(worker))
    })
    .await
}

/// `POST /v1/workers/{uuid}/power-cycle`: an admin, or the holder of the
/// worker's running lease, has its agent run the `power_cycle` hook; 202
/// with the worker (`work: "power_cycle"`), the outcome goes to its history.
/// 404 for a worker the caller may not see, 403 for one it may see but
/// neither administers nor leases, 409 naming what holds the worker, 422
/// when its agent has no `power_cycle` hook. Audited when an admin asks.
#[tracing::instrument(skip_all, fields(worker = %path.as_str()))]
async fn power_cycle(
    state: web::Data<AppState>,
    auth: Auth,
    path: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let caller = auth.require_person()?;
    let run = async {
        let id = worker_id(&path)?;
        let worker = state.corral.power_cycle_worker(caller, id).await?;
        Ok(HttpResponse::Accepted().json(worker))
    };
    if caller.is_admin() {
        audited(&state, &req, caller, "worker.power_cycle", path.as_str(), "", run).await
    } else {
        run.await
    }
}
