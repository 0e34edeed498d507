//! What a call can end with besides its answer: the server refused it
//! ([`Refused`], with the server's `{"error", "message"}` body), no server
//! could be reached, or the answer is not what the wire types say.

use std::fmt;
use std::time::Duration;

use corral_proto::error::{ErrorBody, ErrorCode};

use crate::tls::TlsError;

/// The error of every [`crate::Client`] call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with an error status.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// No answer: the connection failed, timed out or broke. `server` is
    /// the last URL tried.
    #[error("cannot reach the corral server at {server}: {cause}")]
    Transport { server: String, cause: String },
    /// An answer that is not the wire type the call expects (a server
    /// older or newer than this client, or not a corral server).
    #[error("the answer to {call} does not have the expected form (is the client older than the server?): {cause}")]
    Decode { call: String, cause: String },
    /// The server list or the TLS files cannot be used.
    #[error(transparent)]
    Setup(#[from] SetupError),
}

impl Error {
    /// The refusal, when the server answered with an error status.
    pub fn refused(&self) -> Option<&Refused> {
        match self {
            Error::Refused(refused) => Some(refused),
            _ => None,
        }
    }

    /// Whether the server answered 409 Conflict.
    pub fn is_conflict(&self) -> bool {
        self.refused().is_some_and(|r| r.status == 409)
    }

    /// The HTTP status of a refusal.
    pub fn status(&self) -> Option<u16> {
        self.refused().map(|r| r.status)
    }
}

/// A server list or TLS setup that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("the server URL is empty")]
    NoServer,
    #[error("{0}: the server URL must start with http:// or https://")]
    BadScheme(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// The server refused a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The HTTP status, e.g. 409.
    pub status: u16,
    /// The server's error body, when the answer was one (corral always
    /// sends one; a proxy or a framework error may not).
    pub body: Option<ErrorBody>,
    /// The answer's text (at most 500 characters) when it was not an
    /// error body.
    pub text: String,
    /// The server's `Retry-After`, in seconds (429 and 503 carry one).
    pub retry_after: Option<Duration>,
}

impl Refused {
    /// The error code of the body, e.g. [`ErrorCode::Conflict`].
    pub fn code(&self) -> Option<ErrorCode> {
        self.body.as_ref().map(|b| b.error)
    }

    /// The message for people: the body's, else the answer's text.
    pub fn message(&self) -> &str {
        match &self.body {
            Some(body) => &body.message,
            None => &self.text,
        }
    }

    /// A standby replica's answer (503 `standby`): another replica leads.
    pub fn is_standby(&self) -> bool {
        self.status == 503 && self.code() == Some(ErrorCode::Standby)
    }
}

/// `conflict: the request has already ended`, or without an error body
/// `the server answered 502 Bad Gateway: TEXT`.
impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.body {
            Some(body) => write!(f, "{}: {}", code_name(body.error), body.message),
            None => {
                let reason = awc::http::StatusCode::from_u16(self.status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .map(|r| format!(" {r}"))
                    .unwrap_or_default();
                write!(f, "the server answered {}{reason}", self.status)?;
                if !self.text.is_empty() {
                    write!(f, ": {}", self.text)?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for Refused {}

/// `conflict`, `not_found`, ... as on the wire.
pub fn code_name(code: ErrorCode) -> String {
    match serde_json::to_value(code) {
        Ok(serde_json::Value::String(name)) => name,
        _ => format!("{code:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_read_as_code_and_message() {
        let body = ErrorBody { error: ErrorCode::Conflict, message: "request 3 has ended".into() };
        let refused = Refused { status: 409, body: Some(body), text: String::new(), retry_after: None };
        assert_eq!(refused.to_string(), "conflict: request 3 has ended");
        assert!(Error::from(refused).is_conflict());
        let plain = Refused { status: 502, body: None, text: "bad gateway".into(), retry_after: None };
        assert_eq!(plain.to_string(), "the server answered 502 Bad Gateway: bad gateway");
        assert!(!plain.is_standby());
    }
}
