//! `/api/v1/reqs`: Boruta's requests API on corral's request use cases.
//! The mapping decisions are in the parent module's documentation.

use std::cmp::Ordering;
use std::time::Duration;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use corral_actors::request::{RequestChanges, Submission};
use corral_actors::{ActorError, Caller, KeyKind};
use corral_core::records::{RequestFilter, RequestRecord};
use corral_core::request::Schedule;
use corral_core::{Caps, Priority, RequestId, RequestState};
use corral_proto::boruta::{
    AccessInfo, JobInfo, ReqIdPack, ReqInfo, ReqInfoInput, ReqState, RequestsFilter, RequestsListSpec, SortInfo,
    SortOrder, TcpAddr, UserInfo, format_header_time, headers,
};

use super::paging::{self, List};
use super::{BorutaError, Headers, answer, caller, no_content, public_ip};
use crate::AppState;

/// Most requests a list without `IDs` reads from the database (the newest
/// ones matching the states and priority).
pub const LIST_SCAN_LIMIT: u32 = 20_000;
/// Most ids one `IDs` filter may name.
const MAX_FILTER_IDS: usize = 1_000;

/// Boruta parses the id with `ParseUint`; corral's ids are positive
/// `i64`s, so a larger number is simply not found.
fn request_id(path: &str) -> Result<RequestId, BorutaError> {
    let id: u64 = path.parse().map_err(|_| BorutaError::invalid("ID provided in URL isn't valid"))?;
    Ok(RequestId(i64::try_from(id).unwrap_or(0)))
}

fn not_found() -> BorutaError {
    BorutaError::not_found("Request")
}

/// corral's own 404 text names the id; Boruta's is `Request not found`.
fn or_not_found(err: BorutaError) -> BorutaError {
    if err.status == actix_web::http::StatusCode::NOT_FOUND { not_found() } else { err }
}

pub fn req_info(r: &RequestRecord) -> ReqInfo {
    let job = match (r.worker, r.lease_expires_at) {
        (Some(worker), Some(timeout)) => Some(JobInfo { worker_uuid: worker.to_string(), timeout }),
        _ => None,
    };
    ReqInfo {
        id: r.id.0.unsigned_abs(),
        priority: r.priority.get(),
        owner: UserInfo { groups: Some(r.owner_groups.iter().map(str::to_string).collect()) },
        deadline: r.deadline,
        valid_after: r.valid_after,
        state: ReqState::from(r.state),
        job,
        caps: r.caps.to_map(),
    }
}

fn request_headers(info: &ReqInfo) -> Headers {
    let mut headers = vec![(headers::REQUEST_STATE, info.state.as_str().to_string())];
    if let (ReqState::InProgress, Some(job)) = (info.state, &info.job) {
        headers.push((headers::JOB_TIMEOUT, format_header_time(job.timeout)));
    }
    headers
}

fn boruta_priority(value: i64) -> Result<Priority, BorutaError> {
    Priority::try_from(value).map_err(|_| BorutaError::invalid("requested priority out of bounds"))
}

// ----- create, read, update -------------------------------------------------------

#[tracing::instrument(skip_all)]
pub async fn create(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<ReqInfoInput>,
) -> Result<HttpResponse, BorutaError> {
    let caller = caller(&req, &state).await?;
    let body = body.into_inner();
    // What the submission asked for, as sent (the fields read below).
    let canonical = serde_json::json!({
        "boruta": true,
        "priority": body.priority,
        "caps": body.caps,
        "deadline": body.deadline.instant(),
        "valid_after": body.valid_after.instant(),
    });
    let idempotency = crate::requests::idempotency(&req, &canonical).map_err(BorutaError::invalid)?;
    let priority = match body.priority {
        Some(value) => boruta_priority(value)?,
        None => Priority::default(),
    };
    let caps = Caps::validated(body.caps.unwrap_or_default()).map_err(BorutaError::invalid)?;
    let corral = &state.corral;
    let schedule = Schedule::for_submission(
        corral.clock().now(),
        body.valid_after.instant(),
        body.deadline.instant(),
        None,
        &corral.settings().limits,
    )
    .map_err(BorutaError::invalid)?;
    let submission = Submission {
        caps,
        priority,
        schedule,
        ssh_public_key: None,
        // Boruta queues a request for caps no worker offers yet (Weles
        // asks for device types before their dryads register).
        allow_unsatisfiable: true,
        key_kind: Some(KeyKind::Rsa),
        idempotency,
    };
    let record = corral.submit(&caller, submission).await?;
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/api/v1/reqs/{}", record.id)))
        .insert_header((headers::REQUEST_STATE, ReqState::from(record.state).as_str()))
        .json(ReqIdPack { req_id: record.id.0.unsigned_abs() }))
}

async fn info(state: &AppState, req: &HttpRequest, path: &str, head: bool) -> Result<HttpResponse, BorutaError> {
    let caller = caller(req, state).await?;
    let id = request_id(path)?;
    let record = state.corral.request(&caller, id).await.map_err(|e| or_not_found(e.into()))?;
    let info = req_info(&record);
    Ok(answer(head, request_headers(&info), &info))
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

#[tracing::instrument(skip_all, fields(request = %path.as_str()))]
pub async fn update(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Json<ReqInfoInput>,
) -> Result<HttpResponse, BorutaError> {
    let caller = caller(&req, &state).await?;
    let id = request_id(&path)?;
    let body = body.into_inner();
    if body.id.is_some_and(|given| given != 0 && given != id.0.unsigned_abs()) {
        return Err(BorutaError::invalid("request ID set in JSON doesn't match ID from URL"));
    }
    let priority = match body.priority {
        None | Some(0) => None,
        Some(value) => Some(boruta_priority(value)?),
    };
    let changes =
        RequestChanges { priority, valid_after: body.valid_after.instant(), deadline: body.deadline.instant() };
    if changes.priority.is_none() && changes.valid_after.is_none() && changes.deadline.is_none() {
        // Nothing to change (Boruta's rule), but an unknown id is still 404.
        state.corral.request(&caller, id).await.map_err(|e| or_not_found(e.into()))?;
        return Ok(no_content());
    }
    state.corral.update(&caller, id, changes).await.map_err(|e| or_not_found(e.into()))?;
    Ok(no_content())
}

// ----- lease ------------------------------------------------------------------------------

#[tracing::instrument(skip_all, fields(request = %path.as_str()))]
pub async fn close(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, BorutaError> {
    let caller = caller(&req, &state).await?;
    let id = request_id(&path)?;
    state.corral.close(&caller, id).await.map_err(|e| or_not_found(e.into()))?;
    Ok(no_content())
}

/// The request, which must be `IN PROGRESS`.
async fn in_progress(state: &AppState, caller: &Caller, id: RequestId) -> Result<RequestRecord, BorutaError> {
    let record = state.corral.request(caller, id).await.map_err(|e| or_not_found(e.into()))?;
    if record.state == RequestState::InProgress { Ok(record) } else { Err(BorutaError::worker_not_assigned()) }
}

#[tracing::instrument(skip_all, fields(request = %path.as_str()))]
pub async fn acquire(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, BorutaError> {
    let caller = caller(&req, &state).await?;
    let id = request_id(&path)?;
    in_progress(&state, &caller, id).await?;
    let details = state.corral.acquire(&caller, id, Duration::ZERO).await.map_err(|err| match err {
        corral_actors::ActorError::Conflict(_) => BorutaError::worker_not_assigned(),
        other => or_not_found(other.into()),
    })?;
    let key = details.private_key.as_deref().and_then(corral_actors::keys::rsa_pkcs1_pem).ok_or_else(|| {
        BorutaError::invalid(format!(
            "request {id} has no RSA lease key to give (it was made through /v1 with its own public key or \
                 a non-RSA key); use /v1/requests/{id}/acquire"
        ))
    })?;
    let ip = public_ip(&details.host).await?;
    Ok(HttpResponse::Ok().json(AccessInfo {
        addr: TcpAddr { ip: ip.to_string(), port: details.port, zone: String::new() },
        key,
        username: details.username,
    }))
}

#[tracing::instrument(skip_all, fields(request = %path.as_str()))]
pub async fn prolong(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, BorutaError> {
    let caller = caller(&req, &state).await?;
    let id = request_id(&path)?;
    let record = in_progress(&state, &caller, id).await?;
    let expires = record.lease_expires_at.ok_or_else(BorutaError::worker_not_assigned)?;
    // Boruta: the lease ends one lease length from now.
    let now = state.corral.clock().now();
    let end = corral_core::lease::expiry(now, record.lease).map_err(BorutaError::invalid)?;
    let by = end.duration_since(expires.max(now)).unwrap_or_default();
    if by.is_zero() {
        return Ok(no_content());
    }
    state.corral.prolong(&caller, id, Some(by)).await.map_err(|e| or_not_found(e.into()))?;
    Ok(no_content())
}

// ----- lists ----------------------------------------------------------------------------

/// Boruta's request filter, checked.
#[derive(Debug, Default)]
struct Filter {
    ids: Vec<u64>,
    priorities: Vec<u64>,
    states: Vec<RequestState>,
}

impl Filter {
    fn from_wire(wire: RequestsFilter) -> Result<Filter, BorutaError> {
        let mut filter = Filter {
            ids: wire.ids.unwrap_or_default(),
            priorities: wire.priorities.unwrap_or_default(),
            states: vec![],
        };
        let legacy_state = wire.state.filter(|s| !s.trim().is_empty());
        for name in wire.states.unwrap_or_default().iter().chain(legacy_state.iter()) {
            filter.states.push(ReqState::parse(name).map_err(BorutaError::invalid)?.corral());
        }
        if let Some(text) = wire.priority.filter(|p| !p.trim().is_empty()) {
            let value = text.trim().parse().map_err(|_| BorutaError::invalid(format!("bad priority {text:?}")))?;
            filter.priorities.push(value);
        }
        if filter.ids.len() > MAX_FILTER_IDS {
            return Err(BorutaError::invalid(format!("a filter may name at most {MAX_FILTER_IDS} IDs")));
        }
        Ok(filter)
    }

    fn matches(&self, r: &RequestRecord) -> bool {
        (self.ids.is_empty() || self.ids.contains(&r.id.0.unsigned_abs()))
            && (self.states.is_empty() || self.states.contains(&r.state))
            && (self.priorities.is_empty() || self.priorities.contains(&u64::from(r.priority.get())))
    }
}

#[derive(Clone, Copy, Debug)]
enum SortItem {
    Id,
    Priority,
    Deadline,
    ValidAfter,
    State,
}

fn sort_item(sorter: &SortInfo) -> Result<SortItem, BorutaError> {
    match sorter.item.as_deref().unwrap_or("").to_ascii_lowercase().as_str() {
        "" | "id" => Ok(SortItem::Id),
        "priority" => Ok(SortItem::Priority),
        "deadline" => Ok(SortItem::Deadline),
        "validafter" => Ok(SortItem::ValidAfter),
        "state" => Ok(SortItem::State),
        _ => Err(BorutaError::invalid(
            "unknown name of item by which list should be sorted (requests: id, priority, deadline, validafter, state)",
        )),
    }
}

fn compare(item: SortItem, order: SortOrder, a: &RequestRecord, b: &RequestRecord) -> Ordering {
    let first = match item {
        SortItem::Id => Ordering::Equal,
        SortItem::Priority => a.priority.cmp(&b.priority),
        SortItem::Deadline => a.deadline.cmp(&b.deadline),
        SortItem::ValidAfter => a.valid_after.cmp(&b.valid_after),
        SortItem::State => ReqState::from(a.state).as_str().cmp(ReqState::from(b.state).as_str()),
    };
    paging::ordered(order, first.then(a.id.cmp(&b.id)))
}

/// The requests the filter can match, read from the database in one
/// query (by their ids when the filter names some); `Corral::requests`
/// keeps a user to their own.
async fn candidates(state: &AppState, caller: &Caller, filter: &Filter) -> Result<Vec<RequestRecord>, BorutaError> {
    let query = if filter.ids.is_empty() {
        let single_priority = match filter.priorities.as_slice() {
            [one] => i64::try_from(*one).ok().and_then(|p| Priority::try_from(p).ok()),
            _ => None,
        };
        RequestFilter {
            states: filter.states.clone(),
            priority: single_priority,
            limit: LIST_SCAN_LIMIT,
            ..RequestFilter::default()
        }
    } else {
        let mut ids: Vec<RequestId> =
            filter.ids.iter().filter_map(|id| i64::try_from(*id).ok()).map(RequestId).collect();
        ids.sort_unstable();
        ids.dedup();
        let limit = u32::try_from(ids.len()).unwrap_or(u32::MAX);
        RequestFilter { ids: Some(ids), limit, ..RequestFilter::default() }
    };
    let mut rows = state.corral.requests(caller, query).await?;
    rows.retain(|r| filter.matches(r));
    Ok(rows)
}

/// `/reqs`' list.
pub struct Requests;

impl List for Requests {
    type Spec = RequestsListSpec;
    type Filter = RequestsFilter;
    const FILTER_KEYS: &'static [&'static str] = &["IDs", "Priorities", "States", "State", "Priority"];

    fn with_filter(filter: RequestsFilter) -> RequestsListSpec {
        RequestsListSpec { filter: Some(filter), ..Default::default() }
    }

    async fn answer(
        state: &AppState,
        caller: &Caller,
        spec: RequestsListSpec,
        head: bool,
    ) -> Result<HttpResponse, BorutaError> {
        listing(state, caller, spec, head).await
    }
}

async fn listing(
    state: &AppState,
    caller: &Caller,
    spec: RequestsListSpec,
    head: bool,
) -> Result<HttpResponse, BorutaError> {
    let filter = Filter::from_wire(spec.filter.unwrap_or_default())?;
    let sorter = spec.sorter.unwrap_or_default();
    let item = sort_item(&sorter)?;
    let paginator = spec.paginator.unwrap_or_default();
    let rows = candidates(state, caller, &filter).await?;
    let border = match paginator.id {
        0 => None,
        id => match rows.iter().find(|r| r.id.0.unsigned_abs() == id) {
            Some(found) => Some(found.clone()),
            None => {
                let id = i64::try_from(id).map_err(|_| not_found())?;
                match state.corral.request(caller, RequestId(id)).await {
                    Ok(record) => Some(record),
                    Err(ActorError::NotFound(_)) => return Err(not_found()),
                    Err(err) => return Err(err.into()),
                }
            }
        },
    };
    let page = paging::page(
        rows,
        |a, b| compare(item, sorter.order, a, b),
        border.as_ref(),
        paginator.direction,
        paginator.limit,
    );
    Ok(page.answer(head, headers::REQUEST_COUNT, req_info))
}

#[cfg(test)]
mod tests {
    use super::super::paging::parse_spec;
    use super::*;
    use corral_proto::boruta::ListDirection;

    #[test]
    fn list_bodies_of_every_boruta_generation_are_read() {
        assert_eq!(parse_spec::<Requests>(b"").unwrap(), RequestsListSpec::default());
        assert_eq!(parse_spec::<Requests>(b"null").unwrap(), RequestsListSpec::default());
        let bare = parse_spec::<Requests>(br#"{"State":"WAITING","Priority":"4"}"#).unwrap();
        assert_eq!(bare.filter.unwrap().state.as_deref(), Some("WAITING"));
        let spec = parse_spec::<Requests>(br#"{"Filter":{"States":["DONE"]},"Paginator":{"Limit":3}}"#).unwrap();
        assert_eq!(spec.paginator.unwrap().limit, 3);
        assert!(parse_spec::<Requests>(b"{not json").is_err());
        assert!(parse_spec::<Requests>(b"[1]").is_err());
        assert!(parse_spec::<Requests>(br#"{"Sorter":{"Order":"upwards"}}"#).is_err());
    }

    #[test]
    fn filters_are_checked() {
        let wire = RequestsFilter {
            states: Some(vec!["in progress".into()]),
            priority: Some("4".into()),
            ..Default::default()
        };
        let filter = Filter::from_wire(wire).unwrap();
        assert_eq!(filter.states, vec![RequestState::InProgress]);
        assert_eq!(filter.priorities, vec![4]);
        let bad = RequestsFilter { states: Some(vec!["WAIT".into()]), ..Default::default() };
        assert_eq!(Filter::from_wire(bad).unwrap_err().status.as_u16(), 400);
        let direction = RequestsListSpec::default().paginator.unwrap_or_default().direction;
        assert_eq!(direction, ListDirection::Forward);
    }
}
