//! Issue 13, classes 4 and 5: users. Deleting a user ends its requests and
//! leases, and a new user of the same name inherits nothing (class 4);
//! per-user limits answer 429 with `Retry-After`, and `explain` is bounded
//! and shows only what the caller may see (class 5). Real server, real
//! HTTP.

mod common;

use std::time::Duration;

use awc::http::StatusCode;
use common::{Api, TestServer, caps, wait_for_request, wait_for_worker};
use corral_actors::Clock;
use corral_core::RequestId;
use serde_json::{Value, json};

/// A raw call that keeps the headers (for `Retry-After`).
async fn call(
    server: &TestServer,
    token: &str,
    method: awc::http::Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Option<String>, Value) {
    call_at(&server.url, token, method, path, body).await
}

async fn call_at(
    url: &str,
    token: &str,
    method: awc::http::Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Option<String>, Value) {
    let http = awc::Client::builder().timeout(Duration::from_secs(90)).finish();
    let request =
        http.request(method, format!("{url}{path}")).insert_header(("Authorization", format!("Bearer {token}")));
    let mut response = match body {
        Some(body) => request.insert_header(("Content-Type", "application/json")).send_body(body.to_string()).await,
        None => request.send().await,
    }
    .unwrap();
    let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
    let bytes = response.body().await.unwrap();
    (response.status(), retry_after, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

async fn history(api: &Api, id: i64) -> Vec<Value> {
    let (status, body) = api.get(&format!("/v1/requests/{id}/history")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body.as_array().unwrap().clone()
}

#[actix_rt::test]
async fn class4_deleting_a_user_ends_their_requests_and_leases() {
    let server = TestServer::start(Clock::System).await;
    let agent = server.agent("host-a", 1, &caps(&[("device_type", "x")]));
    let worker = agent.uuids[0];
    server.make_idle(&[worker]).await;
    let admin = server.admin();
    let alice_token = server.user("alice", &[]).await;
    let alice = server.api(&alice_token);
    let leased = alice.submit(json!({"caps": {"device_type": "x"}})).await;
    wait_for_request(&alice, leased, |r| r["state"] == "in_progress").await;
    let (status, access) = alice.post_empty(&format!("/v1/requests/{leased}/acquire")).await;
    assert_eq!(status, StatusCode::OK, "{access}");
    let port = access["port"].as_u64().unwrap();
    let waiting = alice.submit(json!({"caps": {"device_type": "x"}})).await;
    assert_eq!(
        server.corral.waiting_requests_of(server.corral.db().user_by_name("alice").await.unwrap().unwrap().id),
        1
    );

    // DELETE /v1/users/alice: 204; both requests end at once.
    let (status, body) = admin.delete("/v1/users/alice").await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (_, r) = admin.get(&format!("/v1/requests/{leased}")).await;
    assert_eq!(r["state"], "done", "{r}");
    let (_, r) = admin.get(&format!("/v1/requests/{waiting}")).await;
    assert_eq!(r["state"], "cancelled", "{r}");
    for id in [leased, waiting] {
        let last = history(&admin, id).await.pop().unwrap();
        assert_eq!(
            (last["actor"].as_str(), last["reason"].as_str()),
            (Some("user:admin"), Some("owner alice was deleted"))
        );
    }
    // The lease is over: no live lease (its private key erased), the
    // tunnel port closed, the worker prepared and idle again.
    let live = server.corral.db().load_live_leases().await.unwrap();
    assert!(live.iter().all(|l| l.request != RequestId(leased)), "the lease ended");
    assert_eq!(server.corral.shared().tunnels.port_of(RequestId(leased)), None, "the tunnel on {port} is closed");
    wait_for_worker(&admin, worker, |w| w["state"] == "idle" && w["request"].is_null()).await;
    // The token is gone and the user too.
    let (status, _) = alice.get("/v1/requests").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(server.corral.db().user_by_name("alice").await.unwrap().is_none());
    let (status, _) = admin.delete("/v1/users/alice").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // An agent user that still has live sessions is not deleted (409).
    let (status, body) = admin.delete("/v1/users/agent").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(server.corral.db().user_by_name("agent").await.unwrap().is_some());
    agent.stop().await;
}

#[actix_rt::test]
async fn class4_new_user_with_old_name_inherits_nothing() {
    let server = TestServer::start(Clock::System).await;
    let agent = server.agent("host-a", 1, &caps(&[("device_type", "x")]));
    server.make_idle(&agent.uuids).await;
    let admin = server.admin();
    let old = server.api(&server.user("alice", &[]).await);
    let id = old.submit(json!({"caps": {"device_type": "x"}, "ssh_public_key": null})).await;
    wait_for_request(&old, id, |r| r["state"] == "in_progress").await;
    let (status, access) = old.post_empty(&format!("/v1/requests/{id}/acquire")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(access["private_key"].is_string());
    let (status, _) = admin.delete("/v1/users/alice").await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    // A new alice: the old request is not hers (404 everywhere, native and
    // Boruta API), her list is empty, and the old key is gone.
    let new_token = server.user("alice", &[]).await;
    let new = server.api(&new_token);
    for path in ["", "/history", "/explain"] {
        let (status, body) = new.get(&format!("/v1/requests/{id}{path}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "GET {path}: {body}");
    }
    for path in ["/acquire", "/close", "/prolong"] {
        let (status, body) = new.post_empty(&format!("/v1/requests/{id}{path}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "POST {path}: {body}");
    }
    let (status, body) = new.get("/v1/requests").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["items"], json!([]), "{body}");
    let (status, _, _) = call(&server, &new_token, awc::http::Method::GET, &format!("/api/v1/reqs/{id}"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, body) =
        call(&server, &new_token, awc::http::Method::POST, "/api/v1/reqs/list", Some(json!({}))).await;
    assert_eq!((status, body), (StatusCode::OK, json!([])));
    // The old request ended with its owner and no key is left for it.
    let (_, r) = admin.get(&format!("/v1/requests/{id}")).await;
    assert_eq!(r["state"], "done");
    assert!(server.corral.db().load_live_leases().await.unwrap().is_empty());
    let (status, _) = admin.post_empty(&format!("/v1/requests/{id}/acquire")).await;
    assert_eq!(status, StatusCode::CONFLICT, "even an admin gets no key of an ended lease");
    // Requests of the new alice are hers, with her own identity.
    let mine = new.submit(json!({"caps": {"device_type": "x"}})).await;
    let record = server.corral.db().get_request(RequestId(mine)).await.unwrap().unwrap();
    let old_record = server.corral.db().get_request(RequestId(id)).await.unwrap().unwrap();
    assert_ne!(record.owner_id, old_record.owner_id);
    agent.stop().await;
}

#[actix_rt::test]
async fn class5_waiting_requests_over_limit_get_429_with_retry_after() {
    let server = TestServer::start_with(Clock::System, |c| c.max_waiting_requests_per_user = 3).await;
    let bob_token = server.user("bob", &[]).await;
    let bob = server.api(&bob_token);
    let unsatisfiable = json!({"caps": {"device_type": "none"}, "allow_unsatisfiable": true});

    // Ten submissions at once with a limit of 3: exactly 3 are accepted,
    // the others get 429 too_many_requests with Retry-After.
    let calls = (0..10)
        .map(|_| call(&server, &bob_token, awc::http::Method::POST, "/v1/requests", Some(unsatisfiable.clone())));
    let answers = futures_util::future::join_all(calls).await;
    let created = answers.iter().filter(|(s, _, _)| *s == StatusCode::CREATED).count();
    assert_eq!(created, 3, "{answers:?}");
    for (status, retry_after, body) in answers.iter().filter(|(s, _, _)| *s != StatusCode::CREATED) {
        assert_eq!(*status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        assert_eq!(body["error"], "too_many_requests");
        assert!(retry_after.as_deref().is_some_and(|s| s.parse::<u32>().is_ok()), "Retry-After: {retry_after:?}");
    }
    let (_, listed) = bob.get("/v1/requests?state=waiting").await;
    let ids: Vec<i64> = listed["items"].as_array().unwrap().iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(ids.len(), 3, "{listed}");

    // The Boruta API obeys the same limit.
    let boruta = json!({"ID": 0, "Priority": 8, "Owner": {"Groups": null}, "Deadline": "0001-01-01T00:00:00Z",
        "ValidAfter": "0001-01-01T00:00:00Z", "State": "", "Job": null, "Caps": {"device_type": "none"}});
    let (status, retry_after, body) =
        call(&server, &bob_token, awc::http::Method::POST, "/api/v1/reqs/", Some(boruta)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(retry_after.is_some());

    // Closing one frees a slot.
    let (status, _) = bob.post_empty(&format!("/v1/requests/{}/close", ids[0])).await;
    assert_eq!(status, StatusCode::OK);
    bob.submit(unsatisfiable.clone()).await;
    let (status, _, _) =
        call(&server, &bob_token, awc::http::Method::POST, "/v1/requests", Some(unsatisfiable.clone())).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // Admins are not limited.
    for _ in 0..5 {
        server.admin().submit(unsatisfiable.clone()).await;
    }
}

#[actix_rt::test]
async fn class5_long_polls_over_limit_get_429() {
    let server = TestServer::start_with(Clock::System, |c| c.max_long_polls_per_user = 2).await;
    let token = server.user("carol", &[]).await;
    let carol = server.api(&token);
    let id = carol.submit(json!({"caps": {"device_type": "none"}, "allow_unsatisfiable": true})).await;

    // Three long-polls of 60 s at once with a limit of 2: the first to
    // answer is the one refused (429, Retry-After), at once; the other two
    // hold carol's slots.
    let polls = (0..3).map(|_| {
        let (url, token) = (server.url.clone(), token.clone());
        let path = format!("/v1/requests/{id}/acquire?wait=60s");
        actix_rt::spawn(async move { call_at(&url, &token, awc::http::Method::POST, &path, None).await })
    });
    let (first, _, held) = futures_util::future::select_all(polls).await;
    let (status, retry_after, body) = first.unwrap();
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"], "too_many_requests");
    assert_eq!(retry_after.as_deref(), Some("1"));
    // Another long-poll is refused too; an acquire without wait holds
    // nothing and still answers (409: still waiting); admins are not limited.
    let path = format!("/v1/requests/{id}/acquire?wait=1ms");
    let (status, _, _) = call(&server, &token, awc::http::Method::POST, &path, None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let (status, _) = carol.post_empty(&format!("/v1/requests/{id}/acquire")).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _, _) = call(&server, &server.admin, awc::http::Method::POST, &path, None).await;
    assert_eq!(status, StatusCode::CONFLICT);

    // Closing the request answers both held polls, and their slots are free.
    let (status, _) = carol.post_empty(&format!("/v1/requests/{id}/close")).await;
    assert_eq!(status, StatusCode::OK);
    for poll in held {
        let (status, _, body) = poll.await.unwrap();
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
    }
    let other = carol.submit(json!({"caps": {"device_type": "none"}, "allow_unsatisfiable": true})).await;
    let (status, _, body) =
        call(&server, &token, awc::http::Method::POST, &format!("/v1/requests/{other}/acquire?wait=1ms"), None).await;
    assert_eq!(status, StatusCode::CONFLICT, "slots are free again: {body}");
}

#[actix_rt::test]
async fn class5_explain_is_bounded_and_scoped() {
    let server = TestServer::start(Clock::System).await;
    let admin = server.admin();
    // 120 workers with caps x, all in maintenance (new workers are).
    let many = server.agent("host-many", 120, &caps(&[("device_type", "x")]));
    // Two workers with caps y: one anyone may use, one of group "secret".
    let open = server.agent("host-open", 1, &caps(&[("device_type", "y")]));
    let secret = server.agent("host-secret", 1, &caps(&[("device_type", "y")]));
    for w in many.uuids.iter().chain(&open.uuids).chain(&secret.uuids) {
        wait_for_worker(&admin, *w, |v| v["state"].is_string()).await;
    }
    let secret_worker = secret.uuids[0];
    let (status, _) = admin.put(&format!("/v1/workers/{secret_worker}/groups"), json!(["secret"])).await;
    assert_eq!(status, StatusCode::OK);
    server.make_idle(&open.uuids).await;
    let alice = server.api(&server.user("alice", &[]).await);
    let bob = server.api(&server.user("bob", &[]).await);

    // Bounded: 120 matching workers, at most 100 listed, and the count.
    let wide = alice.submit(json!({"caps": {"device_type": "x"}})).await;
    let (status, explained) = alice.get(&format!("/v1/requests/{wide}/explain")).await;
    assert_eq!(status, StatusCode::OK, "{explained}");
    assert_eq!(explained["workers"].as_array().unwrap().len(), 100);
    assert_eq!(explained["workers_total"], 120);

    // Scoped: bob's lease holds the open worker; alice waits for it.
    let bobs = bob.submit(json!({"caps": {"device_type": "y"}})).await;
    wait_for_request(&bob, bobs, |r| r["state"] == "in_progress").await;
    let narrow = alice.submit(json!({"caps": {"device_type": "y"}})).await;
    let (status, explained) = alice.get(&format!("/v1/requests/{narrow}/explain")).await;
    assert_eq!(status, StatusCode::OK, "{explained}");
    let text = explained.to_string();
    assert!(!text.contains(&secret_worker.to_string()), "alice sees no worker of group secret: {text}");
    assert!(!text.contains(&format!("request {bobs}")), "alice does not see bob's request: {text}");
    assert_eq!(explained["workers_total"], 1, "{explained}");
    let why = explained["workers"][0]["why"].as_str().unwrap();
    assert!(why.starts_with("running another user's lease until "), "{why}");
    // The admin sees both workers and bob's request.
    let (_, explained) = admin.get(&format!("/v1/requests/{narrow}/explain")).await;
    let text = explained.to_string();
    assert_eq!(explained["workers_total"], 2, "{explained}");
    assert!(text.contains(&format!("running request {bobs} until ")), "{text}");
    assert!(text.contains(&secret_worker.to_string()), "{text}");
    // Bob may not explain alice's request at all.
    let (status, _) = bob.get(&format!("/v1/requests/{narrow}/explain")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for agent in [many, open, secret] {
        agent.stop().await;
    }
}

#[actix_rt::test]
async fn class5_the_waiting_limit_is_kept_across_a_restart() {
    let first = TestServer::start_with(Clock::System, |c| c.max_waiting_requests_per_user = 2).await;
    let token = first.user("dan", &[]).await;
    let dan = first.api(&token);
    let unsatisfiable = json!({"caps": {"device_type": "none"}, "allow_unsatisfiable": true});
    let kept = dan.submit(unsatisfiable.clone()).await;
    dan.submit(unsatisfiable.clone()).await;

    // A new server on the same database rebuilds dan's two waiting
    // requests and counts them: a third is still refused.
    let mut config = common::test_config(&first.db_url);
    config.max_waiting_requests_per_user = 2;
    let data_dir = config.data_dir.clone();
    first.halt().await;
    let second = corral_api::serve(config, Clock::System).await.expect("the server restarts");
    let url = format!("http://{}", second.addr);
    let handle = second.handle();
    actix_rt::spawn(async move {
        let _ = second.wait().await;
    });
    let (status, retry_after, body) =
        call_at(&url, &token, awc::http::Method::POST, "/v1/requests", Some(unsatisfiable.clone())).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(retry_after.is_some());
    // Closing one frees its slot on the new server.
    let dan = dan.at(&url);
    let (status, _) = dan.post_empty(&format!("/v1/requests/{kept}/close")).await;
    assert_eq!(status, StatusCode::OK);
    dan.submit(unsatisfiable).await;
    handle.stop(false).await;
    let _ = std::fs::remove_dir_all(&data_dir);
}
