//! The typed client of corral's `/v1` API (SPEC §4, §8), over the wire
//! types of `corral-proto`: one [`Client`] per server (one URL, or the
//! replicas' URLs, [`ServerList`]) and token, used by the CLI, the
//! benchmarks and the tests.
//!
//! - every call has a timeout ([`CALL_TIMEOUT`] unless it says otherwise)
//!   and sends `Authorization: Bearer TOKEN` when the client has a token;
//! - an answer is decoded into its wire type; a refusal becomes
//!   [`Error::Refused`] with the server's `{"error", "message"}` body and
//!   its `Retry-After`;
//! - with several server URLs, a call that could not connect, or that a
//!   standby replica refused (`503 standby`), goes to the next URL, each at
//!   most once ([`servers`]);
//! - a submission carries an `Idempotency-Key`, the same on every URL it
//!   is tried on, so it creates at most one request.
//!
//! awc is not `Send`: a client lives on one actix (or tokio local) runtime
//! thread.

mod error;
pub mod events;
mod overview;
pub mod requests;
pub mod servers;
pub mod tls;
mod users;
pub mod workers;

use std::fmt;
use std::time::Duration;

use awc::http::Method;
use corral_proto::error::ErrorBody;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use error::{Error, Refused, SetupError, code_name};
pub use overview::Health;
pub use servers::ServerList;
pub use tls::{ClientTls, TlsError};

/// How long an ordinary call may take, connection included.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest answer read.
const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// Most pages [`Client::pages`] follows with `all` before it stops.
pub const MAX_PAGES: usize = 100;

/// Longest page the server gives (`limit`).
pub const MAX_PAGE_LIMIT: u32 = 1000;

/// A client of one corral server with one token (or none).
pub struct Client {
    http: awc::Client,
    servers: ServerList,
    /// The timeout of a call ([`CALL_TIMEOUT`] unless set).
    timeout: Duration,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").field("servers", &self.servers.urls()).finish_non_exhaustive()
    }
}

/// The paging of a listing: one page (from `cursor`), or with `all`
/// every page up to [`MAX_PAGES`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Paging {
    /// Entries per page; with `all` and no limit, the largest pages.
    pub limit: Option<u32>,
    pub cursor: Option<String>,
    pub all: bool,
}

/// The items of the pages a [`Paging`] asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listing<T> {
    pub items: Vec<T>,
    /// The cursor of the next page, if any is left.
    pub next_cursor: Option<String>,
    /// `all` stopped after [`MAX_PAGES`] pages with more left.
    pub truncated: bool,
}

/// One call: method, path, query, body, timeout and extra headers.
struct Call<'a, B> {
    method: Method,
    path: &'a str,
    query: &'a [(&'a str, String)],
    body: Option<&'a B>,
    /// The client's timeout unless set.
    timeout: Option<Duration>,
    headers: &'a [(&'static str, String)],
}

impl<'a> Call<'a, ()> {
    fn new(method: Method, path: &'a str) -> Call<'a, ()> {
        Call { method, path, query: &[], body: None, timeout: None, headers: &[] }
    }
}

impl<'a, B> Call<'a, B> {
    fn body<C>(self, body: &'a C) -> Call<'a, C> {
        Call {
            method: self.method,
            path: self.path,
            query: self.query,
            body: Some(body),
            timeout: self.timeout,
            headers: self.headers,
        }
    }

    fn query(mut self, query: &'a [(&'a str, String)]) -> Self {
        self.query = query;
        self
    }

    fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    fn headers(mut self, headers: &'a [(&'static str, String)]) -> Self {
        self.headers = headers;
        self
    }

    fn name(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// Why one URL did not answer a call.
enum Attempt {
    /// The request never reached a server (connection refused, or a
    /// standby's refusal): the next URL may take it.
    NotSent(Error),
    /// Anything else: the call ends with it.
    Done(Error),
}

impl Client {
    /// A client of `servers` (one URL or several separated by commas) with
    /// `token`; for `https://` servers, trusting the system's roots and
    /// what `tls` adds.
    pub fn new(servers: &str, token: Option<&str>, tls: &ClientTls) -> Result<Client, Error> {
        let servers = ServerList::parse(servers)?;
        let http = tls.http_client_for(servers.any_https(), token, CALL_TIMEOUT).map_err(SetupError::from)?;
        Ok(Client { http, servers, timeout: CALL_TIMEOUT })
    }

    /// The same client with `timeout` per call (connection included)
    /// instead of [`CALL_TIMEOUT`]; a long poll waits this much longer
    /// than it asks the server to.
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// The timeout of a call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A client of plain `http://` servers (benchmarks, tests).
    pub fn plain(servers: &str, token: Option<&str>) -> Result<Client, Error> {
        Client::new(servers, token, &ClientTls::default())
    }

    /// The server URLs.
    pub fn servers(&self) -> &ServerList {
        &self.servers
    }

    /// Sends `call` to the servers in turn until one takes it; `None` for
    /// 204 No Content.
    async fn call<B: Serialize, T: DeserializeOwned>(&self, call: Call<'_, B>) -> Result<Option<T>, Error> {
        let mut last = None;
        for at in self.servers.order() {
            match self.call_at(at, &call).await {
                Ok(bytes) => {
                    self.servers.answered(at);
                    return match bytes {
                        None => Ok(None),
                        Some(bytes) => serde_json::from_slice(&bytes)
                            .map(Some)
                            .map_err(|e| Error::Decode { call: call.name(), cause: e.to_string() }),
                    };
                }
                Err(Attempt::Done(err)) => {
                    if matches!(err, Error::Refused(_)) {
                        // A refusal other than a standby's: this one leads.
                        self.servers.answered(at);
                    }
                    return Err(err);
                }
                Err(Attempt::NotSent(err)) => {
                    if self.servers.urls().len() > 1 {
                        tracing::info!(server = %self.servers.url(at), cause = %err, "trying the next server URL");
                    }
                    last = Some(err);
                }
            }
        }
        Err(last.expect("a server list is never empty"))
    }

    /// Like [`Client::call`], for a call whose answer has a body.
    async fn answer<B: Serialize, T: DeserializeOwned>(&self, call: Call<'_, B>) -> Result<T, Error> {
        let name = call.name();
        self.call(call).await?.ok_or_else(|| Error::Decode { call: name, cause: "the server sent no answer".into() })
    }

    /// One attempt on one URL: the answer's bytes on success (`None` for
    /// 204).
    async fn call_at<B: Serialize>(&self, at: usize, call: &Call<'_, B>) -> Result<Option<Vec<u8>>, Attempt> {
        let base = self.servers.url(at);
        let timeout = call.timeout.unwrap_or(self.timeout);
        let mut request = self.http.request(call.method.clone(), format!("{base}{}", call.path)).timeout(timeout);
        for (name, value) in call.headers {
            request = request.insert_header((*name, value.clone()));
        }
        if !call.query.is_empty() {
            request = request.query(&call.query).map_err(|e| {
                Attempt::Done(Error::Transport { server: base.to_string(), cause: format!("encoding the query: {e}") })
            })?;
        }
        let sent = match call.body {
            Some(body) => request.send_json(body).await,
            None => request.send().await,
        };
        let mut response = sent.map_err(|e| transport_failure(base, e))?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let bytes = response.body().limit(MAX_ANSWER).await.map_err(|e| {
            Attempt::Done(Error::Transport { server: base.to_string(), cause: format!("reading the answer: {e}") })
        })?;
        if status == awc::http::StatusCode::NO_CONTENT {
            return Ok(None);
        }
        if status.is_success() {
            return Ok(Some(bytes.to_vec()));
        }
        let refused = refusal(status.as_u16(), &bytes, retry_after);
        if refused.is_standby() {
            return Err(Attempt::NotSent(Error::Refused(refused)));
        }
        Err(Attempt::Done(Error::Refused(refused)))
    }

    /// One page of `path` with `query`, from `cursor`.
    pub async fn page<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<corral_proto::Page<T>, Error> {
        let mut query = query.to_vec();
        if let Some(limit) = limit {
            query.push(("limit", limit.to_string()));
        }
        if let Some(cursor) = cursor {
            query.push(("cursor", cursor.to_string()));
        }
        self.answer(Call::new(Method::GET, path).query(&query)).await
    }

    /// The pages of a cursor-paged listing that `paging` asks for. With
    /// `all` and no limit it asks for the largest pages.
    pub async fn pages<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
        paging: &Paging,
    ) -> Result<Listing<T>, Error> {
        let limit = match (paging.limit, paging.all) {
            (Some(limit), _) => Some(limit),
            (None, true) => Some(MAX_PAGE_LIMIT),
            (None, false) => None,
        };
        let mut items = Vec::new();
        let mut cursor = paging.cursor.clone();
        for _ in 0..MAX_PAGES {
            let page = self.page::<T>(path, query, limit, cursor.as_deref()).await?;
            items.extend(page.items);
            cursor = page.next_cursor;
            if !paging.all || cursor.is_none() {
                return Ok(Listing { items, next_cursor: cursor, truncated: false });
            }
        }
        Ok(Listing { items, next_cursor: cursor, truncated: true })
    }
}

/// A failed send: a connection that could not be made never reached a
/// server; any other failure (a timeout, a broken answer) may have.
fn transport_failure(base: &str, err: awc::error::SendRequestError) -> Attempt {
    let not_sent = matches!(err, awc::error::SendRequestError::Connect(_));
    let err = Error::Transport { server: base.to_string(), cause: err.to_string() };
    if not_sent { Attempt::NotSent(err) } else { Attempt::Done(err) }
}

/// `Retry-After` in seconds (the form corral sends).
fn retry_after(headers: &awc::http::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(awc::http::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The refusal an error answer `bytes` with `status` stands for.
fn refusal(status: u16, bytes: &[u8], retry_after: Option<Duration>) -> Refused {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(body) => Refused { status, body: Some(body), text: String::new(), retry_after },
        Err(_) => {
            let text = String::from_utf8_lossy(bytes);
            let text: String = text.trim().chars().take(500).collect();
            Refused { status, body: None, text, retry_after }
        }
    }
}
