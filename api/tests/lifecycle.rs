//! The request and worker lifecycle end to end over HTTP, with a simulated
//! agent: idle → leased → prolonged → closed → idle again; priority order;
//! explain.

mod common;

use std::time::Duration;

use awc::http::StatusCode;
use common::{TestServer, caps, wait_for_request, wait_for_worker};
use corral_actors::Clock;
use corral_core::lease::KeyKind;
use corral_core::{Priority, RequestId, SessionId, WorkerState};
use corral_db::NewRequestRecord;
use serde_json::json;

#[actix_rt::test]
async fn a_request_is_leased_prolonged_closed_and_its_worker_returns_to_idle() {
    let server = TestServer::start(Clock::System).await;
    let agent = server.agent("host-a", 3, &caps(&[("device_type", "x")]));
    server.make_idle(&agent.uuids).await;
    let alice = server.api(&server.user("alice", &[]).await);

    let started = std::time::Instant::now();
    let id = alice.submit(json!({"caps": {"device_type": "x"}, "lease": "1h"})).await;
    let leased = wait_for_request(&alice, id, |r| r["state"] == "in_progress").await;
    assert!(started.elapsed() < Duration::from_secs(1), "in progress after {:?}", started.elapsed());
    let worker = leased["worker"].as_str().unwrap().to_string();
    // Idle workers were waiting: the request was bound in the commit that
    // inserted it (the lease's bound_at is the request's created_at), not
    // by a later batch.
    let leases = server.corral.db().load_live_leases().await.unwrap();
    let lease = leases.iter().find(|l| l.request.0 == id).expect("a live lease");
    let created = server.corral.db().get_request(RequestId(id)).await.unwrap().unwrap().created_at;
    assert_eq!(lease.bound_at, created, "bound at submission");

    let (status, access) = alice.post_empty(&format!("/v1/requests/{id}/acquire")).await;
    assert_eq!(status, StatusCode::OK, "{access}");
    assert_eq!(access["worker"], leased["worker"]);
    assert_eq!(access["host"], "127.0.0.1");
    assert_eq!(access["username"], "lab");
    assert!(access["port"].as_u64().unwrap() >= 20000);
    assert!(access["private_key"].as_str().unwrap().contains("BEGIN OPENSSH PRIVATE KEY"));
    assert!(access["ssh_command"].as_str().unwrap().starts_with("ssh "));

    let before = leased["lease_expires_at"].as_str().unwrap().to_string();
    let (status, prolonged) = alice.post(&format!("/v1/requests/{id}/prolong"), json!({"by": "30m"})).await;
    assert_eq!(status, StatusCode::OK, "{prolonged}");
    let after = prolonged["lease_expires_at"].as_str().unwrap().to_string();
    assert!(after > before, "{after} should be after {before}");

    let (status, closed) = alice.post_empty(&format!("/v1/requests/{id}/close")).await;
    assert_eq!(status, StatusCode::OK, "{closed}");
    assert_eq!(closed["state"], "done");
    let admin = server.admin();
    wait_for_worker(&admin, worker.parse().unwrap(), |w| w["state"] == "idle" && w["request"].is_null()).await;
    // The worker went running → prepare in the commit that ended the lease,
    // then prepare → idle when its agent confirmed.
    let steps: Vec<(Option<String>, String)> = server
        .corral
        .db()
        .worker_history(worker.parse().unwrap())
        .await
        .unwrap()
        .into_iter()
        .map(|h| (h.from, h.to))
        .collect();
    let step = |from: &str, to: &str| (Some(from.to_string()), to.to_string());
    assert_eq!(
        steps[steps.len() - 3..],
        [step("idle", "running"), step("running", "prepare"), step("prepare", "idle")]
    );

    let (status, history) = alice.get(&format!("/v1/requests/{id}/history")).await;
    assert_eq!(status, StatusCode::OK);
    let states: Vec<&str> = history.as_array().unwrap().iter().map(|h| h["to"].as_str().unwrap()).collect();
    assert_eq!(states, ["waiting", "waiting", "in_progress", "in_progress", "done"], "{history}");
    // Submitted, then matched: the two rows of the one commit keep their order.
    assert_eq!(history[0]["reason"], "submitted", "{history}");
    let matched = history[1]["reason"].as_str().unwrap();
    assert!(matched.starts_with(&format!("matched to worker {worker}")), "{history}");
    assert!(
        history
            .as_array()
            .unwrap()
            .iter()
            .all(|h| !h["actor"].as_str().unwrap().is_empty() && !h["reason"].as_str().unwrap().is_empty())
    );

    let (status, again) = alice.post_empty(&format!("/v1/requests/{id}/close")).await;
    assert_eq!(status, StatusCode::CONFLICT, "closing a done request: {again}");
    assert_eq!(again["error"], "conflict");
    agent.stop().await;
    server.stop().await;
}

#[actix_rt::test]
async fn urgent_requests_are_served_first_and_explain_says_why_others_wait() {
    let server = TestServer::start(Clock::System).await;
    let agent = server.agent("host-b", 1, &caps(&[("device_type", "x")]));
    server.make_idle(&agent.uuids).await;
    let bob = server.api(&server.user("bob", &[]).await);

    let holder = bob.submit(json!({"caps": {"device_type": "x"}})).await;
    wait_for_request(&bob, holder, |r| r["state"] == "in_progress").await;
    let relaxed = bob.submit(json!({"caps": {"device_type": "x"}, "priority": 8})).await;
    let urgent = bob.submit(json!({"caps": {"device_type": "x"}, "priority": 2})).await;

    let (status, why) = bob.get(&format!("/v1/requests/{relaxed}/explain")).await;
    assert_eq!(status, StatusCode::OK, "{why}");
    assert_eq!(why["position"], 2, "{why}");
    assert_eq!(why["workers"][0]["state"], "running", "{why}");
    assert!(why["workers"][0]["why"].as_str().unwrap().contains(&format!("running request {holder} until")), "{why}");

    let (status, _) = bob.post_empty(&format!("/v1/requests/{holder}/close")).await;
    assert_eq!(status, StatusCode::OK);
    wait_for_request(&bob, urgent, |r| r["state"] == "in_progress").await;
    let (_, relaxed_now) = bob.get(&format!("/v1/requests/{relaxed}")).await;
    assert_eq!(relaxed_now["state"], "waiting", "the priority-8 request still waits");
    let (_, why) = bob.get(&format!("/v1/requests/{relaxed}/explain")).await;
    assert_eq!(why["position"], 1, "{why}");

    bob.post_empty(&format!("/v1/requests/{urgent}/close")).await;
    wait_for_request(&bob, relaxed, |r| r["state"] == "in_progress").await;
    agent.stop().await;
    server.stop().await;
}

#[actix_rt::test]
async fn acquire_waits_for_the_lease_or_answers_conflict_when_the_wait_ends() {
    let server = TestServer::start(Clock::System).await;
    let agent = server.agent("host-c", 1, &caps(&[("device_type", "y")]));
    let carol = server.api(&server.user("carol", &[]).await);
    wait_for_worker(&server.admin(), agent.uuids[0], |w| w["state"] == "maintenance").await;
    // The worker is still in maintenance: the request waits.
    let id = carol.submit(json!({"caps": {"device_type": "y"}})).await;
    let (status, body) = carol.post_empty(&format!("/v1/requests/{id}/acquire?wait=200ms")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["message"].as_str().unwrap().contains("waiting"), "{body}");

    let path = format!("/v1/requests/{id}/acquire?wait=10s");
    let acquire = carol.post_empty(&path);
    let admin = server.admin();
    let idle = async {
        // The worker goes idle only once the acquire is parked: the
        // server's gauge of open long-polls shows it.
        server.wait_for_metric("corral_long_polls_open", 1.0).await;
        let (status, _) = admin.put(&format!("/v1/workers/{}/state", agent.uuids[0]), json!({"state": "idle"})).await;
        assert_eq!(status, StatusCode::ACCEPTED);
    };
    let ((status, access), ()) = tokio::join!(acquire, idle);
    assert_eq!(status, StatusCode::OK, "{access}");
    assert_eq!(access["request_id"], id);
    agent.stop().await;
    server.stop().await;
}

/// The database guards a binding made at submission as it guards a
/// batch's: it binds only an idle worker, and only for the leading server.
/// Input: an insert naming a worker that is idle but with a session that
/// does not lead, then one naming a worker that is running, with the
/// leader's session. Each must insert the request waiting and unbound,
/// return no fencing token, write only its `submitted` history row, and
/// leave the worker as it was.
#[actix_rt::test]
async fn a_binding_at_submission_needs_an_idle_worker_and_the_leader() {
    let server = TestServer::start(Clock::System).await;
    let agent = server.agent("host-g", 1, &caps(&[("device_type", "g")]));
    server.make_idle(&agent.uuids).await;
    let worker = agent.uuids[0];
    let db = server.corral.db().clone();
    let leader = server.corral.shared().leader;
    let now = std::time::SystemTime::now();
    let new = NewRequestRecord {
        owner: "gina".to_string(),
        owner_id: corral_core::UserId(0),
        owner_groups: Default::default(),
        priority: Priority::default(),
        caps: caps(&[("device_type", "g")]),
        at: now,
        valid_after: now,
        deadline: now + Duration::from_secs(3600),
        lease: Duration::from_secs(60),
        ssh_public_key: None,
        key_kind: KeyKind::Ed25519,
    };
    let refused = |record: &corral_db::RequestRecord, fence: Option<corral_core::FencingToken>| {
        assert_eq!(fence, None);
        assert_eq!(record.state, corral_core::RequestState::Waiting);
        assert_eq!(record.worker, None);
    };

    let (record, fence) = db.insert_request(&new, "user:gina", Some((worker, SessionId::random()))).await.unwrap();
    refused(&record, fence);
    let history = db.request_history(record.id).await.unwrap();
    assert_eq!(history.iter().map(|h| h.reason.as_str()).collect::<Vec<_>>(), ["submitted"]);
    assert_eq!(db.load_worker(worker).await.unwrap().unwrap().state, WorkerState::Idle);

    let gina = server.api(&server.user("gina", &[]).await);
    let held = gina.submit(json!({"caps": {"device_type": "g"}})).await;
    wait_for_request(&gina, held, |r| r["state"] == "in_progress").await;
    let (record, fence) = db.insert_request(&new, "user:gina", Some((worker, leader))).await.unwrap();
    refused(&record, fence);
    let running = db.load_worker(worker).await.unwrap().unwrap();
    assert_eq!(running.state, WorkerState::Running);
    assert_eq!(db.worker_history(worker).await.unwrap().iter().filter(|h| h.to == "running").count(), 1);

    agent.stop().await;
    server.stop().await;
}

/// Issue 16: a lease may not be prolonged past `max_total_lease` from its
/// start (here 15m), whatever each prolong asks; the workers of a group
/// with an override (`soak`: 1h) may go further. Sent: a 10m lease
/// prolonged by 4m (ends 14m after its start), then by 2m (would end 16m
/// after). Must happen: 200, then 409 naming the limit, and the lease's
/// expiry is the one of the first prolong; on the soak worker both are 200.
#[actix_rt::test]
async fn a_lease_is_not_prolonged_past_max_total_lease_from_its_start() {
    let server = TestServer::start_with(Clock::System, |c| {
        c.max_total_lease = Duration::from_secs(15 * 60);
        c.max_total_lease_by_group = [("soak".to_string(), Duration::from_secs(3600))].into_iter().collect();
    })
    .await;
    let plain = server.agent("host-plain", 1, &caps(&[("device_type", "plain")]));
    let soak = server.agent("host-soak", 1, &caps(&[("device_type", "soaky")]));
    let admin = server.admin();
    wait_for_worker(&admin, soak.uuids[0], |w| w["state"] == "maintenance").await;
    let (status, body) = admin.put(&format!("/v1/workers/{}/groups", soak.uuids[0]), json!(["soak"])).await;
    assert!(status.is_success(), "{body}");
    server.make_idle(&plain.uuids).await;
    server.make_idle(&soak.uuids).await;
    let alice = server.api(&server.user("alice", &["soak"]).await);

    for (device, limited) in [("plain", true), ("soaky", false)] {
        let id = alice.submit(json!({"caps": {"device_type": device}, "lease": "10m"})).await;
        wait_for_request(&alice, id, |r| r["state"] == "in_progress").await;
        let (status, first) = alice.post(&format!("/v1/requests/{id}/prolong"), json!({"by": "4m"})).await;
        assert_eq!(status, StatusCode::OK, "{device}: {first}");
        let (status, second) = alice.post(&format!("/v1/requests/{id}/prolong"), json!({"by": "2m"})).await;
        let (_, now) = alice.get(&format!("/v1/requests/{id}")).await;
        if limited {
            assert_eq!(status, StatusCode::CONFLICT, "{device}: {second}");
            let message = second["message"].as_str().unwrap_or_default();
            assert!(message.contains("at most 15m from its start"), "{message}");
            assert_eq!(now["lease_expires_at"], first["lease_expires_at"], "the refused prolong changed nothing");
        } else {
            assert_eq!(status, StatusCode::OK, "{device}: {second}");
            assert_eq!(now["lease_expires_at"], second["lease_expires_at"]);
        }
        let (status, _) = alice.post_empty(&format!("/v1/requests/{id}/close")).await;
        assert_eq!(status, StatusCode::OK);
    }
    plain.stop().await;
    soak.stop().await;
    server.stop().await;
}
