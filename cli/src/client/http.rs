//! Calls to the `/v1` API: a bearer token on each, a timeout on each, and
//! the server's `{"error": CODE, "message": TEXT}` turned into an error
//! that prints as `CODE: TEXT`.
//!
//! Answers stay [`serde_json::Value`]s until a command decides how to show
//! them: `--json` prints what the server sent, field for field; text output
//! decodes it into the `corral_proto` types first.

use std::fmt;
use std::time::Duration;

use anyhow::Context;
use awc::http::{Method, StatusCode};
use corral_proto::error::ErrorBody;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::connection::Target;

/// How long an ordinary call may take, connection included.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest answer read.
const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// The server refused a call.
#[derive(Debug, Clone)]
pub struct Refused {
    pub status: StatusCode,
    /// The `error` code, e.g. `conflict`, when the body was an error body.
    pub code: Option<String>,
    pub message: String,
}

impl Refused {
    pub fn is_conflict(&self) -> bool {
        self.status == StatusCode::CONFLICT
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.code {
            Some(code) => write!(f, "{code}: {}", self.message),
            None => write!(f, "the server answered {}: {}", self.status, self.message),
        }
    }
}

impl std::error::Error for Refused {}

/// Whether `err` is the server answering 409.
pub fn is_conflict(err: &anyhow::Error) -> bool {
    err.downcast_ref::<Refused>().is_some_and(Refused::is_conflict)
}

/// One server, one token.
pub struct Api {
    http: awc::Client,
    base: String,
}

impl fmt::Debug for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Api").field("base", &self.base).finish_non_exhaustive()
    }
}

impl Api {
    /// A client of `target`; for an `https://` server, trusting the system's
    /// roots and the target's CA file.
    pub fn new(target: &Target) -> anyhow::Result<Api> {
        let tls = corral_agent::ClientTls::with_ca_file(target.ca_file.clone());
        let http = tls.http_client(&target.server, &target.token, CALL_TIMEOUT)?;
        Ok(Api { http, base: target.server.clone() })
    }

    /// GET `path` with `query` pairs (a key may repeat).
    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<Value> {
        self.call(Method::GET, path, query, None::<&()>, CALL_TIMEOUT).await?.context("the server sent no answer")
    }

    /// A call with a JSON body.
    pub async fn send<B: Serialize>(&self, method: Method, path: &str, body: &B) -> anyhow::Result<Value> {
        self.call(method, path, &[], Some(body), CALL_TIMEOUT).await?.context("the server sent no answer")
    }

    /// POST without a body.
    pub async fn post_empty(&self, path: &str) -> anyhow::Result<Value> {
        self.call(Method::POST, path, &[], None::<&()>, CALL_TIMEOUT).await?.context("the server sent no answer")
    }

    /// DELETE `path`; the server answers 204.
    pub async fn delete(&self, path: &str) -> anyhow::Result<()> {
        self.call(Method::DELETE, path, &[], None::<&()>, CALL_TIMEOUT).await.map(drop)
    }

    /// The general form: `None` for 204 No Content.
    pub async fn call<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&B>,
        timeout: Duration,
    ) -> anyhow::Result<Option<Value>> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method.clone(), &url).timeout(timeout);
        if !query.is_empty() {
            request = request.query(&query).context("encoding the query string")?;
        }
        let sent = match body {
            Some(body) => request.send_json(body).await,
            None => request.send().await,
        };
        let mut response = sent.map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the corral server at {}: {e} (is it running? give --server or set CORRAL_URL)",
                self.base
            )
        })?;
        let status = response.status();
        let bytes = response
            .body()
            .limit(MAX_ANSWER)
            .await
            .with_context(|| format!("reading the answer to {method} {path}"))?;
        if status == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        if status.is_success() {
            let value =
                serde_json::from_slice(&bytes).with_context(|| format!("the answer to {method} {path} is not JSON"))?;
            return Ok(Some(value));
        }
        let refused = match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => Refused { status, code: Some(error_code_name(&body)), message: body.message },
            Err(_) => {
                let text = String::from_utf8_lossy(&bytes);
                let text: String = text.trim().chars().take(500).collect();
                let message = if text.is_empty() { format!("{method} {path}") } else { text };
                Refused { status, code: None, message }
            }
        };
        Err(refused.into())
    }
}

impl Api {
    /// Opens a streamed GET (Server-Sent Events), with `Last-Event-ID` when
    /// given: the body's chunks once the headers are in (within
    /// [`CALL_TIMEOUT`]; the body has no deadline), or the server's refusal
    /// as [`Refused`].
    pub async fn open_stream(
        &self,
        path: &str,
        last_event_id: Option<String>,
    ) -> anyhow::Result<futures_util::stream::LocalBoxStream<'static, Result<Vec<u8>, String>>> {
        let mut request = self.http.get(format!("{}{path}", self.base)).insert_header(("Accept", "text/event-stream"));
        if let Some(id) = last_event_id {
            request = request.insert_header(("Last-Event-ID", id));
        }
        let mut response = request.send().await.map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the corral server at {}: {e} (is it running? give --server or set CORRAL_URL)",
                self.base
            )
        })?;
        let status = response.status();
        if status.is_success() {
            use futures_util::StreamExt;
            return Ok(response.map(|chunk| chunk.map(|b| b.to_vec()).map_err(|e| e.to_string())).boxed_local());
        }
        let bytes = response.body().limit(64 * 1024).await.unwrap_or_default();
        let refused = match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => Refused { status, code: Some(error_code_name(&body)), message: body.message },
            Err(_) => Refused { status, code: None, message: String::from_utf8_lossy(&bytes).trim().to_string() },
        };
        Err(refused.into())
    }
}

/// `conflict`, `not_found`, ... as on the wire.
fn error_code_name(body: &ErrorBody) -> String {
    match serde_json::to_value(body.error) {
        Ok(Value::String(name)) => name,
        _ => format!("{:?}", body.error),
    }
}

/// Reads a server answer as one of the wire types.
pub fn decode<T: DeserializeOwned>(value: &Value) -> anyhow::Result<T> {
    T::deserialize(value)
        .context("the server's answer does not have the expected form (is the CLI older than the server?)")
}

/// Most pages `--all` follows before it stops with a warning.
pub const MAX_PAGES: usize = 100;

/// The items of a cursor-paged listing: one page, or with `all` every page
/// up to [`MAX_PAGES`]. Returns the items and the cursor of the next page,
/// if any is left.
pub async fn pages(
    api: &Api,
    path: &str,
    query: &[(&str, String)],
    cursor: Option<String>,
    all: bool,
) -> anyhow::Result<(Vec<Value>, Option<String>)> {
    let mut items = Vec::new();
    let mut cursor = cursor;
    for _ in 0..MAX_PAGES {
        let mut query = query.to_vec();
        if let Some(cursor) = &cursor {
            query.push(("cursor", cursor.clone()));
        }
        let page: corral_proto::Page<Value> = decode(&api.get(path, &query).await?)?;
        items.extend(page.items);
        cursor = page.next_cursor;
        if !all || cursor.is_none() {
            return Ok((items, cursor));
        }
    }
    eprintln!("corral: stopped after {MAX_PAGES} pages; continue with --cursor {}", cursor.as_deref().unwrap_or(""));
    Ok((items, cursor))
}
