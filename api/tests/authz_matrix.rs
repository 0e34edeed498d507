//! The authorization matrix: every route of `/v1`, `/v1/agent` and `/api/v1`, called by every kind of
//! caller, with the status each must get written in one table (`ROUTES`). Callers: no token, a bad token,
//! the owner of the request, another user in the worker's group, a user outside it, an admin, the agent that
//! registered the workers and another agent. Besides the status, no answer to a caller that may not read a
//! thing holds it (private keys, another user's caps, a worker outside the caller's groups), and every
//! refused call leaves the lab as it was.

mod common;

use std::time::Duration;

use awc::http::{Method, StatusCode};
use common::{TestServer, caps, wait_for_request, wait_for_worker};
use corral_actors::Clock;
use serde_json::{Value, json};

/// Callers, in the order every route is called by them: the ones that may change things come last, so a
/// refused call always meets the state the route was set up with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Caller {
    /// No `Authorization` header.
    Anonymous,
    /// A well-formed token nobody has.
    BadToken,
    /// alice: owns the requests, in group g1 (the worker's group).
    Owner,
    /// bob: another user, also in g1.
    OtherInGroup,
    /// carol: a user in g2 only; the workers of g1 are not hers to see.
    Outsider,
    /// An agent token that registered none of the workers.
    OtherAgent,
    /// The agent token that registered the workers.
    Agent,
    Admin,
}

const CALLERS: [Caller; 8] = [
    Caller::Anonymous,
    Caller::BadToken,
    Caller::Owner,
    Caller::OtherInGroup,
    Caller::Outsider,
    Caller::OtherAgent,
    Caller::Agent,
    Caller::Admin,
];

/// One route: method, path template, body template, and the status for each caller in `CALLERS` order:
/// anonymous, bad token, owner, other user in group, outsider, other agent, agent, admin.
///
/// Templates: `{R}` alice's request in progress on `{W1}`; `{RB}` one of hers made through the Boruta API, in progress; `{RW}` alice's waiting request; `{RC}` a fresh
/// waiting request of alice's, made for each call (close); `{W1}` the leased worker (group g1); `{W2}` a
/// worker in maintenance (for state and groups); `{W3}` a worker in maintenance (for deregister); `{S}` the
/// agent's second session (workers W2, W3); `{N}` a number unique to the call; `{W4}` a worker of `{S}`.
struct Route {
    method: &'static str,
    path: &'static str,
    body: Option<&'static str>,
    expect: [u16; 8],
}

const fn route(method: &'static str, path: &'static str, body: Option<&'static str>, expect: [u16; 8]) -> Route {
    Route { method, path, body, expect }
}

//                                                          anon bad  owner other outsdr oagent agent admin
const ROUTES: &[Route] = &[
    // ---- /v1/requests
    // Admins have no groups here, so like carol they cannot ask for g1's device type (422).
    route("POST", "/v1/requests", Some(r#"{"caps": {"device_type": "x"}}"#), [401, 401, 201, 201, 422, 403, 403, 422]),
    route("GET", "/v1/requests", None, [401, 401, 200, 200, 200, 403, 403, 200]),
    route("GET", "/v1/requests/{R}", None, [401, 401, 200, 404, 404, 403, 403, 200]),
    route("PATCH", "/v1/requests/{RW}", Some(r#"{"priority": 3}"#), [401, 401, 200, 404, 404, 403, 403, 200]),
    route("PATCH", "/v1/requests/{R}", Some(r#"{"priority": 3}"#), [401, 401, 409, 404, 404, 403, 403, 409]),
    route("GET", "/v1/requests/{R}/history", None, [401, 401, 200, 404, 404, 403, 403, 200]),
    route("POST", "/v1/requests/{RC}/close", None, [401, 401, 200, 404, 404, 403, 403, 200]),
    route("POST", "/v1/requests/{R}/acquire", None, [401, 401, 200, 404, 404, 403, 403, 200]),
    route("POST", "/v1/requests/{RW}/acquire?wait=0s", None, [401, 401, 409, 404, 404, 403, 403, 409]),
    route("POST", "/v1/requests/{R}/prolong", Some(r#"{"by": "1m"}"#), [401, 401, 200, 404, 404, 403, 403, 200]),
    route("GET", "/v1/requests/{RW}/explain", None, [401, 401, 200, 404, 404, 403, 403, 200]),
    // ---- /v1/workers
    route("GET", "/v1/workers", None, [401, 401, 200, 200, 200, 403, 403, 200]),
    route("GET", "/v1/workers/{W1}", None, [401, 401, 200, 200, 404, 403, 403, 200]),
    route("PUT", "/v1/workers/{W2}/state", Some(r#"{"state": "idle"}"#), [401, 401, 403, 403, 403, 403, 403, 202]),
    route("PUT", "/v1/workers/{W2}/groups", Some(r#"["g3"]"#), [401, 401, 403, 403, 403, 403, 403, 200]),
    route("DELETE", "/v1/workers/{W3}", None, [401, 401, 403, 403, 403, 403, 403, 204]),
    route("PUT", "/v1/workers/{W2}/note", Some(r#"{"note": "n"}"#), [401, 401, 403, 403, 403, 403, 403, 200]),
    // W4 (in maintenance) handed over to the agent user that holds it already ("agent").
    route("PUT", "/v1/workers/{W4}/agent", Some(r#"{"principal": "agent"}"#), [401, 401, 403, 403, 403, 403, 403, 200]),
    route("PUT", "/v1/workers/{W4}/quarantine", Some(r#"{"reason": "r"}"#), [401, 401, 403, 403, 403, 403, 403, 200]),
    route("DELETE", "/v1/workers/{W4}/quarantine", None, [401, 401, 403, 403, 403, 403, 403, 200]),
    // A power cycle: admins, and the holder of the worker's lease during it. W1 runs alice's lease: bob sees it
    // but holds nothing (403), carol does not see it (404), an admin may not cut another user's lease short
    // (409). W4 (public, in maintenance): only an admin, who is told that nobody can (409: the hand-over
    // above took it from its agent session).
    route("POST", "/v1/workers/{W1}/power-cycle", None, [401, 401, 202, 403, 404, 403, 403, 409]),
    route("POST", "/v1/workers/{W4}/power-cycle", None, [401, 401, 403, 403, 403, 403, 403, 409]),
    // ---- what the dashboard reads: each caller's own view (a lease's owner named to alice and admins only)
    route("GET", "/v1/me", None, [401, 401, 200, 200, 200, 403, 403, 200]),
    route("GET", "/v1/queue", None, [401, 401, 200, 200, 200, 403, 403, 200]),
    route("GET", "/v1/leases", None, [401, 401, 200, 200, 200, 403, 403, 200]),
    // ---- /v1/audit
    route("GET", "/v1/audit", None, [401, 401, 403, 403, 403, 403, 403, 200]),
    // ---- /v1/users
    route("POST", "/v1/users", Some(r#"{"name": "new-{N}"}"#), [401, 401, 403, 403, 403, 403, 403, 201]),
    route("GET", "/v1/users", None, [401, 401, 403, 403, 403, 403, 403, 200]),
    route("DELETE", "/v1/users/victim", None, [401, 401, 403, 403, 403, 403, 403, 204]),
    // ---- /v1/agent: the agent's own session S; to another agent it does not exist (404, as another
    // user's request)
    route(
        "POST",
        "/v1/agent/sessions/{S}/heartbeat",
        Some(r#"{"workers": []}"#),
        [401, 401, 403, 403, 403, 404, 200, 403],
    ),
    route("GET", "/v1/agent/sessions/{S}/commands?after=0&wait=0s", None, [401, 401, 403, 403, 403, 404, 200, 403]),
    route("POST", "/v1/agent/sessions/{S}/results", Some("[]"), [401, 401, 403, 403, 403, 404, 204, 403]),
    // A fresh host of the caller's own: any agent may register it.
    route(
        "POST",
        "/v1/agent/sessions",
        Some(
            r#"{"agent": "fresh-{N}", "workers": [{"uuid": "00000000-0000-4000-8000-0000000{N}", "caps": {"device_type": "f"}, "ssh_addr": "127.0.0.1:9", "user": "lab"}]}"#,
        ),
        [401, 401, 403, 403, 403, 201, 201, 403],
    ),
    // ---- /api/v1 (Boruta): the same rules in Boruta's codes. `{RB}` is alice's request made here (an RSA
    // lease key), in progress. Caps no worker offers to the caller are queued, as Boruta does (SPEC §5).
    route(
        "POST",
        "/api/v1/reqs/",
        Some(r#"{"Priority": 4, "Caps": {"device_type": "x"}}"#),
        [401, 401, 201, 201, 201, 403, 403, 201],
    ),
    route("POST", "/api/v1/reqs/list", Some("{}"), [401, 401, 200, 200, 200, 403, 403, 200]),
    route("GET", "/api/v1/reqs/{RB}", None, [401, 401, 200, 404, 404, 403, 403, 200]),
    route("POST", "/api/v1/reqs/{RW}", Some(r#"{"Priority": 5}"#), [401, 401, 204, 404, 404, 403, 403, 204]),
    route("POST", "/api/v1/reqs/{RC}/close", None, [401, 401, 204, 404, 404, 403, 403, 204]),
    route("POST", "/api/v1/reqs/{RB}/acquire_worker", None, [401, 401, 200, 404, 404, 403, 403, 200]),
    route("POST", "/api/v1/reqs/{RB}/prolong", None, [401, 401, 204, 404, 404, 403, 403, 204]),
    route("GET", "/api/v1/workers/", None, [401, 401, 200, 200, 200, 403, 403, 200]),
    route("POST", "/api/v1/workers/list", Some("{}"), [401, 401, 200, 200, 200, 403, 403, 200]),
    route("GET", "/api/v1/workers/{W1}", None, [401, 401, 200, 200, 404, 403, 403, 200]),
    route(
        "POST",
        "/api/v1/workers/{W2}/setstate",
        Some(r#"{"WorkerState": "MAINTENANCE"}"#),
        [401, 401, 403, 403, 403, 403, 403, 204],
    ),
    route("POST", "/api/v1/workers/{W2}/setgroups", Some(r#"["g3"]"#), [401, 401, 403, 403, 403, 403, 403, 204]),
    route("POST", "/api/v1/workers/{W4}/deregister", None, [401, 401, 403, 403, 403, 403, 403, 204]),
    // Needs a token like every endpoint but the probes (SPEC §4); agent tokens only use the agent API.
    route("GET", "/api/v1/version", None, [401, 401, 200, 200, 200, 403, 403, 200]),
    // ---- last, because the agent's own call replaces its session: another agent token claiming the
    // agent's host and workers is refused, and they stay the agent's.
    route(
        "POST",
        "/v1/agent/sessions",
        Some(
            r#"{"agent": "host-matrix-2", "workers": [{"uuid": "{W2}", "caps": {"device_type": "y"}, "ssh_addr": "127.0.0.1:2222", "user": "mallory"}]}"#,
        ),
        [401, 401, 403, 403, 403, 403, 201, 403],
    ),
];

/// Markers of things a caller that may not read them must never be shown.
const PRIVATE_KEY_MARKERS: [&str; 2] = ["PRIVATE KEY", "private_key\":\"-----"];

struct Lab {
    server: TestServer,
    tokens: Vec<Option<String>>,
    request: i64,
    boruta_request: i64,
    waiting: i64,
    leased_worker: String,
    w2: String,
    w3: String,
    w4: String,
    session: String,
    alice: String,
}

impl Lab {
    fn token(&self, caller: Caller) -> Option<&str> {
        let at = CALLERS.iter().position(|c| *c == caller).expect("every caller has a token slot");
        self.tokens[at].as_deref()
    }
}

async fn open_session(server: &TestServer, token: &str, agent: &str, workers: Value) -> String {
    let (status, body) =
        server.api(token).post("/v1/agent/sessions", json!({"agent": agent, "workers": workers})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["session"].as_str().expect("a session id").to_string()
}

fn registration(uuid: &str, device_type: &str) -> Value {
    json!({"uuid": uuid, "caps": {"device_type": device_type}, "ssh_addr": "127.0.0.1:9", "user": "lab"})
}

async fn lab() -> Lab {
    let server = TestServer::start_with(Clock::System, |config| {
        // The second session is not heartbeated by anyone during the run.
        config.session_timeout = Duration::from_secs(600);
    })
    .await;
    let admin = server.admin();
    let agent = server.agent("host-matrix", 2, &caps(&[("device_type", "x")]));
    let workers = agent.uuids.clone();
    let leased_worker = workers[0];
    std::mem::forget(agent); // runs for the whole test
    for worker in &workers {
        wait_for_worker(&admin, *worker, |w| w["state"] == "maintenance").await;
        let (status, body) = admin.put(&format!("/v1/workers/{worker}/groups"), json!(["g1"])).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    server.make_idle(&workers[..1]).await;

    let alice = server.user("alice", &["g1"]).await;
    let bob = server.user("bob", &["g1"]).await;
    let carol = server.user("carol", &["g2"]).await;
    server.user("victim", &[]).await;
    let (status, other_agent) = admin.post("/v1/users", json!({"name": "agent-b", "agent": true})).await;
    assert_eq!(status, StatusCode::CREATED, "{other_agent}");
    let other_agent = other_agent["token"].as_str().expect("a token").to_string();

    let request = server.api(&alice).submit(json!({"caps": {"device_type": "x"}})).await;
    wait_for_request(&server.api(&alice), request, |r| r["state"] == "in_progress").await;
    server.make_idle(&workers[1..]).await;
    let (status, created) =
        server.api(&alice).post("/api/v1/reqs/", json!({"Priority": 4, "Caps": {"device_type": "x"}})).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let boruta_request = created["ReqID"].as_i64().expect("a ReqID");
    wait_for_request(&server.api(&alice), boruta_request, |r| r["state"] == "in_progress").await;
    let waiting = server.api(&alice).submit(json!({"caps": {"device_type": "x"}, "priority": 9})).await;

    let (w2, w3, w4) = (uuid::Uuid::new_v4().to_string(), uuid::Uuid::new_v4().to_string(), uuid::Uuid::new_v4());
    let w4 = w4.to_string();
    let session = open_session(
        &server,
        &server.agent_token,
        "host-matrix-2",
        json!([registration(&w2, "y"), registration(&w3, "z"), registration(&w4, "v")]),
    )
    .await;

    let tokens = vec![
        None,
        Some("crl_0000000000000000000000000000000000000000".to_string()),
        Some(alice.clone()),
        Some(bob),
        Some(carol),
        Some(other_agent),
        Some(server.agent_token.clone()),
        Some(server.admin.clone()),
    ];
    Lab {
        server,
        tokens,
        request,
        boruta_request,
        waiting,
        leased_worker: leased_worker.to_string(),
        w2,
        w3,
        w4,
        session,
        alice,
    }
}

/// Fills a template; `{RC}` makes a fresh waiting request of alice's.
async fn fill(lab: &Lab, template: &str, n: usize) -> String {
    let mut text = template
        .replace("{RW}", &lab.waiting.to_string())
        .replace("{RB}", &lab.boruta_request.to_string())
        .replace("{R}", &lab.request.to_string())
        .replace("{W1}", &lab.leased_worker)
        .replace("{W2}", &lab.w2)
        .replace("{W3}", &lab.w3)
        .replace("{W4}", &lab.w4)
        .replace("{S}", &lab.session)
        .replace("{N}", &format!("{n:05}"));
    if text.contains("{RC}") {
        let fresh = lab.server.api(&lab.alice).submit(json!({"caps": {"device_type": "x"}, "priority": 16})).await;
        text = text.replace("{RC}", &fresh.to_string());
    }
    text
}

async fn call(lab: &Lab, caller: Caller, method: &str, path: &str, body: Option<String>) -> (StatusCode, Value) {
    let api = match lab.token(caller) {
        Some(token) => lab.server.api(token),
        None => lab.server.anonymous(),
    };
    let method = Method::from_bytes(method.as_bytes()).expect("a valid method");
    api.send(method, path, body.map(String::into_bytes)).await
}

/// What a caller must not be shown: a private key (whatever the status), and in a successful answer a
/// worker outside the caller's groups or alice's name (an error may echo the id the caller sent itself).
fn leaks(lab: &Lab, caller: Caller, status: StatusCode, body: &Value) -> Option<String> {
    let text = body.to_string();
    if !matches!(caller, Caller::Owner | Caller::Admin)
        && let Some(marker) = PRIVATE_KEY_MARKERS.iter().find(|marker| text.contains(*marker))
    {
        return Some(format!("shows a private key ({marker})"));
    }
    if !status.is_success() {
        return None;
    }
    if matches!(caller, Caller::Outsider | Caller::Anonymous | Caller::BadToken | Caller::OtherAgent)
        && text.contains(&lab.leased_worker)
    {
        return Some(format!("names worker {} of group g1", lab.leased_worker));
    }
    if !matches!(caller, Caller::Owner | Caller::Admin) && text.contains("\"alice\"") {
        return Some("names alice".to_string());
    }
    None
}

#[actix_rt::test]
async fn every_route_answers_every_caller_as_the_table_says() {
    let lab = lab().await;
    let mut wrong = Vec::new();
    let mut n = 0;
    for route in ROUTES {
        for (column, caller) in CALLERS.iter().enumerate() {
            n += 1;
            let path = fill(&lab, route.path, n).await;
            let body = match route.body {
                Some(body) => Some(fill(&lab, body, n).await),
                None => None,
            };
            let what = format!("{} {}", route.method, route.path);
            let (status, answer) = call(&lab, *caller, route.method, &path, body).await;
            if status.as_u16() != route.expect[column] {
                wrong.push(format!(
                    "{what} as {caller:?}: expected {}, got {} {:.200}",
                    route.expect[column],
                    status.as_u16(),
                    answer.to_string()
                ));
            }
            if let Some(leak) = leaks(&lab, *caller, status, &answer) {
                wrong.push(format!("{what} as {caller:?} {leak}: {:.200}", answer.to_string()));
            }
        }
    }
    assert!(wrong.is_empty(), "{} cells differ from the table:\n{}", wrong.len(), wrong.join("\n"));

    // The refused calls changed nothing: the lease still runs on its worker, held by alice; the agent's
    // worker W2 still belongs to it, with its own address and lab user (the last route's other-agent call
    // was refused).
    let admin = lab.server.admin();
    let (_, leased) = admin.get(&format!("/v1/requests/{}", lab.request)).await;
    assert_eq!(
        (leased["state"].as_str(), leased["owner"].as_str(), leased["worker"].as_str()),
        (Some("in_progress"), Some("alice"), Some(lab.leased_worker.as_str())),
        "{leased}"
    );
    let (_, w2) = admin.get(&format!("/v1/workers/{}", lab.w2)).await;
    assert_eq!(w2["ssh_addr"], "127.0.0.1:2222", "the agent's own re-registration updated it: {w2}");
    assert_ne!(w2["agent"], "agent-b", "{w2}");
}
