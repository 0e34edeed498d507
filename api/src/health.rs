//! `/healthz` (the process answers) and `/readyz` (and its database too).

use actix_web::{HttpResponse, web};

use crate::AppState;
use crate::error::ApiError;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz)).route("/readyz", web::get().to(readyz));
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.corral.db().ping().await.map_err(|e| ApiError::unavailable(&e))?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"status": "ready"})))
}
