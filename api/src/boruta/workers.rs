//! `/api/v1/workers`: Boruta's workers API on the directory's worker views
//! and corral's admin use cases. The mapping decisions are in the parent
//! module's documentation.

use std::cmp::Ordering;
use std::collections::BTreeSet;

use actix_web::{HttpRequest, HttpResponse, web};
use corral_actors::Caller;
use corral_core::caps::UUID_CAP;
use corral_core::{Groups, WorkerId, WorkerState};
use corral_proto::boruta::{
    BorutaWorkerState, SortInfo, SortOrder, WorkerInfo, WorkerStatePack, WorkersFilter, WorkersListSpec, headers,
};
use corral_proto::workers::{AdminState, StateChange, Worker};

use super::paging::{self, List};
use super::{BorutaError, answer, caller, no_content, require_admin};
use crate::AppState;
use crate::audit::audited;

fn worker_id(path: &str) -> Result<WorkerId, BorutaError> {
    path.parse().map_err(|_| BorutaError::invalid("ID provided in URL isn't valid UUID"))
}

fn not_found() -> BorutaError {
    BorutaError::not_found("Worker")
}

fn or_not_found(err: BorutaError) -> BorutaError {
    if err.status == actix_web::http::StatusCode::NOT_FOUND { not_found() } else { err }
}

pub fn worker_info(w: &Worker) -> WorkerInfo {
    let mut caps = w.caps.to_map();
    caps.insert(UUID_CAP.to_string(), w.uuid.to_string());
    WorkerInfo {
        worker_uuid: w.uuid.to_string(),
        state: BorutaWorkerState::from(w.state),
        groups: w.groups.iter().map(str::to_string).collect(),
        caps,
    }
}

/// The worker as the caller may see it (404 otherwise, as on `/v1`).
fn visible_worker(state: &AppState, caller: &Caller, id: WorkerId) -> Result<Worker, BorutaError> {
    state.corral.worker(caller, id).map_err(|_| not_found())
}

// ----- read -------------------------------------------------------------------------

async fn info(state: &AppState, req: &HttpRequest, path: &str, head: bool) -> Result<HttpResponse, BorutaError> {
    let caller = caller(req, state).await?;
    let id = worker_id(path)?;
    let info = worker_info(&visible_worker(state, &caller, id)?);
    Ok(answer(head, vec![(headers::WORKER_STATE, info.state.as_str().to_string())], &info))
}

pub async fn get(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, BorutaError> {
    info(&state, &req, &path, false).await
}

pub async fn head(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, BorutaError> {
    info(&state, &req, &path, true).await
}

// ----- lists ----------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum SortItem {
    Uuid,
    State,
    Groups,
}

fn sort_item(sorter: &SortInfo) -> Result<SortItem, BorutaError> {
    match sorter.item.as_deref().unwrap_or("").to_ascii_lowercase().as_str() {
        "" | "uuid" => Ok(SortItem::Uuid),
        "state" => Ok(SortItem::State),
        "groups" => Ok(SortItem::Groups),
        _ => Err(BorutaError::invalid(
            "unknown name of item by which list should be sorted (workers: uuid, state, groups)",
        )),
    }
}

fn compare(item: SortItem, order: SortOrder, a: &Worker, b: &Worker) -> Ordering {
    let first = match item {
        SortItem::Uuid => Ordering::Equal,
        SortItem::State => BorutaWorkerState::from(a.state).as_str().cmp(BorutaWorkerState::from(b.state).as_str()),
        // Element by element, a shorter list first when one is a prefix
        // of the other (Boruta's order).
        SortItem::Groups => a.groups.iter().cmp(b.groups.iter()),
    };
    paging::ordered(order, first.then(a.uuid.cmp(&b.uuid)))
}

fn matches(filter: &WorkersFilter, w: &Worker) -> bool {
    let groups_ok = match &filter.groups {
        Some(groups) if !groups.is_empty() => groups.iter().any(|g| w.groups.contains(g)),
        _ => true,
    };
    let uuid = w.uuid.to_string();
    let caps_ok = filter
        .capabilities
        .iter()
        .flatten()
        .all(|(key, value)| if key == UUID_CAP { *value == uuid } else { w.caps.get(key) == Some(value.as_str()) });
    groups_ok && caps_ok
}

/// `/workers`' list.
pub struct Workers;

impl List for Workers {
    type Spec = WorkersListSpec;
    type Filter = WorkersFilter;
    const FILTER_KEYS: &'static [&'static str] = &["Groups", "Capabilities"];

    fn with_filter(filter: WorkersFilter) -> WorkersListSpec {
        WorkersListSpec { filter: Some(filter), ..Default::default() }
    }

    async fn answer(
        state: &AppState,
        caller: &Caller,
        spec: WorkersListSpec,
        head: bool,
    ) -> Result<HttpResponse, BorutaError> {
        listing(state, caller, spec, head).await
    }
}

async fn listing(
    state: &AppState,
    caller: &Caller,
    spec: WorkersListSpec,
    head: bool,
) -> Result<HttpResponse, BorutaError> {
    let filter = spec.filter.unwrap_or_default();
    let sorter = spec.sorter.unwrap_or_default();
    let item = sort_item(&sorter)?;
    let paginator = spec.paginator.unwrap_or_default();
    let border = match paginator.id.as_deref().map(str::trim).filter(|id| !id.is_empty()) {
        None => None,
        Some(id) => Some(visible_worker(state, caller, id.parse().map_err(|_| not_found())?)?),
    };
    let workers: Vec<Worker> = state.corral.workers(caller, |w| matches(&filter, w));
    let page = paging::page(
        workers,
        |a, b| compare(item, sorter.order, a, b),
        border.as_ref(),
        paginator.direction,
        paginator.limit,
    );
    Ok(page.answer(head, headers::WORKER_COUNT, worker_info))
}

// ----- admin ------------------------------------------------------------------------------

#[tracing::instrument(skip_all, fields(worker = %path.as_str()))]
pub async fn set_state(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Json<WorkerStatePack>,
) -> Result<HttpResponse, BorutaError> {
    let caller = caller(&req, &state).await?;
    require_admin(&caller)?;
    let asked = body.into_inner().worker_state;
    let detail = format!("WorkerState={}", asked.as_deref().unwrap_or("null"));
    audited(&state, &req, &caller, "worker.state", path.as_str(), detail, set_state_as(&state, &caller, &path, asked))
        .await
}

async fn set_state_as(
    state: &AppState,
    caller: &Caller,
    path: &str,
    asked: Option<String>,
) -> Result<HttpResponse, BorutaError> {
    let (caller, id) = (caller.clone(), worker_id(path)?);
    let wanted = asked.as_deref().and_then(BorutaWorkerState::parse);
    let admin_state = match wanted {
        Some(BorutaWorkerState::Idle) => AdminState::Idle,
        Some(BorutaWorkerState::Maintenance) => AdminState::Maintenance,
        _ => return Err(BorutaError::invalid("Only state changes to IDLE and MAINTENANCE are allowed")),
    };
    // Boruta accepts a worker's own state as a no-op. (MAINTENANCE on a
    // BUSY worker is a change: it stops waiting for the agent.)
    let current = visible_worker(state, &caller, id)?.state;
    let already = match admin_state {
        AdminState::Idle => current == WorkerState::Idle,
        AdminState::Maintenance => current == WorkerState::Maintenance,
    };
    if already {
        return Ok(no_content());
    }
    let change = StateChange {
        state: admin_state,
        reason: (admin_state == AdminState::Maintenance).then(|| "set through the Boruta API".to_string()),
        drain: false,
    };
    state.corral.set_worker_state(&caller, id, change).await.map_err(|e| or_not_found(e.into()))?;
    Ok(no_content())
}

#[tracing::instrument(skip_all, fields(worker = %path.as_str()))]
pub async fn set_groups(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Json<Option<Vec<String>>>,
) -> Result<HttpResponse, BorutaError> {
    let caller = caller(&req, &state).await?;
    require_admin(&caller)?;
    let groups: BTreeSet<String> = body.into_inner().unwrap_or_default().into_iter().collect();
    let detail = serde_json::to_string(&groups).unwrap_or_default();
    audited(&state, &req, &caller, "worker.groups", path.as_str(), detail, async {
        let id = worker_id(&path)?;
        let groups = Groups::validated(groups).map_err(BorutaError::invalid)?;
        state.corral.set_worker_groups(&caller, id, groups).await.map_err(|e| or_not_found(e.into()))?;
        Ok(no_content())
    })
    .await
}

#[tracing::instrument(skip_all, fields(worker = %path.as_str()))]
pub async fn deregister(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, BorutaError> {
    let caller = caller(&req, &state).await?;
    require_admin(&caller)?;
    audited(&state, &req, &caller, "worker.deregister", path.as_str(), "", async {
        let id = worker_id(&path)?;
        state.corral.deregister_worker(&caller, id).await.map_err(|e| or_not_found(e.into()))?;
        Ok(no_content())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::super::paging::parse_spec;
    use super::*;

    #[test]
    fn worker_list_bodies_are_read() {
        assert_eq!(parse_spec::<Workers>(b" ").unwrap(), WorkersListSpec::default());
        let bare = parse_spec::<Workers>(br#"{"Groups":["lab"],"Capabilities":null}"#).unwrap();
        assert_eq!(bare.filter.unwrap().groups.unwrap(), vec!["lab".to_string()]);
        assert!(parse_spec::<Workers>(br#"{"Filter":{"Groups":"lab"}}"#).is_err());
        assert!(sort_item(&SortInfo { item: Some("UUID".into()), order: SortOrder::Ascending }).is_ok());
        assert!(sort_item(&SortInfo { item: Some("battery".into()), order: SortOrder::Ascending }).is_err());
    }
}
