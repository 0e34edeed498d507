//! The one mapping from errors to HTTP answers. 4xx messages are written
//! for users; 5xx bodies are generic and the cause goes to the log only.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use corral_actors::ActorError;
use corral_proto::error::{ErrorBody, ErrorCode};

#[derive(Debug, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    /// Seconds for the `Retry-After` header (503 and 429 answers).
    pub retry_after: Option<u32>,
}

/// `Retry-After` of a 429 for too many waiting requests: a slot frees
/// only when one of them is leased or ends.
pub const WAITING_LIMIT_RETRY_AFTER: u32 = 10;

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        let status = StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry_after = (code == ErrorCode::Unavailable).then_some(1);
        ApiError { status, code, message: message.into(), retry_after }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::BadRequest, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::NotFound, message)
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::Forbidden, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::Unauthorized, message)
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::Conflict, message)
    }

    /// A per-user limit is reached: 429, retry after `retry_after` seconds.
    pub fn too_many_requests(message: impl Into<String>, retry_after: u32) -> ApiError {
        ApiError { retry_after: Some(retry_after), ..ApiError::new(ErrorCode::TooManyRequests, message) }
    }

    /// A method the endpoint does not answer: 405, with the `bad_request`
    /// code.
    pub fn method_not_allowed(method: &actix_web::http::Method, path: &str) -> ApiError {
        ApiError {
            status: StatusCode::METHOD_NOT_ALLOWED,
            code: ErrorCode::BadRequest,
            message: format!("{path} does not accept {method}"),
            retry_after: None,
        }
    }

    /// Too large a body: 413, with the `bad_request` code.
    pub fn too_large(limit: usize) -> ApiError {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: ErrorCode::BadRequest,
            message: format!("the request body is larger than the limit of {limit} bytes"),
            retry_after: None,
        }
    }

    pub fn unavailable(cause: &dyn std::fmt::Display) -> ApiError {
        tracing::warn!(cause = %cause, "answering 503");
        ApiError::new(ErrorCode::Unavailable, "the service is temporarily unavailable; retry shortly")
    }

    pub fn internal(cause: &dyn std::fmt::Display) -> ApiError {
        tracing::error!(cause = %cause, "internal error");
        ApiError::new(ErrorCode::Internal, "internal error")
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if let Some(seconds) = self.retry_after {
            response.insert_header((header::RETRY_AFTER, HeaderValue::from(seconds)));
        }
        if self.code == ErrorCode::Unauthorized {
            response.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
        }
        response.json(ErrorBody { error: self.code, message: self.message.clone() })
    }
}

impl From<ActorError> for ApiError {
    fn from(err: ActorError) -> Self {
        match err {
            ActorError::NotFound(m) => ApiError::new(ErrorCode::NotFound, m),
            ActorError::Conflict(m) => ApiError::new(ErrorCode::Conflict, m),
            ActorError::Unprocessable(m) => ApiError::new(ErrorCode::Unprocessable, m),
            ActorError::BadRequest(m) => ApiError::new(ErrorCode::BadRequest, m),
            ActorError::Forbidden(m) => ApiError::new(ErrorCode::Forbidden, m),
            ActorError::TooManyRequests(m) => ApiError::too_many_requests(m, WAITING_LIMIT_RETRY_AFTER),
            ActorError::Unavailable(m) => ApiError::unavailable(&m),
            ActorError::Internal(m) => ApiError::internal(&m),
        }
    }
}

/// JSON bodies that cannot be read: too large → 413, else 400 with what
/// serde said (field names, expected types).
pub fn json_error(err: actix_web::error::JsonPayloadError, limit: usize) -> actix_web::Error {
    use actix_web::error::JsonPayloadError as E;
    match err {
        E::Overflow { .. } | E::OverflowKnownLength { .. } => ApiError::too_large(limit).into(),
        E::Deserialize(e) => ApiError::bad_request(format!("invalid JSON body: {e}")).into(),
        E::ContentType => ApiError::bad_request("the body must be JSON").into(),
        other => ApiError::bad_request(format!("invalid body: {other}")).into(),
    }
}
