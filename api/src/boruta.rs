//! The Boruta-compatible API (`/api/v1`, SPEC §5): an adapter that lets
//! Boruta's Go client package, Weles and Festral use corral unchanged. It
//! calls the same use cases of [`corral_actors::Corral`] and reads the same
//! database as `/v1`; it keeps no state of its own.
//!
//! The wire format was learnt from Boruta's sources (`boruta.go`,
//! `http/http.go`, `http/server/api/v1`, `http/client/client.go`,
//! `filter/filter.go`, `requests/`, `workers/`). Where Boruta's server and
//! its own client disagree, corral answers what the client needs.
//!
//! # Routes
//!
//! | method, path | answer |
//! |---|---|
//! | `POST /reqs/` | 201 `{"ReqID": N}` |
//! | `GET, HEAD /reqs/` | all visible requests (200 list / 204) |
//! | `POST /reqs/list` | `{Filter, Sorter, Paginator}` → 200 list |
//! | `GET, HEAD /reqs/{id}` | 200 `ReqInfo` / 204 |
//! | `POST /reqs/{id}` | update priority, valid after, deadline: 204 |
//! | `POST /reqs/{id}/close` | 204 |
//! | `POST /reqs/{id}/acquire_worker` | 200 `AccessInfo` |
//! | `POST /reqs/{id}/prolong` | 204 |
//! | `GET, HEAD /workers/` | visible workers (200 list / 204) |
//! | `POST /workers/list` | `{Filter, Sorter, Paginator}` → 200 list |
//! | `GET, HEAD /workers/{uuid}` | 200 `WorkerInfo` / 204 |
//! | `POST /workers/{uuid}/setstate` | admin: `{"WorkerState": "IDLE"\|"MAINTENANCE"}` → 204 |
//! | `POST /workers/{uuid}/setgroups` | admin: list of groups (or null) → 204 |
//! | `POST /workers/{uuid}/deregister` | admin: 204 |
//! | `GET, HEAD /version` (also `//version`) | 200 `{Server, API_Version, API_State}` / 204 |
//! | any method, `/api/PATH` without the version | 308, `Location: /api/v1/PATH` (query kept) |
//!
//! # Mapping decisions
//!
//! - **States.** Request states map one to one (`waiting` ↔ `WAITING`,
//!   `in_progress` ↔ `IN PROGRESS`, `cancelled` ↔ `CANCELLED`, `timeout`,
//!   `invalid`, `done`, `failed` likewise). Worker states too; Boruta's
//!   constants `RUN` and `FAIL` travel as `"RUNNING"` and `"FAILED"`.
//! - **Ids.** Boruta's `ReqID` is corral's request id; `WorkerUUID` the
//!   worker's UUID, which is also put in the worker's `Caps` as `UUID`, as
//!   Boruta does (a request cap `UUID` pins a worker in both systems).
//! - **Creating** takes a `ReqInfo` and reads `Priority`, `Caps`,
//!   `ValidAfter` and `Deadline` (the other fields are ignored, as Boruta
//!   does). Go's zero time means "not set": valid after now, deadline the
//!   server's default. A `Priority` that is present must be 1 to 16 (Boruta
//!   refuses 0 too); an absent one is the default, 8. The lease length is
//!   the server's `default_lease` (Boruta: one hour). Requests made here
//!   get an RSA lease key, because `acquire_worker` must hand out an RSA
//!   key. The answer is Boruta's `{"ReqID": N}` with 201, plus `Location`
//!   and `Boruta-Request-State` (additions a Go client ignores). Caps no
//!   registered worker can serve are accepted and wait, as in Boruta (a
//!   device type may register later); `/v1` refuses them with 422 unless
//!   told `allow_unsatisfiable`.
//! - **Updating** (`POST /reqs/{id}`) reads `Priority`, `ValidAfter`,
//!   `Deadline`; zero values mean "unchanged" (Boruta's rule), an `ID`
//!   other than 0 or the path's is refused. Only waiting requests change.
//! - **`Job`** is present once a lease has started: `WorkerUUID` and
//!   `Timeout`, the lease expiry. A waiting request that the matcher has
//!   bound but whose key is still being installed shows no `Job` (corral's
//!   `in_progress` starts only when the key is in place).
//! - **`acquire_worker`** never waits, as Boruta's: a request that is not
//!   `IN PROGRESS` gets 400 "worker not assigned". `Addr` is the tunnel:
//!   `IP` the server's configured public host (resolved to an address if
//!   it is a name, IPv4 preferred), `Port` the tunnel port, `Zone` empty.
//!   `Key` is the lease's RSA key in PKCS#1 PEM. A request created through
//!   `/v1` with an Ed25519 key or with its own public key has no such key:
//!   400, pointing at `/v1`.
//! - **`prolong`** has no body. Like Boruta it sets the lease to end one
//!   lease length (the request's) from now; if it already ends later,
//!   nothing changes. Calling it repeatedly does not accumulate.
//! - **`setstate`** accepts `IDLE` and `MAINTENANCE` (any case), as
//!   Boruta; anything else is 400. The state the worker is in already is
//!   a no-op with 204, as in Boruta (`MAINTENANCE` on a `BUSY` worker puts
//!   it in maintenance without waiting for its agent);
//!   `/v1` answers such a call with its usual conflict. Maintenance is immediate (no drain),
//!   with the reason "set through the Boruta API". It answers 204, not
//!   Boruta's server's 202: Boruta's client treats any 2xx but 204 as a
//!   body to decode into nothing and reports an error.
//! - **`HEAD`** answers 204 with the headers and no body. Boruta's server
//!   answered 200, but its client (`GetRequestState`, `GetWorkerState`,
//!   `GetJobTimeout`, `Version`) accepts only 204. The client's `Version`
//!   asks for `/api/v1//version`, which is served too.
//! - **Headers.** `Boruta-Request-State` (and `Boruta-Job-Timeout`, RFC 3339
//!   in whole seconds, when `IN PROGRESS`) with a request;
//!   `Boruta-Worker-State` with a worker; `Boruta-Request-Count` /
//!   `Boruta-Worker-Count`, `Boruta-List-Total`, `Boruta-List-Remaining`
//!   and `Boruta-List-Batch-Size` with a list; `Boruta-Server-Version`,
//!   `Boruta-API-Version` and `Boruta-API-State` with the version.
//! - **Lists.** The filter of requests has `IDs`, `States`, `Priorities`
//!   (a request matches if it matches every non-empty one, each by "one
//!   of"); the older `State` / `Priority` strings and a bare filter object
//!   as the whole body (Boruta's first list API) are accepted too. An
//!   unknown state name is 400 where Boruta matched nothing: a typo should
//!   not look like an empty queue. The workers' filter has `Groups` (any
//!   of) and `Capabilities` (all of). Sort items: requests `id` (default),
//!   `priority`, `deadline`, `validafter`, `state`; workers `uuid`
//!   (default), `state`, `groups`; any case; `ascending` or `descending`,
//!   the id breaking ties. Pages follow Boruta's paginator: `ID` is the
//!   border (exclusive; it need not match the filter but must exist, else
//!   404), `Direction` `forward` (items after it) or `backward` (items
//!   before it), `Limit` 0 means 65535. `Boruta-List-Remaining` counts the
//!   items past the page in the paging direction.
//! - **Visibility.** As on `/v1`: users see their own requests and the
//!   workers their groups may use; admins see everything. Admin-only
//!   operations (`setstate`, `setgroups`, `deregister`) stay admin-only.
//! - **Errors** are `{"message": TEXT}` with Boruta's statuses: 404 for an
//!   unknown (or invisible) request or worker, 400 for everything the
//!   caller got wrong, including a state that forbids the action (corral's
//!   409 and 422; the text starts "invalid request: " as Boruta's does).
//!   corral adds 401 and 403 (Boruta had no users), 413 for a body over
//!   `max_body`, 503 with `Retry-After` when the database is unavailable,
//!   and 500 with a generic message.
//! - **Authentication** is that of `/v1`: `Authorization: Bearer TOKEN`.
//!   Boruta's Go client cannot send a token; for such clients the server
//!   setting `boruta_user` names an existing user that calls without an
//!   `Authorization` header act as (its groups and its role: name a
//!   non-admin user unless everyone who can reach the server may
//!   administer it). Without the setting they get 401. A bad token is 401
//!   even when `boruta_user` is set.
//!
//! # Divergences from Boruta that corral keeps
//!
//! SPEC §5 asks that the Boruta API keep Boruta's behaviour; corral adopted
//! it where Boruta's clients could notice (requests for caps no worker
//! offers are queued, unversioned paths answer 308, setting the current
//! state is a no-op). What remains, each with why, and the test in
//! `api/tests/boruta.rs` (or the matrix) that pins what corral does:
//!
//! 1. **`setstate` answers 204, not 202.** Boruta's server answered 202,
//!    but its Go client decodes any 2xx other than 204 as a body and fails
//!    on the empty one: 204 is what works for the clients SPEC §5 names.
//!    Pinned by `boruta_setstate_to_the_current_state_is_204`,
//!    `workers_are_listed_read_and_administered_like_boruta`.
//! 2. **`HEAD` answers 204, not 200.** Same reason: the client's
//!    `GetRequestState`, `GetWorkerState`, `GetJobTimeout` and `Version`
//!    accept only 204. Pinned by
//!    `a_go_client_creates_acquires_prolongs_and_closes_a_request`.
//! 3. **An unknown state name in a list filter is 400**, where Boruta
//!    matched nothing: a typo must not look like an empty queue to a CI
//!    system that polls it. Pinned by
//!    `requests_are_filtered_sorted_paged_and_updated_like_boruta`.
//! 4. **Users and visibility.** Boruta had no users: everyone saw and
//!    could change everything. corral keeps its own rules (own requests,
//!    workers of one's groups, admin-only worker actions) on this API too,
//!    with 401 and 403, and `boruta_user` for clients that cannot send a
//!    token: the native API's guarantees would mean nothing if this API
//!    bypassed them. Pinned by the `/api/v1` rows of
//!    `api/tests/authz_matrix.rs` and
//!    `clients_without_a_token_act_as_the_configured_boruta_user`.
//! 5. **Errors Boruta never sent**: 413 for a body over `max_body`, 503
//!    with `Retry-After` while the database is unavailable, 500 with a
//!    generic message. Boruta kept everything in memory and had no limits;
//!    a client that retries on 5xx does the right thing. Pinned by
//!    `bad_input_gets_borutas_errors_and_changes_nothing` (413).
//! 6. **`acquire_worker` of a request made on `/v1`** with an Ed25519 key,
//!    or with the requester's own public key, is 400 pointing at `/v1`:
//!    there is no PKCS#1 RSA key to put in `AccessInfo` (requests made here
//!    always get one). Pinned by
//!    `boruta_divergences_that_corral_keeps_are_pinned`.
//! 7. **`IN PROGRESS` starts when the lease key is installed**, not when
//!    the worker is chosen: before that the request is `WAITING` with no
//!    `Job`, so a client that sees `IN PROGRESS` can always reach the
//!    worker. Boruta had no key to install. Pinned by
//!    `boruta_divergences_that_corral_keeps_are_pinned`.
//! 8. **Holds and power cycles are invisible here.** A quarantined or
//!    recovering idle worker, or one being power-cycled, reads `IDLE`
//!    (Boruta's states have no such thing, and showing it `MAINTENANCE`
//!    would invite a `setstate IDLE` that cannot lift it); it is simply not
//!    leased. Its `setstate` while a power cycle runs is 400 (corral's 409,
//!    naming the power cycle). Pinned by
//!    `boruta_divergences_that_corral_keeps_are_pinned`.
//! 9. **Lists consider the newest 20,000 requests** without `IDs` (below,
//!    "Approximations"): Boruta kept every request in memory; corral's
//!    history grows without bound. Not pinned by a test (it would need
//!    20,000 requests); `requests::LIST_SCAN_LIMIT` is the one constant.
//!
//! # Approximations
//!
//! - A request list without `IDs` considers the newest 20,000 requests
//!   (`requests::LIST_SCAN_LIMIT`) that match the states (and a single
//!   priority) in the database; older ones are not listed or counted.
//!   Sorting and paging then happen in memory, as in Boruta.
//! - Clients without a token cost one read of the user table per call
//!   (the token cache is keyed by token); `boruta_user` is meant for a
//!   handful of CI clients, not for heavy traffic.
//! - Boruta's `Owner` in a `ReqInfo` carries the owner's groups; its user
//!   name has no place in Boruta's format and is not sent.

mod paging;
mod requests;
mod workers;

use std::net::IpAddr;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{FromRequest, HttpRequest, HttpResponse, ResponseError, web};
use corral_actors::{ActorError, Caller};
use corral_core::Role;
use corral_proto::boruta::{BorutaVersion, ErrorBody, headers};
use futures_util::StreamExt;
use serde::Serialize;

use crate::AppState;
use crate::auth::Auth;
use crate::error::ApiError;

/// Registers `/api/v1`. Bodies are limited to `max_body` bytes, as on
/// `/v1`, and every malformed one gets a Boruta-style error.
pub fn routes(cfg: &mut web::ServiceConfig, max_body: usize) {
    let json = web::JsonConfig::default()
        .limit(max_body)
        .content_type_required(false)
        .error_handler(move |err, _| json_error(err, max_body).into());
    let reqs = || {
        web::resource(["/reqs", "/reqs/"])
            .route(web::post().to(requests::create))
            .route(web::get().to(paging::list_all::<requests::Requests>))
            .route(web::head().to(paging::list_all_head::<requests::Requests>))
    };
    let workers = || {
        web::resource(["/workers", "/workers/"])
            .route(web::get().to(paging::list_all::<workers::Workers>))
            .route(web::head().to(paging::list_all_head::<workers::Workers>))
    };
    let version =
        || web::resource(["/version", "//version"]).route(web::get().to(version)).route(web::head().to(version_head));
    cfg.service(
        web::scope("/api/v1")
            .app_data(json)
            .app_data(web::PathConfig::default().error_handler(|err, _| BorutaError::invalid(err.to_string()).into()))
            .app_data(web::QueryConfig::default().error_handler(|err, _| BorutaError::invalid(err.to_string()).into()))
            .service(reqs().default_service(web::to(method_not_allowed)))
            .service(
                web::resource("/reqs/list")
                    .route(web::post().to(paging::list::<requests::Requests>))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/reqs/{id}")
                    .route(web::get().to(requests::get))
                    .route(web::head().to(requests::head))
                    .route(web::post().to(requests::update))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(post_only("/reqs/{id}/close", requests::close))
            .service(post_only("/reqs/{id}/acquire_worker", requests::acquire))
            .service(post_only("/reqs/{id}/prolong", requests::prolong))
            .service(workers().default_service(web::to(method_not_allowed)))
            .service(
                web::resource("/workers/list")
                    .route(web::post().to(paging::list::<workers::Workers>))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/workers/{id}")
                    .route(web::get().to(workers::get))
                    .route(web::head().to(workers::head))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(post_only("/workers/{id}/setstate", workers::set_state))
            .service(post_only("/workers/{id}/setgroups", workers::set_groups))
            .service(post_only("/workers/{id}/deregister", workers::deregister))
            .service(version().default_service(web::to(method_not_allowed)))
            .default_service(web::to(not_found)),
    );
    // Festral calls `/api/reqs/` and `/api/workers`: Boruta's server sends
    // such paths on to the versioned API with 308, which keeps the method
    // and the body.
    cfg.service(web::resource("/api/{tail:.*}").to(unversioned));
}

async fn unversioned(req: HttpRequest, tail: web::Path<String>) -> HttpResponse {
    let mut location = format!("/api/v1/{}", tail.into_inner());
    if !req.query_string().is_empty() {
        location.push('?');
        location.push_str(req.query_string());
    }
    HttpResponse::PermanentRedirect().insert_header((header::LOCATION, location)).finish()
}

fn post_only<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path).route(web::post().to(handler)).default_service(web::to(method_not_allowed))
}

async fn not_found(req: HttpRequest) -> HttpResponse {
    BorutaError::new(StatusCode::NOT_FOUND, format!("{} not found", req.path())).error_response()
}

async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
    BorutaError::new(StatusCode::METHOD_NOT_ALLOWED, format!("{} does not accept {}", req.path(), req.method()))
        .error_response()
}

// ----- errors -----------------------------------------------------------------

/// An error in Boruta's shape: `{"message": TEXT}` with Boruta's status.
#[derive(Debug, thiserror::Error)]
#[error("{status}: {message}")]
pub struct BorutaError {
    pub status: StatusCode,
    pub message: String,
}

impl BorutaError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> BorutaError {
        BorutaError { status, message: message.into() }
    }

    /// 400, worded as Boruta words it: `invalid request: …`.
    pub fn invalid(message: impl std::fmt::Display) -> BorutaError {
        BorutaError::new(StatusCode::BAD_REQUEST, format!("invalid request: {message}"))
    }

    /// 404 `Request not found`, `Worker not found` (Boruta's texts).
    pub fn not_found(what: &str) -> BorutaError {
        BorutaError::new(StatusCode::NOT_FOUND, format!("{what} not found"))
    }

    pub fn unauthorized(message: impl Into<String>) -> BorutaError {
        BorutaError::new(StatusCode::UNAUTHORIZED, message)
    }

    pub fn forbidden(message: impl Into<String>) -> BorutaError {
        BorutaError::new(StatusCode::FORBIDDEN, message)
    }

    pub fn internal(cause: &dyn std::fmt::Display) -> BorutaError {
        BorutaError::from(ApiError::internal(cause))
    }

    /// Boruta's own text for acting on a request that has no worker yet.
    pub fn worker_not_assigned() -> BorutaError {
        BorutaError::invalid("worker not assigned")
    }
}

impl From<ApiError> for BorutaError {
    fn from(err: ApiError) -> Self {
        let status = match err.status.as_u16() {
            // Boruta answers every mistake of the caller, wrong state
            // included, with 400.
            409 | 422 => StatusCode::BAD_REQUEST,
            _ => err.status,
        };
        let message = match status.as_u16() {
            400 => format!("invalid request: {}", err.message),
            _ => err.message,
        };
        BorutaError { status, message }
    }
}

impl From<ActorError> for BorutaError {
    fn from(err: ActorError) -> Self {
        BorutaError::from(ApiError::from(err))
    }
}

impl ResponseError for BorutaError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        match self.status {
            StatusCode::SERVICE_UNAVAILABLE => {
                response.insert_header((header::RETRY_AFTER, HeaderValue::from_static("1")));
            }
            StatusCode::TOO_MANY_REQUESTS => {
                let seconds = crate::error::WAITING_LIMIT_RETRY_AFTER;
                response.insert_header((header::RETRY_AFTER, HeaderValue::from(seconds)));
            }
            StatusCode::UNAUTHORIZED => {
                response.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
            }
            _ => {}
        }
        response.json(ErrorBody { message: self.message.clone() })
    }
}

fn json_error(err: actix_web::error::JsonPayloadError, limit: usize) -> BorutaError {
    use actix_web::error::JsonPayloadError as E;
    match err {
        E::Overflow { .. } | E::OverflowKnownLength { .. } => too_large(limit),
        E::Deserialize(e) => BorutaError::invalid(format!("invalid JSON body: {e}")),
        other => BorutaError::invalid(format!("invalid body: {other}")),
    }
}

fn too_large(limit: usize) -> BorutaError {
    BorutaError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the request body is larger than the limit of {limit} bytes"),
    )
}

/// Reads a body that may be empty (list calls), up to `max_body` bytes.
async fn read_body(mut payload: web::Payload, limit: usize) -> Result<web::BytesMut, BorutaError> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| BorutaError::invalid(format!("cannot read the body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(too_large(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

// ----- who is calling ---------------------------------------------------------

/// The caller: the bearer token's user, or, without an `Authorization`
/// header, the configured `boruta_user`.
async fn caller(req: &HttpRequest, state: &AppState) -> Result<Caller, BorutaError> {
    if req.headers().contains_key(header::AUTHORIZATION) {
        let auth = Auth::extract(req).await.map_err(|err| match err.as_error::<ApiError>() {
            Some(api) => BorutaError::new(api.status, api.message.clone()),
            None => BorutaError::unauthorized("invalid Authorization header"),
        })?;
        return Ok(auth.require_person()?.clone());
    }
    let Some(name) = &state.config.boruta_user else {
        return Err(BorutaError::unauthorized(
            "missing Authorization: Bearer TOKEN header (this server has no boruta_user for clients without a token)",
        ));
    };
    let user = state.corral.user_named(name).await?.ok_or_else(|| {
        tracing::warn!(user = %name, "the configured boruta_user does not exist");
        BorutaError::unauthorized(format!("the Boruta compatibility user {name:?} does not exist; send a token"))
    })?;
    if user.role == Role::Agent {
        return Err(BorutaError::forbidden("boruta_user names an agent identity, which may only use the agent API"));
    }
    Ok(Caller::from(user))
}

fn require_admin(caller: &Caller) -> Result<(), BorutaError> {
    if caller.is_admin() { Ok(()) } else { Err(BorutaError::forbidden("this needs an admin token")) }
}

// ----- answers ------------------------------------------------------------------

type Headers = Vec<(&'static str, String)>;

/// 200 with the JSON body and headers, or, for `HEAD`, 204 with the
/// headers only (what Boruta's client checks for).
fn answer<T: Serialize>(head: bool, headers: Headers, body: &T) -> HttpResponse {
    let mut response = if head { HttpResponse::NoContent() } else { HttpResponse::Ok() };
    for (name, value) in headers {
        response.insert_header((name, value));
    }
    if head { response.finish() } else { response.json(body) }
}

fn no_content() -> HttpResponse {
    HttpResponse::NoContent().finish()
}

/// The tunnel address for `AccessInfo.Addr`: Go's `net.TCPAddr` needs an
/// IP, so a host name is resolved (on a blocking thread).
async fn public_ip(host: &str) -> Result<IpAddr, BorutaError> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(ip);
    }
    let name = bare.to_string();
    let resolved = web::block(move || {
        use std::net::ToSocketAddrs;
        (name.as_str(), 0).to_socket_addrs().map(|addrs| addrs.map(|a| a.ip()).collect::<Vec<_>>())
    })
    .await
    .map_err(|e| BorutaError::internal(&e))?;
    let ips = resolved.map_err(|e| {
        BorutaError::from(ApiError::unavailable(&format!("public_host {host:?} does not resolve: {e}")))
    })?;
    ips.iter()
        .find(|ip| ip.is_ipv4())
        .or_else(|| ips.first())
        .copied()
        .ok_or_else(|| BorutaError::from(ApiError::unavailable(&format!("public_host {host:?} has no address"))))
}

// ----- version ----------------------------------------------------------------------

fn version_info() -> (Headers, BorutaVersion) {
    let info = BorutaVersion {
        server: env!("CARGO_PKG_VERSION").to_string(),
        api: corral_proto::boruta::API_VERSION.to_string(),
        state: corral_proto::boruta::API_STATE.to_string(),
    };
    let headers = vec![
        (headers::SERVER_VERSION, info.server.clone()),
        (headers::API_VERSION, info.api.clone()),
        (headers::API_STATE, info.state.clone()),
    ];
    (headers, info)
}

async fn version(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, BorutaError> {
    caller(&req, &state).await?;
    let (headers, info) = version_info();
    Ok(answer(false, headers, &info))
}

async fn version_head(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, BorutaError> {
    caller(&req, &state).await?;
    let (headers, info) = version_info();
    Ok(answer(true, headers, &info))
}
