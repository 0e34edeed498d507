//! A real corral server for tests: real PostgreSQL (one database per test),
//! real HTTP on a loopback port, the real actors, and in-process simulated
//! agents talking to it over HTTP.

#![allow(dead_code)]

use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use awc::http::StatusCode;
use corral_actors::{Clock, Corral};
use corral_agent::{AgentOptions, Simulated};
use corral_api::Config;
use corral_core::{Caps, WorkerId};
use corral_proto::workers::{AdminState, StateChange};
use serde_json::Value;

pub struct TestServer {
    pub url: String,
    pub admin: String,
    pub agent_token: String,
    pub corral: Corral,
    pub clock: Clock,
    pub db_url: String,
    handle: actix_web::dev::ServerHandle,
    data_dir: PathBuf,
}

/// A server configuration for tests: loopback on port 0 (the kernel picks
/// it; the address is read back from the bound server), the given
/// database, a fresh data directory (testkit's, kept: `TestServer::stop`
/// removes it, and restart tests start a second server on it), fast
/// timers, few threads.
pub fn test_config(db_url: &str) -> Config {
    let data_dir = corral_testkit::temp_dir("test").keep();
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: Some(db_url.to_string()),
        data_dir,
        tick: Duration::from_millis(20),
        pool_size: 8,
        http_workers: 1,
        actor_threads: 1,
        ..Config::default()
    }
}

/// A plain SQL connection to the test database, for tests that read or
/// damage rows behind the server's back.
pub async fn sql(db_url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(db_url, tokio_postgres::NoTls).await.expect("connect");
    actix_rt::spawn(async move {
        let _ = connection.await;
    });
    client
}

pub fn caps(pairs: &[(&str, &str)]) -> Caps {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

impl TestServer {
    /// Waits (at most 10 s) until the unlabelled metric `name` reads
    /// `value` at `/metrics`.
    pub async fn wait_for_metric(&self, name: &str, value: f64) {
        let http = awc::Client::default();
        let mut last = String::new();
        for _ in 0..200 {
            let mut response = http.get(format!("{}/metrics", self.url)).send().await.expect("GET /metrics");
            let body = response.body().await.expect("metrics body");
            last = String::from_utf8_lossy(&body).into_owned();
            let read = last
                .lines()
                .filter_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok())
                .next();
            if read == Some(value) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{name} never read {value}:\n{last}");
    }

    pub async fn start(clock: Clock) -> TestServer {
        TestServer::start_with(clock, |_| {}).await
    }

    pub async fn start_with(clock: Clock, tweak: impl FnOnce(&mut Config)) -> TestServer {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,actix_server=warn")),
            )
            .with_test_writer()
            .with_ansi(false)
            .try_init();
        let db = corral_testkit::test_database().await;
        let mut config = test_config(&db.url);
        tweak(&mut config);
        TestServer::start_on(clock, config, db.url).await
    }

    /// Starts a server on an existing database (restart tests).
    pub async fn start_on(clock: Clock, config: Config, db_url: String) -> TestServer {
        let data_dir = config.data_dir.clone();
        let running = corral_api::serve(config, clock.clone()).await.expect("the server starts");
        let tokens = running.tokens.clone().expect("first start writes tokens");
        let url = format!("http://{}", running.addr);
        let corral = running.corral.clone();
        let handle = running.handle();
        actix_rt::spawn(async move {
            let _ = running.wait().await;
        });
        TestServer { url, admin: tokens.admin, agent_token: tokens.agent, corral, clock, db_url, handle, data_dir }
    }

    pub fn api(&self, token: &str) -> Api {
        Api {
            http: awc::Client::builder().timeout(Duration::from_secs(30)).finish(),
            base: self.url.clone(),
            token: Some(token.to_string()),
        }
    }

    pub fn anonymous(&self) -> Api {
        Api {
            http: awc::Client::builder().timeout(Duration::from_secs(30)).finish(),
            base: self.url.clone(),
            token: None,
        }
    }

    pub fn admin(&self) -> Api {
        self.api(&self.admin)
    }

    /// The typed client (`corral-client`, what the CLI uses) with `token`.
    /// [`Api`] stays for what it cannot send: any path, any body (also
    /// malformed ones), with the status and raw JSON to assert on.
    pub fn client(&self, token: &str) -> corral_client::Client {
        corral_client::Client::plain(&self.url, Some(token)).expect("the test server's URL is valid")
    }

    /// Creates a user and returns its token.
    pub async fn user(&self, name: &str, groups: &[&str]) -> String {
        let groups = groups.iter().copied().collect();
        let user = corral_proto::users::NewUser { name: name.to_string(), groups, ..Default::default() };
        let created = self.client(&self.admin).create_user(&user).await;
        created.unwrap_or_else(|e| panic!("creating user {name}: {e}")).token
    }

    /// Starts a simulated agent with `n` workers with `caps`.
    pub fn agent(&self, name: &str, n: usize, caps: &Caps) -> AgentHandle {
        let backend = Simulated::new(name, n, caps, "127.0.0.1:9", "lab");
        self.agent_with(backend)
    }

    pub fn agent_with(&self, backend: Simulated) -> AgentHandle {
        let mut options = AgentOptions::new(self.url.clone(), self.agent_token.clone());
        options.poll_wait = Duration::from_secs(5);
        options.max_backoff = Duration::from_millis(500);
        self.agent_with_options(backend, options)
    }

    pub fn agent_with_options(&self, backend: Simulated, options: AgentOptions) -> AgentHandle {
        let uuids = backend.uuids();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = actix_rt::spawn(async move {
            // The agent fails only when its TLS setup does: say why, rather
            // than leave the test waiting for a registration in silence.
            if let Err(err) = corral_agent::run(Rc::new(backend), options, stopped).await {
                panic!("the test agent could not start: {}", corral_agent::report::chain(&err));
            }
        });
        AgentHandle { uuids, stop, task }
    }

    /// Sets every given worker idle (admin) and waits until they are.
    pub async fn make_idle(&self, workers: &[WorkerId]) {
        let admin = self.admin();
        let client = self.client(&self.admin);
        for worker in workers {
            wait_for_worker(&admin, *worker, |w| w["state"].is_string()).await;
            let change = StateChange { state: AdminState::Idle, reason: None, drain: false };
            let changed = client.set_worker_state(*worker, &change).await;
            assert_eq!(changed.unwrap_or_else(|e| panic!("making {worker} idle: {e}")).uuid, *worker);
        }
        for worker in workers {
            wait_for_worker(&admin, *worker, |w| w["state"] == "idle").await;
        }
    }

    /// Stops HTTP; the data directory goes when the server is dropped.
    pub async fn stop(self) {
        self.handle.stop(false).await;
    }

    /// Stops HTTP, keeping the server's handles for the rest of the test.
    pub async fn halt(&self) {
        self.handle.stop(false).await;
    }
}

/// The data directory (tokens) goes with the server, also when a test
/// fails or only halted it.
impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

pub struct AgentHandle {
    pub uuids: Vec<WorkerId>,
    stop: tokio::sync::watch::Sender<bool>,
    task: actix_rt::task::JoinHandle<()>,
}

impl AgentHandle {
    /// A clean shutdown (closes the session).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }

    /// Like a crash: the task dies, nothing is closed.
    pub fn kill(self) {
        self.task.abort();
    }
}

pub async fn wait_for_worker(api: &Api, worker: WorkerId, ok: impl Fn(&Value) -> bool) -> Value {
    corral_testkit::wait_until(
        &format!("worker {worker} reaches the expected state"),
        Duration::from_secs(10),
        || async {
            let (status, body) = api.get(&format!("/v1/workers/{worker}")).await;
            (status == StatusCode::OK && ok(&body)).then_some(body)
        },
    )
    .await
}

pub async fn wait_for_request(api: &Api, id: i64, ok: impl Fn(&Value) -> bool) -> Value {
    corral_testkit::wait_until(&format!("request {id} reaches the expected state"), Duration::from_secs(10), || async {
        let (status, body) = api.get(&format!("/v1/requests/{id}")).await;
        (status == StatusCode::OK && ok(&body)).then_some(body)
    })
    .await
}

pub struct Api {
    http: awc::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    /// The same caller against another server (a second replica).
    pub fn at(&self, base: &str) -> Api {
        Api { http: self.http.clone(), base: base.to_string(), token: self.token.clone() }
    }

    /// Any method; `body` is sent as JSON.
    pub async fn send(&self, method: awc::http::Method, path: &str, body: Option<Vec<u8>>) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.insert_header(("Authorization", format!("Bearer {token}")));
        }
        let response = match body {
            Some(body) => request.insert_header(("Content-Type", "application/json")).send_body(body).await,
            None => request.send().await,
        };
        let mut response = response.unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = response.status();
        let bytes = response.body().limit(16 * 1024 * 1024).await.unwrap_or_else(|e| panic!("{path}: {e}"));
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        (status, value)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(awc::http::Method::GET, path, None).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.send(awc::http::Method::DELETE, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(awc::http::Method::POST, path, Some(body.to_string().into_bytes())).await
    }

    pub async fn post_empty(&self, path: &str) -> (StatusCode, Value) {
        self.send(awc::http::Method::POST, path, None).await
    }

    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> (StatusCode, Value) {
        self.send(awc::http::Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(awc::http::Method::PUT, path, Some(body.to_string().into_bytes())).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(awc::http::Method::PATCH, path, Some(body.to_string().into_bytes())).await
    }

    pub async fn submit(&self, body: Value) -> i64 {
        let (status, created) = self.post("/v1/requests", body).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        created["id"].as_i64().unwrap()
    }
}
