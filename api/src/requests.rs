//! `/v1/requests`: submit, list, read, update, close, acquire, prolong,
//! explain.

use std::time::Duration;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use corral_actors::request::{RequestChanges, Submission};
use corral_core::records::{Idempotency, RequestFilter, RequestRecord};
use corral_core::request::Schedule;
use corral_core::{Caps, Priority, RequestId, RequestState};
use corral_proto::Page;
use corral_proto::error::ErrorBody;
use corral_proto::requests::{
    AccessDetails, Explanation, HistoryEntry, NewRequest, Prolong, Prolonged, Request, RequestPatch,
};

use crate::AppState;
use crate::auth::Auth;
use crate::error::ApiError;
use crate::query::{PageParams, Query, parse_limit};
use crate::routes::Family;

pub(crate) const ROUTES: Family = crate::family! {
    scope "/v1/requests" {
        "" => [post => submit, get => list],
        "/{id}" => [get => get, patch => patch],
        "/{id}/acquire" => [post => acquire],
        "/{id}/close" => [post => close],
        "/{id}/history" => [get => history],
        "/{id}/prolong" => [post => prolong],
        "/{id}/explain" => [get => explain],
    }
};

pub fn to_wire(r: RequestRecord) -> Request {
    Request {
        id: r.id,
        owner: r.owner,
        state: r.state,
        priority: r.priority,
        caps: r.caps,
        created_at: r.created_at,
        valid_after: r.valid_after,
        deadline: r.deadline,
        lease: r.lease,
        worker: r.worker,
        lease_expires_at: r.lease_expires_at,
        reason: r.reason,
        updated_at: r.updated_at,
    }
}

/// The filters of `GET /v1/requests`, as the document describes them.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct RequestListParams {
    /// Only requests in these states (repeat it, or separate with commas).
    state: Option<Vec<RequestState>>,
    /// Only this user's requests (admins; others may name only themselves).
    owner: Option<String>,
    /// Only requests of this priority.
    priority: Option<Priority>,
}

/// The query of `POST /v1/requests/{id}/acquire`.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct AcquireParams {
    /// Wait up to this long for the lease to start (at most the server's
    /// `max_wait`); without it, answer at once.
    wait: Option<corral_core::schema::HumanDuration>,
}

fn request_id(path: &str) -> Result<RequestId, ApiError> {
    path.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .map(RequestId)
        .ok_or_else(|| ApiError::bad_request(format!("request id must be a positive integer, got {path:?}")))
}

/// The header that makes a submission safe to retry.
pub(crate) const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The submission's `Idempotency-Key`, if it has one, with the digest of
/// `canonical` (what the submission asked for, as sent, so that a retry
/// later gives the same digest). `Err` says what is wrong with the header.
pub(crate) fn idempotency(req: &HttpRequest, canonical: &serde_json::Value) -> Result<Option<Idempotency>, String> {
    let mut values = req.headers().get_all(IDEMPOTENCY_KEY);
    let Some(value) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err("send one Idempotency-Key header".to_string());
    }
    let bad = || format!("Idempotency-Key must be 1 to {} printable ASCII characters", Idempotency::MAX_LEN);
    let key = value.to_str().map_err(|_| bad())?;
    Idempotency::new(key, canonical).map(Some)
}

#[utoipa::path(
    post, path = "/v1/requests", operation_id = "submit_request", tag = "requests",
    request_body = NewRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retry of the submission return the first answer (1 to 255 printable ASCII characters)")),
    responses(
        (status = 201, description = "The request, waiting", body = Request,
         headers(("Location" = String, description = "The request's URL"))),
        (status = 409, description = "`conflict`: the Idempotency-Key was used for another submission", body = ErrorBody),
        (status = 422, description = "`unprocessable`: no registered worker can ever serve these caps (send `allow_unsatisfiable`)", body = ErrorBody),
        (status = 429, description = "`too_many_requests`: a per-user limit is reached", body = ErrorBody,
         headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    ),
)]
#[tracing::instrument(skip_all, fields(owner = %auth.0.name))]
async fn submit(
    state: web::Data<AppState>,
    auth: Auth,
    req: HttpRequest,
    body: web::Json<NewRequest>,
) -> Result<HttpResponse, ApiError> {
    let caller = auth.require_person()?;
    let body = body.into_inner();
    let canonical = serde_json::to_value(&body).map_err(|e| ApiError::bad_request(format!("invalid body: {e}")))?;
    let idempotency = idempotency(&req, &canonical).map_err(ApiError::bad_request)?;
    let caps = Caps::validated(body.caps.to_map()).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let corral = &state.corral;
    let schedule = Schedule::for_submission(
        corral.clock().now(),
        body.valid_after,
        body.deadline,
        body.lease,
        &corral.settings().limits,
    )
    .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let ssh_public_key = match &body.ssh_public_key {
        Some(key) => Some(
            corral_core::ssh::PublicKey::parse(key)
                .map_err(|e| ApiError::bad_request(format!("ssh_public_key: {e}")))?
                .to_string(),
        ),
        None => None,
    };
    let submission = Submission {
        caps,
        priority: body.priority.unwrap_or_default(),
        schedule,
        ssh_public_key,
        allow_unsatisfiable: body.allow_unsatisfiable,
        key_kind: None,
        idempotency,
    };
    let record = corral.submit(caller, submission).await?;
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/v1/requests/{}", record.id)))
        .json(to_wire(record)))
}

/// The caller's requests (an admin's: everyone's), newest first.
#[utoipa::path(
    get, path = "/v1/requests", operation_id = "list_requests", tag = "requests",
    params(RequestListParams, PageParams),
    responses((status = 200, description = "One page of requests", body = Page<Request>)),
)]
async fn list(state: web::Data<AppState>, auth: Auth, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let caller = auth.require_person()?;
    let query = Query::parse(&req)?;
    query.only(&["state", "owner", "priority", "limit", "cursor"])?;
    let mut filter = RequestFilter { limit: parse_limit(&query)?, ..RequestFilter::default() };
    for state in query.all("state") {
        for one in state.split(',').filter(|s| !s.is_empty()) {
            filter.states.push(one.parse::<RequestState>().map_err(ApiError::bad_request)?);
        }
    }
    if let Some(priority) = query.one("priority")? {
        let n: i64 = priority.parse().map_err(|_| ApiError::bad_request("priority must be an integer from 1 to 16"))?;
        filter.priority = Some(Priority::try_from(n).map_err(|e| ApiError::bad_request(e.to_string()))?);
    }
    filter.owner = query.one("owner")?.map(str::to_string);
    if let Some(cursor) = query.one("cursor")? {
        filter.before = Some(decode_cursor(cursor)?);
    }
    let limit = filter.limit as usize;
    filter.limit += 1;
    let mut rows = state.corral.requests(caller, filter).await?;
    let next_cursor = if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(|r| encode_cursor(r.id))
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(Page { items: rows.into_iter().map(to_wire).collect(), next_cursor }))
}

fn encode_cursor(id: RequestId) -> String {
    format!("r{:x}", id.0)
}

fn decode_cursor(cursor: &str) -> Result<RequestId, ApiError> {
    cursor
        .strip_prefix('r')
        .and_then(|hex| i64::from_str_radix(hex, 16).ok())
        .map(RequestId)
        .ok_or_else(|| ApiError::bad_request("invalid cursor; pass back the next_cursor of a previous page"))
}

#[utoipa::path(
    get, path = "/v1/requests/{id}", operation_id = "get_request", tag = "requests",
    params(("id" = RequestId, Path, description = "The request's id")),
    responses((status = 200, description = "The request", body = Request)),
)]
async fn get(state: web::Data<AppState>, auth: Auth, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let caller = auth.require_person()?;
    let id = request_id(&path)?;
    Ok(HttpResponse::Ok().json(to_wire(state.corral.request(caller, id).await?)))
}

/// The request's transitions, oldest first, with who caused each and why.
#[utoipa::path(
    get, path = "/v1/requests/{id}/history", operation_id = "request_history", tag = "requests",
    params(("id" = RequestId, Path, description = "The request's id")),
    responses((status = 200, description = "Its transitions", body = Vec<HistoryEntry>)),
)]
async fn history(state: web::Data<AppState>, auth: Auth, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let caller = auth.require_person()?;
    let id = request_id(&path)?;
    let rows = state.corral.request_history(caller, id).await?;
    let entries: Vec<HistoryEntry> = rows
        .into_iter()
        .map(|h| HistoryEntry { at: h.at, from: h.from, to: h.to, actor: h.actor, reason: h.reason })
        .collect();
    Ok(HttpResponse::Ok().json(entries))
}

/// Changes a waiting request's priority, valid_after or deadline.
#[utoipa::path(
    patch, path = "/v1/requests/{id}", operation_id = "update_request", tag = "requests",
    params(("id" = RequestId, Path, description = "The request's id")), request_body = RequestPatch,
    responses(
        (status = 200, description = "The request", body = Request),
        (status = 409, description = "`conflict`: the request is no longer waiting", body = ErrorBody),
    ),
)]
#[tracing::instrument(skip_all, fields(request = %path.as_str()))]
async fn patch(
    state: web::Data<AppState>,
    auth: Auth,
    path: web::Path<String>,
    body: web::Json<RequestPatch>,
) -> Result<HttpResponse, ApiError> {
    let caller = auth.require_person()?;
    let id = request_id(&path)?;
    let body = body.into_inner();
    if body.priority.is_none() && body.valid_after.is_none() && body.deadline.is_none() {
        return Err(ApiError::bad_request("nothing to change: give priority, valid_after or deadline"));
    }
    let changes = RequestChanges { priority: body.priority, valid_after: body.valid_after, deadline: body.deadline };
    Ok(HttpResponse::Ok().json(to_wire(state.corral.update(caller, id, changes).await?)))
}

/// Closes the request: waiting → cancelled, in_progress → done.
#[utoipa::path(
    post, path = "/v1/requests/{id}/close", operation_id = "close_request", tag = "requests",
    params(("id" = RequestId, Path, description = "The request's id")),
    responses(
        (status = 200, description = "The request", body = Request),
        (status = 409, description = "`conflict`: the request has already ended", body = ErrorBody),
    ),
)]
#[tracing::instrument(skip_all, fields(request = %path.as_str()))]
async fn close(state: web::Data<AppState>, auth: Auth, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let caller = auth.require_person()?;
    let id = request_id(&path)?;
    Ok(HttpResponse::Ok().json(to_wire(state.corral.close(caller, id).await?)))
}

/// The access details of the request's lease; with `wait`, waits up to
/// that long for the lease to start.
#[utoipa::path(
    post, path = "/v1/requests/{id}/acquire", operation_id = "acquire_request", tag = "requests",
    params(("id" = RequestId, Path, description = "The request's id"), AcquireParams),
    responses(
        (status = 200, description = "How to reach the leased worker", body = AccessDetails),
        (status = 409, description = "`conflict`: the request is still waiting, or has ended", body = ErrorBody),
        (status = 429, description = "`too_many_requests`: a per-user limit is reached", body = ErrorBody,
         headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    ),
)]
#[tracing::instrument(skip_all, fields(request = %path.as_str()))]
async fn acquire(
    state: web::Data<AppState>,
    auth: Auth,
    path: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let caller = auth.require_person()?;
    let id = request_id(&path)?;
    let query = Query::parse(&req)?;
    query.only(&["wait"])?;
    let wait = match query.one("wait")? {
        Some(text) => corral_core::time::parse_duration(text).map_err(ApiError::bad_request)?,
        None => Duration::ZERO,
    };
    if wait > state.config.max_wait {
        return Err(ApiError::bad_request(format!(
            "wait may be at most {}",
            corral_core::time::format_duration(state.config.max_wait)
        )));
    }
    // A long-poll holds one of the caller's slots until it answers.
    let _slot = if wait.is_zero() { None } else { Some(state.limits.long_polls.acquire(caller)?) };
    Ok(HttpResponse::Ok().json(state.corral.acquire(caller, id, wait).await?))
}

/// Extends the lease by `by` (default: the request's lease length), up to
/// the server's `max_lease`. The body may be empty.
#[utoipa::path(
    post, path = "/v1/requests/{id}/prolong", operation_id = "prolong_request", tag = "requests",
    params(("id" = RequestId, Path, description = "The request's id")), request_body(content = Option<Prolong>, description = "Optional; empty means the request's lease length"),
    responses(
        (status = 200, description = "The new expiry", body = Prolonged),
        (status = 409, description = "`conflict`: not in progress, or past `max_lease`", body = ErrorBody),
    ),
)]
#[tracing::instrument(skip_all, fields(request = %path.as_str()))]
async fn prolong(
    state: web::Data<AppState>,
    auth: Auth,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let caller = auth.require_person()?;
    let id = request_id(&path)?;
    let by = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        serde_json::from_slice::<Prolong>(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?
            .by
    };
    if by.is_some_and(|b| b.is_zero()) {
        return Err(ApiError::bad_request("by must be longer than zero"));
    }
    let record = state.corral.prolong(caller, id, by).await?;
    let lease_expires_at =
        record.lease_expires_at.ok_or_else(|| ApiError::internal(&"prolonged lease has no expiry"))?;
    Ok(HttpResponse::Ok().json(Prolonged { request_id: id, lease_expires_at }))
}

/// Why the request is still waiting: its queue position and, for each
/// worker that matches its caps, why it is not free.
#[utoipa::path(
    get, path = "/v1/requests/{id}/explain", operation_id = "explain_request", tag = "requests",
    params(("id" = RequestId, Path, description = "The request's id")),
    responses((status = 200, description = "The explanation", body = Explanation)),
)]
async fn explain(state: web::Data<AppState>, auth: Auth, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let caller = auth.require_person()?;
    let id = request_id(&path)?;
    Ok(HttpResponse::Ok().json(state.corral.explain_request(caller, id).await?))
}
