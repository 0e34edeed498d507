//! `/healthz` (the process answers) and `/readyz` (and its database too).

use actix_web::{HttpResponse, web};

use crate::error::ApiError;
use crate::{AppState, endpoint};

pub fn routes(cfg: &mut web::ServiceConfig) {
    // HEAD too, for probes that send it (the body is left out).
    cfg.service(endpoint("/healthz").route(web::get().to(healthz)).route(web::head().to(healthz)))
        .service(endpoint("/readyz").route(web::get().to(readyz)).route(web::head().to(readyz)));
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.corral.db().ping().await.map_err(|e| ApiError::unavailable(&e))?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"status": "ready"})))
}
