//! `/v1/agent/...`: the agent protocol (see `corral_proto::agent`).

use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use corral_core::SessionId;
use corral_proto::agent::{CommandResult, Heartbeat, OpenSession};

use crate::auth::Auth;
use crate::error::ApiError;
use crate::query::Query;
use crate::{AppState, endpoint};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/v1/agent/sessions")
            .service(endpoint("").route(web::post().to(open)))
            .service(endpoint("/{id}/results").route(web::post().to(results)))
            .service(endpoint("/{id}/commands").route(web::get().to(commands)))
            .service(endpoint("/{id}/heartbeat").route(web::post().to(heartbeat)))
            .service(endpoint("/{id}").route(web::delete().to(close))),
    );
}

fn session_id(path: &str) -> Result<SessionId, ApiError> {
    path.parse().map_err(|_| ApiError::bad_request(format!("session id must be a UUID, got {path:?}")))
}

#[tracing::instrument(skip_all, fields(agent = %body.agent))]
async fn open(state: web::Data<AppState>, auth: Auth, body: web::Json<OpenSession>) -> Result<HttpResponse, ApiError> {
    let caller = auth.require_agent()?;
    Ok(HttpResponse::Created().json(state.corral.open_session(caller, body.into_inner()).await?))
}

#[tracing::instrument(skip_all, fields(session = %path.as_str()))]
async fn heartbeat(
    state: web::Data<AppState>,
    auth: Auth,
    path: web::Path<String>,
    body: web::Json<Heartbeat>,
) -> Result<HttpResponse, ApiError> {
    let caller = auth.require_agent()?;
    let id = session_id(&path)?;
    Ok(HttpResponse::Ok().json(state.corral.heartbeat(caller, id, body.into_inner()).await?))
}

async fn commands(
    state: web::Data<AppState>,
    auth: Auth,
    path: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let caller = auth.require_agent()?;
    let id = session_id(&path)?;
    let query = Query::parse(&req)?;
    query.only(&["after", "wait", "incarnation"])?;
    let after = match query.one("after")? {
        Some(text) => {
            text.parse::<u64>().map_err(|_| ApiError::bad_request("after must be a command sequence number"))?
        }
        None => 0,
    };
    let wait = match query.one("wait")? {
        Some(text) => corral_core::time::parse_duration(text).map_err(ApiError::bad_request)?,
        None => Duration::ZERO,
    };
    let wait = wait.min(state.config.max_wait);
    let incarnation = query.one("incarnation")?.map(str::to_string);
    Ok(HttpResponse::Ok().json(state.corral.poll_commands(caller, id, after, incarnation, wait).await?))
}

async fn results(
    state: web::Data<AppState>,
    auth: Auth,
    path: web::Path<String>,
    body: web::Json<Vec<CommandResult>>,
) -> Result<HttpResponse, ApiError> {
    let caller = auth.require_agent()?;
    let id = session_id(&path)?;
    state.corral.post_results(caller, id, body.into_inner()).await?;
    Ok(HttpResponse::NoContent().finish())
}

async fn close(state: web::Data<AppState>, auth: Auth, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let caller = auth.require_agent()?;
    let id = session_id(&path)?;
    state.corral.close_session(caller, id).await?;
    Ok(HttpResponse::NoContent().finish())
}
