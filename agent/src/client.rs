//! HTTP client of the agent protocol. With the `fault-injection` feature
//! it has a seam for tests ([`crate::faults`]): calls fail, lose their
//! answer or wait, as a test queued.

use std::time::Duration;

use awc::http::StatusCode;
use corral_core::SessionId;
use corral_proto::agent::{CommandBatch, CommandResult, Heartbeat, HeartbeatAck, OpenSession, SessionOpened};
use corral_proto::error::ErrorBody;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::tls::{ClientTls, TlsError};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The session is not alive on the server any more: open a new one.
    #[error("session gone: {0}")]
    SessionGone(String),
    /// The server answered with an error.
    #[error("server answered {status}: {message}")]
    Refused { status: u16, message: String },
    /// The server could not be reached or the answer was unreadable.
    #[error("cannot reach the server: {0}")]
    Unreachable(String),
}

impl ClientError {
    /// Whether trying again later may help.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable(_) => true,
            ClientError::Refused { status, .. } => *status >= 500 || *status == 429,
            ClientError::SessionGone(_) => false,
        }
    }
}

/// Talks to the server with one token. The server may be several
/// replicas (URLs separated by commas): calls go to one until it is
/// unreachable or answers 5xx (a standby answers 503), then to the next.
pub struct AgentClient {
    http: awc::Client,
    bases: Vec<String>,
    current: std::cell::Cell<usize>,
    #[cfg(feature = "fault-injection")]
    faults: crate::faults::ClientFaults,
}

/// The server URLs in `server` (one, or several separated by commas).
fn bases_of(server: &str) -> Vec<String> {
    let bases: Vec<String> =
        server.split(',').map(|s| s.trim().trim_end_matches('/').to_string()).filter(|s| !s.is_empty()).collect();
    if bases.is_empty() { vec![String::new()] } else { bases }
}

/// Longest call, long-polls included (each call sets its own, shorter).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

impl AgentClient {
    /// A client of a plain `http://` server (benchmarks, tests).
    pub fn new(server: &str, token: &str) -> AgentClient {
        let http = awc::Client::builder()
            .timeout(CLIENT_TIMEOUT)
            .add_default_header(("Authorization", format!("Bearer {token}")))
            .finish();
        AgentClient {
            http,
            bases: bases_of(server),
            current: Default::default(),
            #[cfg(feature = "fault-injection")]
            faults: Default::default(),
        }
    }

    /// A client of an `http://` or `https://` server, trusting what `tls`
    /// says.
    pub fn connect(server: &str, token: &str, tls: &ClientTls) -> Result<AgentClient, TlsError> {
        let http = tls.http_client(server, token, CLIENT_TIMEOUT)?;
        Ok(AgentClient {
            http,
            bases: bases_of(server),
            current: Default::default(),
            #[cfg(feature = "fault-injection")]
            faults: Default::default(),
        })
    }

    /// This client meets the faults queued in `faults`.
    #[cfg(feature = "fault-injection")]
    pub fn with_faults(mut self, faults: crate::faults::ClientFaults) -> AgentClient {
        self.faults = faults;
        self
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: awc::http::Method,
        path: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<Option<T>, ClientError> {
        let at = self.current.get();
        let outcome = self.call_at(at, method, path, body, timeout).await;
        if outcome.as_ref().is_err_and(ClientError::is_transient) && self.bases.len() > 1 {
            let next = (at + 1) % self.bases.len();
            tracing::info!(server = %self.bases[next], "trying the next server URL");
            self.current.set(next);
        }
        outcome
    }

    async fn call_at<B: Serialize, T: DeserializeOwned>(
        &self,
        at: usize,
        method: awc::http::Method,
        path: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<Option<T>, ClientError> {
        #[cfg(feature = "fault-injection")]
        let fault = self.faults.take(crate::faults::Call::of(&method, path));
        #[cfg(feature = "fault-injection")]
        match fault {
            Some(crate::faults::ClientFault::FailRequest) => {
                return Err(ClientError::Unreachable("fault injection: the request failed".to_string()));
            }
            Some(crate::faults::ClientFault::Latency(delay)) => tokio::time::sleep(delay).await,
            _ => {}
        }
        let request = self.http.request(method, format!("{}{path}", self.bases[at])).timeout(timeout);
        let sent = match body {
            Some(body) => request.send_json(body).await,
            None => request.send().await,
        };
        let mut response = sent.map_err(|e| ClientError::Unreachable(e.to_string()))?;
        let status = response.status();
        let bytes =
            response.body().limit(64 * 1024 * 1024).await.map_err(|e| ClientError::Unreachable(e.to_string()))?;
        #[cfg(feature = "fault-injection")]
        if fault == Some(crate::faults::ClientFault::DropAnswer) {
            return Err(ClientError::Unreachable("fault injection: the answer was dropped".to_string()));
        }
        if status == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        if status.is_success() {
            return serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| ClientError::Unreachable(format!("bad answer: {e}")));
        }
        let message = serde_json::from_slice::<ErrorBody>(&bytes)
            .map(|e| e.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
        if status == StatusCode::NOT_FOUND && path.starts_with("/v1/agent/sessions/") {
            return Err(ClientError::SessionGone(message));
        }
        Err(ClientError::Refused { status: status.as_u16(), message })
    }

    pub async fn open(&self, open: &OpenSession) -> Result<SessionOpened, ClientError> {
        self.call(awc::http::Method::POST, "/v1/agent/sessions", Some(open), Duration::from_secs(60))
            .await?
            .ok_or_else(|| ClientError::Unreachable("empty answer".to_string()))
    }

    pub async fn heartbeat(&self, session: SessionId, beat: &Heartbeat) -> Result<HeartbeatAck, ClientError> {
        self.call(
            awc::http::Method::POST,
            &format!("/v1/agent/sessions/{session}/heartbeat"),
            Some(beat),
            Duration::from_secs(10),
        )
        .await?
        .ok_or_else(|| ClientError::Unreachable("empty answer".to_string()))
    }

    pub async fn poll(
        &self,
        session: SessionId,
        after: u64,
        incarnation: Option<&str>,
        wait: Duration,
    ) -> Result<CommandBatch, ClientError> {
        let mut path = format!("/v1/agent/sessions/{session}/commands?after={after}&wait={}ms", wait.as_millis());
        if let Some(incarnation) = incarnation {
            path.push_str(&format!("&incarnation={incarnation}"));
        }
        self.call::<(), _>(awc::http::Method::GET, &path, None, wait + Duration::from_secs(15))
            .await?
            .ok_or_else(|| ClientError::Unreachable("empty answer".to_string()))
    }

    pub async fn results(&self, session: SessionId, results: &[CommandResult]) -> Result<(), ClientError> {
        self.call::<_, serde_json::Value>(
            awc::http::Method::POST,
            &format!("/v1/agent/sessions/{session}/results"),
            Some(&results),
            Duration::from_secs(30),
        )
        .await
        .map(|_| ())
    }

    pub async fn close(&self, session: SessionId) -> Result<(), ClientError> {
        self.call::<(), serde_json::Value>(
            awc::http::Method::DELETE,
            &format!("/v1/agent/sessions/{session}"),
            None,
            Duration::from_secs(10),
        )
        .await
        .map(|_| ())
    }
}
