//! `GET /v1/audit`: the audit log of admin actions, newest first, paged
//! like a worker's history; and [`audited`], which every admin-only route
//! that changes something runs its action through.

use std::future::Future;

use actix_web::{HttpRequest, HttpResponse, web};
use corral_actors::Caller;
use corral_actors::audit::AdminAction;
use corral_core::records::AuditOutcome;
use corral_proto::Page;
use corral_proto::audit::AuditEntry;

use crate::AppState;
use crate::auth::Auth;
use crate::error::ApiError;
use crate::query::{PageParams, Query, id_cursor, parse_id_cursor, parse_limit};
use crate::routes::Family;

pub(crate) const ROUTES: Family = crate::family! {
    scope "/v1/audit" { "" => [get => list] }
};

/// Runs an admin action with its audit row: written first (the action
/// does not run if it cannot be), then given the outcome: `done`,
/// `refused` for a 4xx answer (nothing changed), `failed` for a 5xx one.
/// Calls refused before this (no admin token, a body that is not JSON) are
/// not admin actions and leave no row.
pub(crate) async fn audited<T, E: AuditedError>(
    state: &AppState,
    req: &HttpRequest,
    caller: &Caller,
    action: &'static str,
    target: impl Into<String>,
    detail: impl Into<String>,
    run: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let address = req.peer_addr().map(|peer| peer.ip().to_string());
    let admin = AdminAction { action, target: target.into(), address, detail: detail.into() };
    let id = state.corral.audit_begin(caller, admin).await.map_err(|e| E::from(ApiError::from(e)))?;
    let result = run.await;
    let (outcome, message) = match &result {
        Ok(_) => (AuditOutcome::Done, None),
        Err(err) if err.status().is_client_error() => (AuditOutcome::Refused, Some(err.message())),
        Err(err) => (AuditOutcome::Failed, Some(err.message())),
    };
    state.corral.audit_end(id, outcome, message).await;
    result
}

/// The errors of the native and the Boruta API, as the audit sees them.
pub(crate) trait AuditedError: From<ApiError> {
    fn status(&self) -> actix_web::http::StatusCode;
    fn message(&self) -> &str;
}

impl AuditedError for ApiError {
    fn status(&self) -> actix_web::http::StatusCode {
        self.status
    }

    fn message(&self) -> &str {
        &self.message
    }
}

impl AuditedError for crate::boruta::BorutaError {
    fn status(&self) -> actix_web::http::StatusCode {
        self.status
    }

    fn message(&self) -> &str {
        &self.message
    }
}

/// `GET /v1/audit?limit=N&cursor=C`: admin actions, newest first.
#[utoipa::path(
    get, path = "/v1/audit", operation_id = "audit_log", tag = "audit",
    params(PageParams),
    responses((status = 200, description = "One page of admin actions, newest first", body = Page<AuditEntry>)),
)]
async fn list(state: web::Data<AppState>, auth: Auth, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let caller = auth.require_admin().map_err(|_| ApiError::forbidden("the audit log is for admins"))?;
    let query = Query::parse(&req)?;
    query.only(&["limit", "cursor"])?;
    let limit = parse_limit(&query)?;
    let before = parse_id_cursor(&query, 'a')?;
    let mut rows = state.corral.audit_page(caller, before, limit + 1).await?;
    let next_cursor = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|r| id_cursor('a', r.id))
    } else {
        None
    };
    let items: Vec<AuditEntry> = rows
        .into_iter()
        .map(|r| AuditEntry {
            id: r.id,
            at: r.intent.at,
            actor: r.intent.actor,
            action: r.intent.action,
            target: r.intent.target,
            address: r.intent.address,
            detail: r.intent.detail,
            outcome: r.outcome,
            message: r.message,
        })
        .collect();
    Ok(HttpResponse::Ok().json(Page { items, next_cursor }))
}
