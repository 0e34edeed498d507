//! The corral HTTP server: the native API (`/v1`), the agent protocol
//! (`/v1/agent`), health and readiness, and [`serve`], which starts
//! everything a `corral serve` needs (database, schema, first-start tokens,
//! actors, HTTP).
//!
//! Architecture invariant: handlers parse and check input, authorise, and
//! call one use case of [`corral_actors::Corral`]; they hold no state of
//! their own (the token cache is the actors' `AuthCache`) besides the
//! per-user limits of long-polls and streams. Every error leaves through
//! [`error::ApiError`].

pub mod agent;
pub(crate) mod audit;
pub mod auth;
pub mod boruta;
pub mod config;
mod dashboard;
pub mod error;
pub mod events;
mod health;
mod leadership;
pub mod limits;
pub mod metrics;
pub mod openapi;
mod overview;
mod query;
pub mod requests;
pub mod routes;
pub mod serve;
pub mod users;
pub mod workers;

use actix_web::{HttpRequest, HttpResponse, web};
use corral_actors::Corral;

pub use config::Config;
pub use serve::{Running, Tokens, check_config, serve};

use crate::error::ApiError;

/// What every handler can reach.
pub struct AppState {
    pub corral: Corral,
    pub config: Config,
    /// Per-user limits on concurrent long-polls and streams.
    pub limits: limits::Limits,
    /// What `/metrics` observed so far, and who may read it.
    pub metrics: std::sync::Arc<metrics::Metrics>,
    pub metrics_access: metrics::MetricsAccess,
}

/// A resource whose methods are the routes added to it; any other method
/// gets a JSON 405 (actix-web's own answer is an empty body). Every `/v1`
/// path is registered through this.
pub(crate) fn endpoint(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(|req: HttpRequest| async move {
        Err::<HttpResponse, _>(ApiError::method_not_allowed(req.method(), req.path()))
    }))
}

/// The families of routes [`configure`] registers (and
/// [`routes::table`] lists): one per module.
pub(crate) const FAMILIES: [routes::Family; 10] = [
    health::ROUTES,
    metrics::ROUTES,
    openapi::ROUTES,
    requests::ROUTES,
    workers::ROUTES,
    users::ROUTES,
    events::ROUTES,
    overview::ROUTES,
    audit::ROUTES,
    agent::ROUTES,
];

/// All routes, body limits and error shapes.
///
/// Each family of routes sits in a scope with a static prefix: actix-web
/// tries a request against every route in turn, and a route with a path
/// parameter is a regular expression (run by regex-lite's PikeVM). With
/// the routes flat, an agent's result crossed a dozen of them, about a
/// tenth of the server's CPU in the lifecycle benchmark; a scope's prefix
/// is a string comparison, and only the matching scope's routes run.
pub fn configure(cfg: &mut web::ServiceConfig, max_body: usize) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(max_body)
            .content_type_required(false)
            .error_handler(move |err, _| error::json_error(err, max_body)),
    )
    .app_data(web::PayloadConfig::new(max_body))
    .app_data(web::QueryConfig::default().error_handler(|err, _| ApiError::bad_request(err.to_string()).into()))
    .app_data(web::PathConfig::default().error_handler(|err, _| ApiError::bad_request(err.to_string()).into()))
    .configure(dashboard::routes)
    .configure(|cfg| {
        for family in FAMILIES {
            (family.configure)(cfg);
        }
    })
    .configure(|cfg| boruta::routes(cfg, max_body))
    .default_service(web::to(|| async {
        Err::<HttpResponse, _>(ApiError::not_found(
            "no such endpoint: the native API is under /v1 and the Boruta-compatible one under /api/v1",
        ))
    }));
}
