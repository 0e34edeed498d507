//! The load of a chaos run: lifecycle-style clients (create a request,
//! acquire it with `?wait=`, close it) that tolerate faults. A create is
//! retried with the same `Idempotency-Key` until it is answered 201, so a
//! retry is never a second submission; every 201 is an acknowledged
//! submission, kept with its key and id for the final checks. Every
//! answer that is not the expected one is counted by kind; 500s and calls
//! that outlive the server's timeout (hangs) are counted apart, as
//! failures.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::rng::SplitMix64;

/// Longest a call may take before it counts as a hang: the server's
/// database pool waits at most 5 s for a connection and 5 s to open one,
/// then answers 503; 2 s of slack on a busy 2-core machine.
pub(crate) const SERVER_TIMEOUT: Duration = Duration::from_secs(12);
/// The `?wait=` of the clients' acquire calls.
const ACQUIRE_WAIT: Duration = Duration::from_secs(5);
/// Pause between retries of a call that failed.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Retries of one call at most (create, acquire or close).
const MAX_ATTEMPTS: usize = 600;

/// One answer, or how the call failed.
#[derive(Debug)]
pub(crate) enum Answer {
    Http {
        status: u16,
        body: Value,
        retry_after: Option<u64>,
    },
    /// No answer within the timeout: a hang.
    Timeout,
    /// The server could not be reached (e.g. it was killed).
    Connect,
    /// The connection broke mid-call.
    Broken,
}

impl Answer {
    /// `op_STATUS`, `op_timeout`, `op_connect` or `op_broken`.
    pub(crate) fn kind(&self, op: &str) -> String {
        match self {
            Answer::Http { status, .. } => format!("{op}_{status}"),
            Answer::Timeout => format!("{op}_timeout"),
            Answer::Connect => format!("{op}_connect"),
            Answer::Broken => format!("{op}_broken"),
        }
    }
}

/// Sends one call; `timeout` bounds the whole call, body included.
pub(crate) async fn call(
    http: &awc::Client,
    method: awc::http::Method,
    url: &str,
    token: Option<&str>,
    idempotency_key: Option<&str>,
    body: Option<&Value>,
    timeout: Duration,
) -> Answer {
    let mut request = http.request(method, url).timeout(timeout);
    if let Some(token) = token {
        request = request.insert_header(("Authorization", format!("Bearer {token}")));
    }
    if let Some(key) = idempotency_key {
        request = request.insert_header(("Idempotency-Key", key));
    }
    let exchange = async {
        let sent = match body {
            Some(body) => request.send_json(body).await,
            None => request.send().await,
        };
        let mut response = match sent {
            Ok(response) => response,
            Err(awc::error::SendRequestError::Timeout) => return Answer::Timeout,
            Err(awc::error::SendRequestError::Connect(_)) => return Answer::Connect,
            Err(_) => return Answer::Broken,
        };
        let status = response.status().as_u16();
        let retry_after =
            response.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        match response.body().limit(1 << 20).await {
            Ok(bytes) => {
                let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                Answer::Http { status, body, retry_after }
            }
            Err(_) => Answer::Broken,
        }
    };
    tokio::time::timeout(timeout + Duration::from_secs(1), exchange).await.unwrap_or(Answer::Timeout)
}

/// What the clients (and probes) saw.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// (Idempotency-Key, id) of every create answered 201.
    pub acknowledged: Vec<(String, i64)>,
    /// Unexpected answers by kind (`create_503`, `acquire_connect` ...).
    pub errors: BTreeMap<String, u64>,
    pub http_500: u64,
    pub hangs: u64,
    /// Requests that were leased and closed.
    pub cycles: u64,
    /// Requests that ended before their lease started, or whose lease
    /// ended before the client closed it (a worker failed under them).
    pub ended_early: u64,
}

impl Tally {
    pub(crate) fn count(&mut self, op: &str, answer: &Answer) {
        match answer {
            Answer::Http { status: 500, .. } => self.http_500 += 1,
            Answer::Timeout => self.hangs += 1,
            _ => {}
        }
        *self.errors.entry(answer.kind(op)).or_default() += 1;
    }
}

/// What every client shares.
pub(crate) struct Load {
    pub url: String,
    pub token: String,
    pub device_types: usize,
    pub seed: u64,
    pub tally: RefCell<Tally>,
    /// Set when the run's time is over: clients finish the request in hand.
    pub stopping: Cell<bool>,
}

impl Load {
    fn http() -> awc::Client {
        awc::Client::builder().timeout(SERVER_TIMEOUT).finish()
    }

    /// Creates a request with `key` until it is answered 201 (returns its
    /// id) or refused for good, or the run stops. 429 and 503 are retried
    /// after their `Retry-After` (at most 1 s).
    pub(crate) async fn create(&self, http: &awc::Client, key: &str, body: &Value) -> Option<i64> {
        let url = format!("{}/v1/requests", self.url);
        for attempt in 0..MAX_ATTEMPTS {
            if self.stopping.get() && attempt >= 20 {
                break;
            }
            let answer =
                call(http, awc::http::Method::POST, &url, Some(&self.token), Some(key), Some(body), SERVER_TIMEOUT)
                    .await;
            match &answer {
                Answer::Http { status: 201, body, .. } => {
                    let id = body["id"].as_i64()?;
                    self.tally.borrow_mut().acknowledged.push((key.to_string(), id));
                    return Some(id);
                }
                // A caller mistake: retrying the same thing will not help.
                Answer::Http { status: 400 | 401 | 403 | 404 | 409 | 422, .. } => {
                    self.tally.borrow_mut().count("create", &answer);
                    return None;
                }
                Answer::Http { retry_after, .. } => {
                    self.tally.borrow_mut().count("create", &answer);
                    let pause = retry_after.map_or(RETRY_PAUSE, |s| Duration::from_secs(s).min(Duration::from_secs(1)));
                    tokio::time::sleep(pause).await;
                }
                _ => {
                    self.tally.borrow_mut().count("create", &answer);
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
        None
    }

    /// Acquires request `id` with `?wait=` until its lease starts (true) or
    /// it ended without one or the run stops (false).
    async fn acquire(&self, http: &awc::Client, id: i64) -> bool {
        let url = format!("{}/v1/requests/{id}/acquire?wait={}s", self.url, ACQUIRE_WAIT.as_secs());
        for attempt in 0..MAX_ATTEMPTS {
            if self.stopping.get() && attempt >= 3 {
                return false;
            }
            let answer =
                call(http, awc::http::Method::POST, &url, Some(&self.token), None, None, ACQUIRE_WAIT + SERVER_TIMEOUT)
                    .await;
            match &answer {
                Answer::Http { status: 200, body, .. } if body["worker"].is_string() => return true,
                Answer::Http { status: 409, .. } => {
                    // Still waiting (the wait ended), or it ended.
                    match self.state(http, id).await.as_deref() {
                        Some("waiting") | Some("in_progress") | None => {}
                        Some(_) => {
                            self.tally.borrow_mut().ended_early += 1;
                            return false;
                        }
                    }
                }
                // Not found, not allowed: retrying will not help (a 404
                // of an acknowledged id also shows in the final checks).
                Answer::Http { status: 400..=408 | 410..=428, .. } => {
                    self.tally.borrow_mut().count("acquire", &answer);
                    return false;
                }
                _ => {
                    self.tally.borrow_mut().count("acquire", &answer);
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
        false
    }

    async fn state(&self, http: &awc::Client, id: i64) -> Option<String> {
        let url = format!("{}/v1/requests/{id}", self.url);
        let answer = call(http, awc::http::Method::GET, &url, Some(&self.token), None, None, SERVER_TIMEOUT).await;
        match &answer {
            Answer::Http { status: 200, body, .. } => body["state"].as_str().map(str::to_string),
            _ => {
                self.tally.borrow_mut().count("get", &answer);
                None
            }
        }
    }

    /// Closes request `id` (200, or 409 when it already ended); the state
    /// it ended in, if the close was answered.
    async fn close(&self, http: &awc::Client, id: i64) -> Option<String> {
        let url = format!("{}/v1/requests/{id}/close", self.url);
        for _ in 0..50 {
            let answer = call(http, awc::http::Method::POST, &url, Some(&self.token), None, None, SERVER_TIMEOUT).await;
            match &answer {
                Answer::Http { status: 200, body, .. } => return body["state"].as_str().map(str::to_string),
                Answer::Http { status: 409, .. } => return Some("ended".to_string()),
                _ => {
                    self.tally.borrow_mut().count("close", &answer);
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
        None
    }

    /// Client `n`: create, acquire, close, until the run stops.
    pub(crate) async fn client(self: Rc<Load>, n: usize) {
        let http = Load::http();
        let mut rng = SplitMix64::new(self.seed ^ (0xC0FFEE + n as u64));
        let started = Instant::now();
        for i in 0u64.. {
            if self.stopping.get() || started.elapsed() > Duration::from_secs(24 * 3600) {
                return;
            }
            let kind = format!("t{}", rng.below(self.device_types));
            let key = format!("chaos-{}-{n}-{i}", self.seed);
            let Some(id) = self.create(&http, &key, &json!({"caps": {"device_type": kind}})).await else {
                continue;
            };
            let leased = self.acquire(&http, id).await;
            let closed = self.close(&http, id).await;
            if leased && closed.as_deref() == Some("done") {
                self.tally.borrow_mut().cycles += 1;
            } else if leased {
                self.tally.borrow_mut().ended_early += 1;
            }
        }
    }
}
