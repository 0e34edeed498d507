//! The Boruta-compatible API (`/api/v1`) as Boruta's Go client uses it:
//! the bodies it sends, the statuses, headers and bodies it checks. Every
//! case names its input and the answer it must get; bad input must change
//! nothing. Runs against the real server with simulated agents.

mod common;

use std::time::{Duration, SystemTime};

use awc::http::{Method, StatusCode};
use common::{TestServer, caps, wait_for_worker};
use corral_actors::Clock;
use serde_json::{Value, json};

/// One answer: status, headers and body (JSON, or `Null` when empty).
struct Reply {
    status: StatusCode,
    headers: awc::http::header::HeaderMap,
    body: Value,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// A Boruta error: the status, `application/json` exactly (the Go
    /// client checks it before decoding) and `{"message": TEXT}`.
    #[track_caller]
    fn assert_error(&self, status: StatusCode, text: &str) {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(self.header("content-type"), Some("application/json"), "{}", self.body);
        let message = self.body["message"].as_str().unwrap_or_else(|| panic!("no message in {}", self.body));
        assert!(message.contains(text), "{message:?} should contain {text:?}");
        assert_eq!(self.body.as_object().map(|o| o.len()), Some(1), "only a message: {}", self.body);
    }
}

/// A raw HTTP client like Boruta's: no token unless given one, and bodies
/// sent as they are.
struct Boruta {
    http: awc::Client,
    base: String,
    token: Option<String>,
}

impl Boruta {
    fn new(server: &TestServer, token: Option<&str>) -> Boruta {
        Boruta {
            http: awc::Client::builder().timeout(Duration::from_secs(30)).finish(),
            base: format!("{}/api/v1", server.url),
            token: token.map(str::to_string),
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<&str>) -> Reply {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.insert_header(("Authorization", format!("Bearer {token}")));
        }
        let response = match body {
            Some(body) => request.insert_header(("Content-Type", "application/json")).send_body(body.to_string()).await,
            None => request.send().await,
        };
        let mut response = response.unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.body().limit(4 << 20).await.unwrap_or_else(|e| panic!("{path}: {e}"));
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Reply { status, headers, body }
    }

    async fn get(&self, path: &str) -> Reply {
        self.call(Method::GET, path, None).await
    }

    async fn head(&self, path: &str) -> Reply {
        self.call(Method::HEAD, path, None).await
    }

    async fn post(&self, path: &str, body: &str) -> Reply {
        self.call(Method::POST, path, Some(body)).await
    }

    /// What the Go client sends for close, acquire_worker, prolong and
    /// deregister: a POST without a body or content type.
    async fn post_empty(&self, path: &str) -> Reply {
        self.call(Method::POST, path, None).await
    }

    /// `NewRequest` as the Go client marshals a `boruta.ReqInfo`.
    async fn new_request(&self, priority: u8, caps: Value) -> i64 {
        let body = go_req_info(priority, caps, "0001-01-01T00:00:00Z", "0001-01-01T00:00:00Z");
        let created = self.post("/reqs/", &body).await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
        created.body["ReqID"].as_i64().unwrap_or_else(|| panic!("no ReqID in {}", created.body))
    }

    async fn list(&self, path: &str, spec: Value) -> (Vec<Value>, Reply) {
        let reply = self.post(path, &spec.to_string()).await;
        assert_eq!(reply.status, StatusCode::OK, "{spec}: {}", reply.body);
        (reply.body.as_array().cloned().unwrap_or_else(|| panic!("not a list: {}", reply.body)), reply)
    }
}

/// A whole `boruta.ReqInfo` as Go's `json.Marshal` writes it.
fn go_req_info(priority: u8, caps: Value, valid_after: &str, deadline: &str) -> String {
    json!({
        "ID": 0, "Priority": priority, "Owner": {"Groups": null},
        "Deadline": deadline, "ValidAfter": valid_after,
        "State": "", "Job": null, "Caps": caps,
    })
    .to_string()
}

fn ids(items: &[Value]) -> Vec<i64> {
    items.iter().map(|r| r["ID"].as_i64().unwrap()).collect()
}

fn time(text: &str) -> SystemTime {
    corral_core::time::parse_rfc3339(text).unwrap_or_else(|e| panic!("{e}"))
}

async fn request_count(server: &TestServer) -> usize {
    let (status, page) = server.admin().get("/v1/requests?limit=1000").await;
    assert_eq!(status, StatusCode::OK);
    page["items"].as_array().unwrap().len()
}

async fn wait_for_state(client: &Boruta, id: i64, state: &str) -> Reply {
    corral_testkit::wait_until(&format!("request {id} is {state}"), Duration::from_secs(60), || async {
        let reply = client.get(&format!("/reqs/{id}")).await;
        (reply.status == StatusCode::OK && reply.body["State"] == state).then_some(reply)
    })
    .await
}

#[actix_rt::test]
async fn a_go_client_creates_acquires_prolongs_and_closes_a_request() {
    let server = TestServer::start(Clock::System).await;
    let agent = server.agent("host-boruta", 2, &caps(&[("device_type", "rpi4")]));
    server.make_idle(&agent.uuids).await;
    let token = server.user("alice", &[]).await;
    let alice = Boruta::new(&server, Some(&token));

    // POST /reqs/ with a Go ReqInfo (zero times: not set) → 201 {"ReqID": N}.
    let body = go_req_info(4, json!({"device_type": "rpi4"}), "0001-01-01T00:00:00Z", "0001-01-01T00:00:00Z");
    let created = alice.post("/reqs/", &body).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.header("content-type"), Some("application/json"));
    assert_eq!(created.header("Boruta-Request-State"), Some("WAITING"));
    let id = created.body["ReqID"].as_i64().unwrap();
    assert!(id > 0, "{}", created.body);
    assert_eq!(created.header("location"), Some(format!("/api/v1/reqs/{id}").as_str()));

    // The same system: /v1 shows the request, owned by alice.
    let (status, native) = server.api(&token).get(&format!("/v1/requests/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{native}");
    assert_eq!((native["owner"].as_str(), native["priority"].as_i64()), (Some("alice"), Some(4)));
    assert_eq!(native["caps"], json!({"device_type": "rpi4"}));

    // GET /reqs/{id} once the lease started: ReqInfo in PascalCase + headers.
    let info = wait_for_state(&alice, id, "IN PROGRESS").await;
    assert_eq!(info.body["ID"], id);
    assert_eq!(info.body["Priority"], 4);
    assert_eq!(info.body["Caps"], json!({"device_type": "rpi4"}));
    let worker = info.body["Job"]["WorkerUUID"].as_str().unwrap().to_string();
    assert!(agent.uuids.iter().any(|u| u.to_string() == worker), "{worker}");
    let timeout = time(info.body["Job"]["Timeout"].as_str().unwrap());
    assert_eq!(info.header("Boruta-Request-State"), Some("IN PROGRESS"));
    let header_timeout = time(info.header("Boruta-Job-Timeout").unwrap());
    assert!(timeout.duration_since(header_timeout).unwrap() < Duration::from_secs(1));
    assert!(time(info.body["ValidAfter"].as_str().unwrap()) < time(info.body["Deadline"].as_str().unwrap()));

    // HEAD /reqs/{id} → 204 with the headers, as GetRequestState wants.
    let head = alice.head(&format!("/reqs/{id}")).await;
    assert_eq!(head.status, StatusCode::NO_CONTENT);
    assert_eq!(head.header("Boruta-Request-State"), Some("IN PROGRESS"));
    assert!(head.header("Boruta-Job-Timeout").is_some());
    assert_eq!(head.body, Value::Null);

    // POST /reqs/{id}/acquire_worker (no body) → AccessInfo with Addr
    // {IP, Port, Zone}, an RSA PKCS#1 key of 2048+ bits and Username.
    let access = alice.post_empty(&format!("/reqs/{id}/acquire_worker")).await;
    assert_eq!(access.status, StatusCode::OK, "{}", access.body);
    let (_, native_access) = server.api(&token).post_empty(&format!("/v1/requests/{id}/acquire")).await;
    assert_eq!(access.body["Addr"], json!({"IP": "127.0.0.1", "Port": native_access["port"], "Zone": ""}));
    assert_eq!(access.body["Username"], "lab");
    let pem = access.body["Key"].as_str().unwrap();
    assert!(pem.starts_with("-----BEGIN RSA PRIVATE KEY-----\n"), "{pem:.40}");
    {
        use rsa::pkcs1::DecodeRsaPrivateKey;
        use rsa::traits::PublicKeyParts;
        let key = rsa::RsaPrivateKey::from_pkcs1_pem(pem).expect("a PKCS#1 RSA key");
        assert!(key.size() * 8 >= 2048, "{} bits", key.size() * 8);
    }

    // POST /reqs/{id}/prolong (no body) → 204; the job now ends one lease
    // length (1 h) from now, later than before.
    let prolonged = alice.post_empty(&format!("/reqs/{id}/prolong")).await;
    assert_eq!((prolonged.status, &prolonged.body), (StatusCode::NO_CONTENT, &Value::Null));
    let after = alice.get(&format!("/reqs/{id}")).await;
    let new_timeout = time(after.body["Job"]["Timeout"].as_str().unwrap());
    assert!(new_timeout > timeout, "prolong moved the timeout");
    let in_an_hour = SystemTime::now() + Duration::from_secs(3600);
    assert!(in_an_hour.duration_since(new_timeout).unwrap_or_default() < Duration::from_secs(60));

    // POST /reqs/list with a state filter finds it, with the list headers.
    let (items, reply) = alice
        .list("/reqs/list", json!({"Filter": {"States": ["IN PROGRESS"]}, "Sorter": null, "Paginator": null}))
        .await;
    assert_eq!(ids(&items), vec![id]);
    assert_eq!(reply.header("Boruta-Request-Count"), Some("1"));
    assert_eq!(reply.header("Boruta-List-Total"), Some("1"));
    assert_eq!(reply.header("Boruta-List-Remaining"), Some("0"));

    // POST /reqs/{id}/close → 204, then DONE; the worker goes back to idle.
    let closed = alice.post_empty(&format!("/reqs/{id}/close")).await;
    assert_eq!((closed.status, &closed.body), (StatusCode::NO_CONTENT, &Value::Null));
    let done = alice.get(&format!("/reqs/{id}")).await;
    assert_eq!(done.body["State"], "DONE");
    assert_eq!(done.header("Boruta-Request-State"), Some("DONE"));
    assert_eq!(done.header("Boruta-Job-Timeout"), None);
    wait_for_worker(&server.admin(), worker.parse().unwrap(), |w| w["state"] == "idle").await;

    // Closing again → 400 (Boruta: a state that forbids it); acquiring or
    // prolonging a finished request → 400 "worker not assigned".
    alice.post_empty(&format!("/reqs/{id}/close")).await.assert_error(StatusCode::BAD_REQUEST, "invalid request");
    for action in ["acquire_worker", "prolong"] {
        let reply = alice.post_empty(&format!("/reqs/{id}/{action}")).await;
        reply.assert_error(StatusCode::BAD_REQUEST, "worker not assigned");
    }
    agent.stop().await;
    server.stop().await;
}

#[actix_rt::test]
async fn requests_are_filtered_sorted_paged_and_updated_like_boruta() {
    let server = TestServer::start(Clock::System).await;
    // The only worker stays in maintenance: every request keeps waiting.
    let agent = server.agent("host-lists", 1, &caps(&[("device_type", "x")]));
    wait_for_worker(&server.admin(), agent.uuids[0], |w| w["state"] == "maintenance").await;
    let bob = Boruta::new(&server, Some(&server.user("bob", &[]).await));
    let carol = Boruta::new(&server, Some(&server.user("carol", &[]).await));
    let admin = Boruta::new(&server, Some(&server.admin));
    let x = json!({"device_type": "x"});
    let mut mine = Vec::new();
    for priority in [8, 3, 8, 5, 1] {
        mine.push(bob.new_request(priority, x.clone()).await);
    }
    let theirs = carol.new_request(2, x.clone()).await;
    let cancelled = bob.post_empty(&format!("/reqs/{}/close", mine[3])).await;
    assert_eq!(cancelled.status, StatusCode::NO_CONTENT);

    // GET /reqs/ → bob's five, ascending by ID, with the list headers.
    let all = bob.get("/reqs/").await;
    assert_eq!(all.status, StatusCode::OK);
    assert_eq!(ids(all.body.as_array().unwrap()), mine);
    assert_eq!(all.header("Boruta-Request-Count"), Some("5"));
    assert_eq!(all.header("Boruta-List-Total"), Some("5"));
    let head = bob.head("/reqs/").await;
    assert_eq!((head.status, head.header("Boruta-List-Total")), (StatusCode::NO_CONTENT, Some("5")));

    // Filter by state, by priority, by ID; the admin sees carol's too.
    let (items, _) = bob.list("/reqs/list", json!({"Filter": {"States": ["WAITING"]}})).await;
    assert_eq!(ids(&items), vec![mine[0], mine[1], mine[2], mine[4]]);
    let (items, _) = bob.list("/reqs/list", json!({"Filter": {"Priorities": [8]}})).await;
    assert_eq!(ids(&items), vec![mine[0], mine[2]]);
    let (items, _) = bob.list("/reqs/list", json!({"Filter": {"IDs": [mine[1], theirs]}})).await;
    assert_eq!(ids(&items), vec![mine[1]], "carol's request is not bob's to see");
    let (items, _) = admin.list("/reqs/list", json!({"Filter": {"IDs": [mine[1], theirs]}})).await;
    assert_eq!(ids(&items), vec![mine[1], theirs]);
    // Boruta's first list API: the bare filter with string fields.
    let (items, _) = bob.list("/reqs/list", json!({"State": "CANCELLED", "Priority": "5"})).await;
    assert_eq!(ids(&items), vec![mine[3]]);
    assert_eq!(items[0]["State"], "CANCELLED");

    // Sorter: priority ascending (ID breaks ties); ID descending.
    let (items, _) = bob.list("/reqs/list", json!({"Sorter": {"Item": "priority", "Order": "ascending"}})).await;
    assert_eq!(ids(&items), vec![mine[4], mine[1], mine[3], mine[0], mine[2]]);
    let (items, _) = bob.list("/reqs/list", json!({"Sorter": {"Item": "", "Order": "descending"}})).await;
    assert_eq!(ids(&items), mine.iter().rev().copied().collect::<Vec<_>>());

    // Paginator: two forward from the start, two forward after the 2nd,
    // two backward before the 4th.
    let (items, reply) =
        bob.list("/reqs/list", json!({"Paginator": {"ID": 0, "Direction": "forward", "Limit": 2}})).await;
    assert_eq!(ids(&items), mine[..2].to_vec());
    assert_eq!((reply.header("Boruta-List-Total"), reply.header("Boruta-List-Remaining")), (Some("5"), Some("3")));
    assert_eq!(reply.header("Boruta-List-Batch-Size"), Some("2"));
    let spec = json!({"Paginator": {"ID": mine[1], "Direction": "forward", "Limit": 2}});
    let (items, reply) = bob.list("/reqs/list", spec).await;
    assert_eq!(ids(&items), mine[2..4].to_vec());
    assert_eq!(reply.header("Boruta-List-Remaining"), Some("1"));
    let spec = json!({"Paginator": {"ID": mine[3], "Direction": "backward", "Limit": 2}});
    let (items, reply) = bob.list("/reqs/list", spec).await;
    assert_eq!(ids(&items), mine[1..3].to_vec());
    assert_eq!(reply.header("Boruta-List-Remaining"), Some("1"));

    // Bad list input → 400/404 with a message: unknown state name, unknown
    // sort item, unknown sort order, paginator ID that does not exist,
    // not an object, malformed JSON.
    for (spec, status, text) in [
        (r#"{"Filter": {"States": ["WAIT"]}}"#, StatusCode::BAD_REQUEST, "unknown request state"),
        (r#"{"Sorter": {"Item": "colour"}}"#, StatusCode::BAD_REQUEST, "unknown name of item"),
        (r#"{"Sorter": {"Order": "upwards"}}"#, StatusCode::BAD_REQUEST, "sort order"),
        (r#"{"Paginator": {"ID": 999999}}"#, StatusCode::NOT_FOUND, "Request not found"),
        (r#"[1, 2]"#, StatusCode::BAD_REQUEST, "JSON object"),
        (r#"{"Filter": "#, StatusCode::BAD_REQUEST, "invalid JSON body"),
    ] {
        bob.post("/reqs/list", spec).await.assert_error(status, text);
    }

    // POST /reqs/{id}: the Go client's update body; zero times unchanged.
    let update = json!({"Priority": 2, "Deadline": "0001-01-01T00:00:00Z", "ValidAfter": "0001-01-01T00:00:00Z"});
    let reply = bob.post(&format!("/reqs/{}", mine[0]), &update.to_string()).await;
    assert_eq!((reply.status, &reply.body), (StatusCode::NO_CONTENT, &Value::Null));
    let before = bob.get(&format!("/reqs/{}", mine[0])).await.body;
    assert_eq!(before["Priority"], 2);
    // An ID in the body that is not the path's → 400, nothing changes.
    let mismatch = json!({"ID": mine[1], "Priority": 9});
    let reply = bob.post(&format!("/reqs/{}", mine[0]), &mismatch.to_string()).await;
    reply.assert_error(StatusCode::BAD_REQUEST, "doesn't match ID from URL");
    // Priority 17 → 400; a cancelled request cannot change → 400.
    let reply = bob.post(&format!("/reqs/{}", mine[0]), r#"{"Priority": 17}"#).await;
    reply.assert_error(StatusCode::BAD_REQUEST, "requested priority out of bounds");
    let reply = bob.post(&format!("/reqs/{}", mine[3]), r#"{"Priority": 4}"#).await;
    reply.assert_error(StatusCode::BAD_REQUEST, "invalid request");
    assert_eq!(bob.get(&format!("/reqs/{}", mine[0])).await.body, before);
    // Someone else's request → 404.
    let reply = carol.post(&format!("/reqs/{}", mine[0]), r#"{"Priority": 1}"#).await;
    reply.assert_error(StatusCode::NOT_FOUND, "Request not found");
    agent.stop().await;
    server.stop().await;
}

#[actix_rt::test]
async fn workers_are_listed_read_and_administered_like_boruta() {
    let server = TestServer::start(Clock::System).await;
    let agent = server.agent("host-workers", 2, &caps(&[("arch", "arm")]));
    for uuid in &agent.uuids {
        wait_for_worker(&server.admin(), *uuid, |w| w["state"] == "maintenance").await;
    }
    let (a, b) = (agent.uuids[0].to_string(), agent.uuids[1].to_string());
    let admin = Boruta::new(&server, Some(&server.admin));
    let dave = Boruta::new(&server, Some(&server.user("dave", &[]).await));
    let erin = Boruta::new(&server, Some(&server.user("erin", &["lab"]).await));

    // GET /workers/ → WorkerInfo list sorted by UUID, UUID among the caps.
    let list = admin.get("/workers/").await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.body);
    assert_eq!(list.header("Boruta-Worker-Count"), Some("2"));
    let mut sorted = vec![a.clone(), b.clone()];
    sorted.sort();
    let uuids: Vec<&str> = list.body.as_array().unwrap().iter().map(|w| w["WorkerUUID"].as_str().unwrap()).collect();
    assert_eq!(uuids, sorted);
    let first = &list.body[0];
    assert_eq!(first["State"], "MAINTENANCE");
    assert_eq!(first["Caps"], json!({"arch": "arm", "UUID": sorted[0]}));
    assert_eq!(first["Groups"], json!([]));

    // GET and HEAD /workers/{uuid} → WorkerInfo / 204, Boruta-Worker-State.
    let one = admin.get(&format!("/workers/{a}")).await;
    assert_eq!((one.status, one.header("Boruta-Worker-State")), (StatusCode::OK, Some("MAINTENANCE")));
    assert_eq!(one.body["WorkerUUID"], a.as_str());
    let head = admin.head(&format!("/workers/{a}")).await;
    assert_eq!((head.status, head.header("Boruta-Worker-State")), (StatusCode::NO_CONTENT, Some("MAINTENANCE")));

    // setstate by a user → 403; with a state other than IDLE/MAINTENANCE,
    // or malformed → 400; nothing changes.
    let idle = r#"{"WorkerState": "IDLE"}"#;
    dave.post(&format!("/workers/{a}/setstate"), idle).await.assert_error(StatusCode::FORBIDDEN, "admin");
    for body in [r#"{"WorkerState": "RUNNING"}"#, r#"{"WorkerState": "SLEEPY"}"#, r#"{}"#] {
        let reply = admin.post(&format!("/workers/{a}/setstate"), body).await;
        reply.assert_error(StatusCode::BAD_REQUEST, "Only state changes to IDLE and MAINTENANCE are allowed");
    }
    let reply = admin.post(&format!("/workers/{a}/setstate"), r#"{"WorkerState": "#).await;
    reply.assert_error(StatusCode::BAD_REQUEST, "invalid JSON body");
    assert_eq!(admin.get(&format!("/workers/{a}")).await.body["State"], "MAINTENANCE");

    // setstate IDLE by the admin → 204; the worker prepares and is IDLE.
    let reply = admin.post(&format!("/workers/{a}/setstate"), idle).await;
    assert_eq!((reply.status, &reply.body), (StatusCode::NO_CONTENT, &Value::Null));
    corral_testkit::wait_until("worker a is IDLE", Duration::from_secs(10), || async {
        (admin.get(&format!("/workers/{a}")).await.body["State"] == "IDLE").then_some(())
    })
    .await;

    // setgroups ["lab"] on b → 204; users outside "lab" no longer see it.
    let reply = admin.post(&format!("/workers/{b}/setgroups"), r#"["lab"]"#).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.body);
    assert_eq!(admin.get(&format!("/workers/{b}")).await.body["Groups"], json!(["lab"]));
    dave.get(&format!("/workers/{b}")).await.assert_error(StatusCode::NOT_FOUND, "Worker not found");
    assert_eq!(dave.get("/workers/").await.body.as_array().unwrap().len(), 1);
    assert_eq!(erin.get("/workers/").await.body.as_array().unwrap().len(), 2);

    // POST /workers/list: filter by group, caps (UUID too), sort, page.
    let (items, _) = admin.list("/workers/list", json!({"Filter": {"Groups": ["lab"], "Capabilities": null}})).await;
    assert_eq!(items.iter().map(|w| w["WorkerUUID"].clone()).collect::<Vec<_>>(), vec![json!(b)]);
    let (items, _) = admin.list("/workers/list", json!({"Filter": {"Capabilities": {"arch": "arm"}}})).await;
    assert_eq!(items.len(), 2);
    let (items, _) = admin.list("/workers/list", json!({"Filter": {"Capabilities": {"UUID": a}}})).await;
    assert_eq!(items[0]["WorkerUUID"], a.as_str());
    assert_eq!(items.len(), 1);
    let (items, _) = admin.list("/workers/list", json!({"Sorter": {"Item": "state", "Order": "descending"}})).await;
    assert_eq!((items[0]["State"].as_str(), items[1]["State"].as_str()), (Some("MAINTENANCE"), Some("IDLE")));
    let spec = json!({"Paginator": {"ID": "", "Direction": "forward", "Limit": 1}});
    let (items, reply) = admin.list("/workers/list", spec).await;
    assert_eq!(items[0]["WorkerUUID"], sorted[0].as_str());
    assert_eq!((reply.header("Boruta-List-Total"), reply.header("Boruta-List-Remaining")), (Some("2"), Some("1")));
    let reply = admin.post("/workers/list", r#"{"Sorter": {"Item": "battery"}}"#).await;
    reply.assert_error(StatusCode::BAD_REQUEST, "unknown name of item");

    // deregister: by a user → 403; an idle worker → 400; after setstate
    // MAINTENANCE → 204 and the worker is gone (404).
    dave.post_empty(&format!("/workers/{a}/deregister")).await.assert_error(StatusCode::FORBIDDEN, "admin");
    admin.post_empty(&format!("/workers/{a}/deregister")).await.assert_error(StatusCode::BAD_REQUEST, "invalid");
    assert_eq!(admin.get(&format!("/workers/{a}")).await.body["State"], "IDLE");
    let reply = admin.post(&format!("/workers/{a}/setstate"), r#"{"WorkerState": "maintenance"}"#).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.body);
    corral_testkit::wait_until("worker a is in MAINTENANCE", Duration::from_secs(10), || async {
        (admin.get(&format!("/workers/{a}")).await.body["State"] == "MAINTENANCE").then_some(())
    })
    .await;
    let reply = admin.post_empty(&format!("/workers/{a}/deregister")).await;
    assert_eq!((reply.status, &reply.body), (StatusCode::NO_CONTENT, &Value::Null));
    admin.get(&format!("/workers/{a}")).await.assert_error(StatusCode::NOT_FOUND, "Worker not found");
    agent.stop().await;
    server.stop().await;
}

#[actix_rt::test]
async fn bad_input_gets_borutas_errors_and_changes_nothing() {
    let server = TestServer::start_with(Clock::System, |c| c.max_body = 4096).await;
    let agent = server.agent("host-bad", 1, &caps(&[("device_type", "x")]));
    wait_for_worker(&server.admin(), agent.uuids[0], |w| w["state"] == "maintenance").await;
    let token = server.user("frank", &[]).await;
    let frank = Boruta::new(&server, Some(&token));
    let x = json!({"device_type": "x"});
    let zero = "0001-01-01T00:00:00Z";

    // Creating: each body → 400 with Boruta's text, and no request exists.
    for (body, text) in [
        (r#"{"Caps": "#.to_string(), "invalid JSON body"),
        (r#"{"Caps": ["device_type"]}"#.to_string(), "invalid JSON body"),
        (go_req_info(0, x.clone(), zero, zero), "requested priority out of bounds"),
        (go_req_info(17, x.clone(), zero, zero), "requested priority out of bounds"),
        (go_req_info(4, x.clone(), zero, "2001-01-01T00:00:00Z"), "deadline"),
        (go_req_info(4, x.clone(), "2100-01-02T00:00:00Z", "2100-01-01T00:00:00Z"), "valid_after"),
        (go_req_info(4, x.clone(), "yesterday", zero), "RFC 3339"),
    ] {
        frank.post("/reqs/", &body).await.assert_error(StatusCode::BAD_REQUEST, text);
    }
    // A body over max_body → 413 with a message.
    let huge = go_req_info(4, json!({"pad": "p".repeat(5000)}), zero, zero);
    frank.post("/reqs/", &huge).await.assert_error(StatusCode::PAYLOAD_TOO_LARGE, "larger than the limit");
    frank.post("/reqs/list", &huge).await.assert_error(StatusCode::PAYLOAD_TOO_LARGE, "larger than the limit");
    assert_eq!(request_count(&server).await, 0);

    // Unknown or malformed ids: 404 "… not found" / 400.
    frank.get("/reqs/abc").await.assert_error(StatusCode::BAD_REQUEST, "ID provided in URL isn't valid");
    frank.get("/reqs/999999").await.assert_error(StatusCode::NOT_FOUND, "Request not found");
    for action in ["close", "acquire_worker", "prolong"] {
        let reply = frank.post_empty(&format!("/reqs/999999/{action}")).await;
        reply.assert_error(StatusCode::NOT_FOUND, "Request not found");
    }
    frank.get("/workers/not-a-uuid").await.assert_error(StatusCode::BAD_REQUEST, "isn't valid UUID");
    let nobody = uuid::Uuid::new_v4();
    frank.get(&format!("/workers/{nobody}")).await.assert_error(StatusCode::NOT_FOUND, "Worker not found");
    let head = frank.head("/reqs/999999").await;
    assert_eq!(head.status, StatusCode::NOT_FOUND);

    // No token, a wrong token, an agent token: 401/401/403 with a message.
    let anonymous = Boruta::new(&server, None);
    anonymous.get("/reqs/").await.assert_error(StatusCode::UNAUTHORIZED, "Authorization");
    anonymous.post("/reqs/", &go_req_info(4, x.clone(), zero, zero)).await.assert_error(StatusCode::UNAUTHORIZED, "");
    let wrong = Boruta::new(&server, Some("crl_not_a_token"));
    wrong.get("/workers/").await.assert_error(StatusCode::UNAUTHORIZED, "unknown token");
    let agent_token = Boruta::new(&server, Some(&server.agent_token));
    agent_token.get("/reqs/").await.assert_error(StatusCode::FORBIDDEN, "agent");

    // Unknown route → 404; a method the route does not take → 405.
    frank.get("/nope").await.assert_error(StatusCode::NOT_FOUND, "/api/v1/nope not found");
    let reply = frank.call(Method::DELETE, "/reqs/1", None).await;
    reply.assert_error(StatusCode::METHOD_NOT_ALLOWED, "does not accept DELETE");
    assert_eq!(request_count(&server).await, 0);

    // A waiting request: acquire_worker and prolong → 400 "worker not
    // assigned"; it stays WAITING. Closing it → 204 CANCELLED.
    let id = frank.new_request(8, x.clone()).await;
    for action in ["acquire_worker", "prolong"] {
        let reply = frank.post_empty(&format!("/reqs/{id}/{action}")).await;
        reply.assert_error(StatusCode::BAD_REQUEST, "worker not assigned");
    }
    assert_eq!(frank.get(&format!("/reqs/{id}")).await.body["State"], "WAITING");
    assert_eq!(frank.post_empty(&format!("/reqs/{id}/close")).await.status, StatusCode::NO_CONTENT);
    assert_eq!(frank.get(&format!("/reqs/{id}")).await.body["State"], "CANCELLED");
    assert_eq!(request_count(&server).await, 1);
    agent.stop().await;
    server.stop().await;
}

#[actix_rt::test]
async fn clients_without_a_token_act_as_the_configured_boruta_user() {
    let server = TestServer::start_with(Clock::System, |c| c.boruta_user = Some("weles".to_string())).await;
    let agent = server.agent("host-weles", 1, &caps(&[("device_type", "x")]));
    wait_for_worker(&server.admin(), agent.uuids[0], |w| w["state"] == "maintenance").await;
    let anonymous = Boruta::new(&server, None);

    // The user does not exist yet → 401 naming it.
    anonymous.get("/reqs/").await.assert_error(StatusCode::UNAUTHORIZED, "\"weles\" does not exist");
    let weles_token = server.user("weles", &[]).await;

    // Anonymous calls now act as weles: the request is weles's on /v1.
    let id = anonymous.new_request(6, json!({"device_type": "x"})).await;
    let (status, native) = server.api(&weles_token).get(&format!("/v1/requests/{id}")).await;
    assert_eq!((status, native["owner"].as_str()), (StatusCode::OK, Some("weles")), "{native}");
    assert_eq!(ids(anonymous.get("/reqs/").await.body.as_array().unwrap()), vec![id]);

    // Version: GET → 200 with the body and headers; HEAD on the path the
    // Go client builds (`/api/v1//version`) → 204 with the headers.
    let version = anonymous.get("/version").await;
    assert_eq!(version.status, StatusCode::OK, "{}", version.body);
    assert_eq!(version.body["API_Version"], "v1");
    assert_eq!(version.body["API_State"], "stable");
    assert_eq!(version.body["Server"], env!("CARGO_PKG_VERSION"));
    let head = anonymous.head("//version").await;
    assert_eq!(head.status, StatusCode::NO_CONTENT);
    assert_eq!(head.header("Boruta-Server-Version"), Some(env!("CARGO_PKG_VERSION")));
    assert_eq!(head.header("Boruta-API-Version"), Some("v1"));
    assert_eq!(head.header("Boruta-API-State"), Some("stable"));

    // weles is no admin: admin operations stay forbidden.
    let worker = agent.uuids[0];
    let reply = anonymous.post(&format!("/workers/{worker}/setstate"), r#"{"WorkerState": "IDLE"}"#).await;
    reply.assert_error(StatusCode::FORBIDDEN, "admin");
    anonymous
        .post(&format!("/workers/{worker}/setgroups"), r#"["x"]"#)
        .await
        .assert_error(StatusCode::FORBIDDEN, "admin");
    let (_, seen) = server.admin().get(&format!("/v1/workers/{worker}")).await;
    assert_eq!((seen["state"].as_str(), &seen["groups"]), (Some("maintenance"), &json!([])));

    // A wrong token is refused even though anonymous calls are allowed.
    Boruta::new(&server, Some("crl_wrong")).get("/reqs/").await.assert_error(StatusCode::UNAUTHORIZED, "unknown token");
    agent.stop().await;
    server.stop().await;
}

/// SPEC §5: Boruta queues a request for caps no registered worker offers
/// (Weles asks for device types before their dryads register). Sent: a
/// create for `device_type=z80` with no such worker. Must happen: 201, the
/// request is WAITING in Boruta's listing, and it is leased once a z80
/// worker registers and is made idle.
#[actix_rt::test]
async fn boruta_queues_requests_for_caps_no_worker_offers_yet() {
    let server = TestServer::start(Clock::System).await;
    let token = server.user("weles", &[]).await;
    let weles = Boruta::new(&server, Some(&token));
    let id = weles.new_request(4, json!({"device_type": "z80"})).await;
    let (items, _) = weles.list("/reqs/list", json!({"Filter": {"States": ["WAITING"]}})).await;
    assert_eq!(ids(&items), vec![id], "the request waits");

    let agent = server.agent("host-z80", 1, &caps(&[("device_type", "z80")]));
    let admin = server.admin();
    wait_for_worker(&admin, agent.uuids[0], |w| w["state"] == "maintenance").await;
    let (status, body) = admin.put(&format!("/v1/workers/{}/state", agent.uuids[0]), json!({"state": "idle"})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    corral_testkit::wait_until("the z80 request is IN PROGRESS", Duration::from_secs(20), || async {
        (weles.get(&format!("/reqs/{id}")).await.body["State"] == "IN PROGRESS").then_some(())
    })
    .await;
    let reply = weles.get(&format!("/reqs/{id}")).await;
    assert_eq!(reply.body["Job"]["WorkerUUID"], json!(agent.uuids[0].to_string()), "{}", reply.body);
    agent.stop().await;
    server.stop().await;
}

/// SPEC §5: Festral calls the API without its version. Sent: POST
/// `/api/reqs/`, GET `/api/workers?x=1`, DELETE `/api/reqs/1`. Must
/// happen: 308 with `Location` on `/api/v1/...` (query kept), nothing
/// created; following the redirect works.
#[actix_rt::test]
async fn boruta_unversioned_paths_redirect_with_308() {
    let server = TestServer::start(Clock::System).await;
    let token = server.user("festral", &[]).await;
    let http = awc::Client::builder().disable_redirects().timeout(Duration::from_secs(30)).finish();
    let body = go_req_info(4, json!({"device_type": "x"}), "0001-01-01T00:00:00Z", "0001-01-01T00:00:00Z");
    for (method, path, location) in [
        (Method::POST, "/api/reqs/", "/api/v1/reqs/"),
        (Method::GET, "/api/workers?x=1", "/api/v1/workers?x=1"),
        (Method::DELETE, "/api/reqs/1", "/api/v1/reqs/1"),
    ] {
        let response = http
            .request(method.clone(), format!("{}{path}", server.url))
            .insert_header(("Authorization", format!("Bearer {token}")))
            .send_body(body.clone())
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT, "{method} {path}");
        let got = response.headers().get("location").and_then(|v| v.to_str().ok());
        assert_eq!(got, Some(location), "{method} {path}");
    }
    assert_eq!(request_count(&server).await, 0, "a redirect creates nothing");
    // The versioned path still answers itself.
    let festral = Boruta::new(&server, Some(&token));
    assert_eq!(festral.get("/workers/").await.status, StatusCode::OK);
    server.stop().await;
}

/// SPEC §5: setting a worker to the state it is in already succeeds, as in
/// Boruta. Sent: MAINTENANCE twice, then IDLE twice. Must happen: 204 each
/// time; the worker ends idle with one maintenance→prepare move in its
/// history, and a bad state is still 400.
#[actix_rt::test]
async fn boruta_setstate_to_the_current_state_is_204() {
    let server = TestServer::start(Clock::System).await;
    let agent = server.agent("host-same", 1, &caps(&[("device_type", "x")]));
    let admin = Boruta::new(&server, Some(&server.admin));
    let w = agent.uuids[0];
    wait_for_worker(&server.admin(), w, |w| w["state"] == "maintenance").await;
    for _ in 0..2 {
        let reply = admin.post(&format!("/workers/{w}/setstate"), r#"{"WorkerState": "MAINTENANCE"}"#).await;
        assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.body);
    }
    let reply = admin.post(&format!("/workers/{w}/setstate"), r#"{"WorkerState": "IDLE"}"#).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.body);
    wait_for_worker(&server.admin(), w, |w| w["state"] == "idle").await;
    let reply = admin.post(&format!("/workers/{w}/setstate"), r#"{"WorkerState": "IDLE"}"#).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.body);
    assert_eq!(admin.get(&format!("/workers/{w}")).await.body["State"], "IDLE");
    let reply = admin.post(&format!("/workers/{w}/setstate"), r#"{"WorkerState": "RUNNING"}"#).await;
    reply.assert_error(StatusCode::BAD_REQUEST, "Only state changes to IDLE and MAINTENANCE are allowed");
    agent.stop().await;
    server.stop().await;
}

/// The divergences from Boruta that `api/src/boruta.rs` lists under
/// "Divergences" and keeps, each pinned here. Sent: (1) a request made on
/// `/v1` (an Ed25519 lease key) acquired through `acquire_worker`; (2) a
/// quarantined idle worker read through `/workers/{uuid}`; (3) a request
/// bound to a worker whose agent never confirms the lease key, read
/// through `/reqs/{id}`. Must happen: (1) 400 pointing at `/v1`, nothing
/// changed (the lease goes on); (2) `IDLE` (Boruta has no holds), while
/// `/v1` shows the quarantine, also while a power cycle runs on it, when
/// `setstate MAINTENANCE` is 400 naming the power cycle; (3) `WAITING`
/// with no `Job` until the key is in place (corral's IN PROGRESS means
/// the worker can be reached).
#[actix_rt::test]
async fn boruta_divergences_that_corral_keeps_are_pinned() {
    let server = TestServer::start(Clock::manual()).await;
    let faults = corral_agent::SimFaults::default();
    let sim = corral_agent::Simulated::new("host-div", 2, &caps(&[("device_type", "div")]), "127.0.0.1:9", "lab")
        .with_faults(faults.clone());
    let agent = server.agent_with(sim);
    let (a, b) = (agent.uuids[0], agent.uuids[1]);
    server.make_idle(&[a]).await;
    let token = server.user("dora", &[]).await;
    let dora = Boruta::new(&server, Some(&token));
    let native = server.api(&token);

    // (1) A /v1 request has an Ed25519 key: no PKCS#1 key to hand out.
    let id = native.submit(json!({"caps": {"device_type": "div"}})).await;
    common::wait_for_request(&native, id, |r| r["state"] == "in_progress").await;
    dora.post_empty(&format!("/reqs/{id}/acquire_worker")).await.assert_error(StatusCode::BAD_REQUEST, "/v1");
    assert_eq!(native.get(&format!("/v1/requests/{id}")).await.1["state"], "in_progress");

    // (2) A held worker is IDLE to Boruta's clients.
    let (status, body) = server.admin().put(&format!("/v1/workers/{a}/quarantine"), json!({"reason": "flaky"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    native.post_empty(&format!("/v1/requests/{id}/close")).await;
    wait_for_worker(&server.admin(), a, |w| w["state"] == "idle").await;
    let read = dora.get(&format!("/workers/{a}")).await;
    assert_eq!((read.status, read.body["State"].as_str()), (StatusCode::OK, Some("IDLE")), "{}", read.body);
    assert_eq!(server.admin().get(&format!("/v1/workers/{a}")).await.1["quarantine"], "flaky");
    // ... also while a power cycle runs on it; setstate then is Boruta's 400 naming it.
    faults.lose_results(corral_proto::agent::ActionKind::PowerCycle, corral_agent::Times::Always);
    let (status, body) = server.admin().post_empty(&format!("/v1/workers/{a}/power-cycle")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(dora.get(&format!("/workers/{a}")).await.body["State"], "IDLE");
    let admin = Boruta::new(&server, Some(&server.admin));
    let reply = admin.post(&format!("/workers/{a}/setstate"), r#"{"WorkerState": "MAINTENANCE"}"#).await;
    reply.assert_error(StatusCode::BAD_REQUEST, "power_cycle by user:admin");
    assert_eq!(server.admin().get(&format!("/v1/workers/{a}")).await.1["state"], "idle", "nothing changed");

    // (3) Bound, key not confirmed: WAITING, no Job.
    faults.lose_results(corral_proto::agent::ActionKind::StartLease, corral_agent::Times::Always);
    server.make_idle(&[b]).await;
    let waiting = dora.new_request(4, json!({"device_type": "div"})).await;
    corral_testkit::wait_until("the request is bound", Duration::from_secs(10), || async {
        let (_, r) = native.get(&format!("/v1/requests/{waiting}")).await;
        (r["worker"] == json!(b.to_string())).then_some(())
    })
    .await;
    let read = dora.get(&format!("/reqs/{waiting}")).await;
    assert_eq!((read.body["State"].as_str(), &read.body["Job"]), (Some("WAITING"), &Value::Null), "{}", read.body);
    agent.kill();
    server.stop().await;
}
