//! `/healthz` (the process answers) and `/readyz` (and its database too).

use actix_web::{HttpResponse, web};

use crate::AppState;
use crate::error::ApiError;
use crate::routes::Family;

// HEAD too, for probes that send it (the body is left out).
pub(crate) const ROUTES: Family = crate::family! {{
    "/healthz" => [get => healthz, head => healthz],
    "/readyz" => [get => readyz, head => readyz],
}};

/// Liveness: the process answers.
#[utoipa::path(
    method(get, head), path = "/healthz", operation_id = "healthz", tag = "operations", security(()),
    responses((status = 200, description = "`{\"status\": \"ok\"}`", body = Object)),
)]
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// Readiness: the server and its database answer.
#[utoipa::path(
    method(get, head), path = "/readyz", operation_id = "readyz", tag = "operations", security(()),
    responses(
        (status = 200, description = "`{\"status\": \"ready\"}`", body = Object),
        (status = 503, description = "`unavailable`: the database does not answer", body = corral_proto::error::ErrorBody,
         headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    ),
)]
async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.corral.check_database().await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"status": "ready"})))
}
