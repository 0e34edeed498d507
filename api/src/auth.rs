//! Bearer-token authentication: the `Authorization: Bearer TOKEN` header,
//! and who it stands for (`Corral::authenticate`, which caches answers).

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, web};
use corral_actors::Caller;
use corral_core::Role;

use crate::AppState;
use crate::error::ApiError;

fn bearer(req: &HttpRequest) -> Result<String, ApiError> {
    let value = req
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer TOKEN header"))?;
    let text = value.to_str().map_err(|_| ApiError::unauthorized("malformed Authorization header"))?;
    let token = text
        .strip_prefix("Bearer ")
        .or_else(|| text.strip_prefix("bearer "))
        .ok_or_else(|| ApiError::unauthorized("the Authorization header must be Bearer TOKEN"))?
        .trim();
    if token.is_empty() || token.len() > 256 {
        return Err(ApiError::unauthorized("invalid token"));
    }
    Ok(token.to_string())
}

/// The authenticated caller of a request.
pub struct Auth(pub Caller);

impl Auth {
    pub fn require_admin(&self) -> Result<&Caller, ApiError> {
        if self.0.is_admin() { Ok(&self.0) } else { Err(ApiError::forbidden("this needs an admin token")) }
    }

    pub fn require_person(&self) -> Result<&Caller, ApiError> {
        if self.0.role == Role::Agent {
            Err(ApiError::forbidden("agent tokens may only use the agent API"))
        } else {
            Ok(&self.0)
        }
    }

    pub fn require_agent(&self) -> Result<&Caller, ApiError> {
        if self.0.role == Role::Agent { Ok(&self.0) } else { Err(ApiError::forbidden("this needs an agent token")) }
    }
}

impl FromRequest for Auth {
    type Error = actix_web::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Auth, actix_web::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let token = bearer(req);
        let state = req.app_data::<web::Data<AppState>>().cloned();
        Box::pin(async move {
            let token = token?;
            let state = state.ok_or_else(|| ApiError::internal(&"application state missing"))?;
            let caller = state.corral.authenticate(&token).await.map_err(ApiError::from)?;
            Ok(Auth(caller.ok_or_else(|| ApiError::unauthorized("unknown token"))?))
        })
    }
}
