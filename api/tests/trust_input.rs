//! Issue 13, classes 1, 2 and 9: what a user sends is checked for range
//! before use (SPEC §12). Each test sends bad input through the real HTTP
//! server (native and Boruta APIs), checks the answer is a 4xx, that
//! nothing changed, and that the server still schedules afterwards.

mod common;

use std::time::Duration;

use awc::http::StatusCode;
use common::{Api, TestServer, caps, wait_for_request, wait_for_worker};
use corral_actors::Clock;
use serde_json::{Value, json};

/// A server whose agent sessions outlive the clock jumps of a test.
async fn server(clock: &Clock) -> TestServer {
    TestServer::start_with(clock.clone(), |c| c.session_timeout = Duration::from_secs(7 * 24 * 3600)).await
}

fn assert_bad_request(answer: &(StatusCode, Value), what: &str) {
    assert_eq!(answer.0, StatusCode::BAD_REQUEST, "{what}: {}", answer.1);
    assert_eq!(answer.1["error"], "bad_request", "{what}: {}", answer.1);
}

async fn all_requests(server: &TestServer) -> Vec<Value> {
    let (status, page) = server.admin().get("/v1/requests?limit=1000").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page["items"].as_array().cloned().unwrap_or_default()
}

/// The server still schedules: a good request gets the (idle) worker.
async fn still_schedules(api: &Api, device_type: &str) -> i64 {
    let id = api.submit(json!({"caps": {"device_type": device_type}, "lease": "10m"})).await;
    wait_for_request(api, id, |r| r["state"] == "in_progress").await;
    id
}

/// The Boruta API with a bearer token, as Boruta's Go client calls it.
async fn boruta_post(server: &TestServer, token: &str, path: &str, body: &str) -> (StatusCode, Value) {
    let api = server.api(token).at(&format!("{}/api/v1", server.url));
    api.post_raw(path, body.as_bytes().to_vec()).await
}

/// `{key: value}` with a key that is not a literal.
fn object(key: &str, value: Value) -> Value {
    Value::Object([(key.to_string(), value)].into_iter().collect())
}

fn go_req_info(caps: Value, valid_after: &str, deadline: &str) -> String {
    json!({
        "ID": 0, "Priority": 8, "Owner": {"Groups": null},
        "Deadline": deadline, "ValidAfter": valid_after,
        "State": "", "Job": null, "Caps": caps,
    })
    .to_string()
}

#[actix_rt::test]
async fn class1_patch_deadline_before_epoch_with_offset_is_400_and_request_still_works() {
    let clock = Clock::manual();
    let server = server(&clock).await;
    let agent = server.agent("host-c1a", 1, &caps(&[("device_type", "x")]));
    let ann = server.api(&server.user("ann", &[]).await);
    // The worker is still in maintenance: the request waits.
    let id = ann.submit(json!({"caps": {"device_type": "x"}, "allow_unsatisfiable": true})).await;
    let (_, before) = ann.get(&format!("/v1/requests/{id}")).await;

    // Once this panicked the request actor, which then answered 503 forever.
    for deadline in ["1970-01-01T00:00:00+01:00", "1969-12-31T23:59:59Z", "9999-12-31T23:30:00-01:00"] {
        let answer = ann.patch(&format!("/v1/requests/{id}"), json!({"deadline": deadline})).await;
        assert_bad_request(&answer, deadline);
        let answer = ann.patch(&format!("/v1/requests/{id}"), json!({"valid_after": deadline})).await;
        assert_bad_request(&answer, deadline);
    }
    let (status, after) = ann.get(&format!("/v1/requests/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(after, before, "a refused PATCH changes nothing");

    // The request's actor still answers, and the request is still matched.
    let (status, patched) = ann.patch(&format!("/v1/requests/{id}"), json!({"priority": 3})).await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["priority"], 3);
    // (The request takes the worker as soon as it is idle.)
    let admin = server.admin();
    wait_for_worker(&admin, agent.uuids[0], |w| w["state"] == "maintenance").await;
    let (status, body) = admin.put(&format!("/v1/workers/{}/state", agent.uuids[0]), json!({"state": "idle"})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    wait_for_request(&ann, id, |r| r["state"] == "in_progress").await;
    agent.stop().await;
    server.stop().await;
}

#[actix_rt::test]
async fn class1_prolong_by_300000000000y_is_400_and_lease_still_ends() {
    let clock = Clock::manual();
    let server = server(&clock).await;
    let agent = server.agent("host-c1b", 1, &caps(&[("device_type", "x")]));
    server.make_idle(&agent.uuids).await;
    let bob = server.api(&server.user("bob", &[]).await);
    let id = still_schedules(&bob, "x").await;
    let (_, before) = bob.get(&format!("/v1/requests/{id}")).await;

    // Once this overflowed the expiry and panicked the actor; the worker
    // then sat in running with no timeout.
    for by in ["300000000000y", "100y 1s", "99999999999999999999999s"] {
        let answer = bob.post(&format!("/v1/requests/{id}/prolong"), json!({"by": by})).await;
        assert_bad_request(&answer, by);
    }
    let (_, after) = bob.get(&format!("/v1/requests/{id}")).await;
    assert_eq!(after["lease_expires_at"], before["lease_expires_at"], "a refused prolong changes nothing");
    // A sane prolong past max_lease is still the documented 409.
    let (status, _) = bob.post(&format!("/v1/requests/{id}/prolong"), json!({"by": "99y"})).await;
    assert_eq!(status, StatusCode::CONFLICT);

    // The lease still ends on time and the worker comes back.
    clock.advance(Duration::from_secs(11 * 60));
    let done = wait_for_request(&bob, id, |r| r["state"] == "done").await;
    assert_eq!(done["reason"], "lease expired");
    still_schedules(&bob, "x").await;
    agent.stop().await;
    server.stop().await;
}

#[actix_rt::test]
async fn class1_multibyte_time_is_400() {
    let clock = Clock::manual();
    let server = server(&clock).await;
    let agent = server.agent("host-c1c", 1, &caps(&[("device_type", "x")]));
    server.make_idle(&agent.uuids).await;
    let cid = server.api(&server.user("cid", &[]).await);
    let waiting = cid.submit(json!({"caps": {"device_type": "none"}, "allow_unsatisfiable": true})).await;
    let before = all_requests(&server).await;

    // Once these panicked the deserializer (split_at inside a character).
    let texts = ["2026-01-02T03:04:0é+01:00", "2026-01-02T03:04:05+0é:00", "ééééééééééééééééééééé", "€"];
    for text in texts {
        for field in ["valid_after", "deadline"] {
            let mut body = object(field, json!(text));
            body["caps"] = json!({"device_type": "x"});
            let answer = cid.post("/v1/requests", body).await;
            assert_bad_request(&answer, text);
            let answer = cid.patch(&format!("/v1/requests/{waiting}"), object(field, json!(text))).await;
            assert_bad_request(&answer, text);
        }
        let answer = cid.post("/v1/requests", json!({"caps": {"device_type": "x"}, "lease": text})).await;
        assert_bad_request(&answer, text);
        let answer = cid.post_empty(&format!("/v1/requests/{waiting}/acquire?wait=%E2%82%AC")).await;
        assert_bad_request(&answer, "wait=€");
    }
    assert_eq!(all_requests(&server).await, before, "nothing was created or changed");
    still_schedules(&cid, "x").await;
    agent.stop().await;
    server.stop().await;
}

#[actix_rt::test]
async fn class1_year_10000_is_400_and_lists_still_work() {
    let clock = Clock::manual();
    let server = server(&clock).await;
    let agent = server.agent("host-c1d", 1, &caps(&[("device_type", "x")]));
    server.make_idle(&agent.uuids).await;
    let token = server.user("dot", &[]).await;
    let dot = server.api(&token);
    let stored = dot.submit(json!({"caps": {"device_type": "none"}, "allow_unsatisfiable": true})).await;
    let before = all_requests(&server).await;

    // Native API: past 9999, written plainly or reached by an offset.
    for deadline in ["10000-01-01T00:00:00Z", "9999-12-31T23:30:00-01:00", "+10000-01-01T00:00:00Z"] {
        let answer = dot.post("/v1/requests", json!({"caps": {"device_type": "x"}, "deadline": deadline})).await;
        assert_bad_request(&answer, deadline);
    }
    // A default deadline (7 days) added to a valid_after at the end of time.
    let late = json!({"caps": {"device_type": "x"}, "valid_after": "9999-12-30T00:00:00Z"});
    assert_bad_request(&dot.post("/v1/requests", late).await, "valid_after + default deadline");
    // Boruta API: the same dates.
    for deadline in ["10000-01-01T00:00:00Z", "9999-12-31T23:00:00-02:00"] {
        let body = go_req_info(json!({"device_type": "x"}), "0001-01-01T00:00:00Z", deadline);
        let (status, answer) = boruta_post(&server, &token, "/reqs/", &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{deadline}: {answer}");
    }
    assert_eq!(all_requests(&server).await, before, "nothing was stored");

    // A row an older server stored past 9999 (before the CHECK existed)
    // no longer crashes the lists that include it: it is shown clamped.
    let db = corral_testkit::TestDb { url: server.db_url.clone(), name: "this test's".to_string() };
    let client = db.connect().await;
    client
        .batch_execute(&format!(
            "ALTER TABLE requests DROP CONSTRAINT requests_times_in_range;
             UPDATE requests SET deadline = '10000-06-01 00:00:00+00' WHERE id = {stored};"
        ))
        .await
        .expect("store a deadline past 9999");
    let listed = all_requests(&server).await;
    let row = listed.iter().find(|r| r["id"] == stored).expect("the row is listed");
    assert_eq!(row["deadline"], "9999-12-31T23:59:59.999999Z");
    let (status, one) = dot.get(&format!("/v1/requests/{stored}")).await;
    assert_eq!(status, StatusCode::OK, "{one}");
    let (status, list) = boruta_post(&server, &token, "/reqs/list", "{}").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert!(list.as_array().is_some_and(|l| l.iter().any(|r| r["ID"] == stored)), "{list}");
    still_schedules(&dot, "x").await;
    agent.stop().await;
    server.stop().await;
}

#[actix_rt::test]
async fn class2_refused_submissions_leave_no_matcher_state() {
    let clock = Clock::manual();
    let server = server(&clock).await;
    let agent = server.agent("host-c2a", 1, &caps(&[("device_type", "x")]));
    server.make_idle(&agent.uuids).await;
    let eve = server.api(&server.user("eve", &[]).await);
    let before = server.corral.matcher_stats().await.unwrap().sizes;

    for n in 0..40 {
        let big: serde_json::Map<String, Value> =
            (0..64).map(|k| (format!("cap-{k}"), Value::String(format!("{n}-{k}-{}", "v".repeat(512))))).collect();
        // Refused: no worker offers these caps.
        let (status, answer) = eve.post("/v1/requests", json!({"caps": big})).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
        // Accepted anyway, then cancelled: gone from the matcher too.
        let id = eve.submit(json!({"caps": {"device_type": format!("none-{n}")}, "allow_unsatisfiable": true})).await;
        let (status, closed) = eve.post_empty(&format!("/v1/requests/{id}/close")).await;
        assert_eq!(status, StatusCode::OK, "{closed}");
    }
    let after = server.corral.matcher_stats().await.unwrap().sizes;
    assert_eq!(after, before, "the matcher holds what it held before");
    still_schedules(&eve, "x").await;
    agent.stop().await;
    server.stop().await;
}

#[actix_rt::test]
async fn class2_caps_with_control_chars_or_equals_in_key_are_400() {
    let clock = Clock::manual();
    let server = server(&clock).await;
    let agent = server.agent("host-c2b", 1, &caps(&[("device_type", "x")]));
    server.make_idle(&agent.uuids).await;
    let token = server.user("fay", &[]).await;
    let fay = server.api(&token);
    let before = all_requests(&server).await;
    let sizes = server.corral.matcher_stats().await.unwrap().sizes;

    let bad = [
        json!({"a=b": "x"}),
        json!({"line\nbreak": "x"}),
        json!({" padded": "x"}),
        json!({"device_type": "x\u{0}"}),
        json!({"device_type": "x\r\ny"}),
        object(&"k".repeat(129), json!("x")),
    ];
    for caps in &bad {
        let answer = fay.post("/v1/requests", json!({"caps": caps, "allow_unsatisfiable": true})).await;
        assert_bad_request(&answer, &caps.to_string());
        let (status, answer) = boruta_post(
            &server,
            &token,
            "/reqs/",
            &go_req_info(caps.clone(), "0001-01-01T00:00:00Z", "0001-01-01T00:00:00Z"),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "Boruta {caps}: {answer}");
    }
    for filter in ["%20padded%3Dx", "line%0Abreak%3Dx", "device_type%3Dx%00"] {
        let answer = fay.get(&format!("/v1/workers?cap={filter}")).await;
        assert_bad_request(&answer, filter);
    }
    let (status, _) = server.admin().put(&format!("/v1/workers/{}/groups", agent.uuids[0]), json!(["lab\n"])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a group with a control character");

    assert_eq!(all_requests(&server).await, before, "nothing was stored");
    assert_eq!(server.corral.matcher_stats().await.unwrap().sizes, sizes, "nothing was interned");
    let (status, workers) = fay.get("/v1/workers?cap=device_type%3Dx").await;
    assert_eq!(status, StatusCode::OK, "a good filter still works");
    assert_eq!(workers["items"].as_array().map(Vec::len), Some(1), "{workers}");
    still_schedules(&fay, "x").await;
    agent.stop().await;
    server.stop().await;
}

#[actix_rt::test]
async fn class2_agent_registration_with_control_chars_or_equals_in_caps_is_400() {
    let clock = Clock::manual();
    let server = server(&clock).await;
    let agent = server.api(&server.agent_token);
    let sizes = server.corral.matcher_stats().await.unwrap().sizes;

    let registration = |caps: Value, groups: Value| {
        json!({"agent": "host-c2c", "workers": [{
            "uuid": uuid::Uuid::new_v4(), "caps": caps, "groups": groups,
            "ssh_addr": "127.0.0.1:22", "user": "lab",
        }]})
    };
    let bad = [
        (json!({"a=b": "x"}), json!([])),
        (json!({"device\ttype": "x"}), json!([])),
        (json!({"device_type": "x\u{1b}[31m"}), json!([])),
        (json!({"device_type": "x"}), json!(["lab\n"])),
    ];
    for (caps, groups) in bad {
        let answer = agent.post("/v1/agent/sessions", registration(caps.clone(), groups.clone())).await;
        assert_bad_request(&answer, &format!("{caps} {groups}"));
    }
    let (status, workers) = server.admin().get("/v1/workers").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(workers["items"], json!([]), "no worker was registered");
    assert_eq!(server.corral.matcher_stats().await.unwrap().sizes, sizes, "nothing was interned");
    let (status, opened) = agent.post("/v1/agent/sessions", registration(json!({"device_type": "x"}), json!([]))).await;
    assert!(status.is_success(), "a good registration still works: {opened}");
    server.stop().await;
}

#[actix_rt::test]
async fn class9_lease_500us_is_400() {
    let clock = Clock::manual();
    let server = server(&clock).await;
    let agent = server.agent("host-c9", 1, &caps(&[("device_type", "x")]));
    server.make_idle(&agent.uuids).await;
    let gus = server.api(&server.user("gus", &[]).await);
    let before = all_requests(&server).await;

    // Once a raw database error (lease_ms > 0 failed) answered as a 5xx.
    for lease in ["500us", "999ms", "0s", "101y"] {
        let answer = gus.post("/v1/requests", json!({"caps": {"device_type": "x"}, "lease": lease})).await;
        assert_bad_request(&answer, lease);
    }
    assert_eq!(all_requests(&server).await, before, "nothing was stored");
    let id = gus.submit(json!({"caps": {"device_type": "x"}, "lease": "1s"})).await;
    wait_for_request(&gus, id, |r| r["state"] == "in_progress").await;
    agent.stop().await;
    server.stop().await;
}
