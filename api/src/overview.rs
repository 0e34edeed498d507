//! What the dashboard reads besides the resources: `GET /v1/me` (who the
//! token is), `GET /v1/queue` (waiting requests with their positions) and
//! `GET /v1/leases` (who holds which worker, until when). Each is scoped by
//! its `Corral` use case (`corral_actors::overview`).

use actix_web::{HttpRequest, HttpResponse, web};
use corral_proto::Page;
use corral_proto::requests::QueuedRequest;
use corral_proto::users::Me;

use crate::auth::Auth;
use crate::error::ApiError;
use crate::query::{Query, id_cursor, parse_id_cursor, parse_limit};
use crate::requests::to_wire;
use crate::{AppState, endpoint};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(endpoint("/v1/me").route(web::get().to(me)))
        .service(endpoint("/v1/queue").route(web::get().to(queue)))
        .service(endpoint("/v1/leases").route(web::get().to(leases)));
}

/// `GET /v1/me`: the caller's name, role and groups.
async fn me(auth: Auth, req: HttpRequest) -> Result<HttpResponse, ApiError> {
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
async fn queue(state: web::Data<AppState>, auth: Auth, req: HttpRequest) -> Result<HttpResponse, ApiError> {
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
async fn leases(state: web::Data<AppState>, auth: Auth, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let caller = auth.require_person()?;
    Query::parse(&req)?.only(&[])?;
    Ok(HttpResponse::Ok().json(state.corral.live_leases(caller).await?))
}
