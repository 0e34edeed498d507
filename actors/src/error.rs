//! Errors the live system reports to the API. The API maps each variant to
//! exactly one HTTP status.

use corral_db::DbError;

#[derive(Debug, thiserror::Error)]
pub enum ActorError {
    #[error("{0}")]
    NotFound(String),
    /// The thing is not in a state that allows this.
    #[error("{0}")]
    Conflict(String),
    /// The input is well-formed but cannot be honoured.
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    /// A per-user limit is reached; retry later.
    #[error("{0}")]
    TooManyRequests(String),
    /// The database or an actor is unavailable; retry later.
    #[error("{0}")]
    Unavailable(String),
    /// A bug; the text is logged, never sent to clients.
    #[error("{0}")]
    Internal(String),
}

impl From<DbError> for ActorError {
    fn from(err: DbError) -> Self {
        match err {
            DbError::Unavailable { .. } | DbError::UnknownOutcome { .. } => ActorError::Unavailable(err.to_string()),
            DbError::Conflict { .. } => ActorError::Conflict(err.to_string()),
            DbError::NotFound { .. } => ActorError::NotFound(err.to_string()),
            DbError::Internal { .. } => ActorError::Internal(err.to_string()),
        }
    }
}

impl From<actix::MailboxError> for ActorError {
    fn from(err: actix::MailboxError) -> Self {
        ActorError::Unavailable(format!("actor unavailable: {err}"))
    }
}

impl From<tokio::sync::oneshot::error::RecvError> for ActorError {
    fn from(_: tokio::sync::oneshot::error::RecvError) -> Self {
        ActorError::Unavailable("the actor stopped before answering".to_string())
    }
}
