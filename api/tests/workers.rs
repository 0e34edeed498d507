//! Admin actions on workers: maintenance (at once or after draining the
//! running lease), groups, deregistration, listing filters.

mod common;

use awc::http::StatusCode;
use common::{TestServer, caps, wait_for_request, wait_for_worker};
use corral_actors::Clock;
use serde_json::json;

#[actix_rt::test]
async fn maintenance_fails_a_running_lease_unless_draining() {
    let server = TestServer::start(Clock::System).await;
    let agent = server.agent("host-w1", 1, &caps(&[("device_type", "x")]));
    server.make_idle(&agent.uuids).await;
    let admin = server.admin();
    let ivy = server.api(&server.user("ivy", &[]).await);
    let worker = agent.uuids[0];

    // Draining: the lease goes on; maintenance comes when it ends.
    let first = ivy.submit(json!({"caps": {"device_type": "x"}})).await;
    wait_for_request(&ivy, first, |r| r["state"] == "in_progress").await;
    let (status, body) = admin
        .put(
            &format!("/v1/workers/{worker}/state"),
            json!({"state": "maintenance", "reason": "flash firmware", "drain": true}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["state"], "running", "{body}");
    assert_eq!(ivy.get(&format!("/v1/requests/{first}")).await.1["state"], "in_progress");
    ivy.post_empty(&format!("/v1/requests/{first}/close")).await;
    let w = wait_for_worker(&admin, worker, |w| w["state"] == "maintenance").await;
    assert_eq!(w["reason"], "flash firmware");

    // Not draining: the running lease fails with the admin's reason.
    server.make_idle(&agent.uuids).await;
    let second = ivy.submit(json!({"caps": {"device_type": "x"}})).await;
    wait_for_request(&ivy, second, |r| r["state"] == "in_progress").await;
    let (status, _) =
        admin.put(&format!("/v1/workers/{worker}/state"), json!({"state": "maintenance", "reason": "smoke"})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let failed = wait_for_request(&ivy, second, |r| r["state"] == "failed").await;
    assert!(failed["reason"].as_str().unwrap().contains("smoke"), "{failed}");
    wait_for_worker(&admin, worker, |w| w["state"] == "maintenance").await;

    // Setting maintenance twice is a conflict; idle from maintenance is fine.
    let (status, _) = admin.put(&format!("/v1/workers/{worker}/state"), json!({"state": "maintenance"})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    agent.stop().await;
    server.stop().await;
}

#[actix_rt::test]
async fn deregistering_the_last_capable_worker_invalidates_waiting_requests() {
    let server = TestServer::start(Clock::System).await;
    let agent = server.agent("host-w2", 1, &caps(&[("device_type", "rare")]));
    server.make_idle(&agent.uuids).await;
    let admin = server.admin();
    let jay = server.api(&server.user("jay", &[]).await);
    let worker = agent.uuids[0];

    let holder = jay.submit(json!({"caps": {"device_type": "rare"}})).await;
    wait_for_request(&jay, holder, |r| r["state"] == "in_progress").await;
    let waiter = jay.submit(json!({"caps": {"device_type": "rare"}})).await;

    let (status, body) = admin.delete(&format!("/v1/workers/{worker}")).await;
    assert_eq!(status, StatusCode::CONFLICT, "a running worker cannot be deregistered: {body}");

    admin.put(&format!("/v1/workers/{worker}/state"), json!({"state": "maintenance", "reason": "retired"})).await;
    wait_for_worker(&admin, worker, |w| w["state"] == "maintenance").await;
    let (status, _) = admin.delete(&format!("/v1/workers/{worker}")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let invalid = wait_for_request(&jay, waiter, |r| r["state"] == "invalid").await;
    assert!(invalid["reason"].as_str().unwrap().contains("deregistered"), "{invalid}");
    assert_eq!(admin.get(&format!("/v1/workers/{worker}")).await.0, StatusCode::NOT_FOUND);
    // Now nothing offers the caps: a new request is refused...
    let (status, body) = jay.post("/v1/requests", json!({"caps": {"device_type": "rare"}})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    // ...unless the caller accepts that.
    let (status, body) =
        jay.post("/v1/requests", json!({"caps": {"device_type": "rare"}, "allow_unsatisfiable": true})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    agent.kill();
    server.stop().await;
}

#[actix_rt::test]
async fn groups_decide_who_may_lease_and_see_a_worker() {
    let server = TestServer::start(Clock::System).await;
    let agent = server.agent("host-w3", 2, &caps(&[("device_type", "x")]));
    server.make_idle(&agent.uuids).await;
    let admin = server.admin();
    let (private, public) = (agent.uuids[0], agent.uuids[1]);
    let (status, body) = admin.put(&format!("/v1/workers/{private}/groups"), json!(["lab-a"])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["groups"], json!(["lab-a"]));

    let member = server.api(&server.user("kim", &["lab-a"]).await);
    let outsider = server.api(&server.user("lou", &[]).await);
    let (_, seen) = outsider.get("/v1/workers").await;
    let seen: Vec<&str> = seen["items"].as_array().unwrap().iter().map(|w| w["uuid"].as_str().unwrap()).collect();
    assert_eq!(seen, vec![public.to_string().as_str()], "outsiders see public workers only");
    assert_eq!(outsider.get(&format!("/v1/workers/{private}")).await.0, StatusCode::NOT_FOUND);

    // The outsider takes the public worker; its second request waits even
    // though the group's worker is idle.
    let a = outsider.submit(json!({"caps": {"device_type": "x"}})).await;
    let leased = wait_for_request(&outsider, a, |r| r["state"] == "in_progress").await;
    assert_eq!(leased["worker"], public.to_string());
    let b = outsider.submit(json!({"caps": {"device_type": "x"}})).await;
    let (_, why) = outsider.get(&format!("/v1/requests/{b}/explain")).await;
    // Explain shows the outsider nothing of the group's worker (issue 13).
    assert!(!why.to_string().contains(&private.to_string()), "{why}");
    let (_, why) = admin.get(&format!("/v1/requests/{b}/explain")).await;
    assert!(
        why["workers"].as_array().unwrap().iter().any(|w| w["why"].as_str().unwrap().contains("group mismatch")),
        "{why}"
    );
    let c = member.submit(json!({"caps": {"device_type": "x"}})).await;
    let leased = wait_for_request(&member, c, |r| r["state"] == "in_progress").await;
    assert_eq!(leased["worker"], private.to_string());
    assert_eq!(outsider.get(&format!("/v1/requests/{b}")).await.1["state"], "waiting");

    // Filters.
    let (_, running) = admin.get("/v1/workers?state=running&cap=device_type=x").await;
    assert_eq!(running["items"].as_array().unwrap().len(), 2);
    let (_, in_group) = admin.get("/v1/workers?group=lab-a").await;
    assert_eq!(in_group["items"].as_array().unwrap().len(), 1);
    let (_, page) = admin.get("/v1/workers?limit=1").await;
    let cursor = page["next_cursor"].as_str().unwrap().to_string();
    let (_, rest) = admin.get(&format!("/v1/workers?limit=1&cursor={cursor}")).await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    assert!(rest["next_cursor"].is_null());
    agent.stop().await;
    server.stop().await;
}

/// Issue 16 (BMDB): `GET /v1/workers/{uuid}/history`, newest first, paged,
/// scoped like the worker. Sent: the history of a worker that was made
/// idle, leased and given back, page by page with limit=2; then as a user
/// outside its group, with a bad cursor, a bad limit and an agent token.
/// Must happen: every transition once, in order, with actor and reason;
/// 404 for the outsider, 400 for the bad cursor and limit, 403 for the
/// agent; nothing changes.
#[actix_rt::test]
async fn worker_history_is_paged_newest_first_and_scoped_like_the_worker() {
    let server = TestServer::start(Clock::System).await;
    let agent = server.agent("host-wh", 1, &caps(&[("device_type", "x")]));
    let w = agent.uuids[0];
    let admin = server.admin();
    wait_for_worker(&admin, w, |v| v["state"] == "maintenance").await;
    let (status, _) = admin.put(&format!("/v1/workers/{w}/groups"), json!(["lab"])).await;
    assert!(status.is_success());
    server.make_idle(&agent.uuids).await;
    let ann = server.api(&server.user("ann", &["lab"]).await);
    let id = ann.submit(json!({"caps": {"device_type": "x"}})).await;
    wait_for_request(&ann, id, |r| r["state"] == "in_progress").await;
    let (status, _) = ann.post_empty(&format!("/v1/requests/{id}/close")).await;
    assert_eq!(status, StatusCode::OK);
    wait_for_worker(&admin, w, |v| v["state"] == "idle" && v["request"].is_null()).await;

    // Every page of 2, following next_cursor, as a member of the group.
    let mut steps = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..20 {
        let query = cursor.as_ref().map(|c| format!("&cursor={c}")).unwrap_or_default();
        let (status, page) = ann.get(&format!("/v1/workers/{w}/history?limit=2{query}")).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        for item in items {
            assert!(item["actor"].is_string() && item["reason"].is_string(), "{item}");
            steps.push((item["from"].as_str().unwrap_or("-").to_string(), item["to"].as_str().unwrap().to_string()));
        }
        cursor = page["next_cursor"].as_str().map(str::to_string);
        if cursor.is_none() {
            break;
        }
    }
    steps.reverse();
    let moves: Vec<String> = steps.iter().map(|(from, to)| format!("{from}>{to}")).collect();
    let expected = ["maintenance>prepare", "prepare>idle", "idle>running", "running>prepare", "prepare>idle"];
    assert!(moves.ends_with(&expected.map(String::from)), "{moves:?}");
    assert_eq!(moves.first().map(String::as_str), Some("->maintenance"), "registration first: {moves:?}");

    // The whole history in one page is the same, and a page past the end is empty.
    let (_, all) = ann.get(&format!("/v1/workers/{w}/history?limit=1000")).await;
    assert_eq!(all["items"].as_array().unwrap().len(), steps.len());
    assert!(all["next_cursor"].is_null());

    // Outsider: 404 (the worker is not theirs to see). Bad input: 400.
    let bob = server.api(&server.user("bob", &[]).await);
    let (status, body) = bob.get(&format!("/v1/workers/{w}/history")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    for bad in ["cursor=zz", "cursor=h-1", "limit=0", "limit=5000", "colour=red"] {
        let (status, body) = ann.get(&format!("/v1/workers/{w}/history?{bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    let (status, _) = ann.get("/v1/workers/not-a-uuid/history").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = server.api(&server.agent_token).get(&format!("/v1/workers/{w}/history")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, again) = ann.get(&format!("/v1/workers/{w}/history?limit=1000")).await;
    assert_eq!(again["items"], all["items"], "reading changed nothing");
    agent.stop().await;
    server.stop().await;
}
