//! `/v1/workers`: list, read and history (what the caller may use), and the
//! admin actions: state, groups, deregister, hand-over to another agent user,
//! note, quarantine; and a power cycle, by an admin or the holder of the
//! worker's lease. Every admin action is audited ([`crate::audit::audited`]).

use actix_web::{HttpRequest, HttpResponse, web};
use corral_actors::Caller;
use corral_core::{Groups, WorkerId, WorkerState};
use corral_proto::Page;
use corral_proto::error::ErrorBody;
use corral_proto::requests::HistoryEntry;
use corral_proto::workers::{HandOver, NoteChange, QuarantineChange, StateChange, Worker};

use crate::AppState;
use crate::audit::audited;
use crate::auth::Auth;
use crate::error::ApiError;
use crate::query::{PageParams, Query, id_cursor, parse_id_cursor, parse_limit};
use crate::routes::Family;

pub(crate) const ROUTES: Family = crate::family! {
    scope "/v1/workers" {
        "" => [get => list],
        "/{uuid}" => [get => get, delete => deregister],
        "/{uuid}/history" => [get => history],
        "/{uuid}/state" => [put => set_state],
        "/{uuid}/groups" => [put => set_groups],
        "/{uuid}/agent" => [put => hand_over],
        "/{uuid}/note" => [put => set_note],
        "/{uuid}/power-cycle" => [post => power_cycle],
        "/{uuid}/quarantine" => [put => quarantine, delete => lift_quarantine],
    }
};

/// The filters of `GET /v1/workers`, as the document describes them.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct WorkerListParams {
    /// Only workers in these states (repeat it, or separate with commas).
    state: Option<Vec<WorkerState>>,
    /// Only workers in this group.
    group: Option<String>,
    /// Only workers with these caps, each `key=value` (repeat it).
    cap: Option<Vec<String>>,
    /// Only workers held out of matching: by `quarantine`, by `recovery`,
    /// by `any` hold, or by `none`.
    hold: Option<Hold>,
}

#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
enum Hold {
    Quarantine,
    Recovery,
    Any,
    None,
}

fn worker_id(path: &str) -> Result<WorkerId, ApiError> {
    path.parse().map_err(|_| ApiError::bad_request(format!("worker id must be a UUID, got {path:?}")))
}

/// An admin's change to the worker named by `path`, audited as `action`
/// with `detail`. The caller must be an admin; the UUID is read inside the
/// audit, so a bad one is recorded as refused.
async fn admin_change(
    state: &AppState,
    req: &HttpRequest,
    auth: &Auth,
    path: &str,
    action: &'static str,
    detail: impl Into<String>,
    change: impl AsyncFnOnce(&Caller, WorkerId) -> Result<HttpResponse, ApiError>,
) -> Result<HttpResponse, ApiError> {
    let caller = auth.require_admin()?;
    audited(state, req, caller, action, path, detail, async { change(caller, worker_id(path)?).await }).await
}

/// The workers the caller may see, by UUID.
#[utoipa::path(
    get, path = "/v1/workers", operation_id = "list_workers", tag = "workers",
    params(WorkerListParams, PageParams),
    responses((status = 200, description = "One page of workers", body = Page<Worker>)),
)]
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
    let workers = state.corral.workers(caller, |w| {
        (states.is_empty() || states.contains(&w.state))
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
    let next_cursor = (workers.len() > limit).then(|| workers[limit - 1].uuid.to_string());
    let items: Vec<Worker> = workers.into_iter().take(limit).collect();
    Ok(HttpResponse::Ok().json(Page { items, next_cursor }))
}

/// The worker (404 for one the caller may not see).
#[utoipa::path(
    get, path = "/v1/workers/{uuid}", operation_id = "get_worker", tag = "workers",
    params(("uuid" = WorkerId, Path, description = "The worker's UUID")),
    responses((status = 200, description = "The worker", body = Worker)),
)]
async fn get(state: web::Data<AppState>, auth: Auth, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let caller = auth.require_person()?;
    let id = worker_id(&path)?;
    Ok(HttpResponse::Ok().json(state.corral.worker(caller, id)?))
}

/// `GET /v1/workers/{uuid}/history?limit=N&cursor=C`: every transition,
/// newest first, paged like the lists (`next_cursor`).
#[utoipa::path(
    get, path = "/v1/workers/{uuid}/history", operation_id = "worker_history", tag = "workers",
    params(("uuid" = WorkerId, Path, description = "The worker's UUID"), PageParams),
    responses((status = 200, description = "One page of its transitions, newest first", body = Page<HistoryEntry>)),
)]
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

/// An admin sets a worker idle or in maintenance (`drain`: after the
/// running lease).
#[utoipa::path(
    put, path = "/v1/workers/{uuid}/state", operation_id = "set_worker_state", tag = "workers",
    params(("uuid" = WorkerId, Path, description = "The worker's UUID")), request_body = StateChange,
    responses(
        (status = 202, description = "Accepted; the worker as it is now", body = Worker),
        (status = 409, description = "`conflict`: the worker's state does not allow it", body = ErrorBody),
    ),
)]
#[tracing::instrument(skip_all, fields(worker = %path.as_str()))]
async fn set_state(
    state: web::Data<AppState>,
    auth: Auth,
    path: web::Path<String>,
    body: web::Json<StateChange>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let change = body.into_inner();
    let detail = serde_json::to_string(&change).unwrap_or_default();
    admin_change(&state, &req, &auth, &path, "worker.state", detail, async |caller, id| {
        if change.reason.as_ref().is_some_and(|r| r.len() > 1024) {
            return Err(ApiError::bad_request("reason may be at most 1024 bytes"));
        }
        state.corral.set_worker_state(caller, id, change).await?;
        Ok(HttpResponse::Accepted().json(state.corral.worker(caller, id)?))
    })
    .await
}

/// An admin sets a worker's groups (the list replaces them).
#[utoipa::path(
    put, path = "/v1/workers/{uuid}/groups", operation_id = "set_worker_groups", tag = "workers",
    params(("uuid" = WorkerId, Path, description = "The worker's UUID")), request_body = Groups,
    responses((status = 200, description = "The worker", body = Worker)),
)]
#[tracing::instrument(skip_all, fields(worker = %path.as_str()))]
async fn set_groups(
    state: web::Data<AppState>,
    auth: Auth,
    path: web::Path<String>,
    body: web::Json<Vec<String>>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let detail = serde_json::to_string(&body).unwrap_or_default();
    admin_change(&state, &req, &auth, &path, "worker.groups", detail, async |caller, id| {
        let groups = Groups::validated(body.into_iter().collect()).map_err(|e| ApiError::bad_request(e.to_string()))?;
        state.corral.set_worker_groups(caller, id, groups).await?;
        Ok(HttpResponse::Ok().json(state.corral.worker(caller, id)?))
    })
    .await
}

/// An admin deregisters a worker in maintenance or failed.
#[utoipa::path(
    delete, path = "/v1/workers/{uuid}", operation_id = "deregister_worker", tag = "workers",
    params(("uuid" = WorkerId, Path, description = "The worker's UUID")),
    responses(
        (status = 204, description = "Deregistered"),
        (status = 409, description = "`conflict`: the worker is not in maintenance or failed", body = ErrorBody),
    ),
)]
#[tracing::instrument(skip_all, fields(worker = %path.as_str()))]
async fn deregister(
    state: web::Data<AppState>,
    auth: Auth,
    path: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    admin_change(&state, &req, &auth, &path, "worker.deregister", "", async |caller, id| {
        state.corral.deregister_worker(caller, id).await?;
        Ok(HttpResponse::NoContent().finish())
    })
    .await
}

/// An admin hands a worker in maintenance or failed over to another agent
/// user: 200 with the worker; 409 in another state; 422 if `principal` is
/// not an agent user.
#[utoipa::path(
    put, path = "/v1/workers/{uuid}/agent", operation_id = "hand_over_worker", tag = "workers",
    params(("uuid" = WorkerId, Path, description = "The worker's UUID")), request_body = HandOver,
    responses(
        (status = 200, description = "The worker", body = Worker),
        (status = 409, description = "`conflict`: the worker is not in maintenance or failed", body = ErrorBody),
        (status = 422, description = "`unprocessable`: `principal` is not an agent user", body = ErrorBody),
    ),
)]
#[tracing::instrument(skip_all, fields(worker = %path.as_str()))]
async fn hand_over(
    state: web::Data<AppState>,
    auth: Auth,
    path: web::Path<String>,
    body: web::Json<HandOver>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let detail = serde_json::to_string(&body).unwrap_or_default();
    admin_change(&state, &req, &auth, &path, "worker.hand_over", detail, async |caller, id| {
        let worker = state.corral.hand_over_worker(caller, id, &body.principal, body.agent.as_deref()).await?;
        Ok(HttpResponse::Ok().json(worker))
    })
    .await
}

/// `PUT /v1/workers/{uuid}/note` with `{"note": TEXT}`: an admin's note on
/// the worker, kept with its author and time (null or blank clears it);
/// 200 with the worker; 400 for a note past its bounds
/// (`corral_core::facts`).
#[utoipa::path(
    put, path = "/v1/workers/{uuid}/note", operation_id = "set_worker_note", tag = "workers",
    params(("uuid" = WorkerId, Path, description = "The worker's UUID")), request_body = NoteChange,
    responses((status = 200, description = "The worker", body = Worker)),
)]
#[tracing::instrument(skip_all, fields(worker = %path.as_str()))]
async fn set_note(
    state: web::Data<AppState>,
    auth: Auth,
    path: web::Path<String>,
    body: web::Json<NoteChange>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let detail = match &body.note {
        Some(note) => format!("note: {note}"),
        None => "note cleared".to_string(),
    };
    admin_change(&state, &req, &auth, &path, "worker.note", detail, async |caller, id| {
        let worker = state.corral.set_worker_note(caller, id, body.note.as_deref()).await?;
        Ok(HttpResponse::Ok().json(worker))
    })
    .await
}

/// `PUT /v1/workers/{uuid}/quarantine` with `{"reason": TEXT}`: an admin
/// holds the worker out of matching until an admin lifts it (a running
/// lease goes on); 200 with the worker.
#[utoipa::path(
    put, path = "/v1/workers/{uuid}/quarantine", operation_id = "quarantine_worker", tag = "workers",
    params(("uuid" = WorkerId, Path, description = "The worker's UUID")), request_body = QuarantineChange,
    responses((status = 200, description = "The worker", body = Worker)),
)]
#[tracing::instrument(skip_all, fields(worker = %path.as_str()))]
async fn quarantine(
    state: web::Data<AppState>,
    auth: Auth,
    path: web::Path<String>,
    body: web::Json<QuarantineChange>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    admin_change(&state, &req, &auth, &path, "worker.quarantine", body.reason.clone(), async |caller, id| {
        let worker = state.corral.set_worker_quarantine(caller, id, Some(&body.reason)).await?;
        Ok(HttpResponse::Ok().json(worker))
    })
    .await
}

/// `DELETE /v1/workers/{uuid}/quarantine`: an admin lifts the quarantine;
/// 200 with the worker (offered to the matcher again if idle and not in
/// recovery).
#[utoipa::path(
    delete, path = "/v1/workers/{uuid}/quarantine", operation_id = "lift_worker_quarantine", tag = "workers",
    params(("uuid" = WorkerId, Path, description = "The worker's UUID")),
    responses((status = 200, description = "The worker", body = Worker)),
)]
#[tracing::instrument(skip_all, fields(worker = %path.as_str()))]
async fn lift_quarantine(
    state: web::Data<AppState>,
    auth: Auth,
    path: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    admin_change(&state, &req, &auth, &path, "worker.unquarantine", "", async |caller, id| {
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
#[utoipa::path(
    post, path = "/v1/workers/{uuid}/power-cycle", operation_id = "power_cycle_worker", tag = "workers",
    params(("uuid" = WorkerId, Path, description = "The worker's UUID")),
    responses(
        (status = 202, description = "Accepted; the worker with `work: power_cycle`", body = Worker),
        (status = 403, description = "`forbidden`: neither an admin nor the holder of its lease", body = ErrorBody),
        (status = 409, description = "`conflict`: names what holds the worker", body = ErrorBody),
        (status = 422, description = "`unprocessable`: its agent has no `power_cycle` hook", body = ErrorBody),
    ),
)]
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
