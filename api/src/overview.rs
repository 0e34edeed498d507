//! What the dashboard reads besides the resources: `GET /v1/me` (who the
//! token is), `GET /v1/queue` (waiting requests with their positions) and
//! `GET /v1/leases` (who holds which worker, until when). Each is scoped by
//! its `Corral` use case (`corral_actors::overview`).

use actix_web::{HttpRequest, HttpResponse, web};
use corral_proto::Page;
use corral_proto::requests::{LeaseSummary, QueuedRequest};
use corral_proto::users::Me;

use crate::AppState;
use crate::auth::Auth;
use crate::error::ApiError;
use crate::query::{PageParams, Query, id_cursor, parse_id_cursor, parse_limit};
use crate::requests::to_wire;
use crate::routes::Family;

pub(crate) const ROUTES: Family = crate::family! {
    {
        "/v1/me" => [get => me],
        "/v1/queue" => [get => queue],
        "/v1/leases" => [get => leases],
    }
};

/// `GET /v1/me`: the caller's name, role and groups.
#[utoipa::path(
    get, path = "/v1/me", operation_id = "me", tag = "users",
    responses((status = 200, description = "Who the token belongs to", body = Me)),
)]
pub(crate) async fn me(auth: Auth, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let caller = auth.require_person()?;
    Query::parse(&req)?.only(&[])?;
    Ok(HttpResponse::Ok().json(Me {
        name: caller.name.clone(),
        admin: caller.is_admin(),
        role: caller.role,
        groups: caller.groups.clone(),
    }))
}

/// `GET /v1/queue?limit=N&cursor=C`: the caller's waiting requests (an
/// admin: all) in the matcher's order, each with its `position` among all
/// waiting requests; paged by position.
#[utoipa::path(
    get, path = "/v1/queue", operation_id = "queue", tag = "requests",
    params(PageParams),
    responses((status = 200, description = "One page of waiting requests in the matcher's order", body = Page<QueuedRequest>)),
)]
pub(crate) async fn queue(state: web::Data<AppState>, auth: Auth, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let caller = auth.require_person()?;
    let query = Query::parse(&req)?;
    query.only(&["limit", "cursor"])?;
    let limit = parse_limit(&query)?;
    let after = parse_id_cursor(&query, 'q')?.unwrap_or(0) as u64;
    let mut rows = state.corral.queue(caller, after, limit + 1).await?;
    let next_cursor = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|(position, _)| id_cursor('q', *position as i64))
    } else {
        None
    };
    let items: Vec<QueuedRequest> =
        rows.into_iter().map(|(position, record)| QueuedRequest { position, request: to_wire(record) }).collect();
    Ok(HttpResponse::Ok().json(Page { items, next_cursor }))
}

/// `GET /v1/leases`: the running leases on workers the caller may see; the
/// owner is named to admins and to the owner only.
#[utoipa::path(
    get, path = "/v1/leases", operation_id = "live_leases", tag = "requests",
    responses((status = 200, description = "The running leases on workers the caller may see", body = Vec<LeaseSummary>)),
)]
pub(crate) async fn leases(state: web::Data<AppState>, auth: Auth, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let caller = auth.require_person()?;
    Query::parse(&req)?.only(&[])?;
    Ok(HttpResponse::Ok().json(state.corral.live_leases(caller).await?))
}
