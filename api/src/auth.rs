//! Bearer-token authentication. Tokens are looked up by their SHA-256 in
//! the database; answers are cached for a few seconds so the hot path does
//! not touch the database. Deleting a user drops it from this server's
//! cache at once.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, web};
use corral_actors::Caller;
use corral_core::Role;

use crate::AppState;
use crate::error::ApiError;

const CACHE_TTL: Duration = Duration::from_secs(10);
const CACHE_MAX: usize = 10_000;

#[derive(Debug, Default)]
pub struct AuthCache {
    entries: Mutex<HashMap<Vec<u8>, (Caller, Instant)>>,
}

impl AuthCache {
    fn get(&self, hash: &[u8]) -> Option<Caller> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(hash).filter(|(_, at)| at.elapsed() < CACHE_TTL).map(|(c, _)| c.clone())
    }

    fn put(&self, hash: Vec<u8>, caller: Caller) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= CACHE_MAX {
            entries.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
            if entries.len() >= CACHE_MAX {
                entries.clear();
            }
        }
        entries.insert(hash, (caller, Instant::now()));
    }

    pub fn forget_user(&self, id: corral_core::UserId) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|_, (c, _)| c.id != id);
    }
}

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
            let hash = corral_db::hash_token(&token);
            if let Some(caller) = state.auth.get(&hash) {
                return Ok(Auth(caller));
            }
            let user = state.corral.db().user_by_token(&token).await.map_err(ApiError::from)?;
            let user = user.ok_or_else(|| ApiError::unauthorized("unknown token"))?;
            let caller = Caller { id: user.id, name: user.name, role: user.role, groups: user.groups };
            state.auth.put(hash, caller.clone());
            Ok(Auth(caller))
        })
    }
}
