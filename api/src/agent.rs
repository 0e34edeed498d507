//! `/v1/agent/...`: the agent protocol (see `corral_proto::agent`).

use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use corral_core::SessionId;
use corral_proto::agent::{CommandBatch, CommandResult, Heartbeat, HeartbeatAck, OpenSession, SessionOpened};
use corral_proto::error::ErrorBody;

use crate::AppState;
use crate::auth::Auth;
use crate::error::ApiError;
use crate::query::Query;
use crate::routes::Family;

pub(crate) const ROUTES: Family = crate::family! {
    scope "/v1/agent/sessions" {
        "" => [post => open],
        "/{id}/results" => [post => results],
        "/{id}/commands" => [get => commands],
        "/{id}/heartbeat" => [post => heartbeat],
        "/{id}" => [delete => close],
    }
};

/// The query of the command long-poll.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct CommandsParams {
    /// The last command sequence number the agent has seen (0 at first).
    after: Option<u64>,
    /// Wait up to this long for a command (at most the server's `max_wait`).
    wait: Option<corral_core::schema::HumanDuration>,
    /// The `incarnation` of the last batch: another one means the server
    /// restarted and numbering starts again.
    incarnation: Option<String>,
}

fn session_id(path: &str) -> Result<SessionId, ApiError> {
    path.parse().map_err(|_| ApiError::bad_request(format!("session id must be a UUID, got {path:?}")))
}

/// An agent registers its workers and opens a liveness session.
#[utoipa::path(
    post, path = "/v1/agent/sessions", operation_id = "open_session", tag = "agent",
    request_body = OpenSession,
    responses(
        (status = 201, description = "The session", body = SessionOpened),
        (status = 409, description = "`conflict`: a worker belongs to another agent user", body = ErrorBody),
    ),
)]
#[tracing::instrument(skip_all, fields(agent = %body.agent))]
async fn open(state: web::Data<AppState>, auth: Auth, body: web::Json<OpenSession>) -> Result<HttpResponse, ApiError> {
    let caller = auth.require_agent()?;
    Ok(HttpResponse::Created().json(state.corral.open_session(caller, body.into_inner()).await?))
}

/// Keeps the session alive and reports what the agent observes; 404:
/// the session expired, open a new one.
#[utoipa::path(
    post, path = "/v1/agent/sessions/{id}/heartbeat", operation_id = "heartbeat", tag = "agent",
    params(("id" = SessionId, Path, description = "The session's id")), request_body = Heartbeat,
    responses((status = 200, description = "The session's new deadline", body = HeartbeatAck)),
)]
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

/// Long-polls for commands after sequence number `after`.
#[utoipa::path(
    get, path = "/v1/agent/sessions/{id}/commands", operation_id = "poll_commands", tag = "agent",
    params(("id" = SessionId, Path, description = "The session's id"), CommandsParams),
    responses((status = 200, description = "The commands (none when the wait ended)", body = CommandBatch)),
)]
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

/// How commands went.
#[utoipa::path(
    post, path = "/v1/agent/sessions/{id}/results", operation_id = "post_results", tag = "agent",
    params(("id" = SessionId, Path, description = "The session's id")), request_body = Vec<CommandResult>,
    responses((status = 204, description = "Taken")),
)]
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

/// Closes the session on a clean shutdown.
#[utoipa::path(
    delete, path = "/v1/agent/sessions/{id}", operation_id = "close_session", tag = "agent",
    params(("id" = SessionId, Path, description = "The session's id")),
    responses((status = 204, description = "Closed")),
)]
async fn close(state: web::Data<AppState>, auth: Auth, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let caller = auth.require_agent()?;
    let id = session_id(&path)?;
    state.corral.close_session(caller, id).await?;
    Ok(HttpResponse::NoContent().finish())
}
