//! Issue 16 (Skia's machine server, items 1, 2, 5, 6): facts observed by
//! agents kept and shown, dimensions from interrogation merged into the
//! caps requests match on, admins' notes on workers, and the audit log of
//! admin actions.

mod common;

use std::time::Duration;

use awc::http::StatusCode;
use common::{TestServer, caps, wait_for_request, wait_for_worker};
use corral_actors::Clock;
use corral_agent::Simulated;
use serde_json::{Map, Value, json};

/// A server whose agents heartbeat every 200 ms.
async fn server() -> TestServer {
    TestServer::start_with(Clock::System, |config| {
        config.heartbeat_interval = Duration::from_millis(200);
    })
    .await
}

/// Opens an agent session by hand (the wire protocol, no agent runtime)
/// registering one worker; returns (session, worker).
async fn raw_session(server: &TestServer, agent: &str) -> (String, String) {
    let worker = uuid::Uuid::new_v4().to_string();
    let (status, body) = server
        .api(&server.agent_token)
        .post(
            "/v1/agent/sessions",
            json!({"agent": agent, "workers": [{"uuid": worker, "caps": {"device_type": "x"},
                   "ssh_addr": "127.0.0.1:9", "user": "lab"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    (body["session"].as_str().unwrap().to_string(), worker)
}

async fn heartbeat(server: &TestServer, session: &str, observation: Value) -> (StatusCode, Value) {
    server
        .api(&server.agent_token)
        .post(&format!("/v1/agent/sessions/{session}/heartbeat"), json!({"workers": [observation]}))
        .await
}

/// A barrier, not a sleep: every clock-driven check (the matcher's pass
/// included) runs once, after the messages sent before it. A request still
/// waiting afterwards was not bound by what came before; a sleep on the
/// real-time tick would pass on a loaded machine without proving that.
async fn settled(server: &TestServer) {
    server.corral.tick().await.expect("the server answers a tick");
}

/// Every history row of a worker, oldest first, as "reason".
async fn history_reasons(api: &common::Api, worker: &str) -> Vec<String> {
    let (status, page) = api.get(&format!("/v1/workers/{worker}/history?limit=1000")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let mut reasons: Vec<String> =
        page["items"].as_array().unwrap().iter().map(|h| h["reason"].as_str().unwrap().to_string()).collect();
    reasons.reverse();
    reasons
}

/// Sent: heartbeats of a hand-made agent session carrying facts (battery,
/// temperature, uptime, device attached, agent version), then the same
/// with changed battery and uptime, then facts past each bound (65 keys, a
/// 2 KiB value, a key with '=', a control character, a UUID dimension),
/// then an older agent's heartbeat with no facts at all.
/// Must happen: the worker object (one and list) shows the latest facts
/// and facts_at; they are in the database; each bad heartbeat is a 400
/// bad_request and changes nothing; the older agent's heartbeat is 200;
/// changing facts alone writes no history row, changing the dimensions
/// writes one.
#[actix_rt::test]
async fn facts_are_kept_shown_bounded_and_only_dimension_changes_reach_history() {
    let server = server().await;
    let admin = server.admin();
    let (session, worker) = raw_session(&server, "host-facts").await;
    let facts = json!({"battery": 80, "temperature": 41.5, "uptime": "3d 4h", "device_attached": true,
                       "agent_version": "1.2.0"});
    let (status, body) = heartbeat(&server, &session, json!({"uuid": worker, "facts": facts})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let shown = wait_for_worker(&admin, worker.parse().unwrap(), |w| w["facts"] == facts).await;
    assert!(shown["facts_at"].is_string(), "{shown}");
    let (_, list) = admin.get("/v1/workers").await;
    let listed = list["items"].as_array().unwrap().iter().find(|w| w["uuid"] == worker.as_str()).unwrap().clone();
    assert_eq!(listed["facts"], facts, "{listed}");
    // Written to the row (the first facts of a worker are written at once).
    let record = server.corral.db().load_worker(worker.parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(Value::Object(record.facts.clone()), facts);
    assert!(record.facts_at.is_some());
    let before = history_reasons(&admin, &worker).await;

    // Changed facts: shown at once; no history row.
    let newer = json!({"battery": 79, "temperature": 41.5, "uptime": "3d 5h", "device_attached": true,
                       "agent_version": "1.2.0"});
    let (status, _) = heartbeat(&server, &session, json!({"uuid": worker, "facts": newer})).await;
    assert_eq!(status, StatusCode::OK);
    wait_for_worker(&admin, worker.parse().unwrap(), |w| w["facts"] == newer).await;
    assert_eq!(history_reasons(&admin, &worker).await, before, "facts alone do not flood the history");

    // Past the bounds: 400, nothing changes.
    let many: Map<String, Value> = (0..65).map(|i| (format!("k{i}"), json!(i))).collect();
    let bad = [
        json!({"uuid": worker, "facts": many}),
        json!({"uuid": worker, "facts": {"log": "x".repeat(2048)}}),
        json!({"uuid": worker, "facts": {"a=b": 1}}),
        json!({"uuid": worker, "facts": {"bell": "ding\u{7}"}}),
        json!({"uuid": worker, "facts": {}, "dimensions": {"UUID": worker}}),
        json!({"uuid": worker, "facts": {}, "dimensions": {"v": "x".repeat(2048)}}),
    ];
    for observation in bad {
        let (status, body) = heartbeat(&server, &session, observation.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{observation:.200}: {body}");
        assert_eq!(body["error"], "bad_request", "{body}");
    }
    let (_, now) = admin.get(&format!("/v1/workers/{worker}")).await;
    assert_eq!(now["facts"], newer, "refused heartbeats changed nothing: {now}");
    assert_eq!(now["dimensions"], json!({}), "{now}");

    // An older agent: no facts, no dimensions field.
    let (status, body) = heartbeat(&server, &session, json!({"uuid": worker})).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Dimensions: one history row per change.
    let (status, _) =
        heartbeat(&server, &session, json!({"uuid": worker, "facts": {}, "dimensions": {"android_version": "13"}}))
            .await;
    assert_eq!(status, StatusCode::OK);
    let shown = wait_for_worker(&admin, worker.parse().unwrap(), |w| w["dimensions"]["android_version"] == "13").await;
    assert_eq!(shown["caps"], json!({"android_version": "13", "device_type": "x"}), "{shown}");
    corral_testkit::wait_until("the dimension change is in the history", Duration::from_secs(10), || async {
        let reasons = history_reasons(&admin, &worker).await;
        reasons.iter().any(|r| r == "dimensions: android_version (none) -> 13").then_some(())
    })
    .await;
    let record = server.corral.db().load_worker(worker.parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(record.dimensions, caps(&[("android_version", "13")]));
    server.stop().await;
}

/// Sent: a simulated agent (the real agent runtime) whose interrogate hook
/// prints `{"battery": 90, "dimensions": {"android_version": "13",
/// "device_type": "reported"}}` for a worker configured with
/// `device_type=phone`; a request for `android_version=14` (allowed to be
/// unsatisfiable: nobody offers it); then the hook prints version 14.
/// Must happen: the worker's caps are the dimensions under the configured
/// caps (device_type stays phone); the request waits while the device
/// says 13 and is leased on that worker as soon as it says 14; the change
/// is in the worker's history.
#[actix_rt::test]
async fn a_request_waiting_for_a_dimension_is_served_when_the_device_reports_it() {
    let server = server().await;
    let admin = server.admin();
    let backend = Simulated::new("host-dims", 1, &caps(&[("device_type", "phone")]), "127.0.0.1:9", "lab");
    let hook = backend.faults();
    let say = |version: &str| {
        json!({"battery": 90, "dimensions": {"android_version": version, "device_type": "reported"}})
            .as_object()
            .unwrap()
            .clone()
    };
    hook.set_facts(say("13"));
    let agent = server.agent_with(backend);
    let worker = agent.uuids[0];
    let shown = wait_for_worker(&admin, worker, |w| w["dimensions"]["android_version"] == "13").await;
    assert_eq!(shown["caps"], json!({"android_version": "13", "device_type": "phone"}), "configured wins: {shown}");
    assert_eq!(shown["facts"], json!({"battery": 90}), "{shown}");
    server.make_idle(&agent.uuids).await;

    let una = server.api(&server.user("una", &[]).await);
    let (status, body) = una.post("/v1/requests", json!({"caps": {"android_version": "14"}})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "nobody offers 14 yet: {body}");
    let id = una.submit(json!({"caps": {"android_version": "14"}, "allow_unsatisfiable": true})).await;
    // The idle worker says 13; once the matcher has seen the request the
    // request is still waiting.
    settled(&server).await;
    let (_, waiting) = una.get(&format!("/v1/requests/{id}")).await;
    assert_eq!(waiting["state"], "waiting", "{waiting}");

    hook.set_facts(say("14"));
    let leased = wait_for_request(&una, id, |r| r["state"] == "in_progress").await;
    assert_eq!(leased["worker"], worker.to_string(), "{leased}");
    let reasons = history_reasons(&admin, &worker.to_string()).await;
    assert!(reasons.iter().any(|r| r == "dimensions: android_version 13 -> 14"), "{reasons:?}");
    agent.stop().await;
    server.stop().await;
}

/// Sent: PUT /v1/workers/{uuid}/note as an admin (a two-line note), as a
/// user, with a tab, with 1025 bytes, with an unknown field, for an
/// unknown worker; then `{"note": null}` and `{"note": ""}`.
/// Must happen: the admin's note is shown in the worker object and the
/// list with note_by and note_at, beside the system's `reason`; the user
/// gets 403; bad notes 400; the unknown worker 404; null and "" clear all
/// three fields; setting and clearing are in the worker's history.
#[actix_rt::test]
async fn admins_set_and_clear_notes_shown_on_the_worker() {
    let server = server().await;
    let admin = server.admin();
    let agent = server.agent("host-notes", 1, &caps(&[("device_type", "x")]));
    let worker = agent.uuids[0];
    wait_for_worker(&admin, worker, |w| w["state"] == "maintenance").await;
    let path = format!("/v1/workers/{worker}/note");

    let (status, body) = admin.put(&path, json!({"note": "flaky USB hub\nsee ticket 42"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["note"], "flaky USB hub\nsee ticket 42");
    assert!(body["note_by"].as_str().unwrap().starts_with("user:"), "{body}");
    assert!(body["note_at"].is_string(), "{body}");
    assert_eq!(body["reason"], "new worker", "the system's own annotation is beside it: {body}");
    let (_, list) = admin.get("/v1/workers").await;
    assert_eq!(list["items"][0]["note"], "flaky USB hub\nsee ticket 42");

    let user = server.api(&server.user("vic", &[]).await);
    let (status, body) = user.put(&path, json!({"note": "mine now"})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    for bad in [json!({"note": "tab\there"}), json!({"note": "x".repeat(1025)}), json!({"note": "a", "by": "me"})] {
        let (status, body) = admin.put(&path, bad.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad:.80}: {body}");
        assert_eq!(body["error"], "bad_request", "{body}");
    }
    let (status, _) = admin.put(&format!("/v1/workers/{}/note", uuid::Uuid::new_v4()), json!({"note": "x"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, unchanged) = admin.get(&format!("/v1/workers/{worker}")).await;
    assert_eq!(unchanged["note"], "flaky USB hub\nsee ticket 42", "refused notes changed nothing");

    for clear in [json!({"note": null}), json!({"note": ""})] {
        admin.put(&path, json!({"note": "again"})).await;
        let (status, body) = admin.put(&path, clear.clone()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body["note"].is_null() && body["note_by"].is_null() && body["note_at"].is_null(), "{clear}: {body}");
    }
    let reasons = history_reasons(&admin, &worker.to_string()).await;
    assert!(reasons.iter().any(|r| r == "note: flaky USB hub\nsee ticket 42"), "{reasons:?}");
    assert!(reasons.iter().any(|r| r == "note cleared"), "{reasons:?}");
    agent.stop().await;
    server.stop().await;
}

/// Sent, as the admin: user create and delete, worker groups, state,
/// note, hand-over, deregister (native API), Boruta setgroups; one refused
/// action (maintenance on a worker already in maintenance: 409) and one
/// with a bad body (a note with a tab: 400). Then GET /v1/audit whole, and
/// page by page with limit=3; as a plain user, as an agent, with a bad
/// cursor.
/// Must happen: every action appears newest first with the admin as
/// actor, its action name, its target and the peer address 127.0.0.1; the
/// refused ones are recorded with outcome "refused" and the error message
/// (decision: refused admin calls are recorded, they are what an audit
/// looks for); the pages together are the whole log; the user and the
/// agent get 403, the bad cursor 400.
#[actix_rt::test]
async fn admin_actions_are_audited_with_actor_target_address_and_outcome() {
    let server = server().await;
    let admin = server.admin();
    let agent = server.agent("host-audit", 2, &caps(&[("device_type", "x")]));
    let (w1, w2) = (agent.uuids[0].to_string(), agent.uuids[1].to_string());
    wait_for_worker(&admin, agent.uuids[0], |w| w["state"] == "maintenance").await;
    wait_for_worker(&admin, agent.uuids[1], |w| w["state"] == "maintenance").await;

    let (status, body) = admin.post("/v1/users", json!({"name": "wes", "groups": ["lab"]})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let wes = body["token"].as_str().unwrap().to_string();
    let (status, _) = admin.post("/v1/users", json!({"name": "agent-2", "agent": true})).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(admin.put(&format!("/v1/workers/{w1}/groups"), json!(["lab"])).await.0, StatusCode::OK);
    let (status, body) = admin.put(&format!("/v1/workers/{w1}/state"), json!({"state": "maintenance"})).await;
    assert_eq!(status, StatusCode::CONFLICT, "already in maintenance: {body}");
    assert_eq!(
        admin.put(&format!("/v1/workers/{w1}/note"), json!({"note": "bad\tnote"})).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(admin.put(&format!("/v1/workers/{w1}/note"), json!({"note": "ok"})).await.0, StatusCode::OK);
    let (status, body) = admin.put(&format!("/v1/workers/{w2}/agent"), json!({"principal": "agent-2"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        admin.post(&format!("/api/v1/workers/{w1}/setgroups"), json!(["lab", "b"])).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(admin.put(&format!("/v1/workers/{w1}/state"), json!({"state": "idle"})).await.0, StatusCode::ACCEPTED);
    assert_eq!(admin.delete(&format!("/v1/workers/{w2}")).await.0, StatusCode::NO_CONTENT);
    assert_eq!(admin.delete("/v1/users/wes").await.0, StatusCode::NO_CONTENT);

    let (status, all) = admin.get("/v1/audit?limit=1000").await;
    assert_eq!(status, StatusCode::OK, "{all}");
    assert!(all["next_cursor"].is_null());
    let items = all["items"].as_array().unwrap();
    let seen: Vec<(String, String, String)> = items
        .iter()
        .rev()
        .map(|e| {
            assert_eq!(e["actor"], "admin", "{e}");
            assert_eq!(e["address"], "127.0.0.1", "{e}");
            assert!(e["at"].is_string(), "{e}");
            (
                e["action"].as_str().unwrap().to_string(),
                e["target"].as_str().unwrap().to_string(),
                e["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let own = |a: &str, t: &str, o: &str| (a.to_string(), t.to_string(), o.to_string());
    let expected = vec![
        own("user.create", "wes", "done"),
        own("user.create", "agent-2", "done"),
        own("worker.groups", &w1, "done"),
        own("worker.state", &w1, "refused"),
        own("worker.note", &w1, "refused"),
        own("worker.note", &w1, "done"),
        own("worker.hand_over", &w2, "done"),
        own("worker.groups", &w1, "done"),
        own("worker.state", &w1, "done"),
        own("worker.deregister", &w2, "done"),
        own("user.delete", "wes", "done"),
    ];
    // The test server's own start-up users come first, if any.
    assert!(seen.ends_with(&expected), "{seen:#?}");
    let refused = items.iter().find(|e| e["outcome"] == "refused" && e["action"] == "worker.state").unwrap();
    assert!(refused["message"].as_str().unwrap().contains("maintenance"), "{refused}");
    let ids: Vec<i64> = items.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");

    // Pages of 3 add up to the whole log.
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..50 {
        let query = cursor.as_ref().map(|c| format!("&cursor={c}")).unwrap_or_default();
        let (status, page) = admin.get(&format!("/v1/audit?limit=3{query}")).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        paged.extend(page["items"].as_array().unwrap().iter().cloned());
        cursor = page["next_cursor"].as_str().map(str::to_string);
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(&paged, items);

    let user = server.api(&server.user("xia", &[]).await);
    let (status, body) = user.get("/v1/audit").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"], "forbidden");
    assert_eq!(server.api(&server.agent_token).get("/v1/audit").await.0, StatusCode::FORBIDDEN);
    assert_eq!(server.api(&wes).get("/v1/audit").await.0, StatusCode::UNAUTHORIZED, "a deleted user's token");
    for bad in ["cursor=zz", "cursor=a-1", "limit=0", "since=yesterday"] {
        let (status, body) = admin.get(&format!("/v1/audit?{bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    agent.kill();
    server.stop().await;
}

/// Issue 16 item 3: holds. Sent: a simulated host whose hook reports
/// battery 80, then 12, then 80 again, while a request for its caps is
/// submitted; then an admin quarantine (as a user: 403; without a reason:
/// 400), a second request, battery changes, and the admin lifting it.
/// Must happen: battery 12 puts the worker in recovery ("battery charging:
/// 12%", with its time) and the request waits; `hold=` filters list it;
/// battery 80 lifts the recovery and the request is bound at once. The
/// quarantine (reason, by, at) keeps the second request waiting whatever
/// the facts say, until the admin lifts it; then it is bound. Each hold
/// and lift is in the worker's history.
#[actix_rt::test]
async fn recovery_from_facts_and_an_admin_quarantine_keep_a_worker_out_of_matching() {
    let server = server().await;
    let admin = server.admin();
    let backend = Simulated::new("host-holds", 1, &caps(&[("device_type", "hold")]), "127.0.0.1:9", "lab");
    let hook = backend.faults();
    let battery = |level: u32| json!({"battery": level}).as_object().unwrap().clone();
    hook.set_facts(battery(80));
    let agent = server.agent_with(backend);
    let worker = agent.uuids[0];
    server.make_idle(&agent.uuids).await;

    hook.set_facts(battery(12));
    let held = wait_for_worker(&admin, worker, |w| w["recovery"].is_string()).await;
    assert_eq!(held["recovery"], "battery charging: 12%", "{held}");
    assert!(held["recovery_at"].is_string() && held["state"] == "idle", "{held}");
    let yan = server.api(&server.user("yan", &[]).await);
    let first = yan.submit(json!({"caps": {"device_type": "hold"}})).await;
    settled(&server).await;
    assert_eq!(yan.get(&format!("/v1/requests/{first}")).await.1["state"], "waiting");
    // Its explanation names the hold as the reason the idle worker is not taken.
    let (_, explained) = yan.get(&format!("/v1/requests/{first}/explain")).await;
    assert_eq!(explained["workers"][0]["state"], "idle", "{explained}");
    assert_eq!(
        explained["workers"][0]["why"], "in recovery: battery charging: 12%; it returns when its facts recover",
        "{explained}"
    );
    let (_, in_recovery) = admin.get("/v1/workers?hold=recovery").await;
    assert_eq!(in_recovery["items"].as_array().unwrap().len(), 1, "{in_recovery}");
    let (_, unheld) = admin.get("/v1/workers?hold=none").await;
    assert_eq!(unheld["items"].as_array().unwrap().len(), 0, "{unheld}");
    assert_eq!(admin.get("/v1/workers?hold=maybe").await.0, StatusCode::BAD_REQUEST);

    hook.set_facts(battery(80));
    let leased = wait_for_request(&yan, first, |r| r["state"] == "in_progress").await;
    assert_eq!(leased["worker"], worker.to_string());
    let (_, shown) = admin.get(&format!("/v1/workers/{worker}")).await;
    assert!(shown["recovery"].is_null() && shown["recovery_at"].is_null(), "{shown}");
    yan.post_empty(&format!("/v1/requests/{first}/close")).await;
    wait_for_worker(&admin, worker, |w| w["state"] == "idle" && w["request"].is_null()).await;

    let path = format!("/v1/workers/{worker}/quarantine");
    assert_eq!(yan.put(&path, json!({"reason": "mine"})).await.0, StatusCode::FORBIDDEN);
    assert_eq!(admin.put(&path, json!({"reason": " "})).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(admin.put(&path, json!({})).await.0, StatusCode::BAD_REQUEST);
    let (status, body) = admin.put(&path, json!({"reason": "flaky USB"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["quarantine"], "flaky USB");
    assert!(body["quarantine_by"].as_str().unwrap().starts_with("user:") && body["quarantine_at"].is_string());
    let second = yan.submit(json!({"caps": {"device_type": "hold"}})).await;
    hook.set_facts(battery(90));
    wait_for_worker(&admin, worker, |w| w["facts"]["battery"] == 90).await;
    settled(&server).await;
    assert_eq!(yan.get(&format!("/v1/requests/{second}")).await.1["state"], "waiting", "facts do not lift it");
    let (_, explained) = yan.get(&format!("/v1/requests/{second}/explain")).await;
    let why = explained["workers"][0]["why"].as_str().unwrap_or_default();
    assert!(
        why.starts_with("quarantined by user:") && why.ends_with(": flaky USB; an admin must lift it"),
        "{explained}"
    );
    assert_eq!(yan.delete(&path).await.0, StatusCode::FORBIDDEN);
    let (status, body) = admin.delete(&path).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["quarantine"].is_null(), "{body}");
    wait_for_request(&yan, second, |r| r["state"] == "in_progress").await;

    let reasons = history_reasons(&admin, &worker.to_string()).await;
    for wanted in ["in recovery: battery charging: 12%", "recovered", "quarantined: flaky USB", "quarantine lifted"] {
        assert!(reasons.iter().any(|r| r == wanted), "{wanted}: {reasons:?}");
    }
    agent.stop().await;
    server.stop().await;
}

/// Sent: a server with `quarantine_after = 1` and a host whose
/// preparation fails; an admin sets the worker idle; then the fault goes
/// away (the retry after the 5 s backoff succeeds). Must happen: at the
/// failed preparation the worker is quarantined by "server" with reason "a
/// failed preparation"; once prepared and idle it is still not leased
/// (a request waits) until an admin lifts the quarantine.
#[actix_rt::test]
async fn failed_preparations_in_a_row_quarantine_a_worker_until_an_admin_lifts_it() {
    let server = TestServer::start_with(Clock::System, |config| {
        config.heartbeat_interval = Duration::from_millis(200);
        config.quarantine_after = 1;
    })
    .await;
    let admin = server.admin();
    let backend = Simulated::new("host-quar", 1, &caps(&[("device_type", "q")]), "127.0.0.1:9", "lab");
    let faults = backend.faults();
    faults.fail(corral_proto::agent::ActionKind::Prepare, corral_agent::Times::Always);
    let agent = server.agent_with(backend);
    let worker = agent.uuids[0];
    wait_for_worker(&admin, worker, |w| w["state"] == "maintenance").await;
    let (status, _) = admin.put(&format!("/v1/workers/{worker}/state"), json!({"state": "idle"})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let held = wait_for_worker(&admin, worker, |w| w["quarantine"].is_string()).await;
    assert_eq!(held["quarantine"], "a failed preparation", "{held}");
    assert_eq!(held["quarantine_by"], "server", "{held}");

    faults.clear();
    corral_testkit::wait_until("the retried preparation makes it idle", Duration::from_secs(20), || async {
        let (_, w) = admin.get(&format!("/v1/workers/{worker}")).await;
        (w["state"] == "idle").then_some(())
    })
    .await;
    let zoe = server.api(&server.user("zoe", &[]).await);
    let id = zoe.submit(json!({"caps": {"device_type": "q"}})).await;
    settled(&server).await;
    assert_eq!(zoe.get(&format!("/v1/requests/{id}")).await.1["state"], "waiting");
    let (status, _) = admin.delete(&format!("/v1/workers/{worker}/quarantine")).await;
    assert_eq!(status, StatusCode::OK);
    wait_for_request(&zoe, id, |r| r["state"] == "in_progress").await;
    agent.stop().await;
    server.stop().await;
}
